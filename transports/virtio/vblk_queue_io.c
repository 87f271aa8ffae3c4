/*
 * The worker side of a virtio-blk queue's data path: pooled requests, passes
 * over the ring, adaptive polling, interrupts. See vblk_queue.h.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/coalesce.h"
#include "lib/efd.h"
#include "lib/guard.h"
#include "lib/log.h"
#include "lib/util.h"
#include "transports/virtio/vblk_queue_internal.h"

/* Requests taken per pass before the loop gets to run other watchers. */
#define VBLK_PASS_BUDGET 256

/* Longest a poller keeps the worker's loop waiting (it yields every GW_POLL_YIELD_NS when idle). */
#define VBLK_POLL_SLICE_NS 100000u

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* ---- worker side: requests ---- */

struct vblk_req *vblkq_req_get(struct vblk_queue *q)
{
	struct vblk_req *r = q->free_reqs;

	if (gw_likely(r)) {
		q->free_reqs = r->next;
		return r;
	}
	if (q->nreqs >= q->vq.num)
		return NULL; /* cannot happen: vq_pop refuses more heads than entries */
	r = malloc(sizeof(*r) + q->dev->iov_max * sizeof(struct iovec));
	if (!r)
		return NULL;
	memset(r, 0, sizeof(*r));
	r->iov_cap = q->dev->iov_max;
	r->owner = q;
	q->nreqs++;
	return r;
}

void vblkq_req_put(struct vblk_queue *q, struct vblk_req *r)
{
	r->next = q->free_reqs;
	q->free_reqs = r;
}

static void mem_release_req(struct vblk_queue *q, struct virtio_memmap *m)
{
	struct vblk_retired **pp;

	if (gw_likely(m == q->mem)) {
		q->mem_inflight--;
		return;
	}
	for (pp = &q->retired; *pp; pp = &(*pp)->next) {
		struct vblk_retired *t = *pp;

		if (t->mem != m)
			continue;
		if (--t->inflight == 0) {
			*pp = t->next;
			virtio_mem_put(t->mem);
			free(t);
		}
		return;
	}
}

void vblkq_kick_watch(struct vblk_queue *q, bool on)
{
	if (on == q->kick_on)
		return;
	q->kick_on = on;
	if (on)
		ev_io_start(q->w->loop, &q->kick_w);
	else
		ev_io_stop(q->w->loop, &q->kick_w);
}

static void broken_on_main(void *arg)
{
	struct vblk_queue *q = arg;

	if (q->ops && q->ops->broken)
		q->ops->broken(q, q->ops_arg);
}

void vblkq_mark_broken(struct vblk_queue *q, const char *why)
{
	q->enabled = false;
	vblkq_kick_watch(q, false);
	vblkq_poll_watch(q, false);
	if (q->broken_reported)
		return;
	q->broken_reported = true;
	q->broken_why = why;
	if (gw_main_call(broken_on_main, q) < 0)
		gw_err("%s: cannot report the broken ring to the main thread", q->name);
}

/*
 * Whether r used memory the SIGBUS guard poisoned: the driver shrank it
 * while it was mapped, so what the backend read from it (or wrote to it)
 * was private zeros, not the driver's. Checked only when the process-wide
 * fault count moved while r was in flight (the guard counts before the
 * zeros appear), against r's own map, which may be older than the queue's.
 * The first such request breaks the queue for good.
 */
static bool req_poisoned(struct vblk_queue *q, const struct vblk_req *r)
{
	if (!q->poisoned && (virtio_mem_poisoned(r->mem) || virtio_mem_poisoned(q->mem))) {
		q->poisoned = true;
		gw_warn("%s: the driver's memory shrank under a request (SIGBUS); it and every later one "
			"stay unanswered (resubmitted from the inflight region if the driver reconnects)",
			q->name);
		vblkq_mark_broken(q, "the driver's memory shrank under a request (SIGBUS)");
	}
	return q->poisoned;
}

static void req_done(struct vblk_req *r)
{
	struct vblk_queue *q = r->owner;

	/* A poisoned request is never acknowledged: the inflight region keeps it for a reconnect.
	 */
	if (gw_likely(gw_guard_faults() == r->faults && !q->poisoned) || !req_poisoned(q, r)) {
		vq_push(&q->vq, r->elem.head, r->used_len);
		q->need_notify = true;
	}
	mem_release_req(q, r->mem);
	vblkq_req_put(q, r);
	q->inflight--;
	if (gw_unlikely(q->starved)) {
		q->starved = false;
		q->need_process = true;
	}
	gw_worker_defer(q->w, &q->defer);
}

