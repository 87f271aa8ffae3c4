/*
 * A running virtio-blk queue on a worker thread: the kick eventfd watched on
 * the worker's loop, requests popped, checked and submitted through
 * gw_export_submit() on the worker's io_uring, completions pushed on the
 * same worker, and one interrupt per loop iteration at most (EVENT_IDX /
 * NO_INTERRUPT / NOTIFY_ON_EMPTY decide whether it is sent at all).
 *
 * Adaptive polling: a busy queue keeps polling its ring for a short window
 * after it runs dry, with kicks suppressed, instead of sleeping in epoll and
 * being woken by the next kick (a sleep and a wake-up cost far more than a
 * request). The window grows while requests keep arriving within it and
 * shrinks when it expires empty; an idle queue never polls. While polling,
 * the worker's loop keeps running (an ev_idle watcher): other queues,
 * connections and io_uring completions are served in between.
 *
 * Transports (vhost-user-blk, VDUSE) drive a queue from the main thread:
 * every vblk_queue_* call below posts the work to the queue's worker and
 * reports back on the main thread through cb(arg, rc, value). A transport
 * issues one call at a time per queue and waits for its callback.
 *
 * Lifetime: new -> (start -> [enable|set_call|set_kick|set_mem]* -> stop)* -> free.
 * stop finishes every request in flight first (they complete normally and
 * are pushed to the used ring), so nothing the driver handed over is lost,
 * then reports the next avail index.
 *
 * A malformed ring stops the queue at once (no more requests are taken) and
 * calls ops->broken on the main thread; the transport then ends its
 * connection. Other queues and exports are not touched.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "lib/worker.h"
#include "transports/virtio/virtio_blk.h"
#include "transports/virtio/vq.h"

struct vblk_queue;

/* Reports from the worker, on the main thread. */
struct vblk_queue_ops {
	/* The queue stopped for good (already logged; vblk_queue_broken_why() says why). Optional.
	 */
	void (*broken)(struct vblk_queue *q, void *arg);
	/*
	 * Optional: send an interrupt another way than writing 1 to call_fd
	 * (VDUSE: VQ_INJECT_IRQ). Runs on the worker.
	 */
	void (*notify)(struct vblk_queue *q, void *arg);
};

/* Callback of an asynchronous operation: 0 or -errno, plus a value (stop: last avail). */
typedef void (*vblk_queue_cb)(void *arg, int rc, unsigned value);

struct vblk_queue_start {
	uint16_t num;            /* ring size, a power of two */
	uint16_t last_avail;     /* where to start (ignored when inflight recovery applies) */
	uint64_t features;       /* negotiated virtio features */
	struct vring_desc *desc; /* rings, translated and checked by the transport */
	uint16_t *avail;
	uint8_t *used;
	struct virtio_memmap *mem; /* descriptor translation; the queue takes a reference */
	int kick_fd;               /* eventfd; the queue owns it from now on (closed at stop) */
	int call_fd;               /* eventfd or -1; owned likewise */
	bool enabled;              /* take requests from the start */
	struct vq_inflight *infl;  /* inflight region of this queue, or NULL */
	uint32_t poll_max_ns;      /* longest polling window, 0: never poll */
	uint32_t hold_ns;          /* quiet gap for holding signals (gw_hold), 0: never hold */
};

/*
 * The queue itself is private to the core (vblk_queue_internal.h): a front
 * door reads what it needs through the accessors below and never touches
 * the worker-owned state.
 */

/* The index given at creation. Any thread. */
unsigned vblk_queue_index(const struct vblk_queue *q);
/*
 * Why the queue broke (a static string, valid in ops->broken and after), or
 * NULL when the driver's ring was malformed (the core logged how). Main thread.
 */
const char *vblk_queue_broken_why(const struct vblk_queue *q);
/* Requests recovered from the inflight region at the last start. Main thread, not running. */
uint64_t vblk_queue_resubmitted(const struct vblk_queue *q);

/* Main thread. The queue runs on w (its load is the caller's business). */
struct vblk_queue *vblk_queue_new(const struct vblk_dev *dev, struct gw_worker *w, unsigned index,
				  const char *name, const struct vblk_queue_ops *ops,
				  void *ops_arg);
/* Main thread, only while the queue is not running. */
void vblk_queue_free(struct vblk_queue *q);

/*
 * Start the ring (inflight recovery and resubmission first, when s->infl is
 * set, then the first pass over the ring and an interrupt, in case the
 * driver waits for one it missed). On failure the fds in s are closed.
 */
int vblk_queue_start(struct vblk_queue *q, const struct vblk_queue_start *s, vblk_queue_cb cb,
		     void *arg);
/* Stop taking requests (false) or take them again (true); in-flight ones carry on. */
int vblk_queue_enable(struct vblk_queue *q, bool on, vblk_queue_cb cb, void *arg);
/* Replace the call eventfd (the old one is closed); the new one is signalled once. */
int vblk_queue_set_call(struct vblk_queue *q, int fd, vblk_queue_cb cb, void *arg);
/* Replace the kick eventfd (the old one is closed). */
int vblk_queue_set_kick(struct vblk_queue *q, int fd, vblk_queue_cb cb, void *arg);
/*
 * Switch to a new memory map (the queue takes a reference of its own) and ring
 * pointers into it; requests in flight keep the old map alive until they complete.
 */
int vblk_queue_set_mem(struct vblk_queue *q, struct virtio_memmap *mem, struct vring_desc *desc,
		       uint16_t *avail, uint8_t *used, vblk_queue_cb cb, void *arg);
/*
 * Where the queue is: value = the next avail index it will take (requests
 * taken before it are in flight or done). A running queue keeps running.
 */
int vblk_queue_base(struct vblk_queue *q, vblk_queue_cb cb, void *arg);
/* Stop: no more requests, finish those in flight, close the fds; value = next avail index. */
int vblk_queue_stop(struct vblk_queue *q, vblk_queue_cb cb, void *arg);
