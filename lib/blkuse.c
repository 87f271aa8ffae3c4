#include "lib/blkuse.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "lib/util.h"

/* Mounted? /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT ...". */
static int mounted(unsigned maj, unsigned min, char *why, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char line[4096], mp[2048];
	unsigned a, b;
	int rc = 0;

	while (f && !rc && fgets(line, sizeof(line), f))
		if (sscanf(line, "%*u %*u %u:%u %*s %2047s", &a, &b, mp) == 3 && a == maj &&
		    b == min) {
			snprintf(why, len, "mounted on %s", mp);
			rc = 1;
		}
	if (f)
		fclose(f);
	return rc;
}

/* Held by another device: /sys/dev/block/MAJ:MIN/holders/ not empty. */
static int held(unsigned maj, unsigned min, char *why, size_t len)
{
	char path[128];
	DIR *d;
	struct dirent *de;
	int rc = 0;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/holders", maj, min);
	d = opendir(path);
	while (d && !rc && (de = readdir(d)))
		if (de->d_name[0] != '.') {
			snprintf(why, len, "held by %s", de->d_name);
			rc = 1;
		}
	if (d)
		closedir(d);
	return rc;
}

/* Open in a process (other than this one)? type: S_IFBLK or S_IFCHR. */
static int opened(mode_t type, dev_t rdev, char *why, size_t len)
{
	DIR *procs = opendir("/proc");
	struct dirent *p;
	pid_t self = getpid();
	int rc = 0;

	while (procs && !rc && (p = readdir(procs))) {
		char fdir[64], path[PATH_MAX];
		DIR *fds;
		struct dirent *f;
		char *end;
		long pid = strtol(p->d_name, &end, 10);

		if (*end || pid <= 0 || pid == self)
			continue;
		snprintf(fdir, sizeof(fdir), "/proc/%ld/fd", pid);
		fds = opendir(fdir);
		while (fds && !rc && (f = readdir(fds))) {
			struct stat st;

			if (f->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", fdir, f->d_name);
			if (stat(path, &st) == 0 && (st.st_mode & S_IFMT) == type &&
			    st.st_rdev == rdev) {
				char comm[64] = "?", cpath[64];
				FILE *c;

				snprintf(cpath, sizeof(cpath), "/proc/%ld/comm", pid);
				c = fopen(cpath, "r");
				if (c) {
					if (fgets(comm, sizeof(comm), c))
						comm[strcspn(comm, "\n")] = '\0';
					fclose(c);
				}
				snprintf(why, len, "open in pid %ld (%s)", pid, comm);
				rc = 1;
			}
		}
		if (fds)
			closedir(fds);
	}
	if (procs)
		closedir(procs);
	return rc;
}

/* One device (whole or a partition): mounted, held or open? */
static int dev_in_use(dev_t rdev, char *why, size_t len)
{
	unsigned maj = major(rdev), min = minor(rdev);

	return mounted(maj, min, why, len) || held(maj, min, why, len) ||
	       opened(S_IFBLK, rdev, why, len);
}

/*
 * Its partitions: /sys/dev/block/MAJ:MIN/NAMEpN/ with a "partition" file and
 * "dev" (MAJ:MIN). 1 with "partition NAME is ..." in why, or 0.
 */
static int partition_in_use(unsigned maj, unsigned min, char *why, size_t len)
{
	char path[PATH_MAX], sub[1800];
	DIR *d;
	struct dirent *de;
	int rc = 0;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u", maj, min);
	d = opendir(path);
	while (d && !rc && (de = readdir(d))) {
		char p[PATH_MAX + 300];
		unsigned a, b;
		FILE *f;
		struct stat st;

		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s/partition", path, de->d_name);
		if (stat(p, &st) < 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s/dev", path, de->d_name);
		f = fopen(p, "r");
		if (!f)
			continue;
		if (fscanf(f, "%u:%u", &a, &b) == 2 &&
		    dev_in_use(makedev(a, b), sub, sizeof(sub))) {
			snprintf(why, len, "partition %s is %s", de->d_name, sub);
			rc = 1;
		}
		fclose(f);
	}
	if (d)
		closedir(d);
	return rc;
}

int gw_blockdev_in_use(const char *devnode, char *why, size_t len)
{
	struct stat st;
	char sub[2400];

	if (stat(devnode, &st) < 0 || !S_ISBLK(st.st_mode))
		return 0;
	if (dev_in_use(st.st_rdev, sub, sizeof(sub))) {
		snprintf(why, len, "%s is %s", devnode, sub);
		return 1;
	}
	if (partition_in_use(major(st.st_rdev), minor(st.st_rdev), sub, sizeof(sub))) {
		snprintf(why, len, "%s: its %s", devnode, sub);
		return 1;
	}
	return 0;
}

int gw_chardev_open_by(const char *devnode, char *why, size_t len)
{
	struct stat st;

	if (stat(devnode, &st) < 0 || !S_ISCHR(st.st_mode))
		return 0;
	return opened(S_IFCHR, st.st_rdev, why, len);
}
