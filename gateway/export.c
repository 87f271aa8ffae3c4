#include "gateway/export.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/cbt.h"
#include "lib/cbw.h"
#include "lib/worker.h"
#include "lib/log.h"

#define GW_DEFAULT_MAX_XFER (32u << 20)

static const char *const state_names[] = {
	[GW_EXPORT_NEW] = "new",           [GW_EXPORT_RUNNING] = "running",
	[GW_EXPORT_STOPPING] = "stopping", [GW_EXPORT_STOPPED] = "stopped",
	[GW_EXPORT_FAILED] = "failed",     [GW_EXPORT_STARTING] = "starting",
};

const char *gw_export_state_name(enum gw_export_state s)
{
	return (unsigned)s < GW_ARRAY_SIZE(state_names) ? state_names[s] : "?";
}

struct gw_export *gw_export_new(const char *id, struct gw_backend *b, bool read_only,
				uint32_t block_size)
{
	struct gw_export *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->id = strdup(id);
	e->notes = strdup("");
	if (posix_memalign((void **)&e->stats, GW_CACHELINE,
			   GW_STATS_SLOTS * sizeof(struct gw_stats)) ||
	    !e->id || !e->notes) {
		gw_export_free(e);
		return NULL;
	}
	memset(e->stats, 0, GW_STATS_SLOTS * sizeof(struct gw_stats));
	e->backend = b;
	e->image = b->name;
	e->size = b->size;
	e->read_only = read_only || (b->caps & GW_CAP_READ_ONLY);
	e->caps = b->caps | (e->read_only ? GW_CAP_READ_ONLY : 0);
	e->min_block = GW_MAX(b->min_block ? b->min_block : 1, block_size ? block_size : 1);
	e->pref_block = GW_MAX(b->pref_block ? b->pref_block : 4096, e->min_block);
	e->max_xfer = b->max_xfer ? GW_MIN(b->max_xfer, GW_DEFAULT_MAX_XFER) : GW_DEFAULT_MAX_XFER;
	atomic_init(&e->clients, 0);
	return e;
}

void gw_export_free(struct gw_export *e)
{
	if (!e)
		return;
	free(e->id);
	free(e->notes);
	for (size_t i = 0; i < e->nrejected; i++)
		free(e->rejected[i].why);
	free(e->rejected);
	free(e->stats);
	gw_change_map_free(e->changes);
	gw_cbw_put(e->view);
	free(e);
}

void gw_change_map_free(struct gw_change_map *m)
{
	if (!m)
		return;
	free(m->since);
	free(m->bits);
	free(m);
}

static bool map_bit(const void *bits, uint64_t i)
{
	return gw_cbt_bit(bits, i);
}

uint64_t gw_export_changed_run(const struct gw_export *e, uint64_t offset, uint64_t len,
			       bool *changed)
{
	const struct gw_change_map *m = e->changes;

	if (!m) {
		*changed = true;
		return offset < e->size ? GW_MIN(len, e->size - offset) : 0;
	}
	return gw_chunk_run(map_bit, m->bits, m->nchunks, m->granularity, e->size, offset, len,
			    changed);
}

static const uint32_t allowed_flags[GW_OP__COUNT] = {
	[GW_OP_READ] = GW_IO_HOLE_OK | GW_IO_BORROW,
	[GW_OP_WRITE] = GW_IO_FUA,
	[GW_OP_FLUSH] = 0,
	[GW_OP_TRIM] = GW_IO_FUA,
	[GW_OP_WRITE_ZEROES] = GW_IO_FUA | GW_IO_NO_UNMAP | GW_IO_FAST_ZERO,
	[GW_OP_CACHE] = 0,
};

static inline struct gw_stats *slot_of(struct gw_export *e, struct gw_ioq *q)
{
	return &e->stats[q->slot % GW_STATS_SLOTS];
}

/*
 * Count a finished request and the time since it arrived. The slot belongs
 * to the calling thread (shared only when more than GW_STATS_SLOTS threads
 * run), so the relaxed adds cost no contended cache line.
 */
static inline unsigned lat_bucket(uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned b = us <= 1 ? 0 : 64 - (unsigned)__builtin_clzll(us - 1);

	return b < GW_LAT_BUCKETS ? b : GW_LAT_BUCKETS - 1;
}

