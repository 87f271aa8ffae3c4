/*
 * fault: a layer any image can stack (the image's `fault:` mapping) that
 * fails or delays chosen requests before they reach the image's backend,
 * for tests and for operators rehearsing failures (docs/manifest.md).
 *
 * A request matches when its op is in `ops` and it overlaps one of
 * `ranges` (every byte when none). `extents` in `ops` (never by default)
 * makes allocation queries match too: NBD block status, FUSE's lseek and
 * block count; only those answered later (gw_export_extents_submit) can be
 * delayed, a synchronous query is only failed. Matching requests are numbered from 0
 * across every thread; those numbered below `after` pass untouched, and of
 * the rest every `every`-th is hit: held for `delay` (io_uring timeouts
 * on the submitting thread's ring, so nothing else on that thread waits;
 * at most DELAY_SLICE_NS each, so that a stopping daemon's release() cuts
 * a long delay short), then failed with `errno`, or passed on when errno
 * is `none`.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "lib/ioq.h"
#include "lib/opts.h"
#include "lib/util.h"

#define MAX_RANGES     16
/* A held request looks at release() this often. */
#define DELAY_SLICE_NS (100 * 1000 * 1000ull)

static const char *const errno_names[] = { "EIO",    "ENOSPC",    "EPERM",  "EROFS", "ENOMEM",
					   "EINVAL", "ETIMEDOUT", "EDQUOT", "none",  NULL };
static const int errno_values[] = {
	EIO, ENOSPC, EPERM, EROFS, ENOMEM, EINVAL, ETIMEDOUT, EDQUOT, 0
};

static const struct gw_opt_desc fault_opts[] = {
	{ .key = "errno",
	  .type = GW_OPT_ENUM,
	  .offset = offsetof(struct gw_fault_opts, errno_name),
	  .choices = errno_names,
	  .help = "error hit requests fail with (default EIO; none: only delay them)" },
	{ .key = "every",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct gw_fault_opts, every),
	  .min = 1,
	  .def = 1,
	  .help = "hit every N-th matching request (default 1: all)" },
	{ .key = "after",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct gw_fault_opts, after),
	  .help = "let the first N matching requests through (default 0)" },
	{ .key = "ops",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct gw_fault_opts, ops),
	  .help = "which requests match, comma-separated: read, write, flush, trim, zero, "
		  "cache, extents (default: all but extents)" },
	{ .key = "ranges",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct gw_fault_opts, ranges),
	  .help = "byte ranges that match, comma-separated START-END (end excluded; sizes "
		  "such as 1M-2M; default: the whole image)" },
	{ .key = "delay",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct gw_fault_opts, delay),
	  .help = "hold hit requests this long first: 50ms, 2s, 500us (default: none)" },
};

struct fault_rule {
	int err;      /* positive errno, 0: delay only */
	uint32_t ops; /* bit per GW_OP_*, and OP_EXTENTS */
	uint64_t delay_ns;
	uint32_t every, after;
	unsigned nranges;
	uint64_t start[MAX_RANGES], end[MAX_RANGES];
};

/* Allocation queries: one more bit after the I/O ops. */
#define OP_EXTENTS GW_OP__COUNT

static const char *const op_names[GW_OP__COUNT + 1] = { "read", "write", "flush",  "trim",
							"zero", "cache", "extents" };

