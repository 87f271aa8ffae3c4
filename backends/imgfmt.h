/*
 * Image container formats, told apart by their headers, so that a qcow2 (or
 * vmdk, LUKS...) file is never served as if it were the disk itself: a guest's
 * first write to block 0 would destroy the container's metadata.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* How many bytes of the start of an image the detector looks at. */
#define GW_IMGFMT_HEAD 512
/* How many bytes of the end (a fixed VHD has its only footer there). */
#define GW_IMGFMT_TAIL 512

/*
 * The container format whose header head[0..hlen) (the image's first bytes)
 * or tail[0..tlen) (its last bytes; NULL when unknown) carries, by QEMU's
 * name for it: "qcow2", "qcow", "vmdk", "vhdx", "vdi", "vpc", "qed", "luks".
 * NULL when none: the image is raw as far as the header tells.
 */
const char *gw_imgfmt_detect(const uint8_t *head, size_t hlen, const uint8_t *tail, size_t tlen);

/*
 * Read the start and the end of an open image of `size` bytes (a plain
 * descriptor: not one opened with O_DIRECT) and detect. 0 with *fmt set
 * (NULL: raw), or -errno.
 */
int gw_imgfmt_detect_fd(int fd, uint64_t size, const char **fmt);
