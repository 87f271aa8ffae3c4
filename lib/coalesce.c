#include "lib/coalesce.h"

#include <string.h>

#include "lib/util.h"

/* Keep the window only when it serves this much more (3%). */
#define CO_GAIN_PCT    103
/* Requests per second that make a worker worth probing, whatever its batches. */
#define CO_BUSY_RATE   50000ull
/* Longest hold after losing probes: settle << 4 (8 s). */
#define CO_MAX_BACKOFF 4

void gw_coalesce_init(struct gw_coalesce *c, uint64_t window_ns)
{
	memset(c, 0, sizeof(*c));
	c->window_ns = window_ns;
	c->epoch_ns = 20 * 1000 * 1000;   /* 20 ms */
	c->settle_ns = 500 * 1000 * 1000; /* 500 ms */
	c->phase = GW_CO_IDLE;
}

static void enter(struct gw_coalesce *c, enum gw_coalesce_phase p, uint64_t now)
{
	c->phase = p;
	c->phase_start = now;
	c->reqs = 0;
	c->iters = 0;
	c->current = p == GW_CO_MEASURE_ON ? c->window_ns : (p == GW_CO_SETTLED ? c->current : 0);
}

const char *gw_coalesce_phase_name(enum gw_coalesce_phase p)
{
	switch (p) {
	case GW_CO_IDLE:
		return "idle";
	case GW_CO_MEASURE_OFF:
		return "measure-off";
	case GW_CO_MEASURE_ON:
		return "measure-on";
	case GW_CO_SETTLED:
		return "settled";
	}
	return "?";
}

uint64_t gw_coalesce_update(struct gw_coalesce *c, uint64_t now, unsigned reqs)
{
	uint64_t dt;

	if (!c->window_ns)
		return 0;
	if (c->phase_start == 0)
		c->phase_start = now;
	c->reqs += reqs;
	c->iters++;
	dt = now - c->phase_start;

	switch (c->phase) {
	case GW_CO_IDLE:
		/* Busy: many requests per second, or several per wake-up on average. */
		if (dt >= c->epoch_ns) {
			if (c->iters >= 16 && (c->reqs * 1000000000ull >= CO_BUSY_RATE * dt ||
					       c->reqs * 2 >= c->iters * 3))
				enter(c, GW_CO_MEASURE_OFF, now);
			else
				enter(c, GW_CO_IDLE, now);
		}
		break;
	case GW_CO_MEASURE_OFF:
		if (dt >= c->epoch_ns && dt > 0) {
			c->rate_off = c->reqs * 1000000000ull / dt;
			enter(c, GW_CO_MEASURE_ON, now);
		}
		break;
	case GW_CO_MEASURE_ON:
		if (dt >= c->epoch_ns && dt > 0) {
			uint64_t rate_on = c->reqs * 1000000000ull / dt;

			c->current = rate_on * 100 >= c->rate_off * CO_GAIN_PCT && rate_on > 0
					     ? c->window_ns
					     : 0;
			/* Probing costs a little each time it loses: back off while it keeps
			 * losing. */
			c->backoff = c->current ? 0 : GW_MIN(c->backoff + 1, CO_MAX_BACKOFF);
			if (c->current)
				c->decided_wait++;
			else
				c->decided_nowait++;
			enter(c, GW_CO_SETTLED, now);
		}
		break;
	case GW_CO_SETTLED:
		/* Re-measure after a while, or at once when the load went away. */
		if (dt >= (c->settle_ns << c->backoff) ||
		    (c->iters >= 64 && c->reqs * 4 < c->iters * 3)) {
			c->current = 0;
			enter(c, GW_CO_IDLE, now);
		}
		break;
	}
	return c->current;
}

uint32_t gw_poll_window_next(uint32_t cur, uint64_t gap, uint32_t max, uint64_t reach)
{
	if (gap > reach || !max)
		return 0;
	if (!cur)
		return GW_MIN(GW_POLL_START_NS, max);
	return (uint32_t)GW_MIN((uint64_t)cur * 2, (uint64_t)max);
}

void gw_serial_poll_came_back(struct gw_serial_poll *p, uint64_t now, uint32_t max_ns)
{
	p->window_ns =
		gw_poll_window_next(p->window_ns, now - p->idle_since, max_ns, 2ull * max_ns);
	p->idle_since = 0;
}

uint64_t gw_serial_poll_went_idle(struct gw_serial_poll *p, uint64_t now)
{
	p->run = p->turn_reqs == 1 ? (uint8_t)GW_MIN(p->run + 1u, 255u) : 0;
	p->turn_reqs = 0;
	p->idle_since = now;
	if (!now || !p->window_ns || p->run < GW_SERIAL_POLL_RUN)
		return 0;
	return now + p->window_ns;
}

void gw_hold_init(struct gw_hold *h, uint32_t quiet_ns)
{
	memset(h, 0, sizeof(*h));
	h->quiet_ns = quiet_ns;
}

/* Gaps longer than this are idleness, not the driver's pace. */
#define HOLD_GAP_CAP_NS 1000000u

void gw_hold_arrival(struct gw_hold *h, uint64_t now)
{
	if (!h->quiet_ns)
		return;
	if (h->last_arrival) {
		uint64_t gap = GW_MIN(now - h->last_arrival, (uint64_t)HOLD_GAP_CAP_NS);

		/* 1/8 weight for the newest gap */
		h->gap_ns = h->gap_ns ? h->gap_ns - h->gap_ns / 8 + gap / 8 : gap;
	}
	h->last_arrival = now;
	if (h->due) {
		h->merged++;
		/* A quiet gap again from this arrival, within the overall cap. */
		h->due = GW_MIN(now + h->quiet_ns, h->first + 4ull * h->quiet_ns);
	}
}

bool gw_hold_signal_due(struct gw_hold *h, uint64_t now)
{
	if (h->due)
		return true; /* already held: this completion goes with it */
	if (!h->quiet_ns || h->gap_ns < h->quiet_ns / 4)
		return false;
	if (!h->on && ++h->probe < (h->probe_every ? h->probe_every : GW_HOLD_PROBE_EVERY))
		return false;
	h->probe = 0;
	h->first = now;
	h->merged = 0;
	h->due = now + h->quiet_ns;
	return true;
}

void gw_hold_release(struct gw_hold *h)
{
	if (!h->due)
		return;
	h->due = 0;
	if (h->merged) {
		h->on = true;
		h->misses = 0;
		h->probe_every = 0;
	} else if (!h->on) {
		/* A probe that took nothing along: wait twice as long for the next. */
		h->probe_every = (uint16_t)GW_MIN(2u * (h->probe_every ? h->probe_every
								       : GW_HOLD_PROBE_EVERY),
						  GW_HOLD_PROBE_MAX);
	} else if (++h->misses >= 2) {
		h->on = false;
		h->misses = 0;
	}
}
