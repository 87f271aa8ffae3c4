/* The adaptive coalescing controller: when it waits, when it does not. */
#include <string.h>

#include "check.h"
#include "lib/coalesce.h"

#define MS 1000000ull
#define US 1000ull

/*
 * Drive the controller with a workload model: `per_wake` requests per loop
 * iteration, one iteration every `gap_ns` without the window; with the
 * window in force, `model_on` says how many requests an iteration serves and
 * how long it takes. Returns the window in force at the end.
 */
struct model {
	unsigned per_wake_off, per_wake_on;
	uint64_t gap_off, gap_on;
};

static uint64_t run(struct gw_coalesce *c, const struct model *m, uint64_t *t, uint64_t until,
		    uint64_t *on_time)
{
	uint64_t win = 0;

	while (*t < until) {
		unsigned n = win ? m->per_wake_on : m->per_wake_off;
		uint64_t gap = win ? m->gap_on : m->gap_off;

		*t += gap;
		if (win && on_time)
			*on_time += gap;
		win = gw_coalesce_update(c, *t, n);
	}
	return win;
}

/*
 * A driver against a back-end that completes every request the moment it
 * arrives and signals through gw_hold. Open loop: a request every `period`
 * ns whatever the signals. Closed loop: `burst` requests `period` apart,
 * starting `think` ns after a signal reached the driver (none while a burst
 * is still being posted), then nothing until the next signal.
 */
struct driver {
	bool closed;
	uint64_t period, think;
	unsigned burst;
};

struct outcome {
	uint64_t reqs, signals, held, delay_ns; /* delay: what holding added, summed over signals */
};

static struct outcome drive(struct gw_hold *h, const struct driver *d, uint64_t t, uint64_t until)
{
	struct outcome o = { 0 };
	uint64_t next = t + d->period;
	unsigned left = d->closed ? d->burst : 0;

	for (;;) {
		if (h->due && h->due <= next) {
			if (h->due >= until)
				break;
			/* Released before the next arrival. */
			t = h->due;
			o.delay_ns += t - h->first;
			gw_hold_release(h);
			o.signals++;
			if (d->closed && !left) {
				left = d->burst;
				next = t + d->think;
			}
			continue;
		}
		if (next >= until)
			break;
		t = next;
		o.reqs++;
		gw_hold_arrival(h, t);
		if (gw_hold_signal_due(h, t))
			o.held++; /* a new hold, or goes with the one held */
		else
			o.signals++;
		if (!d->closed) {
			next = t + d->period;
		} else if (left && --left) {
			next = t + d->period;
		} else if (!h->due) {
			/* Burst posted; the signal for it went: the driver takes it. */
			left = d->burst;
			next = t + d->think;
		} else {
			next = UINT64_MAX - 1; /* waits for the held signal */
		}
	}
	return o;
}

/* A queue that has seen nothing yet, holding for 40 us of quiet, driven from t = 1. */
static struct outcome drive_new(struct gw_hold *h, const struct driver *d, uint64_t until)
{
	gw_hold_init(h, 40000);
	return drive(h, d, 1, until);
}

