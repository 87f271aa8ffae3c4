#include "lib/statefile.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

int gw_state_each(const char *run_dir, const char *sub,
		  int (*fn)(void *arg, const char *path, const char *name, const char *line),
		  void *arg)
{
	char dir[4096], path[4400], line[512];
	struct dirent *de;
	DIR *dp;
	int rc = 0;

	snprintf(dir, sizeof(dir), "%s/%s", run_dir, sub);
	dp = opendir(dir);
	if (!dp)
		return 0;
	while (!rc && (de = readdir(dp))) {
		size_t n = strlen(de->d_name);
		FILE *f;

		if (n < 7 || strcmp(de->d_name + n - 6, ".state") != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f))
			rc = fn(arg, path, de->d_name, line);
		fclose(f);
	}
	closedir(dp);
	return rc;
}

bool gw_pid_alive(int pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}
