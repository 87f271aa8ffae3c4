/*
 * The worker side of a virtio-blk queue. See vblk_queue.h.
 *
 * Requests are pooled per queue (at most one per ring entry, allocated on
 * first use) so the data path allocates nothing once warm. Interrupts and
 * the continuation of a long pass over the ring are batched into the
 * worker's end-of-iteration hook (gw_worker_defer).
 */
#include "transports/virtio/vblk_queue.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/log.h"
#include "gateway/util.h"

/* Requests taken per pass before the loop gets to run other watchers. */
#define VBLK_PASS_BUDGET 256

/* Longest a poller keeps the worker's loop waiting, and how often it yields when idle. */
#define VBLK_POLL_SLICE_NS 100000u
#define VBLK_POLL_YIELD_NS 4000u

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

enum qop { QOP_START, QOP_STOP, QOP_ENABLE, QOP_SET_CALL, QOP_SET_KICK, QOP_SET_MEM };

struct vblk_qmsg {
	struct vblk_queue *q;
	enum qop op;
	vblk_queue_cb cb;
	void *arg;
	int rc;
	unsigned value;
	int fd;
	bool on;
	struct vblk_queue_start s;
};

struct vblk_retired {
	struct vblk_retired *next;
	struct virtio_memmap *mem;
	unsigned inflight;
};

static void deferred(struct gw_deferred *d);
static void process(struct vblk_queue *q);

/* ---- main-thread side ---- */

struct vblk_queue *vblk_queue_new(const struct vblk_dev *dev, struct gw_worker *w, unsigned index,
				  const char *name, const struct vblk_queue_ops *ops, void *ops_arg)
{
	struct vblk_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	q->dev = dev;
	q->w = w;
	q->index = index;
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->ops = ops;
	q->ops_arg = ops_arg;
	q->kick_fd = q->call_fd = -1;
	q->defer.fn = deferred;
	q->vq.name = q->name;
	return q;
}

static void reqs_free(struct vblk_queue *q)
{
	while (q->free_reqs) {
		struct vblk_req *r = q->free_reqs;

		q->free_reqs = r->next;
		free(r);
	}
	q->nreqs = 0;
}

void vblk_queue_free(struct vblk_queue *q)
{
	if (!q)
		return;
	reqs_free(q);
	free(q->heads);
	free(q);
}

static void reply_on_main(void *arg)
{
	struct vblk_qmsg *m = arg;

	m->cb(m->arg, m->rc, m->value);
	free(m);
}

static void reply(struct vblk_qmsg *m)
{
	if (gw_main_call(reply_on_main, m) < 0) {
		/* Out of memory for the mailbox: nothing sane to do but log; the caller hangs. */
		gw_err("%s: cannot report back to the main thread", m->q->name);
		free(m);
	}
}

static void broken_on_main(void *arg)
{
	struct vblk_queue *q = arg;

	if (q->ops && q->ops->broken)
		q->ops->broken(q, q->ops_arg);
}

static void on_worker(void *arg);

static int post(struct vblk_queue *q, struct vblk_qmsg *m)
{
	m->q = q;
	if (gw_worker_call(q->w, on_worker, m) < 0) {
		free(m);
		return -ENOMEM;
	}
	return 0;
}

static struct vblk_qmsg *msg_new(enum qop op, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = calloc(1, sizeof(*m));

	if (m) {
		m->op = op;
		m->cb = cb;
		m->arg = arg;
		m->fd = -1;
	}
	return m;
}

int vblk_queue_start(struct vblk_queue *q, const struct vblk_queue_start *s, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(QOP_START, cb, arg);

	if (!m) {
		if (s->kick_fd >= 0)
			close(s->kick_fd);
		if (s->call_fd >= 0)
			close(s->call_fd);
		return -ENOMEM;
	}
	m->s = *s;
	virtio_mem_get(s->mem);
	if (post(q, m) < 0) {
		virtio_mem_put(s->mem);
		if (s->kick_fd >= 0)
			close(s->kick_fd);
		if (s->call_fd >= 0)
			close(s->call_fd);
		return -ENOMEM;
	}
	return 0;
}

