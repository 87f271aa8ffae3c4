/* SPDX-License-Identifier: MIT */
/*
 * Private to the vu_client library (vu_client.c: connection, messages and
 * queue setup; vu_ring.c: the split-ring data path). Wire formats, object
 * layouts and small shared helpers.
 */
#pragma once

#include "vu_client.h"

#include <endian.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---- vhost-user wire format --------------------------------------------- */

/*
 * The vhost-user messages have no kernel header. This client keeps its own
 * copy, written from the vhost-user specification, on purpose: it is the
 * test oracle for the server's transports/vhost/vhost_proto.h, and a shared
 * header would let one misread number pass on both sides unnoticed.
 */

enum vu_req {
	VU_GET_FEATURES = 1,
	VU_SET_FEATURES = 2,
	VU_SET_OWNER = 3,
	VU_SET_MEM_TABLE = 5,
	VU_SET_VRING_NUM = 8,
	VU_SET_VRING_ADDR = 9,
	VU_SET_VRING_BASE = 10,
	VU_GET_VRING_BASE = 11,
	VU_SET_VRING_KICK = 12,
	VU_SET_VRING_CALL = 13,
	VU_GET_PROTOCOL_FEATURES = 15,
	VU_SET_PROTOCOL_FEATURES = 16,
	VU_GET_QUEUE_NUM = 17,
	VU_SET_VRING_ENABLE = 18,
	VU_GET_CONFIG = 24,
	VU_REQ_MAX_NAMED = 25,
};

#define VU_FLAG_VERSION      0x1u
#define VU_FLAG_VERSION_MASK 0x3u
#define VU_FLAG_REPLY        0x4u
#define VU_FLAG_NEED_REPLY   0x8u

#define VU_CONFIG_MAX 256
#define VU_HDR_SIZE   12u

struct vu_vring_state {
	uint32_t index;
	uint32_t num;
};

struct vu_vring_addr {
	uint32_t index;
	uint32_t flags;
	uint64_t desc;
	uint64_t used;
	uint64_t avail;
	uint64_t log;
};

struct vu_mem_region {
	uint64_t guest_phys_addr;
	uint64_t size;
	uint64_t userspace_addr;
	uint64_t mmap_offset;
};

struct vu_mem_table {
	uint32_t nregions;
	uint32_t padding;
	struct vu_mem_region regions[8];
};

struct vu_config_msg {
	uint32_t offset;
	uint32_t size;
	uint32_t flags;
	uint8_t data[VU_CONFIG_MAX];
};

struct vu_msg {
	uint32_t request;
	uint32_t flags;
	uint32_t size;
	union {
		uint64_t u64;
		struct vu_vring_state state;
		struct vu_vring_addr addr;
		struct vu_mem_table mem;
		struct vu_config_msg config;
	} p;
} __attribute__((packed));

_Static_assert(sizeof(struct vu_vring_addr) == 40, "vring_addr layout");
_Static_assert(sizeof(struct vu_mem_region) == 32, "mem region layout");
_Static_assert(offsetof(struct vu_msg, p) == VU_HDR_SIZE, "header layout");

/* ---- virtio split ring and virtio-blk ----------------------------------- */

/*
 * Ring and virtio-blk layouts are the kernel's (<linux/virtio_ring.h>,
 * <linux/virtio_blk.h>, included by vu_client.h): struct vring_desc,
 * struct vring_used_elem, struct virtio_blk_outhdr, struct
 * virtio_blk_discard_write_zeroes, VIRTIO_BLK_T_* and VIRTIO_BLK_S_*.
 */
#define VU_STATUS_SENTINEL 0xa5 /* not a valid status: "never written" */

/* Per-descriptor-head data the backend reads or writes, in shared memory. */
struct vu_slot {
	struct virtio_blk_outhdr hdr;
	struct virtio_blk_discard_write_zeroes seg;
	uint8_t id[VIRTIO_BLK_ID_BYTES];
	uint8_t status;
	uint8_t pad[64 - 16 - 16 - VIRTIO_BLK_ID_BYTES - 1];
};
_Static_assert(sizeof(struct vu_slot) == 64, "slot size");

