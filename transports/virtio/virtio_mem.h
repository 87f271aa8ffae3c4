/*
 * Address translation for virtio devices: a driver's addresses (vhost-user
 * guest-physical or QEMU-virtual addresses, VDUSE IOVAs) to pointers in this
 * process.
 *
 * A struct virtio_memmap is an immutable, reference-counted snapshot: a
 * sorted list of non-overlapping regions, each [addr, addr + len) mapped at
 * `host`. A transport builds a new snapshot whenever its table changes
 * (vhost-user SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG, VDUSE UPDATE_IOTLB)
 * and hands it to its queues (vblk_queue_set_mem); queues keep the old one
 * until every request that used it has completed, so a mapping is never
 * unmapped under a request. When the last reference goes, `release` runs
 * (and unmaps whatever the transport mapped).
 *
 *   vhost-user: two maps over the same mmaps, one keyed by guest-physical
 *               address (descriptors), one by QEMU's virtual address (rings).
 *   VDUSE:      one map keyed by IOVA (rings and descriptors), built from
 *               IOTLB_GET_FD mmaps.
 *
 * Every lookup checks the whole range, 64-bit overflow included. Thread: any
 * (a snapshot never changes); references are atomic.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct virtio_region {
	uint64_t addr; /* first address of the region, in the map's address space */
	uint64_t len;  /* bytes, >= 1; addr + len - 1 does not overflow */
	uint8_t *host; /* where addr is mapped in this process */
};

struct virtio_memmap {
	atomic_uint refs;
	unsigned n;
	void (*release)(struct virtio_memmap *m); /* last reference gone (any thread) */
	void *owner;                              /* for release */
	struct virtio_region r[];                 /* n entries, sorted by addr */
};

/*
 * A map with room for n regions, one reference, release() called when the
 * last reference goes (NULL: just free). Fill r[] with virtio_mem_add.
 */
struct virtio_memmap *virtio_mem_new(unsigned cap, void (*release)(struct virtio_memmap *m),
				     void *owner);
/*
 * Insert a region, keeping r[] sorted. -EINVAL for an empty region or one
 * whose end overflows, -EEXIST when it overlaps another, -ENOSPC when full.
 * Only while building (before the map is shared).
 */
int virtio_mem_add(struct virtio_memmap *m, unsigned cap, uint64_t addr, uint64_t len, void *host);

static inline struct virtio_memmap *virtio_mem_get(struct virtio_memmap *m)
{
	if (m)
		atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
	return m;
}

void virtio_mem_put(struct virtio_memmap *m);

/* The region holding addr, or NULL. */
const struct virtio_region *virtio_mem_find(const struct virtio_memmap *m, uint64_t addr);

/*
 * [addr, addr + len) as one contiguous pointer, or NULL when it is not
 * wholly inside one region (or len is 0, or the range wraps).
 */
void *virtio_mem_ptr(const struct virtio_memmap *m, uint64_t addr, uint64_t len);

/*
 * [addr, addr + len) as iovecs, split where it crosses from one region into
 * the next adjacent one. Appends to iov[*n...max). 0, -EFAULT when any byte
 * is unmapped (or the range wraps, or len is 0), -ENOBUFS when more than
 * max entries would be needed.
 */
int virtio_mem_iov(const struct virtio_memmap *m, uint64_t addr, uint64_t len, struct iovec *iov,
		   unsigned *n, unsigned max);

/*
 * Whether any region of m was poisoned by the SIGBUS guard (lib/guard.h):
 * its memory was shrunk by the process that shared it and now reads as
 * zeros. Any thread.
 */
bool virtio_mem_poisoned(const struct virtio_memmap *m);
