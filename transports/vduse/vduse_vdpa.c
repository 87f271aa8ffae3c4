/*
 * Binding a VDUSE device to the vDPA bus, as `vdpa dev add name X mgmtdev
 * vduse` does: one request of the "vdpa" generic-netlink family (lib/genl on
 * libmnl), and sysfs to learn which vdpa bus driver took the device and which
 * disk virtio_blk made of it. Runs on the netlink thread (vduse.c), never on
 * the main thread: the kernel waits for the device's answers meanwhile.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <linux/vdpa.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/genl.h"
#include "lib/util.h"
#include "transports/vduse/vduse_internal.h"

#define VDPA_DEVICES "/sys/bus/vdpa/devices"

int vduse_vdpa_request(const char *name, bool add, char *err, size_t errlen)
{
	struct gw_genl_sock s;
	struct gw_genl_msg m;
	const char *what = add ? "VDPA_CMD_DEV_NEW" : "VDPA_CMD_DEV_DEL";
	int rc;

	memset(&s, 0, sizeof(s));
	rc = gw_genl_open(&s, VDPA_GENL_NAME);
	if (rc < 0) {
		if (rc == -ENOENT)
			gw_seterr(
				err, errlen,
				"the kernel has no vdpa netlink family: the vdpa module is not loaded (modprobe vduse virtio_vdpa)");
		else
			gw_seterr(err, errlen, "vdpa netlink: %s", strerror(-rc));
		return rc;
	}
	gw_genl_msg_init(&m, &s.family, add ? VDPA_CMD_DEV_NEW : VDPA_CMD_DEV_DEL, 0);
	if (add)
		gw_genl_put_str(&m, VDPA_ATTR_MGMTDEV_DEV_NAME, "vduse");
	gw_genl_put_str(&m, VDPA_ATTR_DEV_NAME, name);
	rc = gw_genl_request(&s, &m, NULL, NULL);
	if (rc < 0) {
		const char *kt = s.ext_msg[0] ? s.ext_msg : "";

		if (rc == -EPERM || rc == -EACCES)
			gw_seterr(err, errlen,
				  "%s: permission denied: needs CAP_NET_ADMIN (run as root)", what);
		else if (rc == -EEXIST)
			gw_seterr(err, errlen, "%s: vdpa device %s already exists%s%s", what, name,
				  *kt ? ": " : "", kt);
		else if (rc == -ENODEV && add)
			gw_seterr(
				err, errlen,
				"%s: no vdpa management device \"vduse\" (is the vduse module loaded?)%s%s",
				what, *kt ? ": " : "", kt);
		else
			gw_seterr(err, errlen, "%s %s: %s%s%s", what, name, strerror(-rc),
				  *kt ? ": " : "", kt);
	}
	gw_genl_close(&s);
	return rc;
}

/* The first entry of dir whose name starts with prefix, into out. */
static bool first_entry(const char *dir, const char *prefix, char *out, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	bool found = false;

	if (!d)
		return false;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		found = strlen(de->d_name) < len;
		if (found)
			memcpy(out, de->d_name, strlen(de->d_name) + 1);
		break;
	}
	closedir(d);
	return found;
}

static void nap_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

int vduse_vdpa_disk(const char *name, char *dev, size_t devlen, char *err, size_t errlen)
{
	char path[PATH_MAX], target[PATH_MAX], virtio[64], disk[64];
	const char *drv;
	ssize_t n;

	snprintf(path, sizeof(path), VDPA_DEVICES "/%s/driver", name);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		gw_seterr(
			err, errlen,
			"no vdpa bus driver took vdpa device %s: the virtio_vdpa module is not loaded (modprobe virtio_vdpa)",
			name);
		return -ENODEV;
	}
	target[n] = '\0';
	drv = strrchr(target, '/');
	drv = drv ? drv + 1 : target;
	if (strcmp(drv, "virtio_vdpa") != 0) {
		gw_seterr(
			err, errlen,
			"vdpa device %s was taken by %s, not virtio_vdpa, so no /dev/vdX appears: "
			"unload it (modprobe -r %s) or rebind (echo %s > /sys/bus/vdpa/drivers/%s/unbind; "
			"echo %s > /sys/bus/vdpa/drivers/virtio_vdpa/bind)",
			name, drv, drv, name, drv, name);
		return -EBUSY;
	}
	/* virtio_blk adds the disk while virtio_vdpa probes; give udev-less hosts a moment. */
	snprintf(path, sizeof(path), VDPA_DEVICES "/%s", name);
	for (int i = 0; i < 100; i++) {
		char blk[PATH_MAX + 80];

		if (first_entry(path, "virtio", virtio, sizeof(virtio))) {
			snprintf(blk, sizeof(blk), "%s/%s/block", path, virtio);
			if (first_entry(blk, "vd", disk, sizeof(disk))) {
				snprintf(dev, devlen, "/dev/%s", disk);
				return 0;
			}
		}
		nap_ms(50);
	}
	gw_seterr(err, errlen,
		  "virtio_vdpa took vdpa device %s but no virtio-blk disk appeared within 5 s "
		  "(is the virtio_blk module loaded?)",
		  name);
	return -ENODEV;
}
