/*
 * Is a block device in use by someone else: it or one of its partitions
 * mounted, held by another device (device-mapper, md, LVM), or open in a
 * process? For `apply`, which must
 * not pull a kernel device out from under a user without --force. Reads
 * /proc and /sys only; no side effects. Main thread (scans every process's
 * open files: milliseconds on a busy host, fine for a reconfiguration).
 */
#pragma once

#include <stddef.h>

/*
 * 1 with who holds it in why ("/dev/nbd0 is mounted on /mnt", "/dev/nbd0 is
 * open in pid 42 (fio)", "/dev/nbd0: its partition nbd0p1 is mounted
 * on /mnt"), or 0.
 */
int gw_blockdev_in_use(const char *devnode, char *why, size_t len);

/* A character device open in a process other than this one: 1 with "open in pid 42 (fio)", or 0. */
int gw_chardev_open_by(const char *devnode, char *why, size_t len);