/* Parse ops, ranges and delay. 0, or -1 with a message in msg. */
static int parse_rule(const struct gw_fault_opts *o, struct fault_rule *r, char *msg, size_t len)
{
	memset(r, 0, sizeof(*r));
	r->every = o->every ? o->every : 1;
	r->after = o->after;
	r->err = EIO;
	for (size_t i = 0; o->errno_name && errno_names[i]; i++)
		if (strcmp(o->errno_name, errno_names[i]) == 0)
			r->err = errno_values[i];
	r->ops = (1u << GW_OP__COUNT) - 1;
	if (o->ops) {
		char *s = strdup(o->ops), *save = NULL, *w;

		r->ops = 0;
		for (w = strtok_r(s, ", ", &save); w; w = strtok_r(NULL, ", ", &save)) {
			unsigned i;

			for (i = 0; i <= OP_EXTENTS && strcmp(w, op_names[i]) != 0; i++)
				;
			if (i > OP_EXTENTS) {
				snprintf(
					msg, len,
					"unknown op '%s' (ops: read, write, flush, trim, zero, cache, "
					"extents)",
					w);
				free(s);
				return -1;
			}
			r->ops |= 1u << i;
		}
		free(s);
		if (!r->ops) {
			snprintf(msg, len, "'ops' names no op");
			return -1;
		}
	}
	if (o->ranges) {
		char *s = strdup(o->ranges), *save = NULL, *w;

		for (w = strtok_r(s, ", ", &save); w; w = strtok_r(NULL, ", ", &save)) {
			char *dash = strchr(w, '-');
			uint64_t a, b;

			if (r->nranges == MAX_RANGES) {
				snprintf(msg, len, "more than %d ranges", MAX_RANGES);
				free(s);
				return -1;
			}
			if (!dash || (*dash = '\0', gw_parse_size(w, &a) < 0) ||
			    gw_parse_size(dash + 1, &b) < 0 || b <= a) {
				snprintf(msg, len,
					 "bad range in '%s': write START-END with END > START, "
					 "such as 0-1M",
					 o->ranges);
				free(s);
				return -1;
			}
			r->start[r->nranges] = a;
			r->end[r->nranges++] = b;
		}
		free(s);
	}
	if (o->delay) {
		char *end;
		double v = strtod(o->delay, &end);
		double unit = strcmp(end, "ms") == 0   ? 1e6
			      : strcmp(end, "us") == 0 ? 1e3
			      : strcmp(end, "s") == 0  ? 1e9
						       : 0;

		if (end == o->delay || unit == 0 || v < 0 || v * unit > 3600e9) {
			snprintf(msg, len, "bad delay '%s': write 50ms, 2s or 500us (at most 1h)",
				 o->delay);
			return -1;
		}
		r->delay_ns = (uint64_t)(v * unit);
		if (!o->errno_name)
			r->err = 0; /* a delay alone fails nothing */
	}
	return 0;
}

static void fault_check_opts(const void *opts, struct gw_opt_report *rep)
{
	const struct gw_fault_opts *o = opts;
	struct fault_rule r;
	char msg[256];

	/* One key at a time, so each bad one is reported. */
	for (int i = 0; i < 3; i++) {
		struct gw_fault_opts one = { .errno_name = o->errno_name };

		if (i == 0)
			one.ops = o->ops;
		else if (i == 1)
			one.ranges = o->ranges;
		else
			one.delay = o->delay;
		if (parse_rule(&one, &r, msg, sizeof(msg)) < 0)
			gw_opt_problem(rep,
				       i == 0   ? "ops"
				       : i == 1 ? "ranges"
						: "delay",
				       "%s", msg);
	}
}

const struct gw_opt_schema gw_fault_schema =
	GW_OPT_SCHEMA(fault_opts, struct gw_fault_opts, fault_check_opts);

/* ---- the layer ---- */

struct fault {
	struct gw_backend b;
	struct gw_backend *inner;
	struct fault_rule r;
	atomic_uint_fast64_t seen; /* matching requests so far */
	atomic_uint_fast64_t hit;
	atomic_bool released; /* the daemon stops: held requests go on now */
};

struct fault_wrap_opts {
	struct gw_backend *inner;
	const struct gw_fault_opts *o;
};

static int fault_open(struct gw_backend *b, const void *opts, char *err, size_t errlen)
{
	const struct fault_wrap_opts *w = opts;
	struct fault *f = (struct fault *)b;

	if (parse_rule(w->o, &f->r, err, errlen) < 0)
		return -EINVAL;
	f->inner = w->inner;
	b->size = f->inner->size;
	b->caps = f->inner->caps;
	if (f->r.delay_ns)
		b->caps &= ~GW_CAP_INLINE; /* delayed requests complete later */
	b->min_block = f->inner->min_block;
	b->pref_block = f->inner->pref_block;
	b->max_xfer = f->inner->max_xfer;
	return 0;
}