static inline void count(struct gw_stats *s, const struct gw_ioq *q, struct gw_io *io,
			 uint64_t start_ns)
{
	uint64_t end = gw_ioq_now(q);
	uint64_t took = end > start_ns ? end - start_ns : 0;

	__atomic_fetch_add(&s->time_ns[io->op], took, __ATOMIC_RELAXED);
	__atomic_fetch_add(&s->lat[io->op][lat_bucket(took)], 1, __ATOMIC_RELAXED);
	if (io->flags & GW_IO_FUA)
		__atomic_fetch_add(&s->fua, 1, __ATOMIC_RELAXED);
	if (io->result < 0) {
		__atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
	} else if (io->op == GW_OP_READ) {
		__atomic_fetch_add(&s->bytes_read, io->len, __ATOMIC_RELAXED);
	} else if (io->op == GW_OP_WRITE) {
		__atomic_fetch_add(&s->bytes_written, io->len, __ATOMIC_RELAXED);
	}
}

/* Validate; 0 when the backend should see it, 1 when done inline (result set). */
static int check(struct gw_export *e, struct gw_io *io)
{
	uint64_t end;
	bool writes;

	io->rflags = 0;
	if (gw_unlikely(io->op >= GW_OP__COUNT || (io->flags & ~allowed_flags[io->op])))
		goto einval;
	if (gw_unlikely((io->flags & GW_IO_BORROW) && !(e->caps & GW_CAP_BORROW)))
		goto einval;
	writes = io->op == GW_OP_WRITE || io->op == GW_OP_TRIM || io->op == GW_OP_WRITE_ZEROES;
	if (gw_unlikely(writes && e->read_only)) {
		io->result = -EPERM;
		return 1;
	}
	if (io->op == GW_OP_FLUSH) {
		if (!(e->caps & GW_CAP_FLUSH)) {
			io->result = 0;
			return 1;
		}
		return 0;
	}
	end = io->offset + io->len;
	if (gw_unlikely(end < io->offset || end > e->size)) {
		io->result = io->op == GW_OP_WRITE || io->op == GW_OP_WRITE_ZEROES ? -ENOSPC
										   : -EINVAL;
		return 1;
	}
	if (gw_unlikely(((io->offset | io->len) & (e->min_block - 1)) != 0))
		goto einval;
	if (io->len == 0) {
		io->result = 0;
		return 1;
	}
	switch (io->op) {
	case GW_OP_READ:
	case GW_OP_WRITE:
		if (gw_unlikely(io->len > e->max_xfer))
			goto einval;
		break;
	case GW_OP_TRIM:
		if (!(e->caps & GW_CAP_TRIM)) {
			io->result = 0; /* a hint nobody can act on */
			return 1;
		}
		break;
	case GW_OP_WRITE_ZEROES:
		if ((io->flags & GW_IO_FAST_ZERO) && !(e->caps & GW_CAP_FAST_ZERO)) {
			io->result = -ENOTSUP;
			return 1;
		}
		break;
	case GW_OP_CACHE:
		if (!(e->caps & GW_CAP_CACHE)) {
			io->result = 0;
			return 1;
		}
		break;
	default:
		break;
	}
	return 0;
einval:
	io->result = -EINVAL;
	return 1;
}

/*
 * Changed-block tracking (lib/cbt.h): mark a write's range before it
 * reaches the image (a kill -9 then loses no mark) and again when it
 * completes (a write in flight across a checkpoint lands in both records);
 * make the marks durable before a FLUSH or FUA request goes on. 1 when the
 * request failed here (result set).
 */
static int track(struct gw_backend *b, struct gw_cbt *t, struct gw_io *io)
{
	int rc;

	if (io->op == GW_OP_WRITE || io->op == GW_OP_WRITE_ZEROES || io->op == GW_OP_TRIM) {
		struct gw_cbw *v = __atomic_load_n(&b->cbw, __ATOMIC_ACQUIRE);

		/* A point-in-time view keeps the old data first (lib/cbw.h). */
		if (gw_unlikely(v != NULL))
			gw_cbw_before_write(v, io->offset, io->len);
		gw_cbt_mark(t, io->offset, io->len);
		io->_cbt = t;
	}
	if (io->op == GW_OP_FLUSH || (io->flags & GW_IO_FUA)) {
		rc = gw_cbt_sync(t);
		if (gw_unlikely(rc < 0)) {
			io->result = rc;
			return 1;
		}
	}
	return 0;
}

