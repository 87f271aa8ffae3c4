/*
 * ublk-del ID: stop and delete /dev/ublkbID from outside its daemon, as
 * ublksrv's `ublk del` does (STOP_DEV, then DEL_DEV, which waits until the
 * daemon lets go of /dev/ublkcID). For vm-fallback-apply: a device deleted
 * behind blkgw's back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transports/ublk/ublk_internal.h"

int main(int argc, char **argv)
{
	struct ublk_ctrl c;
	char *end;
	unsigned long id;
	int rc;

	if (argc != 2 || (id = strtoul(argv[1], &end, 10), *end)) {
		fprintf(stderr, "usage: ublk-del ID\n");
		return 2;
	}
	rc = ublk_ctrl_open(&c);
	if (rc < 0) {
		fprintf(stderr, "ublk-del: %s: %s\n", UBLK_CONTROL_PATH, strerror(-rc));
		return 1;
	}
	rc = ublk_ctrl_cmd(&c, UBLK_U_CMD_STOP_DEV, (uint32_t)id, NULL, 0, 0);
	if (rc < 0)
		fprintf(stderr, "ublk-del: STOP_DEV %lu: %s\n", id, strerror(-rc));
	rc = ublk_ctrl_cmd(&c, UBLK_U_CMD_DEL_DEV, (uint32_t)id, NULL, 0, 0);
	if (rc < 0 && rc != -ENODEV && rc != -ENOENT) {
		fprintf(stderr, "ublk-del: DEL_DEV %lu: %s\n", id, strerror(-rc));
		ublk_ctrl_close(&c);
		return 1;
	}
	printf("ublk-del: /dev/ublkb%lu deleted%s\n", id, rc < 0 ? " (by its daemon)" : "");
	ublk_ctrl_close(&c);
	return 0;
}
