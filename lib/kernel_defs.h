/*
 * Kernel UAPI definitions the project needs that Debian 12's linux-libc-dev
 * (6.1) lacks. Include the kernel's own header first, then this one: every
 * definition is guarded (#ifndef), so a newer linux-libc-dev wins, and each
 * names the kernel version it comes from. Only what is missing goes here;
 * everything else comes from <linux/...> (one source per wire format).
 */
#pragma once

/* ---- <linux/virtio_blk.h> ---- */

/* Linux 6.2: the eMMC-style device lifetime request (virtio 1.2, 5.2.6). */
#ifndef VIRTIO_BLK_T_GET_LIFETIME
#define VIRTIO_BLK_T_GET_LIFETIME 10
#endif