int vblk_queue_enable(struct vblk_queue *q, bool on, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(QOP_ENABLE, cb, arg);

	if (!m)
		return -ENOMEM;
	m->on = on;
	return post(q, m);
}

static int post_fd(struct vblk_queue *q, enum qop op, int fd, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(op, cb, arg);
	int rc;

	if (!m) {
		if (fd >= 0)
			close(fd);
		return -ENOMEM;
	}
	m->fd = fd;
	rc = post(q, m);
	if (rc < 0 && fd >= 0)
		close(fd);
	return rc;
}

int vblk_queue_set_call(struct vblk_queue *q, int fd, vblk_queue_cb cb, void *arg)
{
	return post_fd(q, QOP_SET_CALL, fd, cb, arg);
}

int vblk_queue_set_kick(struct vblk_queue *q, int fd, vblk_queue_cb cb, void *arg)
{
	return post_fd(q, QOP_SET_KICK, fd, cb, arg);
}

int vblk_queue_set_mem(struct vblk_queue *q, struct virtio_memmap *mem, struct vring_desc *desc,
		       uint16_t *avail, uint8_t *used, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(QOP_SET_MEM, cb, arg);

	if (!m)
		return -ENOMEM;
	m->s.mem = virtio_mem_get(mem);
	m->s.desc = desc;
	m->s.avail = avail;
	m->s.used = used;
	if (post(q, m) < 0) {
		virtio_mem_put(mem);
		return -ENOMEM;
	}
	return 0;
}

int vblk_queue_stop(struct vblk_queue *q, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(QOP_STOP, cb, arg);

	if (!m)
		return -ENOMEM;
	return post(q, m);
}

/* ---- worker side: requests ---- */

static struct vblk_req *req_get(struct vblk_queue *q)
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

static void req_put(struct vblk_queue *q, struct vblk_req *r)
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

static void kick_watch(struct vblk_queue *q, bool on)
{
	if (on == q->kick_on)
		return;
	q->kick_on = on;
	if (on)
		ev_io_start(q->w->loop, &q->kick_w);
	else
		ev_io_stop(q->w->loop, &q->kick_w);
}

static void poll_watch(struct vblk_queue *q, bool on);

static void mark_broken(struct vblk_queue *q)
{
	q->enabled = false;
	kick_watch(q, false);
	poll_watch(q, false);
	if (q->broken_reported)
		return;
	q->broken_reported = true;
	if (gw_main_call(broken_on_main, q) < 0)
		gw_err("%s: cannot report the broken ring to the main thread", q->name);
}

static void finish_stop(struct vblk_queue *q);

static void req_done(struct vblk_req *r)
{
	struct vblk_queue *q = r->owner;

	vq_push(&q->vq, r->elem.head, r->used_len);
	mem_release_req(q, r->mem);
	req_put(q, r);
	q->inflight--;
	q->need_notify = true;
	if (gw_unlikely(q->starved)) {
		q->starved = false;
		q->need_process = true;
	}
	gw_worker_defer(q->w, &q->defer);
}

/* Hand a mapped chain to the blk layer. False when the queue broke. */
static bool req_run(struct vblk_queue *q, struct vblk_req *r)
{
	r->done = req_done;
	r->ioq = &q->w->ioq;
	r->mem = q->mem;
	q->mem_inflight++;
	q->inflight++;
	if (gw_unlikely(vblk_req_start(q->dev, r) < 0)) {
		/* Unanswerable: it stays popped; the connection is going away. */
		vq_fail(&q->vq, "head %u: request without a writable status byte", r->elem.head);
		q->mem_inflight--;
		q->inflight--;
		req_put(q, r);
		mark_broken(q);
		return false;
	}
	return true;
}

