/*
 * An I/O queue: one io_uring owned by one thread. Every worker has one;
 * backends submit their asynchronous work on the ring of the thread that
 * submitted the request, and completions run on that same thread.
 *
 * Thread: every function here is called only by the owning thread.
 */
#pragma once

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/util.h"

struct gw_ioq;

/* What a CQE's user_data points at. */
struct gw_uring_cb {
	void (*fn)(struct gw_uring_cb *cb, int res);
};

struct gw_ioq {
	struct io_uring ring;
	int eventfd;       /* signalled on every CQE; -1 when not registered */
	unsigned slot;     /* statistics slot (see gw_export stats) */
	unsigned queued;   /* SQEs prepared but not yet submitted */
	unsigned inflight; /* SQEs submitted, CQE not yet seen */
	uint64_t now_ns;   /* the owner's current pass began then; 0: none (gw_ioq_now) */
};

/*
 * The time for a request's statistics. A loop that handles many requests in
 * one pass reads the clock once per pass (gw_ioq_tick) and clears it when
 * the pass ends (gw_ioq_untick); requests answered meanwhile share that
 * reading. A clock read costs 60-100 ns in some VMs, more than the rest of
 * a null request. Outside a pass (now_ns 0) this reads the clock.
 */
static inline uint64_t gw_ioq_now(const struct gw_ioq *q)
{
	return q->now_ns ? q->now_ns : gw_now_ns();
}

/* Read the clock and make it the current pass's time; returns it. */
static inline uint64_t gw_ioq_tick(struct gw_ioq *q)
{
	return q->now_ns = gw_now_ns();
}

/* The pass ended: later requests read the clock again. */
static inline void gw_ioq_untick(struct gw_ioq *q)
{
	q->now_ns = 0;
}

/*
 * Work is waiting: CQEs to reap, or (a ring set up with
 * IORING_SETUP_COOP_TASKRUN and IORING_SETUP_TASKRUN_FLAG) completions whose
 * task work waits for the owner to enter the kernel, which gw_ioq_reap does.
 */
static inline bool gw_ioq_ready(const struct gw_ioq *q)
{
	return io_uring_cq_ready(&q->ring) ||
	       (IO_URING_READ_ONCE(*q->ring.sq.kflags) & IORING_SQ_TASKRUN);
}

/* entries: SQ size; with_eventfd: register an eventfd for an event loop to watch. */
int gw_ioq_init(struct gw_ioq *q, unsigned entries, unsigned slot, bool with_eventfd);
/* The same with extra IORING_SETUP_* flags (IORING_SETUP_SQE128 for uring commands). */
int gw_ioq_init_flags(struct gw_ioq *q, unsigned entries, unsigned slot, bool with_eventfd,
		      unsigned setup_flags);
void gw_ioq_exit(struct gw_ioq *q);

/*
 * A zeroed SQE whose user_data is cb. When the SQ is full the queued SQEs
 * are submitted first. Never returns NULL.
 */
struct io_uring_sqe *gw_ioq_sqe(struct gw_ioq *q, struct gw_uring_cb *cb);
/* Submit queued SQEs (cheap when none). Returns 0 or -errno. */
int gw_ioq_submit(struct gw_ioq *q);
/* Run the callbacks of every available CQE; returns how many. */
unsigned gw_ioq_reap(struct gw_ioq *q);
/* Submit, then block until at least one completion and reap (for threads without an event loop). */
int gw_ioq_wait(struct gw_ioq *q);