static bool matches(const struct fault_rule *r, unsigned op, uint64_t offset, uint64_t len)
{
	if (!(r->ops & (1u << op)))
		return false;
	if (!r->nranges || op == GW_OP_FLUSH)
		return true;
	for (unsigned i = 0; i < r->nranges; i++)
		if (offset < r->end[i] && offset + (len ? len : 1) > r->start[i])
			return true;
	return false;
}

/* A matching request: is it one to hit (after `after`, every `every`-th)? Counts it. */
static bool hits(struct fault *f)
{
	uint64_t n = atomic_fetch_add_explicit(&f->seen, 1, memory_order_relaxed);

	if (n < f->r.after || (n - f->r.after) % f->r.every != 0)
		return false;
	atomic_fetch_add_explicit(&f->hit, 1, memory_order_relaxed);
	return true;
}

/*
 * Hold on toward deadline (ns): true when a timeout was prepared on q (its
 * timespec lives in ts until submitted), false when the hold is over: the
 * deadline passed, or the daemon stops.
 */
static bool hold(struct fault *f, struct gw_ioq *q, uint64_t deadline, struct __kernel_timespec *ts,
		 struct gw_uring_cb *cb)
{
	uint64_t now = gw_now_ns(), ns;

	if (now >= deadline || atomic_load_explicit(&f->released, memory_order_relaxed))
		return false;
	ns = GW_MIN(deadline - now, DELAY_SLICE_NS);
	ts->tv_sec = (long long)(ns / 1000000000u);
	ts->tv_nsec = (long long)(ns % 1000000000u);
	io_uring_prep_timeout(gw_ioq_sqe(q, cb), ts, 0, 0);
	return true;
}

/*
 * A slice of the delay is over: hold on, or fail the request, or hand it on
 * (completing it ourselves if inline). scratch[0..1]: the timespec the ring
 * reads at submission; [2]: us; [3]: the deadline.
 */
static void delay_done(struct gw_uring_cb *cb, int res)
{
	struct gw_io *io = container_of(cb, struct gw_io, ucb);
	struct fault *f = (struct fault *)io->scratch[2];

	(void)res;
	if (hold(f, io->q, io->scratch[3], (struct __kernel_timespec *)&io->scratch[0], &io->ucb))
		return;
	if (f->r.err) {
		gw_io_complete(io, -f->r.err);
		return;
	}
	if (f->inner->ops->submit(f->inner, io->q, io) == 1)
		gw_io_complete(io, io->result);
}

static int fault_submit(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io)
{
	struct fault *f = (struct fault *)b;

	if (!matches(&f->r, io->op, io->offset, io->len) || !hits(f))
		return f->inner->ops->submit(f->inner, q, io);
	if (f->r.delay_ns) {
		io->scratch[2] = (uint64_t)(uintptr_t)f;
		io->scratch[3] = gw_now_ns() + f->r.delay_ns;
		io->q = q;
		io->ucb.fn = delay_done;
		if (hold(f, q, io->scratch[3], (struct __kernel_timespec *)&io->scratch[0],
			 &io->ucb))
			return 0;
	}
	if (f->r.err == 0)
		return f->inner->ops->submit(f->inner, q, io);
	io->result = -f->r.err;
	return 1;
}

static int fault_extents(struct gw_backend *b, uint64_t offset, uint64_t len,
			 struct gw_extents *out)
{
	struct fault *f = (struct fault *)b;

	/* Asked synchronously: a hit fails, it cannot be delayed. */
	if (matches(&f->r, OP_EXTENTS, offset, len) && hits(f) && f->r.err)
		return -f->r.err;
	if (!f->inner->ops->extents) {
		gw_extents_add(out, len, 0);
		return 0;
	}
	return f->inner->ops->extents(f->inner, offset, len, out);
}

