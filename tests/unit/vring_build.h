/*
 * Hand-built split rings for the virtio unit tests: a fake "guest memory"
 * buffer at guest-physical address GB_GPA, a descriptor table, avail and
 * used rings inside it, and helpers to write descriptors and publish heads
 * the way a driver would (little-endian).
 */
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "transports/virtio/virtio_defs.h"
#include "transports/virtio/virtio_mem.h"
#include "transports/virtio/vq.h"

#define GB_GPA   0x100000ull /* where guest memory starts */
#define GB_SIZE  (4u << 20)  /* 4 MiB of it */
#define GB_DESC  0x0000u     /* ring offsets inside it */
#define GB_AVAIL 0x8000u
#define GB_USED  0x10000u
#define GB_BUF   0x20000u /* buffers from here on */

struct gbuild {
	uint8_t *mem; /* GB_SIZE bytes */
	int fd;       /* memfd behind mem (gb_init_shared), or -1 */
	struct virtio_memmap *map;
	uint16_t num;
	uint16_t avail_idx; /* the driver's avail index */
	uint64_t next_buf;  /* bump allocator for buffers */
};

static inline void gb_init(struct gbuild *g, uint16_t num)
{
	g->fd = -1;
	g->mem = aligned_alloc(4096, GB_SIZE);
	memset(g->mem, 0, GB_SIZE);
	g->map = virtio_mem_new(4, NULL, NULL);
	virtio_mem_add(g->map, 4, GB_GPA, GB_SIZE, g->mem);
	g->num = num;
	g->avail_idx = 0;
	g->next_buf = GB_BUF;
}

/* Guest memory in a memfd, to share with a vhost-user backend. */
static inline int gb_init_shared(struct gbuild *g, uint16_t num)
{
	g->fd = memfd_create("test-guest", MFD_CLOEXEC);
	if (g->fd < 0 || ftruncate(g->fd, GB_SIZE) < 0)
		return -1;
	g->mem = mmap(NULL, GB_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);
	if (g->mem == MAP_FAILED)
		return -1;
	g->map = virtio_mem_new(4, NULL, NULL);
	virtio_mem_add(g->map, 4, GB_GPA, GB_SIZE, g->mem);
	g->num = num;
	g->avail_idx = 0;
	g->next_buf = GB_BUF;
	return 0;
}

static inline void gb_fini(struct gbuild *g)
{
	virtio_mem_put(g->map);
	if (g->fd >= 0) {
		munmap(g->mem, GB_SIZE);
		close(g->fd);
	} else {
		free(g->mem);
	}
	g->mem = NULL;
}

/* Point q at g's rings. */
static inline void gb_vq(struct gbuild *g, struct vq *q, uint64_t features)
{
	memset(q, 0, sizeof(*q));
	q->desc = (struct vring_desc *)(g->mem + GB_DESC);
	q->avail = (uint16_t *)(g->mem + GB_AVAIL);
	q->used = g->mem + GB_USED;
	q->num = g->num;
	q->mem = g->map;
	q->event_idx = features & VIRTIO_BIT(VIRTIO_RING_F_EVENT_IDX);
	q->indirect = features & VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC);
	q->notify_on_empty = features & VIRTIO_BIT(VIRTIO_F_NOTIFY_ON_EMPTY);
	q->name = "test";
}

/* A buffer of len bytes in guest memory; returns its guest-physical address. */
static inline uint64_t gb_alloc(struct gbuild *g, uint32_t len)
{
	uint64_t gpa = GB_GPA + g->next_buf;

	g->next_buf = (g->next_buf + len + 15) & ~15ull;
	return gpa;
}

static inline uint8_t *gb_ptr(struct gbuild *g, uint64_t gpa)
{
	return g->mem + (gpa - GB_GPA);
}

/* Write descriptor i of a table (the ring's when table is NULL). */
static inline void gb_desc_in(struct vring_desc *table, uint16_t i, uint64_t addr, uint32_t len,
			      uint16_t flags, uint16_t next)
{
	table[i].addr = htole64(addr);
	table[i].len = htole32(len);
	table[i].flags = htole16(flags);
	table[i].next = htole16(next);
}

static inline void gb_desc(struct gbuild *g, uint16_t i, uint64_t addr, uint32_t len,
			   uint16_t flags, uint16_t next)
{
	gb_desc_in((struct vring_desc *)(g->mem + GB_DESC), i, addr, len, flags, next);
}

/* Publish head on the avail ring. */
static inline void gb_publish(struct gbuild *g, uint16_t head)
{
	uint16_t *avail = (uint16_t *)(g->mem + GB_AVAIL);

	avail[2 + (g->avail_idx & (g->num - 1))] = htole16(head);
	g->avail_idx++;
	avail[1] = htole16(g->avail_idx);
}

static inline void gb_set_avail_idx(struct gbuild *g, uint16_t idx)
{
	((uint16_t *)(g->mem + GB_AVAIL))[1] = htole16(idx);
	g->avail_idx = idx;
}

static inline void gb_set_avail_flags(struct gbuild *g, uint16_t flags)
{
	((uint16_t *)(g->mem + GB_AVAIL))[0] = htole16(flags);
}

static inline void gb_set_used_event(struct gbuild *g, uint16_t ev)
{
	((uint16_t *)(g->mem + GB_AVAIL))[2 + g->num] = htole16(ev);
}

static inline uint16_t gb_used_idx(struct gbuild *g)
{
	return le16toh(*(uint16_t *)(g->mem + GB_USED + 2));
}

static inline void gb_used_elem(struct gbuild *g, uint16_t i, uint32_t *id, uint32_t *len)
{
	const uint8_t *e = g->mem + GB_USED + 4 + 8 * (i & (g->num - 1));

	*id = virtio_get32(e);
	*len = virtio_get32(e + 4);
}

static inline uint16_t gb_avail_event(struct gbuild *g)
{
	return le16toh(*(uint16_t *)(g->mem + GB_USED + 4 + 8 * (size_t)g->num));
}

/* A virtio-blk request header in a fresh buffer; returns its address. */
static inline uint64_t gb_blk_hdr(struct gbuild *g, uint32_t type, uint64_t sector)
{
	uint64_t gpa = gb_alloc(g, VIRTIO_BLK_HDR_SIZE);
	uint8_t *p = gb_ptr(g, gpa);

	virtio_put32(p, type);
	virtio_put32(p + 4, 0);
	virtio_put64(p + 8, sector);
	return gpa;
}
