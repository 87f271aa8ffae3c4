/*
 * A ublk queue: one thread and one io_uring. The thread fetches every tag
 * (the kernel ties the queue to the thread that fetched it), turns each
 * request descriptor into a backend request through the checked layer, and
 * answers with COMMIT_AND_FETCH_REQ, which also re-arms the tag. The
 * backend's own io_uring work (the file backend) goes on this same ring, so
 * a request costs no thread hop and no extra wake-up; inline backends
 * (memory, null) are answered in the same loop turn.
 *
 * The thread ends when every tag was aborted by the kernel (STOP_DEV, or a
 * device that goes away), or when the control thread asks it to quit
 * (through an eventfd on the ring) and no backend work is pending.
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/coalesce.h"
#include "lib/log.h"
#include "lib/util.h"
#include "transports/ublk/ublk_internal.h"

static size_t page_size(void)
{
	long p = sysconf(_SC_PAGESIZE);

	return p > 0 ? (size_t)p : 4096;
}

static size_t round_up(size_t v, size_t to)
{
	return (v + to - 1) / to * to;
}

static void fetch_or_commit(struct ublk_tag *t, uint32_t op, int result)
{
	struct ublk_queue *q = t->q;
	struct ublksrv_io_cmd c;
	struct io_uring_sqe *sqe;

	memset(&c, 0, sizeof(c));
	c.q_id = q->id;
	c.tag = t->tag;
	c.result = result;
	c.addr = (uint64_t)(uintptr_t)(q->bufs + (size_t)t->tag * q->d->max_io);
	sqe = gw_ioq_sqe(&q->ioq, &t->cb);
	ublk_prep_cmd(sqe, q->d->cdev_fd, op, &c, sizeof(c));
}

static void io_done(struct gw_io *io)
{
	struct ublk_tag *t = container_of(io, struct ublk_tag, io);

	t->q->busy--;
	fetch_or_commit(t, UBLK_U_IO_COMMIT_AND_FETCH_REQ, ublk_result(io));
}

static void handle(struct ublk_tag *t)
{
	struct ublk_queue *q = t->q;
	struct gw_export *e = q->d->exp;
	struct ublksrv_io_desc iod = q->iods[t->tag];
	int rc;

	rc = ublk_decode(&iod, q->bufs + (size_t)t->tag * q->d->max_io, q->d->max_io, &t->io,
			 &t->iov);
	if (rc < 0) {
		gw_export_count_error(e, &q->ioq);
		fetch_or_commit(t, UBLK_U_IO_COMMIT_AND_FETCH_REQ, rc);
		return;
	}
	t->io.done = io_done;
	q->busy++;
	if (gw_export_submit(e, &q->ioq, &t->io))
		io_done(&t->io);
}

/*
 * Polling. At queue depth 1 the next request arrives a few microseconds
 * after the answer to the last one; a thread asleep in io_uring_enter then
 * costs a wake-up (in a VM, an IPI to a halted vCPU) on every request. As
 * NBD's workers do for their sockets (nbd_conn.c), a queue serving a
 * strictly serial client (struct gw_serial_poll, lib/coalesce.h) spins on
 * its completion ring for a window instead of sleeping: the kernel's task
 * work (the next request) interrupts the spinning thread and lands in the
 * ring. The window grows while the client comes back in time and closes
 * when it does not, so a slow or deep client costs nothing; the spinning
 * thread yields its CPU every few microseconds, in case the client waits
 * for it.
 */
static void came_back(struct ublk_queue *q)
{
	gw_serial_poll_came_back(&q->sp, gw_now_ns(), q->d->poll_us * 1000u);
	if (q->sp.window_ns && !q->polled) {
		q->polled = true; /* said once per queue: the window may open and close often */
		gw_debug("ublk%u queue %u: a serial client: polling up to %u us", q->d->dev_id,
			 q->id, q->d->poll_us);
	}
}

/* Everything answered: note when, and poll for the next request if it pays. 1: one came. */
static int went_idle(struct ublk_queue *q)
{
	uint64_t now = q->d->poll_us ? gw_now_ns() : 0, until, yield;

	until = gw_serial_poll_went_idle(&q->sp, now);
	/* Not polling: the answers go out with the wait, in one system call. */
	if (!until || gw_ioq_submit(&q->ioq) < 0)
		return 0;
	yield = now + GW_POLL_YIELD_NS;
	while (!io_uring_cq_ready(&q->ioq.ring)) {
		now = gw_now_ns();
		if (now >= until)
			return 0;
		if (now >= yield) {
			sched_yield();
			yield = now + GW_POLL_YIELD_NS;
		}
	}
	return 1;
}