/* The query goes on to the inner backend: 0 queued there, 1 answered inline. */
static int extents_pass(struct fault *f, struct gw_ioq *q, struct gw_ext_req *x)
{
	if (f->inner->ops->extents_async)
		return f->inner->ops->extents_async(f->inner, q, x);
	x->result = 0;
	if (f->inner->ops->extents)
		x->result = f->inner->ops->extents(f->inner, x->offset, x->len, x->out);
	else
		gw_extents_add(x->out, x->len, 0);
	return 1;
}

/* A held extents query (they are rare: one allocation each). */
struct ext_hold {
	struct gw_uring_cb cb;
	struct __kernel_timespec ts;
	struct fault *f;
	struct gw_ext_req *x;
	uint64_t deadline;
};

/* A slice of a query's delay is over: hold on, fail it, or hand it on. */
static void ext_delay_done(struct gw_uring_cb *cb, int res)
{
	struct ext_hold *h = container_of(cb, struct ext_hold, cb);
	struct gw_ext_req *x = h->x;
	struct fault *f = h->f;

	(void)res;
	if (hold(f, x->q, h->deadline, &h->ts, &h->cb))
		return;
	free(h);
	if (f->r.err)
		gw_ext_complete(x, -f->r.err);
	else if (extents_pass(f, x->q, x) == 1)
		gw_ext_complete(x, x->result);
}

/* An inner backend that answers later (rbd) still does; a hit query fails or waits first. */
static int fault_extents_async(struct gw_backend *b, struct gw_ioq *q, struct gw_ext_req *x)
{
	struct fault *f = (struct fault *)b;

	if (!matches(&f->r, OP_EXTENTS, x->offset, x->len) || !hits(f))
		return extents_pass(f, q, x);
	if (f->r.delay_ns) {
		struct ext_hold *h = malloc(sizeof(*h));

		if (!h) {
			x->result = -ENOMEM;
			return 1;
		}
		*h = (struct ext_hold){ .cb.fn = ext_delay_done,
					.f = f,
					.x = x,
					.deadline = gw_now_ns() + f->r.delay_ns };
		if (hold(f, q, h->deadline, &h->ts, &h->cb))
			return 0;
		free(h);
	}
	if (f->r.err == 0)
		return extents_pass(f, q, x);
	x->result = -f->r.err;
	return 1;
}

static void fault_release(struct gw_backend *b)
{
	atomic_store(&((struct fault *)b)->released, true);
}

static int fault_sync(struct gw_backend *b)
{
	struct fault *f = (struct fault *)b;

	return f->inner->ops->sync ? f->inner->ops->sync(f->inner) : 0;
}

static void fault_close(struct gw_backend *b)
{
	gw_backend_close(((struct fault *)b)->inner);
}

static void fault_describe(struct gw_backend *b, char *buf, size_t len)
{
	struct fault *f = (struct fault *)b;
	char in[256] = "";

	if (f->inner->ops->describe)
		f->inner->ops->describe(f->inner, in, sizeof(in));
	else
		snprintf(in, sizeof(in), "%s", f->inner->ops->name);
	snprintf(buf, len, "%s, fault layer (%s%s, %llu hit)", in,
		 f->r.err ? strerror(f->r.err) : "no error", f->r.delay_ns ? " after a delay" : "",
		 (unsigned long long)atomic_load(&f->hit));
}

static const struct gw_backend_ops gw_fault_backend = {
	.abi_version = GW_BACKEND_ABI,
	.name = "fault",
	.summary = "fails or delays chosen requests of the image below",
	.instance_size = sizeof(struct fault),
	.open = fault_open,
	.submit = fault_submit,
	.extents = fault_extents,
	.extents_async = fault_extents_async,
	.sync = fault_sync,
	.close = fault_close,
	.describe = fault_describe,
	.release = fault_release,
};

struct gw_backend *gw_fault_wrap(struct gw_backend *inner, const struct gw_fault_opts *o, char *err,
				 size_t errlen)
{
	struct fault_wrap_opts w = { inner, o };
	struct gw_backend *b = gw_backend_open(&gw_fault_backend, inner->name, &w, err, errlen);

	if (!b)
		gw_backend_close(inner);
	return b;
}
