/*
 * Private to vblk_queue.c (operations posted from the main thread, run on
 * the worker) and vblk_queue_io.c (the worker's data path: requests,
 * passes over the ring, polling, interrupts). Worker thread only.
 */
#pragma once

#include "transports/virtio/vblk_queue.h"

enum qop {
	QOP_START,
	QOP_STOP,
	QOP_ENABLE,
	QOP_SET_CALL,
	QOP_SET_KICK,
	QOP_SET_MEM
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
