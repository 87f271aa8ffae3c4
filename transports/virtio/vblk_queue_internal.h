/*
 * Private to vblk_queue.c (operations posted from the main thread, run on
 * the worker) and vblk_queue_io.c (the worker's data path: requests,
 * passes over the ring, polling, interrupts). Worker thread only.
 */
#pragma once

#include <ev.h>

#include "lib/coalesce.h"
#include "transports/virtio/vblk_queue.h"

struct vblk_queue {
	/* Set at creation; read-only after. */
	const struct vblk_dev *dev;
	struct gw_worker *w;
	unsigned index;
	char name[64];
	const struct vblk_queue_ops *ops;
	void *ops_arg;

	/* Worker-owned while running. */
	struct vq vq;
	ev_io kick_w;
	int kick_fd, call_fd;
	bool running, enabled, kick_on, stopping;
	bool need_notify, need_process, starved, broken_reported;
	bool poisoned;          /* the driver's memory shrank (lib/guard.h) */
	const char *broken_why; /* why it broke, for ops->broken (NULL: a malformed ring) */
	struct gw_deferred defer;
	unsigned inflight; /* requests submitted, not completed */
	unsigned nreqs;    /* requests allocated */
	struct vblk_req *free_reqs;
	struct virtio_memmap *mem;    /* current map */
	unsigned mem_inflight;        /* requests using it */
	struct vblk_retired *retired; /* older maps still used by requests */
	struct vblk_qmsg *stop_msg;   /* pending stop, answered once drained */
	uint16_t *heads;              /* recovery scratch */
	uint64_t resubmitted;         /* requests recovered from the inflight region */

	/* Adaptive polling. */
	ev_idle poll_w;
	bool poll_on;
	uint32_t poll_max_ns, poll_ns; /* limit, current window */
	uint64_t poll_deadline;        /* stop polling at (ns) */
	uint64_t idle_since;           /* when the ring went to sleep (0: it did not) */
	struct gw_hold hold;           /* interrupt moderation for a slow driver */
};

enum qop {
	QOP_START,
	QOP_STOP,
	QOP_ENABLE,
	QOP_SET_CALL,
	QOP_SET_KICK,
	QOP_SET_MEM,
	QOP_BASE
};

struct vblk_qmsg {
	struct vblk_queue *q;
	enum qop op;
	vblk_queue_cb cb;
	void *arg;
	int rc;
	unsigned value;
	int fd;
	bool on;
	struct vblk_queue_start s;
};

struct vblk_retired {
	struct vblk_retired *next;
	struct virtio_memmap *mem;
	unsigned inflight;
};

/* vblk_queue_io.c */
struct vblk_req *vblkq_req_get(struct vblk_queue *q);
void vblkq_req_put(struct vblk_queue *q, struct vblk_req *r);
void vblkq_kick_watch(struct vblk_queue *q, bool on);
void vblkq_poll_watch(struct vblk_queue *q, bool on);
/*
 * Stop taking requests and tell the main thread (once), with why (a static
 * string; NULL: the ring was malformed, vq_fail said how) in q->broken_why.
 */
void vblkq_mark_broken(struct vblk_queue *q, const char *why);
/* Run a mapped chain; false when the queue broke. */
bool vblkq_req_run(struct vblk_queue *q, struct vblk_req *r);
/* Drain the ring, then poll or re-arm the kick. */
void vblkq_process(struct vblk_queue *q);
/* Send the interrupt a completion asked for, if the driver wants it. */
void vblkq_notify_now(struct vblk_queue *q);
void vblkq_signal_driver(struct vblk_queue *q);
void vblkq_deferred(struct gw_deferred *d);
void vblkq_kick_cb(struct ev_loop *loop, ev_io *w, int revents);
void vblkq_poll_cb(struct ev_loop *loop, ev_idle *w, int revents);

/* vblk_queue.c */
/* Every request of a stopping queue completed: finish the stop. */
void vblkq_finish_stop(struct vblk_queue *q);
