/*
 * A virtio-blk queue's control side (see vblk_queue.h): the operations the main thread posts
 * (start, stop, enable, new fds, new memory map) and inflight recovery. The data path is in
 * vblk_queue_io.c. Requests are pooled per queue (at most one per ring
 * entry, allocated on first use) so the data path allocates nothing once
 * warm; interrupts are batched into the worker's end-of-iteration hook.
 */
#include "transports/virtio/vblk_queue_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"

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
	q->defer.fn = vblkq_deferred;
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

int vblk_queue_start(struct vblk_queue *q, const struct vblk_queue_start *s, vblk_queue_cb cb,
		     void *arg)
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

int vblk_queue_base(struct vblk_queue *q, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(QOP_BASE, cb, arg);

	if (!m)
		return -ENOMEM;
	return post(q, m);
}

int vblk_queue_stop(struct vblk_queue *q, vblk_queue_cb cb, void *arg)
{
	struct vblk_qmsg *m = msg_new(QOP_STOP, cb, arg);

	if (!m)
		return -ENOMEM;
	return post(q, m);
}

/* ---- worker side: operations ---- */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void vblkq_finish_stop(struct vblk_queue *q)
{
	struct vblk_qmsg *m = q->stop_msg;

	q->stop_msg = NULL;
	vblkq_notify_now(q);
	vblkq_kick_watch(q, false);
	vblkq_poll_watch(q, false);
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
		struct vblk_req *r = vblkq_req_get(q);

		if (!r)
			return -ENOMEM;
		if (vq_map_head(&q->vq, q->heads[i], &r->elem, r->iov, r->iov_cap) < 0) {
			vblkq_req_put(q, r);
			return -EPROTO;
		}
		q->resubmitted++;
		if (!vblkq_req_run(q, r))
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
	q->vq.event_idx = s->features & VIRTIO_BIT(VIRTIO_RING_F_EVENT_IDX);
	q->vq.indirect = s->features & VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC);
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
	ev_io_init(&q->kick_w, vblkq_kick_cb, q->kick_fd, EV_READ);
	q->kick_on = false;
	ev_idle_init(&q->poll_w, vblkq_poll_cb);
	q->poll_on = false;
	q->poll_max_ns = s->poll_max_ns;
	q->poll_ns = 0;
	q->idle_since = 0;
	gw_hold_init(&q->hold, s->hold_ns);
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
			vblkq_mark_broken(q, NULL);
			return 0;
		}
	}
	if (q->enabled) {
		vblkq_kick_watch(q, true);
		vblkq_process(q);
	}
	/* In case the driver waits for an interrupt that went to a dead vblkq_process. */
	vblkq_signal_driver(q);
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
		vblkq_kick_watch(q, false);
		vblkq_poll_watch(q, false);
		q->stop_msg = m;
		if (!q->inflight)
			vblkq_finish_stop(q);
		return; /* answered by vblkq_finish_stop */
	case QOP_ENABLE:
		if (!q->running)
			break;
		q->enabled = m->on && !q->vq.broken;
		vblkq_kick_watch(q, q->enabled);
		if (q->enabled) {
			vq_arm_kick(&q->vq);
			vblkq_process(q);
		} else {
			vblkq_poll_watch(q, false);
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
		vblkq_signal_driver(q);
		break;
	case QOP_SET_KICK:
		if (!q->running) {
			close_fd(&m->fd);
			m->rc = -EINVAL;
			break;
		}
		vblkq_kick_watch(q, false);
		close_fd(&q->kick_fd);
		q->kick_fd = m->fd;
		ev_io_init(&q->kick_w, vblkq_kick_cb, q->kick_fd, EV_READ);
		if (q->enabled && q->kick_fd >= 0) {
			vblkq_kick_watch(q, true);
			vblkq_process(q);
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
	case QOP_BASE:
		m->value = q->vq.last_avail;
		break;
	}
	reply(m);
}

unsigned vblk_queue_index(const struct vblk_queue *q)
{
	return q->index;
}

const char *vblk_queue_broken_why(const struct vblk_queue *q)
{
	return q->broken_why;
}

uint64_t vblk_queue_resubmitted(const struct vblk_queue *q)
{
	return q->resubmitted;
}
