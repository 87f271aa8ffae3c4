/* SPDX-License-Identifier: MIT */
/*
 * vu_client: a small userspace vhost-user-blk frontend (the "driver" side).
 *
 * It connects to a vhost-user-blk backend over its unix socket, negotiates
 * features, shares one memfd region that holds the virtqueue rings and the
 * I/O buffers, and submits virtio-blk requests on split virtqueues.
 *
 * Threading:
 *   - One struct vu_client is one connection. Its control-plane functions
 *     (vu_client_start, vu_queue_open, vu_queue_close, vu_client_alloc) take
 *     an internal lock, so several threads may share a connection.
 *   - A struct vu_queue belongs to one thread: vu_queue_submit, _kick, _reap
 *     and _wait must not be called concurrently on the same queue.
 *
 * Errors are negative errno values. A human-readable reason for the last
 * failure is available from vu_client_errmsg() (control plane) or
 * vu_queue_errmsg() (data path). A server that violates the protocol (bad
 * used ids, impossible lengths, missing status byte, short or malformed
 * replies) yields -EPROTO and a message naming the violation; after a data
 * path protocol error the queue is marked broken and refuses further I/O.
 */
#pragma once

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * virtio-blk and virtio ring feature bits: the kernel's numbers under the
 * client's names (one source per wire format).
 */
#define VU_BLK_F_SIZE_MAX      VIRTIO_BLK_F_SIZE_MAX
#define VU_BLK_F_SEG_MAX       VIRTIO_BLK_F_SEG_MAX
#define VU_BLK_F_GEOMETRY      VIRTIO_BLK_F_GEOMETRY
#define VU_BLK_F_RO            VIRTIO_BLK_F_RO
#define VU_BLK_F_BLK_SIZE      VIRTIO_BLK_F_BLK_SIZE
#define VU_BLK_F_FLUSH         VIRTIO_BLK_F_FLUSH
#define VU_BLK_F_TOPOLOGY      VIRTIO_BLK_F_TOPOLOGY
#define VU_BLK_F_CONFIG_WCE    VIRTIO_BLK_F_CONFIG_WCE
#define VU_BLK_F_MQ            VIRTIO_BLK_F_MQ
#define VU_BLK_F_DISCARD       VIRTIO_BLK_F_DISCARD
#define VU_BLK_F_WRITE_ZEROES  VIRTIO_BLK_F_WRITE_ZEROES
#define VU_F_NOTIFY_ON_EMPTY   VIRTIO_F_NOTIFY_ON_EMPTY
#define VU_F_INDIRECT_DESC     VIRTIO_RING_F_INDIRECT_DESC
#define VU_F_EVENT_IDX         VIRTIO_RING_F_EVENT_IDX
#define VU_F_PROTOCOL_FEATURES 30 /* vhost-user specific: no kernel header */
#define VU_F_VERSION_1         VIRTIO_F_VERSION_1
#define VU_F_ACCESS_PLATFORM   VIRTIO_F_ACCESS_PLATFORM
#define VU_F_RING_PACKED       VIRTIO_F_RING_PACKED

/* vhost-user protocol feature bits. */
#define VU_PROTO_F_MQ        0
#define VU_PROTO_F_REPLY_ACK 3
#define VU_PROTO_F_CONFIG    9

#define VU_BIT(b) (1ULL << (b))

/*
 * The virtio features this frontend can drive. Anything else the backend
 * offers is left off. VERSION_1 is required; the rest are taken if offered.
 * INDIRECT_DESC, RING_PACKED and ACCESS_PLATFORM are never negotiated.
 */
#define VU_BLK_SUPPORTED_FEATURES                                                            \
	(VU_BIT(VU_BLK_F_SIZE_MAX) | VU_BIT(VU_BLK_F_SEG_MAX) | VU_BIT(VU_BLK_F_GEOMETRY) |  \
	 VU_BIT(VU_BLK_F_RO) | VU_BIT(VU_BLK_F_BLK_SIZE) | VU_BIT(VU_BLK_F_FLUSH) |          \
	 VU_BIT(VU_BLK_F_TOPOLOGY) | VU_BIT(VU_BLK_F_CONFIG_WCE) | VU_BIT(VU_BLK_F_MQ) |     \
	 VU_BIT(VU_BLK_F_DISCARD) | VU_BIT(VU_BLK_F_WRITE_ZEROES) | VU_BIT(VU_F_EVENT_IDX) | \
	 VU_BIT(VU_F_VERSION_1))

/* The vhost-user protocol features this frontend can use. */
#define VU_SUPPORTED_PROTOCOL_FEATURES \
	(VU_BIT(VU_PROTO_F_MQ) | VU_BIT(VU_PROTO_F_REPLY_ACK) | VU_BIT(VU_PROTO_F_CONFIG))

