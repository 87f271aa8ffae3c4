/* The adaptive coalescing controller: when it waits, when it does not. */
#include "check.h"
#include "gateway/coalesce.h"

#define MS 1000000ull

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

static uint64_t run(struct gw_coalesce *c, const struct model *m, uint64_t *t, uint64_t until, uint64_t *on_time)
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
	}
	/* Shallow pipeline (QD4-like): waiting starves the client (2/17us -> 4/40us): it stops. */
	{
		struct model shallow = { 2, 4, 17000, 40000 };

		gw_coalesce_init(&c, 20000);
		on = 0;
		t = 1;
		CHECK(run(&c, &shallow, &t, 2000 * MS, &on) == 0);
		CHECK(on < 200 * MS); /* only the probing epochs */
	}
	/* Losing probes back off: over 20 s of a shallow load, less than 1% of the time is spent waiting. */
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
		/* One slow arrival closes it; a gap of exactly the reach still counts as in time. */
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
	return check_report();
}