/* Hand a mapped chain to the blk layer. False when the queue broke. */
bool vblkq_req_run(struct vblk_queue *q, struct vblk_req *r)
{
	r->done = req_done;
	r->ioq = &q->w->ioq;
	r->mem = q->mem;
	r->faults = gw_guard_faults();
	q->mem_inflight++;
	q->inflight++;
	if (gw_unlikely(vblk_req_start(q->dev, r) < 0)) {
		/* Unanswerable: it stays popped; the connection is going away. */
		vq_fail(&q->vq, "head %u: request without a writable status byte", r->elem.head);
		q->mem_inflight--;
		q->inflight--;
		vblkq_req_put(q, r);
		vblkq_mark_broken(q, NULL);
		return false;
	}
	return true;
}

/* Take requests until the ring is empty (0), the budget is spent (1) or it broke (-1). */
static int pass(struct vblk_queue *q)
{
	for (unsigned budget = VBLK_PASS_BUDGET; budget; budget--) {
		struct vblk_req *r = vblkq_req_get(q);
		int rc;

		if (gw_unlikely(!r)) {
			q->starved = true; /* retried when a request completes */
			return 0;
		}
		rc = vq_pop(&q->vq, &r->elem, r->iov, r->iov_cap);
		if (rc <= 0) {
			vblkq_req_put(q, r);
			if (rc < 0) {
				vblkq_mark_broken(q, NULL);
				return -1;
			}
			return 0;
		}
		if (!vblkq_req_run(q, r))
			return -1;
	}
	return 1;
}

void vblkq_poll_watch(struct vblk_queue *q, bool on)
{
	if (on == q->poll_on)
		return;
	q->poll_on = on;
	gw_worker_poller(q->w, on);
	if (on)
		ev_idle_start(q->w->loop, &q->poll_w);
	else
		ev_idle_stop(q->w->loop, &q->poll_w);
}

static bool can_run(const struct vblk_queue *q)
{
	return q->running && q->enabled && !q->stopping && !q->vq.broken;
}

/*
 * Drain the ring. Then either keep polling it (kicks stay off; vblkq_poll_cb
 * carries on from the loop) or ask for a kick and let the worker sleep.
 */
void vblkq_process(struct vblk_queue *q)
{
	for (;;) {
		int rc;

		if (!can_run(q))
			return;
		rc = pass(q);
		if (rc < 0)
			return;
		if (rc > 0 || q->starved) {
			/* More than a pass's worth: continue from the loop, after other events. */
			q->need_process = rc > 0;
			if (rc > 0)
				vblkq_poll_watch(q, true);
			return;
		}
		if (q->poll_ns) {
			q->poll_deadline = gw_now_ns() + q->poll_ns;
			vq_suppress_kicks(&q->vq);
			vblkq_poll_watch(q, true);
			return;
		}
		if (!vq_arm_kick(&q->vq)) {
			q->idle_since = q->poll_max_ns ? gw_now_ns() : 0;
			return;
		}
	}
}

void vblkq_signal_driver(struct vblk_queue *q)
{
	int rc;

	if (q->ops && q->ops->notify) {
		q->ops->notify(q, q->ops_arg);
		return;
	}
	if (q->call_fd < 0 || (rc = gw_efd_signal(q->call_fd)) == 0)
		return;
	if (rc == -ETIMEDOUT) {
		gw_warn("%s: a write to the driver's call eventfd blocked for over %u ms (its counter is full "
			"and it does not read it); the queue stops",
			q->name, GW_EFD_STALL_MS);
		/* Never again: requests still in flight would each stall the thread anew. */
		close(q->call_fd);
		q->call_fd = -1;
		q->vq.broken = true;
		vblkq_mark_broken(q, "the driver's call eventfd is full and unread");
		return;
	}
	gw_debug("%s: call eventfd: %s", q->name, strerror(-rc));
}

void vblkq_notify_now(struct vblk_queue *q)
{
	gw_hold_release(&q->hold);
	if (q->need_notify) {
		q->need_notify = false;
		if (vq_should_notify(&q->vq))
			vblkq_signal_driver(q);
	}
}

/*
 * Signal what completed, or hold the signal while a slow driver is still
 * posting (gw_hold). A held signal keeps the worker polling until its
 * release (vblkq_poll_cb), with kicks off: the poller sees new requests.
 */
static void notify_or_hold(struct vblk_queue *q)
{
	uint64_t now;

	if (!q->need_notify)
		return;
	if (!q->hold.quiet_ns || !can_run(q)) {
		vblkq_notify_now(q);
		return;
	}
	now = gw_ioq_now(&q->w->ioq);
	if (!gw_hold_signal_due(&q->hold, now)) {
		vblkq_notify_now(q);
		return;
	}
	gw_worker_count(&q->w->ctr.held_signals, 1);
	if (!q->poll_on) {
		q->poll_deadline = now;
		q->idle_since = 0;
		vq_suppress_kicks(&q->vq);
		vblkq_poll_watch(q, true);
	}
}

