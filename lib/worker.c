#include "lib/worker.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lib/efd.h"
#include "lib/log.h"
#include "lib/util.h"

/* Ring size per worker: enough for several connections at QD 128 each. */
#define GW_WORKER_RING  512
/* Buffer cache per worker. */
#define GW_WORKER_CACHE (64u << 20)

struct gw_call {
	struct gw_call *next;
	void (*fn)(void *arg);
	void *arg;
};

static struct gw_worker *workers;
static unsigned nworkers; /* threads: the pool, then the background worker */
static unsigned npool;
static unsigned coalesce_us = 20;
static unsigned pick_rr;
static __thread struct gw_worker *self;
static struct gw_mailbox main_mbox;
static bool main_mbox_ready;

static void mailbox_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	struct gw_mailbox *mb = container_of(a, struct gw_mailbox, async);
	struct gw_call *list;

	(void)loop;
	(void)revents;
	pthread_mutex_lock(&mb->lock);
	list = mb->head;
	mb->head = NULL;
	mb->tail = &mb->head;
	pthread_mutex_unlock(&mb->lock);
	while (list) {
		struct gw_call *c = list;

		list = c->next;
		c->fn(c->arg);
		free(c);
	}
}

int gw_mailbox_init(struct gw_mailbox *mb, struct ev_loop *loop)
{
	memset(mb, 0, sizeof(*mb));
	mb->loop = loop;
	mb->tail = &mb->head;
	pthread_mutex_init(&mb->lock, NULL);
	ev_async_init(&mb->async, mailbox_cb);
	ev_async_start(loop, &mb->async);
	/* The mailbox alone must not keep a loop alive. */
	ev_unref(loop);
	return 0;
}

void gw_mailbox_exit(struct gw_mailbox *mb)
{
	ev_ref(mb->loop);
	ev_async_stop(mb->loop, &mb->async);
	/* Run what is left, so nobody waits forever for a reply. */
	mailbox_cb(mb->loop, &mb->async, 0);
	pthread_mutex_destroy(&mb->lock);
}