int main(void)
{
	struct gw_coalesce c;
	uint64_t t = 1, on = 0;

	/* Disabled: never waits. */
	gw_coalesce_init(&c, 0);
	CHECK(gw_coalesce_update(&c, 1000, 10) == 0);

	/* QD1-like: one request per wake-up: never waits. */
	{
		struct model qd1 = { 1, 1, 50000, 50000 };

		gw_coalesce_init(&c, 20000);
		CHECK(run(&c, &qd1, &t, t + 2000 * MS, &on) == 0);
		CHECK(on == 0);
	}
	/* Deep pipeline: waiting serves more per second (2/12us -> 6/30us): it keeps waiting. */
	{
		struct model deep = { 2, 6, 12000, 30000 };

		gw_coalesce_init(&c, 20000);
		on = 0;
		t = 1;
		CHECK(run(&c, &deep, &t, 2000 * MS, &on) == 20000);
		CHECK(on > 1500 * MS); /* the window held most of the time */
		/* status counts the decisions: 2 s hold 3 or 4 settle periods, all kept. */
		CHECK(c.decided_wait >= 3 && c.decided_wait <= 4);
		CHECK_EQ_U64(c.decided_nowait, 0);
		CHECK(c.phase == GW_CO_SETTLED || c.phase == GW_CO_MEASURE_ON ||
		      c.phase == GW_CO_MEASURE_OFF);
		CHECK(strcmp(gw_coalesce_phase_name(c.phase), "?") != 0);
	}
	/* Shallow pipeline (QD4-like): waiting starves the client (2/17us -> 4/40us): it stops. */
	{
		struct model shallow = { 2, 4, 17000, 40000 };

		gw_coalesce_init(&c, 20000);
		on = 0;
		t = 1;
		CHECK(run(&c, &shallow, &t, 2000 * MS, &on) == 0);
		CHECK(on < 200 * MS); /* only the probing epochs */
		CHECK_EQ_U64(c.decided_wait, 0);
		CHECK(c.decided_nowait >= 1);
	}
	/* Losing probes back off: over 20 s of a shallow load, less than 1% of the time is spent
	 * waiting. */
	{
		struct model shallow = { 2, 4, 17000, 40000 };

		gw_coalesce_init(&c, 20000);
		on = 0;
		t = 1;
		CHECK(run(&c, &shallow, &t, 20000 * MS, &on) == 0);
		CHECK(on < 200 * MS);
		CHECK(c.backoff == 4);
	}
	/* The load goes away while the window holds: it drops the window soon after. */
	{
		struct model deep = { 2, 6, 12000, 30000 }, idle = { 0, 0, 1000000, 1000000 };

		gw_coalesce_init(&c, 20000);
		t = 1;
		CHECK(run(&c, &deep, &t, 200 * MS, NULL) == 20000);
		CHECK(run(&c, &idle, &t, t + 700 * MS, NULL) == 0);
	}

	/* Polling windows: a client that comes back in time grows the window to the cap. */
	{
		uint32_t win = 0, seen[8];

		for (int i = 0; i < 8; i++)
			seen[i] = win = gw_poll_window_next(win, 20000, 50000, 50000);
		CHECK_EQ_U64(seen[0], 4000);
		CHECK_EQ_U64(seen[1], 8000);
		CHECK_EQ_U64(seen[2], 16000);
		CHECK_EQ_U64(seen[3], 32000);
		CHECK_EQ_U64(seen[4], 50000);
		CHECK_EQ_U64(seen[7], 50000);
		/* One slow arrival closes it; a gap of exactly the reach still counts as in time.
		 */
		CHECK_EQ_U64(gw_poll_window_next(50000, 50001, 50000, 50000), 0);
		CHECK_EQ_U64(gw_poll_window_next(0, 50000, 50000, 50000), 4000);
		/* A longer reach (the gap includes a wake-up) keeps growing, never past the cap. */
		CHECK_EQ_U64(gw_poll_window_next(32000, 90000, 50000, 100000), 50000);
		CHECK_EQ_U64(gw_poll_window_next(50000, 100001, 50000, 100000), 0);
		/* A cap below the first step is the window. */
		CHECK_EQ_U64(gw_poll_window_next(0, 1000, 2000, 2000), 2000);
		/* Polling off: never a window, whatever the reach. */
		CHECK_EQ_U64(gw_poll_window_next(0, 0, 0, 0), 0);
		CHECK_EQ_U64(gw_poll_window_next(0, 100, 0, 1000), 0);
	}

	/* A serial client: polled for only after GW_SERIAL_POLL_RUN single-request turns. */
	{
		struct gw_serial_poll p = { 0 };
		uint64_t tn = 1000 * US, until = 0;
		int polled_at = -1;

		for (int i = 0; i < 20 && polled_at < 0; i++) {
			p.turn_reqs++;
			if (p.idle_since)
				gw_serial_poll_came_back(&p, tn += 10 * US, 50 * US);
			until = gw_serial_poll_went_idle(&p, tn += 5 * US);
			if (until)
				polled_at = i;
		}
		/* The window opened at the second arrival; the run needs eight turns. */
		CHECK_EQ_U64((uint64_t)polled_at, GW_SERIAL_POLL_RUN - 1);
		CHECK_EQ_U64(until, tn + p.window_ns);
		CHECK(p.window_ns >= 4000 && p.window_ns <= 50 * US);
		/* Two requests in one turn: not serial; the run starts again. */
		p.turn_reqs = 2;
		gw_serial_poll_came_back(&p, tn += 10 * US, 50 * US);
		CHECK_EQ_U64(gw_serial_poll_went_idle(&p, tn += 5 * US), 0);
		CHECK_EQ_U64(p.run, 0);
		CHECK_EQ_U64(p.turn_reqs, 0);
		/* A client that comes back late closes the window. */
		p.turn_reqs = 1;
		gw_serial_poll_came_back(&p, tn += 200 * US, 50 * US);
		CHECK_EQ_U64(p.window_ns, 0);
		CHECK_EQ_U64(p.idle_since, 0);
		/* now 0 (the transport does not poll): no window, idle_since stays 0. */
		for (int i = 0; i < 10; i++) {
			p.turn_reqs = 1;
			CHECK_EQ_U64(gw_serial_poll_went_idle(&p, 0), 0);
		}
		CHECK_EQ_U64(p.idle_since, 0);
	}

	/* Holding signals. Off (quiet 0): every completion is signalled at once. */
	{
		struct gw_hold h;
		struct driver tcg = { false, 20000, 0, 0 };
		struct outcome o;

		gw_hold_init(&h, 0);
		o = drive(&h, &tcg, 1, 1000 * MS);
		CHECK_EQ_U64(o.held, 0);
		CHECK_EQ_U64(o.signals, o.reqs);
	}
	/* A slow driver posting every 20 us (an emulated guest at QD32): held, one signal per many.
	 */
	{
		struct gw_hold h;
		struct driver tcg = { false, 20000, 0, 0 };
		struct outcome o;

		o = drive_new(&h, &tcg, 1000 * MS);
		CHECK(h.on);
		CHECK(o.reqs > 49000);
		/* Never quiet for 40 us, so the 160 us cap releases: 8 requests per signal. */
		CHECK(o.signals * 7 < o.reqs);
		CHECK(o.delay_ns / o.signals <= 160000);
	}
	/* The same driver in bursts of 8, 15 us apart, each started 100 us after a signal. */
	{
		struct gw_hold h;
		struct driver burst = { true, 15000, 100000, 8 };
		struct outcome o;

		o = drive_new(&h, &burst, 1000 * MS);
		CHECK(h.on);
		/* Without holding: a signal per request. With it: about one per burst. */
		CHECK(o.signals * 6 < o.reqs);
	}
	/* A slow closed-loop driver (QD1, 150 us per round trip): only probes are held. */
	{
		struct gw_hold h;
		struct driver qd1 = { true, 0, 150000, 1 };
		struct outcome o;

		o = drive_new(&h, &qd1, 1000 * MS);
		CHECK(!h.on);
		CHECK(o.reqs > 4000);
		CHECK(o.held > 0);
		CHECK(o.held * GW_HOLD_PROBE_EVERY <= o.reqs + GW_HOLD_PROBE_EVERY);
		/* A probe costs the quiet gap. */
		CHECK(o.delay_ns <= o.held * 40000);
		/*
		 * Each lost probe doubles the wait for the next: 32, 64, ... 1024
		 * requests apart, so about a dozen in 6600 requests, not 200.
		 */
		CHECK(o.held <= 12);
		CHECK_EQ_U64(h.probe_every, GW_HOLD_PROBE_MAX);
		/* The same queue's driver turns into a slow open-loop one: found within a probe. */
		{
			struct driver tcg = { false, 20000, 0, 0 };
			uint64_t t0 = 1001 * MS;

			o = drive(&h, &tcg, t0, t0 + 30 * MS); /* 1500 requests: one probe at most
								  1024 in */
			CHECK(h.on);
			CHECK_EQ_U64(h.probe_every, 0);
			o = drive(&h, &tcg, t0 + 30 * MS, t0 + 130 * MS);
			CHECK(o.signals * 7 < o.reqs);
		}
	}
	/* Fast drivers (a host client, QD1 and QD32) are never held: their pace is under quiet/4.
	 */
	{
		struct gw_hold h;
		struct driver qd1 = { true, 0, 2000, 1 }, qd32 = { false, 300, 0, 0 };
		struct outcome o;

		o = drive_new(&h, &qd1, 100 * MS);
		CHECK(o.reqs > 40000);
		CHECK_EQ_U64(o.held, 0);
		o = drive_new(&h, &qd32, 100 * MS);
		CHECK_EQ_U64(o.held, 0);
	}
	/* Holding turns off once the driver stops posting during holds, and probes again later. */
	{
		struct gw_hold h;
		struct driver tcg = { false, 20000, 0, 0 }, qd1 = { true, 0, 150000, 1 };
		struct outcome o;

		drive_new(&h, &tcg, 100 * MS);
		CHECK(h.on);
		o = drive(&h, &qd1, 200 * MS, 300 * MS);
		CHECK(!h.on);
		/* Two holds that took nothing along, then probes only. */
		CHECK(o.held <= 2 + o.reqs / GW_HOLD_PROBE_EVERY + 1);
		/* Lost probes have spaced the next one out (at most 1024 requests): found within 30
		 * ms. */
		drive(&h, &tcg, 400 * MS, 430 * MS);
		CHECK(h.on);
		o = drive(&h, &tcg, 430 * MS, 530 * MS);
		CHECK(h.on);
		CHECK(o.signals * 7 < o.reqs);
	}
	return check_report();
}