static void tag_cb(struct gw_uring_cb *cb, int res)
{
	struct ublk_tag *t = container_of(cb, struct ublk_tag, cb);

	if (gw_likely(res == UBLK_IO_RES_OK)) {
		struct ublk_queue *q = t->q;

		q->sp.turn_reqs++;
		if (q->sp.idle_since)
			came_back(q);
		handle(t);
		return;
	}
	/* ABORT (-ENODEV): the device is stopping; anything else: it refused the command. */
	if (res != UBLK_IO_RES_ABORT)
		gw_debug("ublk%u queue %u tag %u: command failed: %s", t->q->d->dev_id, t->q->id,
			 t->tag, strerror(-res));
	t->live = false;
	t->q->live--;
}

void ublk_tag_arm(struct ublk_queue *q, uint16_t tag)
{
	struct ublk_tag *t = &q->tags[tag];

	t->cb.fn = tag_cb;
	t->q = q;
	t->tag = tag;
	t->live = true;
	q->live++;
	fetch_or_commit(t, UBLK_U_IO_FETCH_REQ, 0);
}

static void quit_cb(struct gw_uring_cb *cb, int res)
{
	struct ublk_queue *q = container_of(cb, struct ublk_queue, quit_cb);

	q->quit = true;
}

static int queue_setup(struct ublk_queue *q)
{
	struct ublk_dev *d = q->d;
	size_t ps = page_size();
	size_t buf_bytes = (size_t)d->depth * d->max_io;
	unsigned entries = 8;
	off_t off;
	int rc;

	while (entries < 2u * d->depth && entries < 4096)
		entries *= 2;
	rc = gw_ioq_init(&q->ioq, entries, q->id, false);
	if (rc < 0)
		return rc;
	q->ring_ok = true;
	q->iods_len = round_up((size_t)d->depth * sizeof(struct ublksrv_io_desc), ps);
	off = (off_t)q->id *
	      (off_t)round_up(UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublksrv_io_desc), ps);
	q->iods = mmap(NULL, q->iods_len, PROT_READ, MAP_SHARED | MAP_POPULATE, d->cdev_fd, off);
	if (q->iods == MAP_FAILED) {
		q->iods = NULL;
		return -errno;
	}
	/* The buffers are allocated here, on the queue's own thread (NUMA locality). */
	if (posix_memalign((void **)&q->bufs, ps, buf_bytes) != 0)
		return -ENOMEM;
	q->tags = calloc(d->depth, sizeof(*q->tags));
	if (!q->tags)
		return -ENOMEM;
	return 0;
}

static void queue_teardown(struct ublk_queue *q)
{
	/*
	 * No backend work is pending here (the loop ends only without it).
	 * Fetches and the quit read may be: closing the ring cancels them, so
	 * do not wait for their completions.
	 */
	if (q->ring_ok)
		io_uring_queue_exit(&q->ioq.ring);
	q->ring_ok = false;
	if (q->iods)
		munmap((void *)q->iods, q->iods_len);
	q->iods = NULL;
	free(q->bufs);
	q->bufs = NULL;
	free(q->tags);
	q->tags = NULL;
}

static void report_ready(struct ublk_queue *q, int rc)
{
	pthread_mutex_lock(&q->d->lock);
	q->init_rc = rc;
	q->ready = true;
	pthread_cond_broadcast(&q->d->cond);
	pthread_mutex_unlock(&q->d->lock);
}

