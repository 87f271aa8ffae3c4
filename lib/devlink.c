#include "lib/devlink.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/sockets.h"
#include "lib/util.h"

char *gw_devlink_set(const char *run_dir, const char *id, const char *target)
{
	char *path;

	if (asprintf(&path, "%s/dev/%s", run_dir, id) < 0)
		return NULL;
	gw_mkdir_parents(path);
	unlink(path);
	if (symlink(target, path) < 0) {
		gw_warn("export %s: cannot link %s -> %s: %s", id, path, target, strerror(errno));
		free(path);
		return NULL;
	}
	return path;
}

void gw_devlink_remove(char **path)
{
	if (!*path)
		return;
	unlink(*path);
	free(*path);
	*path = NULL;
}
