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

#include <stdint.h>

enum gw_coalesce_phase {
	GW_CO_IDLE,      /* not busy enough to bother */
	GW_CO_MEASURE_OFF,
	GW_CO_MEASURE_ON,
	GW_CO_SETTLED,
};

struct gw_coalesce {
	uint64_t window_ns;    /* configured window (0: never wait) */
	uint64_t epoch_ns;     /* length of a measuring epoch */
	uint64_t settle_ns;    /* how long a decision to wait holds */
	unsigned backoff;      /* consecutive decisions not to wait: each doubles the hold */
	enum gw_coalesce_phase phase;
	uint64_t phase_start;  /* ns */
	uint64_t reqs;         /* requests counted in this phase */
	uint64_t rate_off;     /* requests per second measured without the window */
	uint64_t iters;        /* loop iterations in this phase */
	uint64_t current;      /* the window in force, ns */
};

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
