/*
 * The read loop: one cloned /dev/fuse fd per queue (FUSE_DEV_IOC_CLONE),
 * each watched on its worker's loop. A readable fd is read until it is
 * empty, one request per free slot; each request is answered with one
 * writev on the fd it came from (the kernel matches replies per fd).
 *
 * A request is read with readv into [80-byte header area, data buffer], so
 * a WRITE's payload lands page-aligned at the start of the data buffer,
 * ready for an O_DIRECT backend; another op's arguments that spill past the
 * header area are copied back together before decoding.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/fuse/fuse_internal.h"

#define QUEUE_DEPTH 64 /* request slots per queue */

void fuse_req_done(struct fuse_req *r)
{
	struct fuse_queue *q = r->q;

	r->next = q->free;
	q->free = r;
	q->inflight--;
	/* A queue that ran out of slots watches its fd again. */
	if (q->x->mode == FUSE_MODE_READ && !q->stopping && !q->eof && !ev_is_active(&q->watcher))
		ev_io_start(q->w->loop, &q->watcher);
	fuse_queue_check_gone(q);
}

void fuse_queue_check_gone(struct fuse_queue *q)
{
	if (q->stopping && q->inflight == 0 && q->armed == 0 && q->busy == 0 && !q->dead) {
		q->dead = true;
		fuse_queue_gone(q);
	}
}

void fuse_dev_reply(struct fuse_req *r, int err, const void *arg, size_t arglen, const void *data,
		    size_t datalen)
{
	struct fuse_queue *q = r->q;
	struct fuse_out_header oh = { .unique = r->unique, .error = -err };
	struct iovec v[3] = {
		{ &oh, sizeof(oh) },
		{ (void *)arg, arglen },
		{ (void *)data, datalen },
	};
	ssize_t n;

	if (err)
		arglen = datalen = 0;
	v[1].iov_len = arglen;
	v[2].iov_len = datalen;
	oh.len = (uint32_t)(sizeof(oh) + arglen + datalen);
	do {
		n = writev(q->fd, v, 3);
	} while (n < 0 && errno == EINTR);
	/* ENOENT: the request was interrupted and is gone; ENODEV: unmounted. */
	if (n < 0 && errno != ENOENT && errno != ENODEV)
		gw_warn("fuse %s: reply to request %llu: %s", q->x->exp->id,
			(unsigned long long)r->unique, strerror(errno));
	fuse_req_done(r);
}

static void handle(struct fuse_req *r, size_t n)
{
	const struct fuse_in_header *in = (const void *)r->hdr;
	size_t head = sizeof(*in), have = GW_MIN(n, sizeof(r->hdr));
	const void *arg = r->hdr + head;
	size_t arglen;

	if (n < head || in->len != n) {
		gw_warn("fuse %s: malformed request (%zu bytes read)", r->q->x->exp->id, n);
		fuse_req_done(r);
		return;
	}
	if (in->opcode == FUSE_WRITE) {
		fuse_dispatch(r, in, arg, have - head, r->data, n - have);
		return;
	}
	arglen = n - head;
	if (n > sizeof(r->hdr)) {
		if (arglen > sizeof(r->arg))
			arglen = sizeof(r->arg); /* no op here takes more */
		memcpy(r->arg, arg, have - head);
		memcpy(r->arg + (have - head), r->data, arglen - (have - head));
		arg = r->arg;
	}
	fuse_dispatch(r, in, arg, arglen, r->data, 0);
}