int gw_mailbox_post(struct gw_mailbox *mb, void (*fn)(void *arg), void *arg)
{
	struct gw_call *c = malloc(sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->next = NULL;
	c->fn = fn;
	c->arg = arg;
	pthread_mutex_lock(&mb->lock);
	*mb->tail = c;
	mb->tail = &c->next;
	pthread_mutex_unlock(&mb->lock);
	ev_async_send(mb->loop, &mb->async);
	return 0;
}

int gw_main_init(struct ev_loop *loop)
{
	int rc = gw_mailbox_init(&main_mbox, loop);

	main_mbox_ready = rc == 0;
	return rc;
}

void gw_main_exit(void)
{
	if (main_mbox_ready)
		gw_mailbox_exit(&main_mbox);
	main_mbox_ready = false;
}

int gw_main_call(void (*fn)(void *arg), void *arg)
{
	return gw_mailbox_post(&main_mbox, fn, arg);
}

int gw_worker_call(struct gw_worker *w, void (*fn)(void *arg), void *arg)
{
	return gw_mailbox_post(&w->mbox, fn, arg);
}

void gw_worker_defer(struct gw_worker *w, struct gw_deferred *d)
{
	if (d->queued)
		return;
	d->queued = true;
	d->next = w->deferred;
	w->deferred = d;
}

static void run_deferred(struct gw_worker *w)
{
	while (w->deferred) {
		struct gw_deferred *list = w->deferred;

		w->deferred = NULL;
		while (list) {
			struct gw_deferred *d = list;

			list = d->next;
			d->queued = false;
			d->fn(d);
		}
	}
}

/* Before the loop blocks: flush what callbacks batched, submit the ring. */
static void prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
	struct gw_worker *w = container_of(p, struct gw_worker, prepare);

	(void)loop;
	(void)revents;
	gw_worker_count(&w->ctr.turns, 1);
	gw_worker_count(&w->ctr.requests, w->work);
	if (ev_is_active(&w->spin) || w->pollers) {
		gw_worker_count(&w->ctr.spin_turns, 1);
		if (w->work)
			gw_worker_count(&w->ctr.spin_found, 1);
	}
	/* Empty turns of a spinning loop are not wake-ups: coalescing ignores them. */
	if (w->co.window_ns && (w->work || !ev_is_active(&w->spin))) {
		uint64_t win = gw_coalesce_update(&w->co, gw_now_ns(), w->work);

		ev_set_io_collect_interval(w->loop, (double)win / 1e9);
		__atomic_store_n(&w->ctr.co_window_ns, win, __ATOMIC_RELAXED);
		__atomic_store_n(&w->ctr.co_phase, (uint64_t)w->co.phase, __ATOMIC_RELAXED);
		__atomic_store_n(&w->ctr.co_decided_wait, w->co.decided_wait, __ATOMIC_RELAXED);
		__atomic_store_n(&w->ctr.co_decided_nowait, w->co.decided_nowait, __ATOMIC_RELAXED);
	}
	w->work = 0;
	/*
	 * Completions can keep coming for ever (a uring command that completes
	 * inline with the next request, as FUSE and ublk commits do), so the
	 * rounds are bounded to let the loop look at its other fds. Every round
	 * ends with a submit, so no SQE waits in the SQ while the loop sleeps;
	 * and when work is left (completions reaped after the eventfd was
	 * drained, deferred calls, a refused submit), the loop must not sleep:
	 * the `again` idle watcher makes it poll without blocking and come back.
	 */
	for (int round = 0;; round++) {
		int rc;

		run_deferred(w);
		rc = gw_ioq_submit(&w->ioq);
		if (rc < 0 && rc != -EAGAIN && rc != -EBUSY)
			gw_err("%s: io_uring submit: %s", w->name, strerror(-rc));
		if (!gw_ioq_ready(&w->ioq) || round == 63)
			break;
		gw_ioq_reap(&w->ioq);
	}
	if ((gw_ioq_ready(&w->ioq) || w->deferred || w->ioq.queued) && !ev_is_active(&w->again))
		ev_idle_start(w->loop, &w->again);
	if (!ev_is_active(&w->again) && !ev_is_active(&w->spin) && !w->pollers)
		gw_worker_count(&w->ctr.sleeps, 1);
}

void gw_worker_counters_get(const struct gw_worker *w, struct gw_worker_counters *out)
{
	const uint64_t *src = (const uint64_t *)&w->ctr;
	uint64_t *dst = (uint64_t *)out;

	/* Every field is a uint64_t (struct gw_worker_counters). */
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

/* prepare_cb left work: nothing to do here, the next prepare_cb does it. */
static void again_cb(struct ev_loop *loop, ev_idle *i, int revents)
{
	(void)revents;
	ev_idle_stop(loop, i);
}

/* The spin deadline (a yield now and then leaves the CPU to a woken client). */
static void spin_cb(struct ev_loop *loop, ev_idle *i, int revents)
{
	struct gw_worker *w = container_of(i, struct gw_worker, spin);
	uint64_t now = gw_now_ns();

	(void)revents;
	if (now >= w->spin_until) {
		ev_idle_stop(loop, i);
		return;
	}
	if (now - w->spin_yield >= GW_POLL_YIELD_NS) {
		sched_yield();
		w->spin_yield = now;
	}
}

void gw_worker_spin(struct gw_worker *w, uint64_t until_ns)
{
	if (until_ns > w->spin_until)
		w->spin_until = until_ns;
	if (!ev_is_active(&w->spin)) {
		w->spin_yield = gw_now_ns();
		ev_idle_start(w->loop, &w->spin);
	}
}

static void ioq_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct gw_worker *w = container_of(io, struct gw_worker, ioq_watcher);

	(void)loop;
	(void)revents;
	gw_ioq_reap(&w->ioq);
}

static void *worker_main(void *arg)
{
	struct gw_worker *w = arg;

	self = w;
	gw_log_set_thread_name(w->name);
	/* Nice applies per thread on Linux: only this one yields to the pool. */
	if (w->background && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) < 0)
		gw_debug("%s: cannot lower its priority: %s", w->name, strerror(errno));
	if (gw_efd_thread() < 0)
		gw_warn("%s: too many threads for the eventfd watchdog; a peer's full eventfd could hang it",
			w->name);
	ev_run(w->loop, 0);
	run_deferred(w);
	/* Drain the ring before the thread goes: buffers may still be in flight. */
	while (w->ioq.inflight || w->ioq.queued)
		if (gw_ioq_wait(&w->ioq) < 0)
			break;
	return NULL;
}