/* Take requests until the ring is empty (0), the budget is spent (1) or it broke (-1). */
static int pass(struct vblk_queue *q)
{
	for (unsigned budget = VBLK_PASS_BUDGET; budget; budget--) {
		struct vblk_req *r = req_get(q);
		int rc;

		if (gw_unlikely(!r)) {
			q->starved = true; /* retried when a request completes */
			return 0;
		}
		rc = vq_pop(&q->vq, &r->elem, r->iov, r->iov_cap);
		if (rc <= 0) {
			req_put(q, r);
			if (rc < 0) {
				mark_broken(q);
				return -1;
			}
			return 0;
		}
		if (!req_run(q, r))
			return -1;
	}
	return 1;
}

static void poll_watch(struct vblk_queue *q, bool on)
{
	if (on == q->poll_on)
		return;
	q->poll_on = on;
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
 * Drain the ring. Then either keep polling it (kicks stay off; poll_cb
 * carries on from the loop) or ask for a kick and let the worker sleep.
 */
static void process(struct vblk_queue *q)
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
				poll_watch(q, true);
			return;
		}
		if (q->poll_ns) {
			q->poll_deadline = gw_now_ns() + q->poll_ns;
			vq_suppress_kicks(&q->vq);
			poll_watch(q, true);
			return;
		}
		if (!vq_arm_kick(&q->vq)) {
			q->idle_since = q->poll_max_ns ? gw_now_ns() : 0;
			return;
		}
	}
}

