/*
 * virtio constants and wire layouts shared by the vhost-user-blk and VDUSE
 * transports: split-ring structures, feature bits, virtio-blk requests and
 * config space. Everything on the ring and in config space is little-endian
 * (VERSION_1); use the virtio_le* helpers.
 */
#pragma once

#include <endian.h>
#include <stdint.h>

/*
 * Wire layouts and constants come from the kernel's UAPI headers (one source
 * per wire format); what Debian 12's 6.1 headers lack is in lib/kernel_defs.h.
 * The kernel's struct vring_desc (__virtio64 addr, __virtio32 len,
 * __virtio16 flags, next) and struct vring_used_elem are used as they are.
 * Feature bits: VIRTIO_F_* (virtio_config.h), VIRTIO_RING_F_* (virtio_ring.h),
 * VIRTIO_BLK_F_* (virtio_blk.h).
 */
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <stddef.h>

#include "lib/kernel_defs.h"

#define VIRTIO_BIT(b) (1ull << (b))

/* ---- split ring ---- */

#define VQ_MAX_SIZE     32768u /* the spec's largest split ring */
#define VQ_MAX_INDIRECT 1024u  /* descriptors in one indirect table, at most */

_Static_assert(sizeof(struct vring_desc) == 16, "vring_desc layout");
_Static_assert(sizeof(struct vring_used_elem) == 8, "vring_used_elem layout");

/*
 * Ring sizes in bytes for num entries (the avail ring's used_event and the
 * used ring's avail_event included; they exist whether or not EVENT_IDX is
 * negotiated and cost nothing to map).
 */
static inline uint64_t vring_desc_bytes(unsigned num)
{
	return (uint64_t)sizeof(struct vring_desc) * num;
}

static inline uint64_t vring_avail_bytes(unsigned num)
{
	return 3ull * sizeof(__virtio16) + (uint64_t)sizeof(__virtio16) * num;
}

static inline uint64_t vring_used_bytes(unsigned num)
{
	return 3ull * sizeof(__virtio16) + (uint64_t)sizeof(struct vring_used_elem) * num;
}

/* ---- virtio-blk ---- */

#define VIRTIO_BLK_SECTOR   512u /* the unit of sector numbers (virtio 1.2, 5.2.6) */
#define VIRTIO_BLK_HDR_SIZE sizeof(struct virtio_blk_outhdr)
#define VIRTIO_BLK_SEG_SIZE sizeof(struct virtio_blk_discard_write_zeroes)

_Static_assert(sizeof(struct virtio_blk_outhdr) == 16, "virtio_blk_outhdr layout");
_Static_assert(sizeof(struct virtio_blk_discard_write_zeroes) == 16, "discard segment layout");

/* Config space offsets, from the kernel's struct virtio_blk_config. */
#define VBLK_CFG(field) offsetof(struct virtio_blk_config, field)

#define VBLK_CFG_CAPACITY            VBLK_CFG(capacity)
#define VBLK_CFG_SIZE_MAX            VBLK_CFG(size_max)
#define VBLK_CFG_SEG_MAX             VBLK_CFG(seg_max)
#define VBLK_CFG_GEOMETRY            VBLK_CFG(geometry)
#define VBLK_CFG_BLK_SIZE            VBLK_CFG(blk_size)
#define VBLK_CFG_PHYS_BLOCK_EXP      VBLK_CFG(physical_block_exp)
#define VBLK_CFG_ALIGNMENT_OFFSET    VBLK_CFG(alignment_offset)
#define VBLK_CFG_MIN_IO_SIZE         VBLK_CFG(min_io_size)
#define VBLK_CFG_OPT_IO_SIZE         VBLK_CFG(opt_io_size)
#define VBLK_CFG_WRITEBACK           VBLK_CFG(wce)
#define VBLK_CFG_NUM_QUEUES          VBLK_CFG(num_queues)
#define VBLK_CFG_MAX_DISCARD_SECTORS VBLK_CFG(max_discard_sectors)
#define VBLK_CFG_MAX_DISCARD_SEG     VBLK_CFG(max_discard_seg)
#define VBLK_CFG_DISCARD_ALIGNMENT   VBLK_CFG(discard_sector_alignment)
#define VBLK_CFG_MAX_WZ_SECTORS      VBLK_CFG(max_write_zeroes_sectors)
#define VBLK_CFG_MAX_WZ_SEG          VBLK_CFG(max_write_zeroes_seg)
#define VBLK_CFG_WZ_MAY_UNMAP        VBLK_CFG(write_zeroes_may_unmap)
/*
 * The whole config space a driver may read: the kernel's struct reaches
 * 96 bytes with the zoned fields of 6.3; Debian 12's 6.1 struct is shorter.
 */
#define VBLK_CONFIG_SIZE             96
_Static_assert(sizeof(struct virtio_blk_config) <= VBLK_CONFIG_SIZE, "virtio_blk_config size");

/* ---- little-endian helpers ---- */

static inline void virtio_put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	__builtin_memcpy(p, &v, 2);
}

static inline void virtio_put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	__builtin_memcpy(p, &v, 4);
}

static inline void virtio_put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	__builtin_memcpy(p, &v, 8);
}

static inline uint16_t virtio_get16(const uint8_t *p)
{
	uint16_t v;

	__builtin_memcpy(&v, p, 2);
	return le16toh(v);
}

static inline uint32_t virtio_get32(const uint8_t *p)
{
	uint32_t v;

	__builtin_memcpy(&v, p, 4);
	return le32toh(v);
}

static inline uint64_t virtio_get64(const uint8_t *p)
{
	uint64_t v;

	__builtin_memcpy(&v, p, 8);
	return le64toh(v);
}
