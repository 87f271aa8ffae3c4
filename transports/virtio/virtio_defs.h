/*
 * virtio constants and wire layouts shared by the vhost-user-blk and VDUSE
 * transports: split-ring structures, feature bits, virtio-blk requests and
 * config space. Everything on the ring and in config space is little-endian
 * (VERSION_1); use the virtio_le* helpers.
 */
#pragma once

#include <endian.h>
#include <stdint.h>

/* ---- feature bits ---- */

#define VIRTIO_F_NOTIFY_ON_EMPTY 24
#define VIRTIO_F_INDIRECT_DESC   28
#define VIRTIO_F_EVENT_IDX       29
#define VIRTIO_F_VERSION_1       32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_F_RING_PACKED     34

#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_GEOMETRY     4
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_CONFIG_WCE   11
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BIT(b) (1ull << (b))

/* ---- split ring ---- */

#define VRING_DESC_F_NEXT     1
#define VRING_DESC_F_WRITE    2
#define VRING_DESC_F_INDIRECT 4

#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY     1

#define VQ_MAX_SIZE     32768u /* the spec's largest split ring */
#define VQ_MAX_INDIRECT 1024u  /* descriptors in one indirect table, at most */

struct vring_desc {
	uint64_t addr;  /* le */
	uint32_t len;   /* le */
	uint16_t flags; /* le */
	uint16_t next;  /* le */
};

struct vring_used_elem {
	uint32_t id;  /* le */
	uint32_t len; /* le */
};

/*
 * Ring sizes in bytes for num entries (the avail ring's used_event and the
 * used ring's avail_event included; they exist whether or not EVENT_IDX is
 * negotiated and cost nothing to map).
 */
static inline uint64_t vring_desc_bytes(unsigned num)
{
	return 16ull * num;
}

static inline uint64_t vring_avail_bytes(unsigned num)
{
	return 6ull + 2ull * num;
}

static inline uint64_t vring_used_bytes(unsigned num)
{
	return 6ull + 8ull * num;
}

/* ---- virtio-blk ---- */

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_GET_LIFETIME 10
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_T_SECURE_ERASE 14
#define VIRTIO_BLK_T_BARRIER      0x80000000u /* legacy; masked off */

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_ID_BYTES   20
#define VIRTIO_BLK_SECTOR     512u
#define VIRTIO_BLK_WZ_F_UNMAP 1u

#define VIRTIO_BLK_HDR_SIZE 16 /* le32 type, le32 ioprio, le64 sector */
#define VIRTIO_BLK_SEG_SIZE 16 /* le64 sector, le32 num_sectors, le32 flags */

/* Config space offsets (virtio 1.2, 5.2.4), 96 bytes in all. */
#define VBLK_CFG_CAPACITY            0  /* le64, 512-byte sectors */
#define VBLK_CFG_SIZE_MAX            8  /* le32 */
#define VBLK_CFG_SEG_MAX             12 /* le32 */
#define VBLK_CFG_GEOMETRY            16 /* le16 cylinders, u8 heads, u8 sectors */
#define VBLK_CFG_BLK_SIZE            20 /* le32 */
#define VBLK_CFG_PHYS_BLOCK_EXP      24 /* u8 */
#define VBLK_CFG_ALIGNMENT_OFFSET    25 /* u8 */
#define VBLK_CFG_MIN_IO_SIZE         26 /* le16, blk_size units */
#define VBLK_CFG_OPT_IO_SIZE         28 /* le32, blk_size units */
#define VBLK_CFG_WRITEBACK           32 /* u8 */
#define VBLK_CFG_NUM_QUEUES          34 /* le16 */
#define VBLK_CFG_MAX_DISCARD_SECTORS 36 /* le32 */
#define VBLK_CFG_MAX_DISCARD_SEG     40 /* le32 */
#define VBLK_CFG_DISCARD_ALIGNMENT   44 /* le32, sectors */
#define VBLK_CFG_MAX_WZ_SECTORS      48 /* le32 */
#define VBLK_CFG_MAX_WZ_SEG          52 /* le32 */
#define VBLK_CFG_WZ_MAY_UNMAP        56 /* u8 */
#define VBLK_CONFIG_SIZE             96

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