/*
 * A read of a copy-before-write view (lib/cbw.h): on the worker itself
 * where the data is in the page cache (no wait on the disk), else on the
 * view's own threads, which may wait on file I/O where a worker loop must
 * not; the answer comes back to this worker. Inline when not on a worker.
 */
struct view_read {
	struct gw_cbw_job job;
	struct gw_io *io;
};

static void view_read_done(void *arg)
{
	struct view_read *v = arg;
	struct gw_io *io = v->io;
	int rc = v->job.result;

	free(v);
	io->rflags = 0;
	gw_io_complete(io, rc);
}

static int view_read(struct gw_export *e, struct gw_stats *s, struct gw_io *io, uint64_t start)
{
	struct gw_worker *w = gw_worker_self();
	struct view_read *v = NULL;

	if (w) {
		io->result = gw_cbw_read_cached(e->view, io->iov, io->iovcnt, io->offset, io->len);
		if (io->result != -EAGAIN) {
			io->rflags = 0;
			count(s, io->q, io, start);
			return 1;
		}
		v = malloc(sizeof(*v));
	}
	if (v) {
		v->io = io;
		v->job = (struct gw_cbw_job){ .iov = io->iov,
					      .iovcnt = io->iovcnt,
					      .off = io->offset,
					      .len = io->len,
					      .w = w,
					      .done = view_read_done,
					      .arg = v };
		__atomic_fetch_add(&s->inflight, 1, __ATOMIC_RELAXED);
		if (gw_cbw_read_submit(e->view, &v->job) == 0)
			return 0;
		__atomic_fetch_sub(&s->inflight, 1, __ATOMIC_RELAXED);
		free(v);
	}
	io->result = gw_cbw_read(e->view, io->iov, io->iovcnt, io->offset, io->len);
	io->rflags = 0;
	count(s, io->q, io, start);
	return 1;
}

/* Hand a checked, tracked request on: to the view or the backend. 1 when done here. */
static int dispatch(struct gw_export *e, struct gw_stats *s, struct gw_ioq *q, struct gw_io *io,
		    uint64_t start)
{
	int rc;

	if (gw_unlikely(e->view != NULL) && io->op == GW_OP_READ)
		return view_read(e, s, io, start);
	/*
	 * In flight only once the backend took it: most requests of inline
	 * backends never are, which saves two locked adds each. A backend that
	 * completes before returning 0 makes the count dip below zero meanwhile.
	 */
	rc = e->backend->ops->submit(e->backend, q, io);
	if (rc) {
		if (io->_cbt)
			gw_cbt_mark(io->_cbt, io->offset, io->len);
		count(s, q, io, start);
		return 1;
	}
	__atomic_fetch_add(&s->inflight, 1, __ATOMIC_RELAXED);
	return 0;
}

/*
 * A backup export's rate cap: each read takes len / rate seconds of the
 * export's time line, starting when the one before it ends (or now); the
 * wait until its start, in ns.
 */
static uint64_t rate_wait_ns(struct gw_export *e, uint64_t len)
{
	uint64_t now = gw_now_ns(), cost = (uint64_t)((double)len * 1e9 / (double)e->rate);
	uint64_t prev = atomic_load_explicit(&e->rate_next, memory_order_relaxed), at;

	do
		at = GW_MAX(prev, now);
	while (!atomic_compare_exchange_weak(&e->rate_next, &prev, at + cost));
	return at - now;
}

/*
 * A read held back by the rate cap, on its worker's loop until its turn
 * (at, in gw_now_ns time). The timer wakes at least every RATE_STEP_NS to
 * look whether the export is still running: one that is stopping answers
 * its held reads at once instead of holding its stop up for their turns.
 */
#define RATE_STEP_NS 100000000ull
struct rate_held {
	ev_timer timer;
	struct gw_export *e;
	struct gw_stats *s;
	struct gw_ioq *q;
	struct gw_io *io;
	uint64_t start, at;
};

static void rate_go(struct ev_loop *loop, ev_timer *t, int events)
{
	struct rate_held *h = (struct rate_held *)t;
	struct gw_io *io = h->io;
	uint64_t now = gw_now_ns();

	(void)events;
	if (h->at > now + 50000 &&
	    __atomic_load_n(&h->e->state, __ATOMIC_RELAXED) == GW_EXPORT_RUNNING) {
		ev_timer_set(t, (double)GW_MIN(h->at - now, RATE_STEP_NS) / 1e9, 0.);
		ev_timer_start(loop, t);
		return;
	}
	__atomic_fetch_sub(&h->s->inflight, 1, __ATOMIC_RELAXED);
	if (dispatch(h->e, h->s, h->q, io, h->start))
		io->done(io); /* answered at once: counted, result set */
	free(h);
}

