/*
 * The worker loop never sleeps on work it has left (lib/worker.c,
 * prepare_cb). A chain of io_uring NOPs, each queued by the previous one's
 * completion: a NOP completes inline during the submit, as a FUSE or ublk
 * COMMIT_AND_FETCH does when the kernel already holds the next request, so
 * every round of the worker's pre-sleep loop yields another completion.
 * Before the fix the loop gave up after 64 rounds with the next NOP queued
 * and unsubmitted, and slept for ever. The wait below is bounded and says
 * how far the chain got.
 *
 * Also: a worker blocks the main loop's signals but not the fault signals,
 * so a crash on it runs the sanitizers' handlers (they reported nothing
 * while workers blocked SIGSEGV).
 *
 * And: where the kernel has it, a worker's ring runs its task work
 * cooperatively (lib/worker.c, worker_init: no IPI to a running worker). A
 * read of a pipe, submitted by the worker and completed by the kernel as
 * task work after the worker went to sleep, must still wake it and run its
 * callback on the worker.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lib/efd.h"
#include "lib/worker.h"

#define CHAIN 10000

static struct gw_worker *w;
static struct gw_uring_cb cb;
static unsigned done_nops;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool finished;

static void queue_nop(void)
{
	struct io_uring_sqe *sqe = gw_ioq_sqe(&w->ioq, &cb);

	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data(sqe, &cb);
}

static void nop_done(struct gw_uring_cb *c, int res)
{
	(void)c;
	(void)res;
	__atomic_store_n(&done_nops, done_nops + 1, __ATOMIC_RELAXED);
	if (done_nops < CHAIN) {
		queue_nop();
		return;
	}
	pthread_mutex_lock(&lock);
	finished = true;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
}

static sigset_t worker_mask;

/* The pipe read: submitted on the worker, completed after it slept. */
static int pipefd[2];
static char pipe_buf[8];
static struct gw_uring_cb read_cb;
static int read_res = -1;
static bool read_on_worker;
static bool read_done;

static void read_finished(struct gw_uring_cb *c, int res)
{
	(void)c;
	pthread_mutex_lock(&lock);
	read_res = res;
	read_on_worker = gw_worker_self() == w;
	read_done = true;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
}

static void start_read(void *arg)
{
	(void)arg;
	io_uring_prep_read(gw_ioq_sqe(&w->ioq, &read_cb), pipefd[0], pipe_buf, sizeof(pipe_buf), 0);
}

/* 1: the kernel accepts a ring whose task work runs cooperatively. */
static bool kernel_coop(void)
{
	struct io_uring ring;
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
	if (io_uring_queue_init_params(4, &ring, &p) < 0)
		return false;
	io_uring_queue_exit(&ring);
	return true;
}

/* Wait until *flag is set (under lock) or `secs` pass; returns *flag. */
static bool wait_for(bool *flag, int secs)
{
	struct timespec until;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += secs;
	pthread_mutex_lock(&lock);
	while (!*flag && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&cond, &lock, &until);
	pthread_mutex_unlock(&lock);
	return *flag;
}

static void start_chain(void *arg)
{
	(void)arg;
	pthread_sigmask(SIG_BLOCK, NULL, &worker_mask);
	queue_nop();
}

int main(void)
{
	char err[256];

	gw_main_init(EV_DEFAULT);
	CHECK(gw_efd_init() == 0);
	if (gw_workers_start(1, err, sizeof(err)) < 0) {
		fprintf(stderr, "SKIP: workers: %s\n", err);
		return 77;
	}
	w = gw_worker_get(0);
	cb.fn = nop_done;
	CHECK(gw_worker_call(w, start_chain, NULL) == 0);

	wait_for(&finished, 60); /* generous: the chain takes milliseconds */
	if (!finished)
		fprintf(stderr,
			"the chain stalled after %u of %u NOPs: the worker slept with work left\n",
			__atomic_load_n(&done_nops, __ATOMIC_RELAXED), CHAIN);
	CHECK(finished);
	if (finished) {
		CHECK(sigismember(&worker_mask, SIGTERM) == 1);
		CHECK(sigismember(&worker_mask, SIGHUP) == 1);
		CHECK(sigismember(&worker_mask, SIGSEGV) == 0);
		CHECK(sigismember(&worker_mask, SIGBUS) == 0);
		CHECK(sigismember(&worker_mask, SIGABRT) == 0);
		CHECK(sigismember(&worker_mask, SIGFPE) == 0);
		CHECK(sigismember(&worker_mask, SIGURG) == 0);

		if (kernel_coop())
			CHECK((w->ioq.ring.flags & IORING_SETUP_COOP_TASKRUN) &&
			      (w->ioq.ring.flags & IORING_SETUP_TASKRUN_FLAG));
		else
			fprintf(stderr, "note: this kernel has no IORING_SETUP_COOP_TASKRUN; "
					"the worker's ring takes task work with IPIs\n");
		CHECK(pipe(pipefd) == 0);
		read_cb.fn = read_finished;
		CHECK(gw_worker_call(w, start_read, NULL) == 0);
		usleep(100 * 1000); /* the worker submits the read and sleeps */
		CHECK(!read_done);
		CHECK(write(pipefd[1], "wake", 4) == 4);
		if (!wait_for(&read_done, 30))
			fprintf(stderr, "the pipe read completed in the kernel but the sleeping "
					"worker never ran it (deferred task work, no wake-up)\n");
		CHECK(read_done);
		CHECK(read_res == 4);
		CHECK(read_on_worker);
		close(pipefd[0]);
		close(pipefd[1]);
		gw_workers_stop();
	}
	return check_report();
}