static void break_cb(void *arg)
{
	struct gw_worker *w = arg;

	ev_break(w->loop, EVBREAK_ALL);
}

static int worker_init(struct gw_worker *w, unsigned id, bool background, char *err, size_t errlen)
{
	int rc;

	memset(w, 0, sizeof(*w));
	w->id = id;
	w->background = background;
	if (background)
		snprintf(w->name, sizeof(w->name), "worker-bg");
	else
		snprintf(w->name, sizeof(w->name), "worker%u", id);
	w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!w->loop) {
		gw_seterr(err, errlen, "cannot create an event loop for %s", w->name);
		return -ENOMEM;
	}
	/*
	 * 128-byte SQEs where the kernel has them (5.19): uring commands such as
	 * FUSE over io_uring's need them. With them, cooperative task work
	 * (5.19): a completion that needs the worker (a FUSE request, a file
	 * read) does not interrupt it with an IPI while it runs but waits for
	 * its next system call, and raises IORING_SQ_TASKRUN so a polling loop
	 * knows to enter (gw_ioq_ready); a worker asleep in epoll_wait is woken
	 * as before. Else plain SQEs.
	 */
	rc = gw_ioq_init_flags(&w->ioq, GW_WORKER_RING, id, true,
			       IORING_SETUP_SQE128 | IORING_SETUP_COOP_TASKRUN |
				       IORING_SETUP_TASKRUN_FLAG);
	if (rc == -EINVAL)
		rc = gw_ioq_init_flags(&w->ioq, GW_WORKER_RING, id, true, IORING_SETUP_SQE128);
	if (rc == -EINVAL)
		rc = gw_ioq_init(&w->ioq, GW_WORKER_RING, id, true);
	if (rc < 0) {
		gw_seterr(err, errlen, "cannot create an io_uring for %s: %s%s", w->name,
			  strerror(-rc),
			  rc == -EPERM || rc == -ENOSYS ? " (io_uring disabled on this host?)"
							: "");
		ev_loop_destroy(w->loop);
		return rc;
	}
	gw_bufpool_init(&w->pool, GW_WORKER_CACHE);
	gw_coalesce_init(&w->co, (uint64_t)coalesce_us * 1000);
	gw_mailbox_init(&w->mbox, w->loop);
	ev_io_init(&w->ioq_watcher, ioq_cb, w->ioq.eventfd, EV_READ);
	ev_io_start(w->loop, &w->ioq_watcher);
	ev_prepare_init(&w->prepare, prepare_cb);
	ev_prepare_start(w->loop, &w->prepare);
	ev_idle_init(&w->spin, spin_cb);
	ev_idle_init(&w->again, again_cb);
	/* Internal watchers alone must not keep the loop running... but workers
	 * run until told to stop, so keep one reference: the ioq watcher. */
	ev_unref(w->loop); /* for the prepare watcher */
	return 0;
}

static void worker_fini(struct gw_worker *w)
{
	ev_ref(w->loop);
	ev_idle_stop(w->loop, &w->spin);
	ev_idle_stop(w->loop, &w->again);
	ev_prepare_stop(w->loop, &w->prepare);
	ev_io_stop(w->loop, &w->ioq_watcher);
	gw_mailbox_exit(&w->mbox);
	gw_ioq_exit(&w->ioq);
	gw_bufpool_exit(&w->pool);
	ev_loop_destroy(w->loop);
}

/* Start w's thread with the signal mask workers run with. 0 or -errno. */
static int worker_spawn(struct gw_worker *w)
{
	/*
	 * Workers block the signals that belong to the main loop, not the
	 * fault signals (gw_thread_sigset): SIGBUS, raised by a worker's access
	 * to shared memory that its owner shrank, is handled on that thread by
	 * lib/guard.c, and a blocked fault signal would kill the process with
	 * no handler run (no sanitizer report). And SIGURG: lib/efd.c's
	 * watchdog uses it to free a worker stuck writing to a peer's eventfd.
	 */
	sigset_t all, old;
	int rc;

	gw_thread_sigset(&all);
	sigdelset(&all, SIGURG);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = -pthread_create(&w->thread, NULL, worker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc == 0)
		__atomic_store_n(&w->started, true, __ATOMIC_RELEASE);
	return rc;
}

