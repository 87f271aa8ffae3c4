/*
 * FUSE over io_uring (Linux 6.14+, enable_uring): the kernel keeps one
 * request queue per possible CPU and hands requests to ring entries that
 * the daemon registered with IORING_OP_URING_CMD on /dev/fuse. Each entry
 * is a header buffer (struct fuse_uring_req_header) and a payload buffer;
 * its SQE completes when a request has been written into them, and the
 * reply goes back in the same buffers with a COMMIT_AND_FETCH SQE, which
 * also waits for the next request. No read(), no write(): one SQE per
 * request, on the same ring as the backend's I/O (the worker's).
 *
 * Kernel queues are spread over the workers (queue i on worker i % N); a
 * request is queued on the CPU its client runs on. The read loop keeps
 * running beside (fuse_dev.c): the kernel still sends FORGET and INTERRUPT
 * through /dev/fuse, and every request until all queues are registered.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/coalesce.h"
#include "lib/log.h"
#include "lib/util.h"
#include "transports/fuse/fuse_internal.h"

static void arm(struct fuse_req *r, uint32_t cmd_op, uint64_t commit_id);

/*
 * Polling for a serial client. At queue depth 1 the client's next request
 * comes a few microseconds after the reply to its last one. A worker
 * asleep in epoll_wait then pays a full wake-up for it: the kernel queues
 * the request as task work on the worker's thread, which interrupts the
 * sleep (epoll_wait fails with EINTR), posts the CQE, signals the ring's
 * eventfd, and only then does the loop take the request.
 *
 * So, as ublk's queues and NBD's connections do, a queue polls for a
 * strictly serial client (struct gw_serial_poll, lib/coalesce.h: a window
 * up to poll-us that grows while the client comes back in time and closes
 * when it does not, so an idle, slow or deep client costs no CPU): it keeps
 * its worker from sleeping for the window (gw_worker_spin). The loop goes
 * round without blocking and reaps the ring before each turn, so the task
 * work lands in a running thread and the request is taken at once; the
 * spinning loop yields every few microseconds (spin_cb). poll-us 0 never
 * polls. A request's kernel queue is its client's CPU: a worker
 * running on that same CPU does not poll, as the client needs the CPU to
 * send its next request (on a busy machine the scheduler wakes the worker
 * there for nearly every request).
 */
static void came_back(struct fuse_queue *q)
{
	uint64_t now = gw_now_ns();

	if (q->polling && now - q->sp.idle_since <= q->sp.window_ns)
		gw_worker_count(&q->poll_hits, 1);
	q->polling = false;
	gw_serial_poll_came_back(&q->sp, now, q->x->o->poll_us * 1000u);
}

static void went_idle(struct fuse_queue *q)
{
	uint64_t until = gw_serial_poll_went_idle(
		&q->sp, q->x->o->poll_us && !q->stopping ? gw_now_ns() : 0);

	if (!until)
		return;
	/* The client's next request needs this CPU: spinning here would only
	 * delay it (a busy machine runs both on one CPU). */
	if (sched_getcpu() == q->client_cpu) {
		gw_worker_count(&q->poll_same_cpu, 1);
		return;
	}
	gw_worker_count(&q->polls, 1);
	q->polling = true;
	gw_worker_spin(q->w, until);
}

void fuse_uring_reply(struct fuse_req *r, int err, const void *arg, size_t arglen, const void *data,
		      size_t datalen)
{
	struct fuse_out_header *oh = (void *)r->uhdr->in_out;

	if (err)
		arglen = datalen = 0;
	if (arglen)
		memcpy(r->data, arg, arglen);
	if (datalen && (const uint8_t *)data != r->data + arglen)
		memmove(r->data + arglen, data, datalen);
	memset(oh, 0, sizeof(*oh));
	oh->unique = r->unique;
	oh->error = -err;
	oh->len = (uint32_t)(sizeof(*oh) + arglen + datalen);
	r->uhdr->ring_ent_in_out.payload_sz = (uint32_t)(arglen + datalen);
	r->q->busy--;
	arm(r, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, r->uhdr->ring_ent_in_out.commit_id);
	if (!r->q->busy)
		went_idle(r->q);
}

static void entry_gone(struct fuse_req *r, int res)
{
	struct fuse_queue *q = r->q;

	/* ENOTCONN, ECANCELED: the connection or the ring is going away. */
	if (res != -ENOTCONN && res != -ECANCELED && !q->stopping)
		gw_warn("fuse %s: io_uring queue %u: %s", q->x->exp->id, r->qid, strerror(-res));
	if (res == -EOPNOTSUPP || res == -EINVAL)
		__atomic_store_n(&q->x->uring_failed, -res, __ATOMIC_RELAXED);
	fuse_queue_check_gone(q);
}

