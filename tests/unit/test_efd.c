/*
 * Eventfds shared with a peer (lib/efd.c): only eventfds are taken, a
 * read never blocks whatever the peer does to the file's flags, and a write
 * to a full eventfd the peer made blocking is abandoned by the watchdog
 * instead of hanging the thread. alarm() turns a hang into a failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "check.h"
#include "lib/efd.h"

static void test_check(void)
{
	char why[160] = "";
	int e = eventfd(0, 0), p[2], dn = open("/dev/null", O_RDWR);

	CHECK(gw_efd_check(e, why, sizeof(why)) == 0);
	CHECK(fcntl(e, F_GETFL) & O_NONBLOCK);
	CHECK(pipe(p) == 0);
	CHECK(gw_efd_check(p[0], why, sizeof(why)) == -EINVAL);
	CHECK(strstr(why, "pipe:") != NULL);
	CHECK(gw_efd_check(dn, why, sizeof(why)) == -EINVAL);
	CHECK(strstr(why, "/dev/null") != NULL);
	CHECK(gw_efd_check(-1, why, sizeof(why)) == -EINVAL);
	{
		int sem = eventfd(0, EFD_SEMAPHORE);
		FILE *f;
		char line[128], path[64];
		bool shown = false;

		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", sem);
		f = fopen(path, "r");
		while (f && fgets(line, sizeof(line), f))
			shown |= !strncmp(line, "eventfd-semaphore:", 18);
		if (f)
			fclose(f);
		if (shown) { /* the kernel tells: refused */
			CHECK(gw_efd_check(sem, why, sizeof(why)) == -EINVAL);
			CHECK(strstr(why, "semaphore") != NULL);
		} else {
			printf("note: this kernel's fdinfo does not show EFD_SEMAPHORE; not checked\n");
		}
		close(sem);
	}
	close(e);
	close(p[0]);
	close(p[1]);
	close(dn);
}

/* The peer clears O_NONBLOCK (same open file): an empty counter still does not block. */
static void test_take(void)
{
	char why[160];
	int e = eventfd(0, 0);
	uint64_t v = 0;

	CHECK(gw_efd_check(e, why, sizeof(why)) == 0);
	fcntl(e, F_SETFL, 0);
	alarm(5);
	CHECK_EQ_U64(gw_efd_take(e, &v), -EAGAIN);
	CHECK(eventfd_write(e, 3) == 0);
	CHECK_EQ_U64(gw_efd_take(e, &v), 0);
	CHECK_EQ_U64(v, 3);
	alarm(0);
	close(e);
}

static void test_signal(void)
{
	char why[160];
	int e = eventfd(0, 0);
	uint64_t v;

	CHECK(gw_efd_check(e, why, sizeof(why)) == 0);
	CHECK_EQ_U64(gw_efd_signal(e), 0);
	CHECK(eventfd_read(e, &v) == 0 && v == 1);

	/* Full, still non-blocking: the write is refused, nothing waits. */
	CHECK(eventfd_write(e, 0xfffffffffffffffeull) == 0);
	CHECK_EQ_U64(gw_efd_signal(e), 0);

	/* The peer makes it blocking: abandoned by the watchdog once watching. */
	fcntl(e, F_SETFL, 0);
	gw_efd_watch(true);
	alarm(5);
	CHECK_EQ_U64(gw_efd_signal(e), -ETIMEDOUT);
	CHECK_EQ_U64(gw_efd_signal(e), -ETIMEDOUT); /* SIGURG is not left blocked */
	alarm(0);
	gw_efd_watch(false);

	/* Read by the peer, it takes signals again. */
	CHECK(eventfd_read(e, &v) == 0);
	CHECK_EQ_U64(gw_efd_signal(e), 0);
	CHECK(eventfd_read(e, &v) == 0 && v == 1);
	close(e);
}

/* SIGURG outside a guarded call changes nothing: the interrupted call restarts. */
struct blocked_read {
	int fd;
	ssize_t n;
	int err;
	char c;
};

static void *reader(void *arg)
{
	struct blocked_read *b = arg;

	b->n = read(b->fd, &b->c, 1);
	b->err = b->n < 0 ? errno : 0;
	return NULL;
}

static void test_stray_sigurg(void)
{
	struct blocked_read b = { 0 };
	struct sigaction sa;
	pthread_t th;
	int p[2];

	/* The handler is there (SIGURG's default action would make this test vacuous). */
	CHECK(sigaction(SIGURG, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL &&
	      sa.sa_handler != SIG_IGN);
	CHECK(pipe(p) == 0);
	b.fd = p[0];
	CHECK(pthread_create(&th, NULL, reader, &b) == 0);
	usleep(50000); /* let it block in read() */
	pthread_kill(th, SIGURG);
	usleep(50000);
	CHECK(write(p[1], "x", 1) == 1);
	pthread_join(th, NULL);
	CHECK(b.n == 1 && b.c == 'x');
	CHECK_EQ_U64(b.err, 0);
	close(p[0]);
	close(p[1]);
}

int main(void)
{
	uint64_t v;
	struct iovec iov = { &v, sizeof(v) };
	int e = eventfd(0, 0);

	/* Kernels before 5.12 cannot read an eventfd with RWF_NOWAIT: what gw_efd_take relies on.
	 */
	if (preadv2(e, &iov, 1, -1, RWF_NOWAIT) < 0 && errno == EOPNOTSUPP) {
		printf("SKIP: this kernel cannot read an eventfd with RWF_NOWAIT (before 5.12)\n");
		return 77;
	}
	close(e);
	CHECK(gw_efd_init() == 0);
	test_check();
	test_take();
	test_signal();
	test_stray_sigurg();
	gw_efd_shutdown();
	return check_report();
}