static void signal_driver(struct vblk_queue *q)
{
	static const uint64_t one = 1;

	if (q->ops && q->ops->notify) {
		q->ops->notify(q, q->ops_arg);
		return;
	}
	if (q->call_fd >= 0 && write(q->call_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		gw_debug("%s: call eventfd: %s", q->name, strerror(errno));
}

static void notify_now(struct vblk_queue *q)
{
	if (q->need_notify) {
		q->need_notify = false;
		if (vq_should_notify(&q->vq))
			signal_driver(q);
	}
}

/* The ring stayed empty for the whole window: sleep until kicked. */
static void poll_expired(struct vblk_queue *q, uint64_t now)
{
	poll_watch(q, false);
	q->poll_ns = q->poll_ns / 2 < 1000 ? 0 : q->poll_ns / 2;
	if (vq_arm_kick(&q->vq)) {
		process(q);
		return;
	}
	q->idle_since = now;
}

/*
 * ev_idle: the loop has nothing else to do. Poll the ring (and the worker's
 * io_uring) for at most a slice, then let the loop run again (it does not
 * block while polling is on). Requests found are processed and signalled
 * here; the window restarts with each batch and polling ends, kicks
 * re-armed, when it runs out. A yield now and then leaves the CPU to a
 * thread woken onto it (the client, often).
 */
static void poll_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct vblk_queue *q = container_of(w, struct vblk_queue, poll_w);
	struct gw_ioq *ioq = &q->w->ioq;
	uint64_t now = gw_now_ns(), start = now, last_work = now;

	if (q->need_process) {
		q->need_process = false;
		poll_watch(q, false);
		process(q);
		notify_now(q);
		return;
	}
	for (;;) {
		if (!can_run(q)) {
			poll_watch(q, false);
			return;
		}
		if (vq_pending(&q->vq)) {
			int rc = pass(q);

			gw_ioq_submit(ioq);
			notify_now(q);
			if (rc < 0)
				return;
			now = gw_now_ns();
			q->poll_deadline = now + q->poll_ns;
			last_work = now;
		} else if (io_uring_cq_ready(&ioq->ring)) {
			gw_ioq_reap(ioq);
			notify_now(q);
			now = gw_now_ns();
		} else if (now >= q->poll_deadline) {
			poll_expired(q, now);
			notify_now(q);
			return;
		} else {
			cpu_relax();
			now = gw_now_ns();
			if (now - last_work > VBLK_POLL_YIELD_NS) {
				sched_yield();
				last_work = now;
			}
		}
		if (now - start > VBLK_POLL_SLICE_NS)
			return; /* let the loop serve the rest; polling stays on */
	}
}

static void deferred(struct gw_deferred *d)
{
	struct vblk_queue *q = container_of(d, struct vblk_queue, defer);

	if (q->need_process && !q->poll_on) {
		q->need_process = false;
		process(q);
	}
	notify_now(q);
	if (q->stop_msg && !q->inflight)
		finish_stop(q);
}

static void kick_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vblk_queue *q = container_of(w, struct vblk_queue, kick_w);
	uint64_t v;

	if (read(q->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR) {
		gw_warn("%s: kick eventfd: %s; the queue stops", q->name, strerror(errno));
		q->vq.broken = true;
		mark_broken(q);
		return;
	}
	if (q->idle_since) {
		/* Would polling have caught this request? Then poll next time. */
		uint64_t gap = gw_now_ns() - q->idle_since;

		q->idle_since = 0;
		if (gap <= q->poll_max_ns)
			q->poll_ns = q->poll_ns ? GW_MIN(q->poll_ns * 2, q->poll_max_ns)
						: GW_MIN(4000u, q->poll_max_ns);
		else
			q->poll_ns = 0;
	}
	if (q->poll_on)
		return; /* the poller is on it */
	process(q);
}

/* ---- worker side: operations ---- */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void finish_stop(struct vblk_queue *q)
{
	struct vblk_qmsg *m = q->stop_msg;

	q->stop_msg = NULL;
	notify_now(q);
	kick_watch(q, false);
	poll_watch(q, false);
	m->value = q->vq.last_avail;
	m->rc = 0;
	q->running = false;
	q->stopping = false;
	close_fd(&q->kick_fd);
	close_fd(&q->call_fd);
	vq_fini(&q->vq);
	while (q->retired) {
		struct vblk_retired *t = q->retired;

		q->retired = t->next;
		virtio_mem_put(t->mem);
		free(t);
	}
	virtio_mem_put(q->mem);
	q->mem = NULL;
	reqs_free(q);
	reply(m);
}

/* Resubmit what the inflight region says was in flight, in pop order. */
static int recover(struct vblk_queue *q, uint64_t features)
{
	int n;

	if (!q->heads && !(q->heads = malloc(sizeof(*q->heads) * VQ_MAX_SIZE)))
		return -ENOMEM;
	n = vq_inflight_recover(&q->vq, features, q->heads);
	if (n < 0)
		return n;
	if (n)
		gw_info("%s: resubmitting %d request%s in flight before the restart", q->name, n,
			n == 1 ? "" : "s");
	for (int i = 0; i < n; i++) {
		struct vblk_req *r = req_get(q);

		if (!r)
			return -ENOMEM;
		if (vq_map_head(&q->vq, q->heads[i], &r->elem, r->iov, r->iov_cap) < 0) {
			req_put(q, r);
			return -EPROTO;
		}
		q->resubmitted++;
		if (!req_run(q, r))
			return -EPROTO;
	}
	return 0;
}

static int op_start(struct vblk_queue *q, struct vblk_queue_start *s)
{
	int rc;

	if (q->running) {
		rc = -EBUSY;
		goto fail;
	}
	memset(&q->vq, 0, sizeof(q->vq));
	q->vq.name = q->name;
	q->vq.desc = s->desc;
	q->vq.avail = s->avail;
	q->vq.used = s->used;
	q->vq.num = s->num;
	q->vq.event_idx = s->features & VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
	q->vq.indirect = s->features & VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC);
	q->vq.notify_on_empty = s->features & VIRTIO_BIT(VIRTIO_F_NOTIFY_ON_EMPTY);
	q->vq.mem = s->mem;
	q->vq.infl = s->infl;
	q->mem = s->mem;
	q->mem_inflight = 0;
	q->kick_fd = s->kick_fd;
	q->call_fd = s->call_fd;
	q->inflight = 0;
	q->stopping = false;
	q->need_notify = q->need_process = q->starved = false;
	rc = vq_init(&q->vq, s->last_avail);
	if (rc < 0)
		goto fail;
	q->running = true;
	q->enabled = s->enabled;
	ev_io_init(&q->kick_w, kick_cb, q->kick_fd, EV_READ);
	q->kick_on = false;
	ev_idle_init(&q->poll_w, poll_cb);
	q->poll_on = false;
	q->poll_max_ns = s->poll_max_ns;
	q->poll_ns = 0;
	q->idle_since = 0;
	q->broken_reported = false;
	if (s->infl) {
		rc = recover(q, s->features);
		if (rc < 0) {
			/*
			 * The queue runs but takes nothing more; requests already
			 * resubmitted finish on their own and stop() waits for them.
			 */
			if (rc != -EPROTO)
				vq_fail(&q->vq, "inflight recovery failed: %s", strerror(-rc));
			mark_broken(q);
			return 0;
		}
	}
	if (q->enabled) {
		kick_watch(q, true);
		process(q);
	}
	/* In case the driver waits for an interrupt that went to a dead process. */
	signal_driver(q);
	return 0;
fail:
	virtio_mem_put(s->mem);
	q->mem = NULL;
	close_fd(&q->kick_fd);
	close_fd(&q->call_fd);
	return rc;
}