/* virtio-blk config space as read with GET_CONFIG, in host byte order. */
struct vu_blk_config {
	uint64_t capacity; /* in 512-byte sectors */
	uint32_t size_max;
	uint32_t seg_max;
	uint16_t cylinders;
	uint8_t heads;
	uint8_t sectors;
	uint32_t blk_size;
	uint8_t physical_block_exp;
	uint8_t alignment_offset;
	uint16_t min_io_size;
	uint32_t opt_io_size;
	uint8_t writeback;
	uint16_t num_queues;
	uint32_t max_discard_sectors;
	uint32_t max_discard_seg;
	uint32_t discard_sector_alignment;
	uint32_t max_write_zeroes_sectors;
	uint32_t max_write_zeroes_seg;
	uint8_t write_zeroes_may_unmap;
};

/* What was learned and negotiated at connect time. */
struct vu_client_info {
	uint64_t offered_features; /* GET_FEATURES */
	uint64_t features;         /* what SET_FEATURES will send/sent */
	uint64_t offered_protocol; /* GET_PROTOCOL_FEATURES */
	uint64_t protocol;         /* SET_PROTOCOL_FEATURES */
	unsigned int max_queues;   /* GET_QUEUE_NUM, 1 without MQ */
	unsigned int config_len;   /* bytes returned by GET_CONFIG */
	struct vu_blk_config cfg;
};

struct vu_client_opts {
	/* Virtio features to ask for (masked with the offer and with
	 * VU_BLK_SUPPORTED_FEATURES); 0 means VU_BLK_SUPPORTED_FEATURES. */
	uint64_t want_features;
	/* Bytes to ask for with GET_CONFIG; 0 means 60 (through
	 * write_zeroes_may_unmap, what QEMU 7.2 knows). At most 96. */
	unsigned int config_len;
	/* Keep retrying connect() on ENOENT/ECONNREFUSED this long. */
	unsigned int connect_timeout_ms;
	/* Log every vhost-user message to stderr. */
	bool trace;
	/* Leave the shared memfd unsealed, so that vu_client_shrink_memory
	 * can truncate it (tests of a frontend that misbehaves). */
	bool unsealed;
};

struct vu_client;
struct vu_queue;

/*
 * Connect and run the handshake: GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
 * GET_QUEUE_NUM, SET_OWNER, GET_CONFIG. Nothing is started yet.
 * opts may be NULL. On failure *out is NULL and, if errbuf is not NULL, the
 * reason is copied there.
 */
int vu_client_connect(const char *socket_path, const struct vu_client_opts *opts,
		      struct vu_client **out, char *errbuf, size_t errlen);

const struct vu_client_info *vu_client_info(const struct vu_client *c);
const char *vu_client_errmsg(const struct vu_client *c);

/* Re-read the config space (GET_CONFIG) into the info block. */
int vu_client_refresh_config(struct vu_client *c);

/*
 * Negotiate features (SET_FEATURES), create the shared memfd of mem_size
 * bytes (rounded up to the page size) and register it with SET_MEM_TABLE.
 * Must be called once, before vu_queue_open and vu_client_alloc.
 */
int vu_client_start(struct vu_client *c, uint64_t mem_size);
bool vu_client_started(const struct vu_client *c);

/*
 * Carve `size` bytes (aligned to `align`, a power of two) out of the shared
 * memory. Thread-safe. Returns NULL when the region is exhausted. Memory is
 * never returned to the region before vu_client_close.
 */
void *vu_client_alloc(struct vu_client *c, size_t size, size_t align);
/* Bytes still free in the shared region. */
uint64_t vu_client_mem_free(struct vu_client *c);
/* Whether [p, p+len) lies within the shared region. */
bool vu_client_mem_contains(const struct vu_client *c, const void *p, size_t len);

/*
 * Misbehave on purpose: truncate the shared memfd at `from` (a page-aligned
 * pointer inside the region), as a hostile frontend could while the
 * backend has it mapped. Needs opts.unsealed. Nothing at or past `from`
 * may be touched afterwards, in this process either. 0 or -errno.
 */
int vu_client_shrink_memory(struct vu_client *c, const void *from);

/* Bytes of shared memory vu_queue_open needs for a queue of `size` entries. */
size_t vu_queue_mem_size(unsigned int size);

enum vu_queue_flags {
	VU_QUEUE_POLL = 1 << 0, /* never ask for interrupts (call eventfd) */
};

/*
 * Set up virtqueue `index` with `size` entries (a power of two, 2..32768)
 * and enable it: SET_VRING_NUM/BASE/ADDR/CALL/KICK and SET_VRING_ENABLE(1).
 * Its rings and per-request headers are allocated from the shared memory.
 */
