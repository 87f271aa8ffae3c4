#include "lib/ioq.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/util.h"

int gw_ioq_init(struct gw_ioq *q, unsigned entries, unsigned slot, bool with_eventfd)
{
	return gw_ioq_init_flags(q, entries, slot, with_eventfd, 0);
}

int gw_ioq_init_flags(struct gw_ioq *q, unsigned entries, unsigned slot, bool with_eventfd,
		      unsigned setup_flags)
{
	struct io_uring_params p;
	int rc;

	memset(q, 0, sizeof(*q));
	q->eventfd = -1;
	q->slot = slot;
	memset(&p, 0, sizeof(p));
	/* A completion queue four times the SQ, so bursts never overflow it. */
	p.flags = IORING_SETUP_CQSIZE | setup_flags;
	p.cq_entries = entries * 4;
	rc = io_uring_queue_init_params(entries, &q->ring, &p);
	if (rc < 0)
		return rc;
	if (with_eventfd) {
		q->eventfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (q->eventfd < 0) {
			rc = -errno;
			io_uring_queue_exit(&q->ring);
			return rc;
		}
		rc = io_uring_register_eventfd(&q->ring, q->eventfd);
		if (rc < 0) {
			close(q->eventfd);
			io_uring_queue_exit(&q->ring);
			return rc;
		}
	}
	return 0;
}

void gw_ioq_exit(struct gw_ioq *q)
{
	/* Let submitted work finish: its buffers belong to callers that wait for it. */
	while (q->inflight > 0 || q->queued > 0)
		if (gw_ioq_wait(q) < 0)
			break;
	io_uring_queue_exit(&q->ring);
	if (q->eventfd >= 0)
		close(q->eventfd);
	q->eventfd = -1;
}

int gw_ioq_submit(struct gw_ioq *q)
{
	int rc;

	if (!q->queued)
		return 0;
	do {
		rc = io_uring_submit(&q->ring);
	} while (rc == -EINTR);
	if (rc < 0)
		return rc;
	q->inflight += (unsigned)rc;
	q->queued -= GW_MIN(q->queued, (unsigned)rc);
	return 0;
}

struct io_uring_sqe *gw_ioq_sqe(struct gw_ioq *q, struct gw_uring_cb *cb)
{
	struct io_uring_sqe *sqe;

	while (!(sqe = io_uring_get_sqe(&q->ring))) {
		/* SQ full: push it to the kernel; if even that fails, make room by reaping. */
		if (gw_ioq_submit(q) < 0)
			gw_ioq_wait(q);
	}
	memset(sqe, 0, sizeof(*sqe));
	io_uring_sqe_set_data(sqe, cb);
	q->queued++;
	return sqe;
}

unsigned gw_ioq_reap(struct gw_ioq *q)
{
	struct io_uring_cqe *cqe;
	unsigned n = 0;

	if (q->eventfd >= 0) {
		uint64_t v;

		if (read(q->eventfd, &v, sizeof(v)) < 0) {
			/* EAGAIN: nothing signalled; fine */
		}
	}
	while (io_uring_peek_cqe(&q->ring, &cqe) == 0) {
		struct gw_uring_cb *cb = io_uring_cqe_get_data(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(&q->ring, cqe);
		q->inflight--;
		n++;
		if (cb)
			cb->fn(cb, res);
	}
	return n;
}

int gw_ioq_wait(struct gw_ioq *q)
{
	struct io_uring_cqe *cqe;
	int rc;

	if (q->queued) {
		/* One system call, not two: submit what is queued and wait for a completion. */
		do {
			rc = io_uring_submit_and_wait(&q->ring, 1);
		} while (rc == -EINTR);
		if (rc < 0)
			return rc;
		q->inflight += (unsigned)rc;
		q->queued -= GW_MIN(q->queued, (unsigned)rc);
	} else {
		if (!q->inflight)
			return 0;
		do {
			rc = io_uring_wait_cqe(&q->ring, &cqe);
		} while (rc == -EINTR);
		if (rc < 0)
			return rc;
	}
	gw_ioq_reap(q);
	return 0;
}