int gw_workers_start(unsigned n, char *err, size_t errlen)
{
	int rc;

	if (n == 0)
		n = 1;
	/* One slot more: the background worker, started when first asked for. */
	workers = calloc(n + 1, sizeof(*workers));
	if (!workers)
		return -ENOMEM;
	npool = n;
	for (unsigned i = 0; i < n; i++) {
		rc = worker_init(&workers[i], i, false, err, errlen);
		if (rc < 0)
			goto err_fini;
		nworkers = i + 1;
	}
	for (unsigned i = 0; i < n; i++) {
		rc = worker_spawn(&workers[i]);
		if (rc) {
			gw_seterr(err, errlen, "cannot start worker thread: %s", strerror(-rc));
			goto err_stop;
		}
	}
	return 0;

err_stop:
	gw_workers_stop();
	return rc;
err_fini:
	for (unsigned i = 0; i < nworkers; i++)
		worker_fini(&workers[i]);
	free(workers);
	workers = NULL;
	nworkers = npool = 0;
	return rc;
}

void gw_workers_stop(void)
{
	for (unsigned i = 0; i < nworkers; i++)
		if (workers[i].started)
			gw_worker_call(&workers[i], break_cb, &workers[i]);
	for (unsigned i = 0; i < nworkers; i++)
		if (workers[i].started)
			pthread_join(workers[i].thread, NULL);
	for (unsigned i = 0; i < nworkers; i++)
		worker_fini(&workers[i]);
	free(workers);
	workers = NULL;
	nworkers = npool = 0;
}

void gw_workers_set_coalesce_us(unsigned us)
{
	coalesce_us = us;
}

unsigned gw_workers_count(void)
{
	return npool;
}

unsigned gw_workers_total(void)
{
	return npool ? npool + 1 : 0;
}

struct gw_worker *gw_worker_get(unsigned i)
{
	/* The background worker's slot is NULL until it started. */
	return i < nworkers && __atomic_load_n(&workers[i].started, __ATOMIC_ACQUIRE) ? &workers[i]
										      : NULL;
}

struct gw_worker *gw_worker_pick(void)
{
	struct gw_worker *best = NULL;
	unsigned start = __atomic_fetch_add(&pick_rr, 1, __ATOMIC_RELAXED);

	for (unsigned k = 0; k < npool; k++) {
		struct gw_worker *w = &workers[(start + k) % npool];

		if (!best || __atomic_load_n(&w->load, __ATOMIC_RELAXED) <
				     __atomic_load_n(&best->load, __ATOMIC_RELAXED))
			best = w;
	}
	if (best)
		__atomic_fetch_add(&best->load, 1, __ATOMIC_RELAXED);
	return best;
}

struct gw_worker *gw_worker_background(void)
{
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	struct gw_worker *w;
	char err[256];

	if (!npool)
		return NULL;
	w = &workers[npool];
	pthread_mutex_lock(&mu);
	if (!w->started) {
		/* Made when first asked for: a daemon without backups never pays for it. */
		if (worker_init(w, npool, true, err, sizeof(err)) < 0) {
			gw_warn("the background worker: %s; its work goes to the pool", err);
		} else if (worker_spawn(w) < 0) {
			gw_warn("the background worker: cannot start its thread; its work goes to "
				"the pool");
			worker_fini(w);
		} else {
			nworkers = npool + 1;
		}
	}
	pthread_mutex_unlock(&mu);
	if (!w->started)
		return gw_worker_pick();
	__atomic_fetch_add(&w->load, 1, __ATOMIC_RELAXED);
	return w;
}

void gw_worker_unload(struct gw_worker *w)
{
	__atomic_fetch_sub(&w->load, 1, __ATOMIC_RELAXED);
}

struct gw_worker *gw_worker_self(void)
{
	return self;
}