static void cqe_cb(struct gw_uring_cb *cb, int res)
{
	struct fuse_req *r = container_of(cb, struct fuse_req, ucb);
	struct fuse_uring_req_header *h = r->uhdr;
	const struct fuse_in_header *in = (const void *)h->in_out;
	uint32_t paylen = h->ring_ent_in_out.payload_sz;

	r->q->armed--;
	if (res < 0) {
		entry_gone(r, res);
		return;
	}
	r->q->busy++;
	r->q->sp.turn_reqs++;
	r->q->client_cpu = (int)r->qid;
	if (r->q->sp.idle_since)
		came_back(r->q);
	__atomic_store_n(&r->q->ring_reqs, r->q->ring_reqs + 1, __ATOMIC_RELAXED);
	if (paylen > r->q->x->data_buf)
		paylen = (uint32_t)r->q->x->data_buf;
	fuse_dispatch(r, in, h->op_in, sizeof(h->op_in), r->data, paylen);
}

static void arm(struct fuse_req *r, uint32_t cmd_op, uint64_t commit_id)
{
	struct fuse_queue *q = r->q;
	struct io_uring_sqe *sqe = gw_ioq_sqe(&q->w->ioq, &r->ucb);
	struct fuse_uring_cmd_req *cmd = (void *)sqe->cmd;

	q->armed++;
	memset(sqe->cmd, 0, 80); /* the command area of a 128-byte SQE */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = q->fd;
	sqe->cmd_op = cmd_op;
	cmd->qid = (uint16_t)r->qid;
	cmd->commit_id = commit_id;
	if (cmd_op == FUSE_IO_URING_CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)r->uiov;
		sqe->len = 2;
	}
}

static void register_on_worker(void *arg)
{
	struct fuse_queue *q = arg;

	for (unsigned i = 0; i < q->nent; i++)
		arm(&q->ents[i], FUSE_IO_URING_CMD_REGISTER, 0);
	gw_ioq_submit(&q->w->ioq);
}

/* The possible CPUs: the kernel makes one queue for each. */
static unsigned possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
	unsigned a = 0, b = 0, n = 0;
	int c;

	if (!f)
		return 0;
	while (fscanf(f, "%u", &a) == 1) {
		b = a;
		c = fgetc(f);
		if (c == '-') {
			if (fscanf(f, "%u", &b) != 1)
				break;
			c = fgetc(f);
		}
		n = GW_MAX(n, b + 1);
		if (c != ',')
			break;
	}
	fclose(f);
	return n;
}

int fuse_uring_available(char *why, size_t len)
{
	static const char *p = "/sys/module/fuse/parameters/enable_uring";
	char v = 0;
	FILE *f = fopen(p, "r");

	if (!f) {
		gw_seterr(why, len, "this kernel has no FUSE over io_uring (Linux 6.14+ has %s)",
			  p);
		return -EOPNOTSUPP;
	}
	if (fread(&v, 1, 1, f) != 1)
		v = 0;
	fclose(f);
	if (v != 'Y') {
		gw_seterr(
			why, len,
			"FUSE over io_uring is off in this kernel: echo Y > %s (or boot with fuse.enable_uring=1)",
			p);
		return -EOPNOTSUPP;
	}
	for (unsigned i = 0; i < gw_workers_count(); i++) {
		struct gw_worker *w = gw_worker_get(i);

		if (w && !(w->ioq.ring.flags & IORING_SETUP_SQE128)) {
			gw_seterr(
				why, len,
				"the workers' io_uring has no 128-byte SQEs (kernel before 5.19)");
			return -EOPNOTSUPP;
		}
	}
	return 0;
}

/*
 * After INIT accepted io_uring: allocate every kernel queue's entries and
 * register them on their workers. The read loop (fuse_dev_start) must
 * already run: x->qs are its queues, one per worker at least.
 */
int fuse_uring_start(struct fuse_exp *x, char *err, size_t errlen)
{
	unsigned ncpu = possible_cpus(), nw = x->nq;

	if (ncpu == 0 || ncpu > 4096) {
		gw_seterr(err, errlen, "cannot read /sys/devices/system/cpu/possible");
		return -EIO;
	}
	x->kernel_queues = ncpu;
	for (unsigned qi = 0; qi < nw; qi++) {
		struct fuse_queue *q = &x->qs[qi];
		unsigned mine = 0;

		for (unsigned c = qi; c < ncpu; c += nw)
			mine++;
		if (!mine)
			continue;
		q->nent = mine * x->depth;
		q->ents = calloc(q->nent, sizeof(*q->ents));
		if (!q->ents)
			return -ENOMEM;
		for (unsigned i = 0; i < q->nent; i++) {
			struct fuse_req *r = &q->ents[i];

			r->q = q;
			r->qid = qi + nw * (i / x->depth);
			r->ucb.fn = cqe_cb;
			if (posix_memalign((void **)&r->uhdr, 64, sizeof(*r->uhdr)) ||
			    posix_memalign((void **)&r->data, 4096, x->data_buf)) {
				gw_seterr(err, errlen, "out of memory for io_uring entries");
				return -ENOMEM;
			}
			memset(r->uhdr, 0, sizeof(*r->uhdr));
			r->uiov[0] = (struct iovec){ r->uhdr, sizeof(*r->uhdr) };
			r->uiov[1] = (struct iovec){ r->data, x->data_buf };
		}
	}
	for (unsigned qi = 0; qi < nw; qi++)
		if (x->qs[qi].nent)
			gw_worker_call(x->qs[qi].w, register_on_worker, &x->qs[qi]);
	return 0;
}