static void on_worker(void *arg)
{
	struct vblk_qmsg *m = arg;
	struct vblk_queue *q = m->q;

	m->rc = 0;
	switch (m->op) {
	case QOP_START:
		m->rc = op_start(q, &m->s);
		m->value = q->vq.last_avail;
		break;
	case QOP_STOP:
		if (!q->running) {
			m->value = q->vq.last_avail;
			break;
		}
		q->enabled = false;
		q->stopping = true;
		kick_watch(q, false);
		poll_watch(q, false);
		q->stop_msg = m;
		if (!q->inflight)
			finish_stop(q);
		return; /* answered by finish_stop */
	case QOP_ENABLE:
		if (!q->running)
			break;
		q->enabled = m->on && !q->vq.broken;
		kick_watch(q, q->enabled);
		if (q->enabled) {
			vq_arm_kick(&q->vq);
			process(q);
		} else {
			poll_watch(q, false);
		}
		break;
	case QOP_SET_CALL:
		if (!q->running) {
			close_fd(&m->fd);
			m->rc = -EINVAL;
			break;
		}
		close_fd(&q->call_fd);
		q->call_fd = m->fd;
		signal_driver(q);
		break;
	case QOP_SET_KICK:
		if (!q->running) {
			close_fd(&m->fd);
			m->rc = -EINVAL;
			break;
		}
		kick_watch(q, false);
		close_fd(&q->kick_fd);
		q->kick_fd = m->fd;
		ev_io_init(&q->kick_w, kick_cb, q->kick_fd, EV_READ);
		if (q->enabled && q->kick_fd >= 0) {
			kick_watch(q, true);
			process(q);
		}
		break;
	case QOP_SET_MEM:
		if (!q->running) {
			virtio_mem_put(m->s.mem);
			m->rc = -EINVAL;
			break;
		}
		if (q->mem_inflight) {
			struct vblk_retired *t = malloc(sizeof(*t));

			if (!t) {
				virtio_mem_put(m->s.mem);
				m->rc = -ENOMEM;
				break;
			}
			t->mem = q->mem;
			t->inflight = q->mem_inflight;
			t->next = q->retired;
			q->retired = t;
		} else {
			virtio_mem_put(q->mem);
		}
		q->mem = m->s.mem;
		q->mem_inflight = 0;
		q->vq.mem = q->mem;
		q->vq.desc = m->s.desc;
		q->vq.avail = m->s.avail;
		q->vq.used = m->s.used;
		break;
	}
	reply(m);
}
