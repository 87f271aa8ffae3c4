/*
 * Adaptive event coalescing for a worker loop.
 *
 * Waking a sleeping thread is the biggest cost per request on a busy worker
 * (a context switch for every one or two requests). Letting events collect
 * for a few microseconds before polling makes one wake-up serve many
 * requests, which cuts CPU per request and, with a deep client pipeline,
 * raises throughput too. With a shallow pipeline (QD1-QD4) the same wait
 * only starves the client. So the controller measures: while the worker is
 * busy it alternates short epochs without and with the window, keeps the
 * window only when it served more requests per second, and re-checks
 * periodically. An idle or single-request worker never waits.
 *
 * Pure logic, no clock or loop of its own: the caller reports each loop
 * iteration and applies the window it returns.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

enum gw_coalesce_phase {
	GW_CO_IDLE, /* not busy enough to bother */
	GW_CO_MEASURE_OFF,
	GW_CO_MEASURE_ON,
	GW_CO_SETTLED,
};

struct gw_coalesce {
	uint64_t window_ns; /* configured window (0: never wait) */
	uint64_t epoch_ns;  /* length of a measuring epoch */
	uint64_t settle_ns; /* how long a decision to wait holds */
	unsigned backoff;   /* consecutive decisions not to wait: each doubles the hold */
	enum gw_coalesce_phase phase;
	uint64_t phase_start;    /* ns */
	uint64_t reqs;           /* requests counted in this phase */
	uint64_t rate_off;       /* requests per second measured without the window */
	uint64_t iters;          /* loop iterations in this phase */
	uint64_t current;        /* the window in force, ns */
	uint64_t decided_wait;   /* measurements that kept the window (status) */
	uint64_t decided_nowait; /* measurements that dropped it */
};

/* The phase's name for status: idle, measure-off, measure-on, settled. */
const char *gw_coalesce_phase_name(enum gw_coalesce_phase p);

void gw_coalesce_init(struct gw_coalesce *c, uint64_t window_ns);
/*
 * One loop iteration ended at now_ns having handled `reqs` requests.
 * Returns the window (ns) to wait before polling next.
 */
uint64_t gw_coalesce_update(struct gw_coalesce *c, uint64_t now_ns, unsigned reqs);

/*
 * Polling windows (socket polling, virtqueue polling). A poller that went
 * idle learns, when the next request arrives `gap_ns` later, whether it
 * came back in time (gap_ns <= reach_ns): then the window grows (4 us
 * first, then doubling, capped at max_ns); otherwise the client is slow and
 * the window closes (0). reach_ns is max_ns when the gap is measured
 * exactly, more when it includes a wake-up. Pure function: returns the
 * next window.
 */
#define GW_POLL_START_NS 4000u
/* A poller with nothing to do yields its CPU this often (a woken client may be waiting for it). */
#define GW_POLL_YIELD_NS 4000u
uint32_t gw_poll_window_next(uint32_t cur_ns, uint64_t gap_ns, uint32_t max_ns, uint64_t reach_ns);

/*
 * Polling for a strictly serial client: NBD connections, ublk and FUSE
 * queues. At queue depth 1 the next request comes a few microseconds after
 * the answer to the last one, and a server thread asleep by then pays a
 * wake-up for every request. So a poller counts the requests that come
 * between two moments it has answered everything (idle), and once
 * GW_SERIAL_POLL_RUN idle periods running each followed exactly one
 * request, it polls for the window gw_poll_window_next keeps: it opens
 * and grows while the client comes back in time (arrivals up to twice the
 * longest window count, as a gap measured without polling includes the
 * wake-up polling would save) and closes when it does not. A client with
 * several requests in flight keeps the thread busy anyway, so it is never
 * polled for. Each transport adds its own conditions (NBD: not for slow
 * requests; FUSE: not on the client's CPU).
 */
#define GW_SERIAL_POLL_RUN 8

struct gw_serial_poll {
	uint64_t idle_since; /* ns: everything answered; 0: busy (or not polling at all) */
	uint32_t window_ns;  /* the window now (0: sleep at once) */
	uint32_t turn_reqs;  /* requests since the last idle moment; the transport counts them */
	uint8_t run;         /* idle periods running that followed exactly one request */
};

/* A request came at now after the poller went idle (idle_since set): the window follows. */
void gw_serial_poll_came_back(struct gw_serial_poll *p, uint64_t now, uint32_t max_ns);

/*
 * Everything answered at now (0: the transport does not poll; saves the
 * clock reading). Returns when polling should end, or 0 not to poll.
 */
uint64_t gw_serial_poll_went_idle(struct gw_serial_poll *p, uint64_t now);

/*
 * Notification holding (interrupt moderation) for a slow driver: an
 * emulated guest that posts requests tens of microseconds apart and takes
 * an interrupt for nearly every completion when the back-end completes
 * each one the moment it sees it. Holding the signal until the driver has
 * been quiet for quiet_ns (at most 4x quiet_ns in all) lets one interrupt
 * carry a burst. Completions are published at once; only the signal
 * waits, so a driver that checks the ring finds them anyway.
 *
 * It is learned, never assumed: only a driver whose requests arrive
 * quiet_ns/4 or more apart on average is ever held; holding stays on
 * while holds take new requests along and goes off after two that took
 * none (a closed-loop driver waiting for the very signal held). While off,
 * a due signal is held as a probe after GW_HOLD_PROBE_EVERY others; each
 * probe that takes nothing along doubles that count, up to
 * GW_HOLD_PROBE_MAX (a QD1 driver, whose every probe is a delay with
 * nothing to gain, pays for one in 1024 requests instead of one in 32),
 * and a probe that does take requests along turns holding on again.
 *
 * Pure logic, like the rest of this file: the caller passes the time.
 */
#define GW_HOLD_PROBE_EVERY 32u
#define GW_HOLD_PROBE_MAX   1024u

struct gw_hold {
	uint32_t quiet_ns;     /* configured quiet gap; 0: never hold */
	bool on;               /* holds have been taking requests along */
	uint8_t misses;        /* consecutive holds that took none */
	uint16_t probe;        /* due signals since the last probe */
	uint16_t probe_every;  /* due signals between probes (0: GW_HOLD_PROBE_EVERY) */
	unsigned merged;       /* arrivals during the current hold */
	uint64_t due;          /* release at (ns); 0: nothing held */
	uint64_t first;        /* when the held signal became due */
	uint64_t last_arrival; /* ns; 0: none yet */
	uint64_t gap_ns;       /* moving average of the gap between arrivals */
};

void gw_hold_init(struct gw_hold *h, uint32_t quiet_ns);
/* Requests arrived at now (a kick, or a poll that found some). */
void gw_hold_arrival(struct gw_hold *h, uint64_t now);
/* A signal is due at now: true to hold it (h->due says until when). */
bool gw_hold_signal_due(struct gw_hold *h, uint64_t now);
/* The held signal goes now: at h->due, or earlier for another reason. */
void gw_hold_release(struct gw_hold *h);