static void readable_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct fuse_queue *q = w->data;

	(void)loop;
	(void)revents;
	while (q->free && !q->stopping) {
		struct fuse_req *r = q->free;
		struct iovec v[2] = { { r->hdr, sizeof(r->hdr) }, { r->data, q->x->data_buf } };
		ssize_t n = readv(q->fd, v, 2);

		if (n < 0) {
			if (errno == EINTR || errno == ENOENT) /* ENOENT: interrupted in flight */
				continue;
			if (errno != EAGAIN) {
				/* ENODEV: unmounted under us (umount -l, fusermount -u). */
				if (errno != ENODEV)
					gw_warn("fuse %s: reading /dev/fuse: %s", q->x->exp->id,
						strerror(errno));
				q->eof = true;
				ev_io_stop(q->w->loop, &q->watcher);
			}
			break;
		}
		q->free = r->next;
		q->inflight++;
		__atomic_store_n(&q->dev_reqs, q->dev_reqs + 1, __ATOMIC_RELAXED);
		handle(r, (size_t)n);
	}
	/* Out of slots: stop watching until a reply frees one. */
	if (!q->free)
		ev_io_stop(q->w->loop, &q->watcher);
}

static void start_on_worker(void *arg)
{
	struct fuse_queue *q = arg;

	ev_io_init(&q->watcher, readable_cb, q->fd, EV_READ);
	q->watcher.data = q;
	ev_io_start(q->w->loop, &q->watcher);
}

static void stop_on_worker(void *arg)
{
	struct fuse_queue *q = arg;

	q->stopping = true;
	ev_io_stop(q->w->loop, &q->watcher);
	fuse_queue_check_gone(q);
}

static int queue_alloc(struct fuse_exp *x, struct fuse_queue *q, unsigned depth)
{
	q->all = calloc(depth, sizeof(*q->all));
	if (!q->all)
		return -ENOMEM;
	q->nreq = depth;
	for (unsigned i = 0; i < depth; i++) {
		struct fuse_req *r = &q->all[i];

		r->q = q;
		if (posix_memalign((void **)&r->data, 4096, x->data_buf))
			return -ENOMEM;
		r->next = q->free;
		q->free = r;
	}
	return 0;
}

void fuse_queue_free(struct fuse_queue *q)
{
	for (unsigned i = 0; q->all && i < q->nreq; i++) {
		free(q->all[i].data);
		free(q->all[i].uhdr);
	}
	free(q->all);
	q->all = NULL;
	for (unsigned i = 0; q->ents && i < q->nent; i++) {
		free(q->ents[i].data);
		free(q->ents[i].uhdr);
	}
	free(q->ents);
	q->ents = NULL;
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
}

int fuse_dev_start(struct fuse_exp *x, char *err, size_t errlen)
{
	unsigned n = x->o->queues ? x->o->queues : gw_workers_count();

	x->qs = calloc(n, sizeof(*x->qs));
	if (!x->qs)
		return -ENOMEM;
	x->nq = n;
	for (unsigned i = 0; i < n; i++) {
		struct fuse_queue *q = &x->qs[i];
		uint32_t master = (uint32_t)x->devfd;
		int rc;

		q->x = x;
		q->id = i;
		q->fd = open("/dev/fuse", O_RDWR | O_NONBLOCK | O_CLOEXEC);
		if (q->fd < 0 || ioctl(q->fd, FUSE_DEV_IOC_CLONE, &master) < 0) {
			rc = -errno;
			gw_seterr(err, errlen, "cloning the /dev/fuse fd (FUSE_DEV_IOC_CLONE): %s",
				  strerror(errno));
			return rc;
		}
		/* With io_uring the fd carries only FORGET, INTERRUPT and what comes
		 * before every queue is registered: a few slots do. */
		rc = queue_alloc(x, q, x->mode == FUSE_MODE_URING ? 4 : QUEUE_DEPTH);
		if (rc < 0) {
			gw_seterr(err, errlen, "out of memory for request buffers");
			return rc;
		}
		q->w = gw_worker_pick();
	}
	for (unsigned i = 0; i < n; i++) {
		x->nq_running++;
		gw_worker_call(x->qs[i].w, start_on_worker, &x->qs[i]);
	}
	return 0;
}

void fuse_queues_stop(struct fuse_exp *x)
{
	for (unsigned i = 0; i < x->nq; i++)
		gw_worker_call(x->qs[i].w, stop_on_worker, &x->qs[i]);
}