#define VU_GPA_BASE                 0x100000000ULL /* 4 GiB: "guest physical" of mem[0] */
#define VU_SECTOR                   512ULL
#define VU_MAX_QUEUE_SIZE           32768u
#define VU_DEFAULT_REPLY_TIMEOUT_MS 15000

/* ---- objects ------------------------------------------------------------ */

struct vu_client {
	int sock;
	pthread_mutex_t lock; /* control messages, allocator, queue table */
	char *path;
	struct vu_client_opts opts;
	struct vu_client_info info;
	bool started;
	bool dead; /* the connection failed; refuse more */
	int memfd;
	uint8_t *mem;
	uint64_t mem_size;
	uint64_t mem_used;
	uint8_t *queue_busy; /* [max_queues] */
	unsigned int open_queues;
};

struct vu_track {
	void *cookie;
	void *id_dst;      /* GET_ID: copy the id here on completion */
	uint32_t in_bytes; /* device-writable bytes, status included */
	uint16_t ndesc;
	uint8_t op;
	uint8_t inflight;
};

struct vu_queue {
	struct vu_client *c;
	unsigned int index;
	unsigned int num;
	unsigned int flags;
	unsigned int spin_us; /* check the used ring this long before sleeping */
	bool event_idx;
	bool broken;
	int kickfd;
	int callfd;
	struct vring_desc *desc;
	uint16_t *avail;        /* flags, idx, ring[num], used_event */
	uint8_t *used;          /* flags, idx, elem[num], avail_event */
	struct vu_slot *slots;  /* [num], indexed by head descriptor */
	struct vu_track *track; /* [num], private */
	uint16_t *next_free;    /* [num], private free list / chain links */
	uint16_t free_head;
	unsigned int nfree;
	uint16_t avail_shadow; /* next avail idx we will publish */
	uint16_t avail_published;
	uint16_t last_used;
	unsigned int inflight;
	uint64_t seg_limit; /* bytes per data descriptor */
	unsigned int max_data_segs;
	struct vu_queue_stats st;
	char err[256];
};

/* Error reporting: the last control-plane error of the calling thread, and
 * per-queue messages (which also land in the thread's buffer). */
extern __thread char vu_tls_err[256];

__attribute__((format(printf, 1, 2))) void vu_set_err(const char *fmt, ...);

__attribute__((format(printf, 2, 3))) void vu_queue_set_err(struct vu_queue *q, const char *fmt,
							    ...);

/* ---- time --------------------------------------------------------------- */

static inline int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Remaining ms until deadline (-1: none), never negative. */
static inline int remaining_ms(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - now_ms();
	if (left < 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

static inline uint64_t to_gpa(const struct vu_client *c, const void *p)
{
	return VU_GPA_BASE + (uint64_t)((const uint8_t *)p - c->mem);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* Split-ring fields, little-endian in the shared memory. */
static inline volatile uint16_t *avail_flags(struct vu_queue *q)
{
	return &q->avail[0];
}
static inline volatile uint16_t *avail_idx(struct vu_queue *q)
{
	return &q->avail[1];
}
static inline volatile uint16_t *avail_ring(struct vu_queue *q, unsigned int i)
{
	return &q->avail[2 + i];
}
static inline volatile uint16_t *used_event(struct vu_queue *q)
{
	return &q->avail[2 + q->num];
}
static inline volatile uint16_t *used_flags(struct vu_queue *q)
{
	return (uint16_t *)(q->used + 0);
}
static inline volatile uint16_t *used_idx(struct vu_queue *q)
{
	return (uint16_t *)(q->used + 2);
}
static inline volatile struct vring_used_elem *used_elem(struct vu_queue *q, unsigned int i)
{
	return (struct vring_used_elem *)(q->used + 4 + 8u * i);
}
static inline volatile uint16_t *avail_event(struct vu_queue *q)
{
	return (uint16_t *)(q->used + 4 + 8u * q->num);
}