/* 1 when the read was held (it goes on from rate_go), 0 to go on now. */
static int rate_hold(struct gw_export *e, struct gw_stats *s, struct gw_ioq *q, struct gw_io *io,
		     uint64_t start)
{
	uint64_t wait = rate_wait_ns(e, io->len);
	struct gw_worker *w;
	struct rate_held *h;

	if (wait < 50000) /* not worth a timer */
		return 0;
	w = gw_worker_self();
	h = w ? malloc(sizeof(*h)) : NULL;
	if (!h) {
		/* Off a worker loop (or out of memory): this thread waits. */
		struct timespec ts = { (time_t)(wait / 1000000000u), (long)(wait % 1000000000u) };

		nanosleep(&ts, NULL);
		return 0;
	}
	*h = (struct rate_held){
		.e = e, .s = s, .q = q, .io = io, .start = start, .at = gw_now_ns() + wait
	};
	__atomic_fetch_add(&s->inflight, 1, __ATOMIC_RELAXED);
	ev_timer_init(&h->timer, rate_go, (double)GW_MIN(wait, RATE_STEP_NS) / 1e9, 0.);
	ev_timer_start(w->loop, &h->timer);
	return 1;
}

int gw_export_submit(struct gw_export *e, struct gw_ioq *q, struct gw_io *io)
{
	struct gw_stats *s = slot_of(e, q);
	uint64_t start = gw_ioq_now(q);

	if (check(e, io)) {
		if (gw_likely(io->op < GW_OP__COUNT))
			count(s, q, io, start);
		else
			__atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
		return 1;
	}
	io->_stats = s;
	io->_start_ns = start;
	io->q = q;
	io->result = 0;
	io->_cbt = NULL;
	if (gw_unlikely(e->backend->cbt != NULL) && track(e->backend, e->backend->cbt, io)) {
		count(s, q, io, start);
		return 1;
	}
	if (gw_unlikely(e->rate != 0) && io->op == GW_OP_READ && rate_hold(e, s, q, io, start))
		return 0;
	return dispatch(e, s, q, io, start);
}

void gw_io_complete(struct gw_io *io, int result)
{
	io->result = result;
	if (io->_cbt)
		gw_cbt_mark(io->_cbt, io->offset, io->len);
	__atomic_fetch_sub(&((struct gw_stats *)io->_stats)->inflight, 1, __ATOMIC_RELAXED);
	count(io->_stats, io->q, io, io->_start_ns);
	io->done(io);
}

void gw_export_count_error(struct gw_export *e, struct gw_ioq *q)
{
	__atomic_fetch_add(&slot_of(e, q)->errors, 1, __ATOMIC_RELAXED);
}

/*
 * One step of what a backup export answers itself: a run that `mine`
 * marks is answered here with flags; any other is cut to the run's end and
 * left to the next step. Returns true when answered.
 */
static bool answer_run(struct gw_export *e, uint64_t run, bool mine, uint32_t flags, uint64_t *len,
		       struct gw_extents *out)
{
	/* A run ends on a chunk boundary; keep the rest of the query block aligned. */
	run = GW_MIN(*len, (run + e->min_block - 1) & ~(uint64_t)(e->min_block - 1));
	if (mine) {
		gw_extents_add(out, run, flags);
		return true;
	}
	*len = run;
	return false;
}

/*
 * What a backup export answers before the backend: on a layer view
 * (only_changed) a run of unchanged chunks is not allocated and not known
 * to be zero; then on a copy-before-write view a run of chunks copied aside
 * is data. What is left is the backend's to describe (for a view, the live
 * image's allocation of chunks not copied), the query cut at the run's end
 * (a client asks again for the rest). Returns true when answered.
 */
static bool backup_extents(struct gw_export *e, uint64_t offset, uint64_t *len,
			   struct gw_extents *out)
{
	bool set;
	uint64_t run;

	if (e->changes && e->changes->only_changed) {
		run = gw_export_changed_run(e, offset, *len, &set);
		if (answer_run(e, run, !set, GW_EXT_HOLE, len, out))
			return true;
	}
	if (e->view) {
		run = gw_cbw_copied_run(e->view, offset, *len, &set);
		if (answer_run(e, run, set, 0, len, out))
			return true;
	}
	return false;
}

