/*
 * A split virtqueue, device side: take requests off the avail ring, turn
 * their descriptor chains into iovecs, put completions on the used ring and
 * decide when the driver wants an interrupt. Transport-neutral: the rings
 * are pointers the transport already translated and validated, descriptor
 * addresses go through a struct virtio_memmap.
 *
 * Everything the driver wrote is hostile. A chain is walked at most `num`
 * descriptors (an indirect table: its length), every `next` and head is
 * bounds-checked, every buffer must lie in mapped memory (64-bit overflow
 * included), readable buffers must precede writable ones, zero-length
 * buffers, nested indirect tables and INDIRECT|NEXT are refused, and a head
 * may not be handed out twice. Any violation marks the queue broken
 * (q->broken, logged once): the caller stops using it and ends the device's
 * connection.
 *
 * Inflight tracking (vhost-user INFLIGHT_SHMFD, VDUSE reconnect log): when
 * q->infl points at a region, pops and pushes are recorded there in the
 * libvhost-user split layout, and vq_inflight_recover() rebuilds the queue
 * after the daemon died (see docs/transports/vhost-user-blk.md).
 *
 * Thread: one owner thread per queue.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "transports/virtio/virtio_defs.h"
#include "transports/virtio/virtio_mem.h"

/* ---- the inflight region (per queue), shared with the driver ---- */

struct vq_inflight_desc {
	uint8_t inflight; /* 1 while the head is popped and not yet pushed */
	uint8_t padding[5];
	uint16_t next;    /* unused for split rings */
	uint64_t counter; /* pop order */
};

struct vq_inflight {
	uint64_t features;
	uint16_t version;         /* 0: not initialised yet; 1: this layout */
	uint16_t desc_num;        /* ring size it was set up for */
	uint16_t last_batch_head; /* head of the push in progress */
	uint16_t used_idx;        /* used->idx after the last completed push */
	struct vq_inflight_desc desc[];
};

_Static_assert(sizeof(struct vq_inflight_desc) == 16, "inflight desc layout");
_Static_assert(sizeof(struct vq_inflight) == 16, "inflight header layout");

/* Bytes of inflight region one queue of `num` entries needs (64-byte aligned). */
static inline size_t vq_inflight_size(unsigned num)
{
	return ((size_t)16 + (size_t)16 * num + 63) & ~(size_t)63;
}

/* ---- the queue ---- */

struct vq {
	/* Set by the transport before use. */
	struct vring_desc *desc;
	uint16_t *avail; /* le16: flags, idx, ring[num], used_event */
	uint8_t *used;   /* le16 flags, le16 idx, elem[num], le16 avail_event */
	uint16_t num;    /* power of two */
	bool event_idx, indirect, notify_on_empty;
	const struct virtio_memmap *mem; /* descriptor addresses */
	struct vq_inflight *infl;        /* NULL: no tracking */
	const char *name;                /* for the one log line when broken */

	/* Private. */
	uint16_t last_avail; /* next avail entry to take */
	uint16_t used_idx;   /* what we published in used->idx */
	uint16_t signalled_used;
	bool signalled_valid;
	bool broken;
	uint16_t inuse;             /* popped, not pushed */
	uint64_t counter;           /* inflight pop counter */
	uint8_t *busy;              /* num flags: head handed out */
	struct vring_desc *ind_buf; /* gathers an indirect table split across regions */
};

struct vq_elem {
	uint16_t head;
	unsigned nout, nin;       /* iov[0, nout) readable, iov[nout, nout + nin) writable */
	uint64_t out_len, in_len; /* bytes, over the whole chain */
	uint8_t *last_in;         /* last writable byte of the chain (a status byte), or NULL */
	bool truncated;           /* more iovecs than room: the lists are incomplete */
};

/*
 * Set up: allocate private state for a ring of num entries. The rings and
 * the fields above must be filled in; last_avail is the starting index
 * (SET_VRING_BASE), used_idx is read from the ring. 0 or -ENOMEM.
 */
int vq_init(struct vq *q, uint16_t last_avail);
void vq_fini(struct vq *q);

/*
 * Take the next request. 1 with *e filled (iovecs in iov[0, max)), 0 when
 * the ring is empty, -EPROTO when the ring is malformed (queue now broken).
 */
int vq_pop(struct vq *q, struct vq_elem *e, struct iovec *iov, unsigned max);

/* Walk a specific head, already counted as popped (inflight recovery). */
int vq_map_head(struct vq *q, uint16_t head, struct vq_elem *e, struct iovec *iov, unsigned max);

/* Complete head with len bytes written into its writable buffers. */
void vq_push(struct vq *q, uint16_t head, uint32_t len);

/*
 * After pushes: does the driver want an interrupt now? (EVENT_IDX, or
 * NO_INTERRUPT, and NOTIFY_ON_EMPTY.) Records what was signalled.
 */
bool vq_should_notify(struct vq *q);

/*
 * The ring looks empty: ask the driver to kick for the next request
 * (publish avail_event with EVENT_IDX, clear NO_NOTIFY without), then check
 * again. True when more work arrived.
 */
bool vq_arm_kick(struct vq *q);

/*
 * The device polls the ring: no kicks wanted. Without EVENT_IDX this sets
 * NO_NOTIFY; with it nothing is needed (avail_event stays behind what the
 * driver publishes until vq_arm_kick).
 */
void vq_suppress_kicks(struct vq *q);

/* Entries waiting on the avail ring (0 when none or when broken). */
uint16_t vq_pending(struct vq *q);

/*
 * Mark the queue broken with a message (logged once with q->name). Always
 * returns -EPROTO.
 */
int vq_fail(struct vq *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Inflight recovery at queue start (needs q->infl, the rings and used_idx).
 * A fresh region (version 0) is initialised. Otherwise a torn push is
 * repaired, last_avail becomes used->idx + (heads in flight), and the heads
 * still in flight are returned in pop order in heads[] (room for num) to be
 * resubmitted. Returns how many, or -EPROTO.
 */
int vq_inflight_recover(struct vq *q, uint64_t features, uint16_t *heads);
