/*
 * I/O worker threads. A fixed pool (gateway.workers) runs every export's
 * connections and queues; each worker has its own libev loop, its own
 * io_uring (struct gw_ioq) and its own buffer pool, so the data path of a
 * connection never takes a lock. See docs/architecture.md.
 *
 * Cross-thread: gw_worker_call() and gw_main_call() post a function to
 * another thread's loop. Everything else is for the owning thread only.
 */
#pragma once

#include <ev.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/bufpool.h"
#include "lib/coalesce.h"
#include "lib/ioq.h"

struct gw_call;

/* A cross-thread mailbox on a libev loop. */
struct gw_mailbox {
	struct ev_loop *loop;
	ev_async async;
	pthread_mutex_t lock;
	struct gw_call *head, **tail;
};

/* Runs fn on the owning thread before the loop next blocks (same-thread only). */
struct gw_deferred {
	struct gw_deferred *next;
	void (*fn)(struct gw_deferred *d);
	bool queued;
};

/*
 * What a worker's loop did, for `status --json` (`worker_loops`) and the
 * metrics: which mode it runs in, seen from outside. Written only by the
 * worker's thread, read by any (gw_worker_counters_get); every field is
 * stored and loaded whole (relaxed atomics), so a reader sees each value
 * as it was at some moment, never a torn one.
 */
struct gw_worker_counters {
	/* Loop turns (each ends in a poll, blocking or not). */
	uint64_t turns;
	/* Turns after which the loop may block: no poller on, no work left. */
	uint64_t sleeps;
	/* Turns while a poller (socket or queue) kept the loop from sleeping. */
	uint64_t spin_turns;
	/* Of those, turns that handled requests counted in `requests`. */
	uint64_t spin_found;
	/* Requests counted for coalescing (gw_worker_note_work: NBD, FUSE). */
	uint64_t requests;
	/* virtio queues: kicks taken (the driver woke a queue)... */
	uint64_t kicks;
	/* ...polling slices instead (vblkq_poll_cb), and those that found requests. */
	uint64_t ring_polls, ring_polls_found;
	/* virtio completion signals held back (lib/coalesce.h gw_hold). */
	uint64_t held_signals;
	/* The coalescer: the window in force now (0: none), its phase (enum
	 * gw_coalesce_phase), and its measurements that kept or dropped it. */
	uint64_t co_window_ns, co_phase, co_decided_wait, co_decided_nowait;
};

struct gw_worker {
	unsigned id;
	char name[24];
	pthread_t thread;
	struct ev_loop *loop;
	struct gw_ioq ioq;
	struct gw_bufpool pool;
	struct gw_mailbox mbox;
	ev_io ioq_watcher;
	ev_prepare prepare;
	struct gw_deferred *deferred;
	unsigned work; /* requests handled since the loop last blocked (gw_worker_note_work) */
	struct gw_coalesce co;
	ev_idle spin;                    /* on while a socket poller keeps the loop from sleeping */
	ev_idle again;                   /* on when the prepare callback left work: do not sleep */
	uint64_t spin_until, spin_yield; /* ns: when spinning stops; when it last yielded */
	unsigned load;                   /* connections/queues assigned (atomic) */
	bool started;
	bool background;  /* the low-priority worker (gw_worker_background) */
	unsigned pollers; /* queue pollers on (gw_worker_poller): the loop does not block */
	struct gw_worker_counters ctr;
};

/* Start n workers (n >= 1). Main thread. 0 or -errno with a message. */
int gw_workers_start(unsigned n, char *err, size_t errlen);
/* Stop every worker loop and join; everything on them must already be closed. */
void gw_workers_stop(void);
/* The pool's size (gateway.workers): what gw_worker_pick() chooses from. */
unsigned gw_workers_count(void);
/* Every worker thread, the background one included: for per-worker tables (ids < this). */
unsigned gw_workers_total(void);
struct gw_worker *gw_worker_get(unsigned i); /* i < gw_workers_total() */
/* The worker with the least load (ties: round robin); bumps its load. */
struct gw_worker *gw_worker_pick(void);
/*
 * The background worker, beside the pool: one more loop, on a thread at the
 * lowest scheduling priority (nice 19), for work that must not take CPU or
 * a loop turn from the pool's (a backup export's connections). Bumps its
 * load like gw_worker_pick().
 */
struct gw_worker *gw_worker_background(void);
void gw_worker_unload(struct gw_worker *w);
/* The worker running the calling thread, or NULL (main thread). */
struct gw_worker *gw_worker_self(void);

/* Post fn(arg) to run on w's thread. Any thread. 0 or -ENOMEM. */
int gw_worker_call(struct gw_worker *w, void (*fn)(void *arg), void *arg);
/* Post fn(arg) to run on the main thread. Any thread. 0 or -ENOMEM. */
int gw_main_call(void (*fn)(void *arg), void *arg);
/* Set up the main thread's mailbox on the main loop (once, before workers start). */
int gw_main_init(struct ev_loop *loop);
void gw_main_exit(void);

/*
 * Same-thread: count requests handled in this loop iteration; it feeds the
 * worker's adaptive coalescing (lib/coalesce.h).
 */
static inline void gw_worker_note_work(struct gw_worker *w, unsigned n)
{
	w->work += n;
}

/* Same-thread: add to one of w->ctr's counters (readers elsewhere see it whole). */
static inline void gw_worker_count(uint64_t *ctr, uint64_t n)
{
	__atomic_store_n(ctr, *ctr + n, __ATOMIC_RELAXED);
}

/* Same-thread: a queue's own poller (an ev_idle) goes on or off, for the counters. */
static inline void gw_worker_poller(struct gw_worker *w, bool on)
{
	if (on)
		w->pollers++;
	else if (w->pollers)
		w->pollers--;
}

/* Any thread: a snapshot of w's counters. */
void gw_worker_counters_get(const struct gw_worker *w, struct gw_worker_counters *out);

/* Main thread, before gw_workers_start(): the coalescing window (0 disables). */
void gw_workers_set_coalesce_us(unsigned us);

/*
 * Socket polling. A connection that expects its client's next request
 * within microseconds asks the worker not to sleep until then: the loop
 * keeps polling its fds (epoll with no timeout), so the request is read as
 * soon as it lands instead of after a wake-up. Deadlines from several
 * callers extend each other; the loop sleeps again after the last.
 */
void gw_worker_spin(struct gw_worker *w, uint64_t until_ns);

/* Same-thread: run d->fn before the loop next blocks (once, however often called). */
void gw_worker_defer(struct gw_worker *w, struct gw_deferred *d);

/* Mailbox primitives (exposed for threads that are not workers). */
int gw_mailbox_init(struct gw_mailbox *mb, struct ev_loop *loop);
void gw_mailbox_exit(struct gw_mailbox *mb);
int gw_mailbox_post(struct gw_mailbox *mb, void (*fn)(void *arg), void *arg);