int vu_queue_open(struct vu_client *c, unsigned int index, unsigned int size, unsigned int flags,
		  struct vu_queue **out);

/*
 * In interrupt mode, look at the used ring for up to `us` microseconds
 * before asking for an interrupt and sleeping (0, the default: sleep at
 * once). A bounded spin is what a KVM guest's wait costs the host (the
 * vCPU thread halt-polls before it really sleeps); without one, whether
 * a fast backend's answer lands before the client sleeps is a race.
 */
void vu_queue_set_spin(struct vu_queue *q, unsigned int us);

/*
 * Stop the queue: SET_VRING_ENABLE(0) then GET_VRING_BASE, and check that
 * the backend consumed everything that was submitted. Frees the queue.
 * Returns 0 or a negative errno (the queue is freed in any case).
 */
int vu_queue_close(struct vu_queue *q);

enum vu_blk_op {
	VU_BLK_READ,         /* VIRTIO_BLK_T_IN */
	VU_BLK_WRITE,        /* VIRTIO_BLK_T_OUT */
	VU_BLK_FLUSH,        /* VIRTIO_BLK_T_FLUSH */
	VU_BLK_GET_ID,       /* VIRTIO_BLK_T_GET_ID, buf of >= 20 bytes */
	VU_BLK_DISCARD,      /* VIRTIO_BLK_T_DISCARD, one segment */
	VU_BLK_WRITE_ZEROES, /* VIRTIO_BLK_T_WRITE_ZEROES, one segment */
};

enum vu_req_flags {
	VU_REQ_UNMAP = 1 << 0,   /* WRITE_ZEROES: allow deallocation */
	VU_REQ_NOCHECK = 1 << 1, /* skip client-side range/feature checks
				  * (to test how a server handles bad input) */
};

struct vu_blk_req {
	enum vu_blk_op op;
	unsigned int flags; /* enum vu_req_flags */
	uint64_t offset;    /* bytes; a multiple of 512 */
	uint64_t len;       /* bytes; a multiple of 512 (GET_ID: 20) */
	void *buf;          /* READ/WRITE/GET_ID: inside the shared memory */
	void *cookie;       /* returned in the completion */
};

struct vu_blk_cpl {
	void *cookie;
	int result;        /* 0, -EIO (IOERR), -EOPNOTSUPP (UNSUPP) */
	uint8_t status;    /* raw virtio-blk status byte */
	uint32_t used_len; /* len the backend put in the used element */
};

/*
 * Queue one request on the avail ring. It is not visible to the backend
 * until vu_queue_kick(). Returns 0, -EAGAIN when the ring has no room,
 * -EINVAL for a request the client refuses (unaligned, out of range, a
 * feature not negotiated, buffer outside the shared memory), -EPIPE/-EPROTO
 * if the queue is broken.
 */
int vu_queue_submit(struct vu_queue *q, const struct vu_blk_req *req);

/* Publish queued requests and notify the backend if it wants a kick. */
int vu_queue_kick(struct vu_queue *q);

/*
 * Collect up to `max` completions without blocking. Returns the number
 * collected, or -EPROTO when the backend broke the ring protocol.
 */
int vu_queue_reap(struct vu_queue *q, struct vu_blk_cpl *cpl, unsigned int max);

/*
 * Block until the used ring has something to reap, the timeout (ms, -1 for
 * none) expires (-ETIMEDOUT), or the connection is lost (-EPIPE). In poll
 * mode this spins on the used ring. Returns 0 when there is work.
 */
int vu_queue_wait(struct vu_queue *q, int timeout_ms);

/* Number of requests submitted and not yet reaped. */
unsigned int vu_queue_inflight(const struct vu_queue *q);
/* Number of requests the ring can still take right now (at one data
 * segment each). */
unsigned int vu_queue_room(const struct vu_queue *q);
unsigned int vu_queue_index(const struct vu_queue *q);
const char *vu_queue_errmsg(const struct vu_queue *q);

struct vu_queue_stats {
	uint64_t submitted, completed, kicks, kicks_suppressed;
	uint64_t waits, wakeups, len_mismatch;
	uint64_t spins, spin_hits; /* bounded spins before sleeping, and those that ended with an
				      answer */
};
void vu_queue_get_stats(const struct vu_queue *q, struct vu_queue_stats *st);

/* Close the connection. All queues must have been closed. */
void vu_client_close(struct vu_client *c);

/* Helpers for printing. */
const char *vu_blk_feature_name(unsigned int bit);
const char *vu_protocol_feature_name(unsigned int bit);

#ifdef __cplusplus
}
#endif