static void *queue_main(void *arg)
{
	struct ublk_queue *q = arg;
	struct ublk_dev *d = q->d;
	char name[16];
	sigset_t all;
	uint64_t v;
	int rc;

	gw_thread_sigset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	snprintf(name, sizeof(name), "ublk%u-q%u", d->dev_id, q->id);
	gw_log_set_thread_name(name);
	/*
	 * Run where the queue's requests come from (GET_QUEUE_AFFINITY), as
	 * ublksrv does: the kernel completes our commands as task work on this
	 * thread, and the buffers below are allocated here, near those CPUs.
	 */
	if (q->have_cpus) {
		char cpus[256];

		ublk_cpus_format(&q->cpus, cpus, sizeof(cpus));
		rc = pthread_setaffinity_np(pthread_self(), sizeof(q->cpus), &q->cpus);
		if (rc)
			gw_warn("ublk%u queue %u: cannot run on CPUs %s: %s", d->dev_id, q->id,
				cpus, strerror(rc));
		else
			gw_debug("ublk%u queue %u: on CPUs %s", d->dev_id, q->id, cpus);
	}
	rc = queue_setup(q);
	if (rc < 0) {
		report_ready(q, rc);
		queue_teardown(q);
		return NULL;
	}
	q->quit_cb.fn = quit_cb;
	io_uring_prep_read(gw_ioq_sqe(&q->ioq, &q->quit_cb), q->quit_fd, &v, sizeof(v), 0);
	for (unsigned i = 0; i < d->depth; i++)
		ublk_tag_arm(q, (uint16_t)i);
	rc = gw_ioq_submit(&q->ioq);
	report_ready(q, rc);
	if (rc < 0) {
		gw_err("ublk%u queue %u: submitting the fetches: %s", d->dev_id, q->id,
		       strerror(-rc));
		queue_teardown(q);
		return NULL;
	}
	while (q->live && !(q->quit && !q->busy)) {
		if (!q->busy && went_idle(q)) {
			gw_ioq_reap(&q->ioq);
			continue;
		}
		rc = gw_ioq_wait(&q->ioq);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			gw_err("ublk%u queue %u: io_uring: %s", d->dev_id, q->id, strerror(-rc));
			q->quit = true;
			break;
		}
	}
	gw_debug("ublk%u queue %u: done (%u tags still armed)", d->dev_id, q->id, q->live);
	queue_teardown(q);
	if (!q->quit) {
		/* Every tag aborted and nobody asked: the device was stopped or deleted. */
		pthread_mutex_lock(&d->lock);
		d->queue_ended = true;
		pthread_cond_broadcast(&d->cond);
		pthread_mutex_unlock(&d->lock);
	}
	return NULL;
}

int ublk_queue_start(struct ublk_dev *d, unsigned qid, char *err, size_t errlen)
{
	struct ublk_queue *q = &d->q[qid];
	int rc;

	memset(q, 0, sizeof(*q));
	q->d = d;
	q->id = (uint16_t)qid;
	/* The caller owns d->ctrl now (start(), or the control thread in a recovery). */
	rc = ublk_ctrl_queue_affinity(&d->ctrl, d->dev_id, q->id, &q->cpus);
	q->have_cpus = rc >= 0 && CPU_COUNT(&q->cpus) > 0;
	if (!q->have_cpus)
		gw_warn("ublk%u queue %u: GET_QUEUE_AFFINITY: %s; the thread runs on any CPU",
			d->dev_id, qid, rc < 0 ? strerror(-rc) : "no CPU");
	q->quit_fd = eventfd(0, EFD_CLOEXEC);
	if (q->quit_fd < 0) {
		gw_seterr(err, errlen, "eventfd: %s", strerror(errno));
		return -errno;
	}
	rc = pthread_create(&q->thread, NULL, queue_main, q);
	if (rc) {
		close(q->quit_fd);
		gw_seterr(err, errlen, "cannot start a queue thread: %s", strerror(rc));
		return -rc;
	}
	q->started = true;
	pthread_mutex_lock(&d->lock);
	while (!q->ready)
		pthread_cond_wait(&d->cond, &d->lock);
	rc = q->init_rc;
	pthread_mutex_unlock(&d->lock);
	if (rc < 0)
		gw_seterr(err, errlen, "ublk%u queue %u: %s", d->dev_id, qid, strerror(-rc));
	return rc;
}

void ublk_queue_quit(struct ublk_queue *q)
{
	uint64_t one = 1;

	if (q->started && write(q->quit_fd, &one, sizeof(one)) < 0)
		gw_warn("ublk queue %u: waking the thread: %s", q->id, strerror(errno));
}

void ublk_queue_join(struct ublk_queue *q)
{
	if (!q->started)
		return;
	pthread_join(q->thread, NULL);
	close(q->quit_fd);
	q->started = false;
}