int gw_export_extents(struct gw_export *e, struct gw_ioq *q, uint64_t offset, uint64_t len,
		      struct gw_extents *out)
{
	uint64_t end = offset + len;
	int rc;

	__atomic_fetch_add(&slot_of(e, q)->extents, 1, __ATOMIC_RELAXED);
	out->n = 0;
	out->end = offset;
	if (len == 0 || end < offset || end > e->size || out->cap == 0 ||
	    ((offset | len) & (e->min_block - 1))) {
		gw_export_count_error(e, q);
		return -EINVAL;
	}
	if (backup_extents(e, offset, &len, out))
		return 0;
	if (!e->backend->ops->extents) {
		gw_extents_add(out, len, 0);
		return 0;
	}
	rc = e->backend->ops->extents(e->backend, offset, len, out);
	if (rc == 0 && out->n == 0)
		rc = -EIO; /* a backend must describe at least the first byte */
	if (rc < 0)
		gw_export_count_error(e, q);
	return rc;
}

int gw_export_extents_submit(struct gw_export *e, struct gw_ioq *q, struct gw_ext_req *x)
{
	struct gw_backend *b = e->backend;
	struct gw_extents *out = x->out;
	uint64_t end = x->offset + x->len;

	if (!b->ops->extents_async) {
		x->result = gw_export_extents(e, q, x->offset, x->len, out);
		return 1;
	}
	__atomic_fetch_add(&slot_of(e, q)->extents, 1, __ATOMIC_RELAXED);
	out->n = 0;
	out->end = x->offset;
	if (x->len == 0 || end < x->offset || end > e->size || out->cap == 0 ||
	    ((x->offset | x->len) & (e->min_block - 1))) {
		gw_export_count_error(e, q);
		x->result = -EINVAL;
		return 1;
	}
	if (backup_extents(e, x->offset, &x->len, out)) {
		x->result = 0;
		return 1;
	}
	x->_export = e;
	x->q = q;
	x->result = 0;
	if (b->ops->extents_async(b, q, x) == 0)
		return 0;
	if (x->result == 0 && out->n == 0)
		x->result = -EIO;
	if (x->result < 0)
		gw_export_count_error(e, q);
	return 1;
}

void gw_ext_complete(struct gw_ext_req *x, int result)
{
	struct gw_export *e = x->_export;

	if (result == 0 && x->out->n == 0)
		result = -EIO; /* a backend must describe at least the first byte */
	if (result < 0)
		gw_export_count_error(e, x->q);
	x->result = result;
	x->done(x);
}

void gw_export_stats(const struct gw_export *e, struct gw_stats_total *t)
{
	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; i < GW_STATS_SLOTS; i++) {
		const struct gw_stats *s = &e->stats[i];
		uint64_t ops[GW_OP__COUNT];

		for (unsigned o = 0; o < GW_OP__COUNT; o++) {
			ops[o] = 0;
			for (unsigned b = 0; b < GW_LAT_BUCKETS; b++)
				ops[o] += __atomic_load_n(&s->lat[o][b], __ATOMIC_RELAXED);
			t->requests += ops[o];
		}
		t->reads += ops[GW_OP_READ];
		t->writes += ops[GW_OP_WRITE];
		t->flushes += ops[GW_OP_FLUSH];
		t->trims += ops[GW_OP_TRIM];
		t->zeroes += ops[GW_OP_WRITE_ZEROES];
		t->caches += ops[GW_OP_CACHE];
		t->extents += __atomic_load_n(&s->extents, __ATOMIC_RELAXED);
		t->fua += __atomic_load_n(&s->fua, __ATOMIC_RELAXED);
		t->bytes_read += __atomic_load_n(&s->bytes_read, __ATOMIC_RELAXED);
		t->bytes_written += __atomic_load_n(&s->bytes_written, __ATOMIC_RELAXED);
		t->errors += __atomic_load_n(&s->errors, __ATOMIC_RELAXED);
		for (unsigned o = 0; o < GW_OP__COUNT; o++) {
			t->time_ns[o] += __atomic_load_n(&s->time_ns[o], __ATOMIC_RELAXED);
			for (unsigned b = 0; b < GW_LAT_BUCKETS; b++)
				t->lat[o][b] += __atomic_load_n(&s->lat[o][b], __ATOMIC_RELAXED);
		}
		t->inflight += __atomic_load_n(&s->inflight, __ATOMIC_RELAXED);
	}
}