/*
 * The ring stayed empty for the whole window: sleep until kicked. The window
 * is kept: the kick tells whether it was worth it (vblkq_kick_cb). Halving
 * it here instead made a client whose wake-ups take longer than the window
 * (a blocked fio thread on another vCPU: 30-60 us) pin the window at 4-8 us,
 * expire on every batch and pay a kick and a wake-up each time.
 */
static void poll_expired(struct vblk_queue *q, uint64_t now)
{
	vblkq_poll_watch(q, false);
	if (vq_arm_kick(&q->vq)) {
		vblkq_process(q);
		return;
	}
	q->idle_since = now;
}

/*
 * ev_idle: the loop has nothing else to do. Poll the ring (and the worker's
 * io_uring) for at most a slice, then let the loop run again (it does not
 * block while polling is on). Requests found are processed and signalled
 * here; the window restarts with each batch and polling ends, kicks
 * re-armed, when it runs out (not while a signal is held: see
 * notify_or_hold). A yield now and then leaves the CPU to a
 * thread woken onto it (the client, often).
 */
static void poll_slice(struct vblk_queue *q, struct gw_ioq *ioq)
{
	uint64_t now = ioq->now_ns, start = now, last_work = now;
	bool found = false;

	gw_worker_count(&q->w->ctr.ring_polls, 1);
	if (q->need_process) {
		q->need_process = false;
		vblkq_poll_watch(q, false);
		vblkq_process(q);
		vblkq_notify_now(q);
		return;
	}
	for (;;) {
		if (!can_run(q)) {
			vblkq_poll_watch(q, false);
			if (q->hold.due && !q->vq.broken)
				vblkq_notify_now(q); /* disabled or stopping: nothing to wait for */
			return;
		}
		if (vq_pending(&q->vq)) {
			int rc;

			if (!found) {
				found = true;
				gw_worker_count(&q->w->ctr.ring_polls_found, 1);
			}
			gw_hold_arrival(&q->hold, now);
			rc = pass(q);
			gw_ioq_submit(ioq);
			notify_or_hold(q);
			if (rc < 0)
				return;
			now = gw_ioq_tick(ioq);
			q->poll_deadline = now + q->poll_ns;
			last_work = now;
		} else if (gw_ioq_ready(ioq)) {
			gw_ioq_reap(ioq);
			notify_or_hold(q);
			now = gw_ioq_tick(ioq);
		} else if (q->hold.due && now >= q->hold.due) {
			vblkq_notify_now(q); /* the driver went quiet: release */
		} else if (!q->hold.due && now >= q->poll_deadline) {
			poll_expired(q, now);
			vblkq_notify_now(q);
			return;
		} else {
			cpu_relax();
			now = gw_ioq_tick(ioq);
			if (now - last_work > GW_POLL_YIELD_NS) {
				sched_yield();
				last_work = now;
			}
		}
		if (now - start > VBLK_POLL_SLICE_NS)
			return; /* let the loop serve the rest; polling stays on */
	}
}

/*
 * Requests found in one pass of the slice share one clock reading for their
 * statistics (gw_ioq_tick): the slice reads the clock after every pass
 * anyway.
 */
void vblkq_poll_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct vblk_queue *q = container_of(w, struct vblk_queue, poll_w);
	struct gw_ioq *ioq = &q->w->ioq;

	gw_ioq_tick(ioq);
	poll_slice(q, ioq);
	gw_ioq_untick(ioq);
}

void vblkq_deferred(struct gw_deferred *d)
{
	struct vblk_queue *q = container_of(d, struct vblk_queue, defer);

	if (q->need_process && !q->poll_on) {
		q->need_process = false;
		vblkq_process(q);
	}
	notify_or_hold(q);
	if (q->stop_msg && !q->inflight)
		vblkq_finish_stop(q);
}

void vblkq_kick_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vblk_queue *q = container_of(w, struct vblk_queue, kick_w);
	uint64_t v, now;
	int rc = gw_efd_take(q->kick_fd, &v);

	gw_worker_count(&q->w->ctr.kicks, 1);
	if (rc < 0 && rc != -EAGAIN && rc != -EINTR) {
		gw_warn("%s: kick eventfd: %s; the queue stops", q->name, strerror(-rc));
		q->vq.broken = true;
		vblkq_mark_broken(q, "its kick eventfd failed");
		return;
	}
	now = q->idle_since || q->hold.quiet_ns ? gw_now_ns() : 0;
	if (q->idle_since) {
		/*
		 * Would polling have caught this request? Then poll next time. The
		 * gap includes this thread's own wake-up, which polling saves: up
		 * to twice the limit still counts as in time.
		 */
		q->poll_ns = gw_poll_window_next(q->poll_ns, now - q->idle_since, q->poll_max_ns,
						 2ull * q->poll_max_ns);
		q->idle_since = 0;
	}
	gw_hold_arrival(&q->hold, now);
	if (q->poll_on)
		return; /* the poller is on it */
	vblkq_process(q);
}
