/*
 * Eventfds shared with another process (see efd.h).
 *
 * The watchdog samples each registered thread's `busy` word every
 * GW_EFD_STALL_MS while watching: a non-zero value (the number of the guarded
 * call in progress) seen twice in a row means one call has lasted that
 * long, and the thread gets SIGURG. The handler leaves the call with
 * siglongjmp only if the thread is still inside a guarded call; otherwise it
 * returns and, with SA_RESTART, whatever system call it interrupted carries
 * on. SA_NODEFER keeps SIGURG unblocked after the jump (sigsetjmp does not
 * save the mask: cheaper, and nothing else changes it).
 */
#include "lib/efd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "lib/util.h"

#define MAX_THREADS 256

struct watched {
	pthread_t th;
	unsigned long busy; /* number of the guarded call in progress, 0: none */
	unsigned long seen; /* watchdog: busy at the previous sample */
	unsigned long kill; /* watchdog: the call SIGURG is meant to end */
	unsigned long calls;
};

static struct watched threads[MAX_THREADS];
static unsigned nthreads;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned watching;
static bool started, stopping;
static pthread_t watchdog;

static __thread struct watched *self;
static __thread sigjmp_buf *volatile escape; /* set while inside a guarded call */

/*
 * Jump out only from the call the watchdog meant: a signal that arrives
 * after that call returned (and maybe during the next one) changes nothing.
 * TLS is safe here: blkgw_core is linked statically (local-exec TLS).
 */
static void on_sigurg(int sig)
{
	sigjmp_buf *env = escape;
	struct watched *t = self;

	(void)sig;
	if (env && t &&
	    __atomic_load_n(&t->busy, __ATOMIC_RELAXED) ==
		    __atomic_load_n(&t->kill, __ATOMIC_RELAXED)) {
		escape = NULL;
		siglongjmp(*env, 1);
	}
}

static void *watchdog_main(void *arg)
{
	const struct timespec tick = { 0, GW_EFD_STALL_MS * 1000000L };

	(void)arg;
	pthread_mutex_lock(&mu);
	while (!stopping) {
		unsigned n;

		if (!watching) {
			pthread_cond_wait(&cv, &mu);
			continue;
		}
		pthread_mutex_unlock(&mu);
		nanosleep(&tick, NULL);
		n = __atomic_load_n(&nthreads, __ATOMIC_ACQUIRE);
		for (unsigned i = 0; i < n; i++) {
			struct watched *t = &threads[i];
			unsigned long b = __atomic_load_n(&t->busy, __ATOMIC_RELAXED);

			if (b && b == t->seen) {
				/* busy is 0 once a thread is gone, so th is alive here. */
				__atomic_store_n(&t->kill, b, __ATOMIC_RELAXED);
				pthread_kill(t->th, SIGURG);
			}
			t->seen = b;
		}
		pthread_mutex_lock(&mu);
	}
	pthread_mutex_unlock(&mu);
	return NULL;
}

int gw_efd_init(void)
{
	struct sigaction sa;
	sigset_t all, old;
	int rc;

	if (started)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigurg;
	sa.sa_flags = SA_RESTART | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGURG, &sa, NULL) < 0)
		return -errno;
	gw_thread_sigset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = -pthread_create(&watchdog, NULL, watchdog_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return rc;
	started = true;
	return gw_efd_thread();
}

void gw_efd_shutdown(void)
{
	if (!started)
		return;
	pthread_mutex_lock(&mu);
	stopping = true;
	pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
	pthread_join(watchdog, NULL);
	started = stopping = false;
}

int gw_efd_thread(void)
{
	unsigned i;

	if (self)
		return 0;
	pthread_mutex_lock(&mu);
	i = nthreads;
	if (i < MAX_THREADS) {
		threads[i].th = pthread_self();
		__atomic_store_n(&nthreads, i + 1, __ATOMIC_RELEASE);
		self = &threads[i];
	}
	pthread_mutex_unlock(&mu);
	return self ? 0 : -ENOSPC;
}

void gw_efd_watch(bool on)
{
	pthread_mutex_lock(&mu);
	if (on)
		watching++;
	else if (watching)
		watching--;
	pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
}

int gw_efd_check(int fd, char *why, size_t len)
{
	char path[64], target[128];
	ssize_t n;
	int fl;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		snprintf(why, len, "fd %d: %s", fd, strerror(errno));
		return -EINVAL;
	}
	target[n] = '\0';
	if (strcmp(target, "anon_inode:[eventfd]") != 0) {
		snprintf(why, len, "%s, not an eventfd", target);
		return -EINVAL;
	}
	/* A semaphore eventfd hands out 1 per read: a peer could keep a kick watcher firing
	 * forever. */
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	{
		FILE *f = fopen(path, "re");
		char line[128];
		bool sem = false;

		while (f && fgets(line, sizeof(line), f))
			if (!strncmp(line, "eventfd-semaphore:", 18) &&
			    strtol(line + 18, NULL, 10) == 1)
				sem = true;
		if (f)
			fclose(f);
		if (sem) {
			snprintf(why, len, "a semaphore eventfd (EFD_SEMAPHORE)");
			return -EINVAL;
		}
	}
	fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	return 0;
}

int gw_efd_take(int fd, uint64_t *v)
{
	struct iovec iov = { v, sizeof(*v) };
	ssize_t n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);

	if (n < 0 && errno == EOPNOTSUPP)
		n = read(fd, v, sizeof(*v)); /* before 5.12: O_NONBLOCK (gw_efd_check) is all there
						is */
	if (n == (ssize_t)sizeof(*v))
		return 0;
	return n < 0 ? -errno : -EIO;
}

int gw_efd_signal(int fd)
{
	static const uint64_t one = 1;
	struct watched *t = self;
	volatile int tries = 0;
	sigjmp_buf env;
	ssize_t n;

	if (!t) {
		n = write(fd, &one, sizeof(one));
	} else {
		if (sigsetjmp(env, 0)) {
			int fl = fcntl(fd, F_GETFL);

			__atomic_store_n(&t->busy, 0, __ATOMIC_RELAXED);
			/*
			 * Still non-blocking: the write could not have waited, the
			 * thread was just held up (descheduled) that long. Write
			 * again (a second 1 is harmless). Blocking: the peer
			 * cleared the flag on a counter it keeps full.
			 */
			if (fl < 0 || !(fl & O_NONBLOCK) || ++tries > 2)
				return -ETIMEDOUT;
		}
		__atomic_store_n(&t->busy, ++t->calls, __ATOMIC_RELAXED);
		escape = &env;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		n = write(fd, &one, sizeof(one));
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		escape = NULL;
		__atomic_store_n(&t->busy, 0, __ATOMIC_RELAXED);
	}
	if (n == (ssize_t)sizeof(one) || (n < 0 && errno == EAGAIN))
		return 0;
	return n < 0 ? -errno : -EIO;
}
