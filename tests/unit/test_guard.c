/*
 * The SIGBUS guard (lib/guard.c): a registered shared mapping whose file
 * shrinks is repaired instead of killing the process, the fault is counted
 * and reported once on the "main thread" (gw_guard_dispatch), and a SIGBUS
 * anywhere else still kills.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "lib/guard.h"

#define LEN (64u * 1024u)

struct seen {
	unsigned calls;
	size_t off;
	void *arg;
};

static void on_fault(void *arg, size_t off)
{
	struct seen *s = arg;

	s->calls++;
	s->off = off;
	s->arg = arg;
}

/* A shared mapping of a fresh memfd of LEN bytes filled with 0x5a. */
static uint8_t *shared(int *fd, bool seal)
{
	uint8_t *p;

	*fd = memfd_create("test-guard", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (*fd < 0 || ftruncate(*fd, LEN) < 0)
		return NULL;
	if (seal)
		fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	if (p == MAP_FAILED)
		return NULL;
	memset(p, 0x5a, LEN);
	return p;
}

/* shared(), registered with the guard (reporting to s); NULL on failure. */
static uint8_t *guarded(int *fd, struct seen *s, int *slot)
{
	uint8_t *p = shared(fd, false);

	CHECK(p != NULL);
	if (!p)
		return NULL;
	*slot = gw_guard_add(p, LEN, *fd, on_fault, s);
	CHECK(*slot >= 0);
	return p;
}

/* The owner cannot shrink a sealed memfd; anything else needs the guard. */
static void test_needed(void)
{
	int a, b;
	uint8_t *pa = shared(&a, false), *pb = shared(&b, true);

	CHECK(pa && pb);
	CHECK(gw_guard_needed(a));
	CHECK(!gw_guard_needed(b));
	CHECK(ftruncate(b, 4096) < 0 && errno == EPERM);
	munmap(pa, LEN);
	munmap(pb, LEN);
	close(a);
	close(b);
}

static void test_fault_repaired(void)
{
	struct seen s = { 0 };
	unsigned long f0 = gw_guard_faults();
	volatile uint8_t *v;
	uint8_t *p, other[16];
	int fd, slot;

	p = guarded(&fd, &s, &slot);
	if (!p)
		return;
	CHECK(!gw_guard_poisoned(p, LEN));

	/* The owner keeps the first 16 KiB; we read at 32 KiB. */
	CHECK(ftruncate(fd, 16 * 1024) == 0);
	v = p;
	CHECK_EQ_U64(v[32 * 1024], 0); /* would have been SIGBUS: zeros now */
	CHECK_EQ_U64(gw_guard_faults(), f0 + 1);
	v[40 * 1024] = 7; /* writes land in private memory */
	CHECK_EQ_U64(v[40 * 1024], 7);
	CHECK_EQ_U64(gw_guard_faults(), f0 + 1); /* that page was repaired already */
	/* Before the faulting page the mapping is still the file's. */
	CHECK_EQ_U64(v[0], 0x5a);
	CHECK_EQ_U64(v[16 * 1024 - 1], 0x5a);
	CHECK(pwrite(fd, "\x11", 1, 0) == 1);
	CHECK_EQ_U64(v[0], 0x11);
	/* The gap between the new end and the faulting page faults again, and is repaired again. */
	CHECK_EQ_U64(v[20 * 1024], 0);
	CHECK_EQ_U64(gw_guard_faults(), f0 + 2);

	CHECK(gw_guard_poisoned(p + 100, 1));
	CHECK(gw_guard_poisoned(p + LEN - 1, 8));
	CHECK(!gw_guard_poisoned(other, sizeof(other)));
	CHECK(!gw_guard_poisoned(p + LEN, 1));

	/* Reported on the main thread, once, with the first fault's offset. */
	CHECK_EQ_U64(s.calls, 0);
	gw_guard_dispatch();
	CHECK_EQ_U64(s.calls, 1);
	CHECK_EQ_U64(s.off, 32 * 1024);
	CHECK(s.arg == &s);
	gw_guard_dispatch();
	CHECK_EQ_U64(s.calls, 1);

	/* Unregistered, the slot is free and clean for the next mapping. */
	gw_guard_del(slot);
	CHECK(!gw_guard_poisoned(p, LEN));
	CHECK_EQ_U64(gw_guard_add(p, LEN, fd, on_fault, &s), slot);
	CHECK(!gw_guard_poisoned(p, LEN));
	gw_guard_del(slot);
	munmap(p, LEN);
	close(fd);
}

/* A worker thread (full signal mask but SIGBUS, as lib/worker.c sets it). */
struct thread_arg {
	volatile uint8_t *p;
	uint8_t got;
};

static void *reader(void *a)
{
	struct thread_arg *t = a;

	t->got = t->p[LEN - 1];
	return NULL;
}

static void test_fault_in_worker(void)
{
	struct seen s = { 0 };
	struct thread_arg t;
	sigset_t all, old;
	pthread_t th;
	uint8_t *p;
	int fd, slot;

	p = guarded(&fd, &s, &slot);
	if (!p)
		return;
	CHECK(ftruncate(fd, 0) == 0);
	t.p = p;
	t.got = 0xff;
	sigfillset(&all);
	sigdelset(&all, SIGBUS);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	CHECK(pthread_create(&th, NULL, reader, &t) == 0);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_join(th, NULL);
	CHECK_EQ_U64(t.got, 0);
	gw_guard_dispatch();
	CHECK_EQ_U64(s.calls, 1);
	CHECK_EQ_U64(s.off, LEN - 1);
	gw_guard_del(slot);
	munmap(p, LEN);
	close(fd);
}

/* Run fn in a child; return how it ended (the wait status). */
static int in_child(void (*fn)(void))
{
	int st = 0;
	pid_t pid = fork();

	if (pid == 0) {
		fn();
		_exit(0);
	}
	waitpid(pid, &st, 0);
	return st;
}

static void touch_unregistered(void)
{
	int fd;
	volatile uint8_t *p = shared(&fd, false);

	if (!p || ftruncate(fd, 0) < 0)
		_exit(3);
	(void)p[0];
}

static void bus_by_kill(void)
{
	kill(getpid(), SIGBUS);
	sleep(5);
}

/* A SIGBUS the guard does not own is the crash it always was. */
static void test_not_ours(void)
{
	int st = in_child(touch_unregistered);

	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS);
	st = in_child(bus_by_kill);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS);
}

static void test_slots_run_out(void)
{
	static int slot[GW_GUARD_SLOTS];
	uint8_t dummy[1];
	unsigned n = 0;

	while (n < GW_GUARD_SLOTS && (slot[n] = gw_guard_add(dummy, 1, -1, NULL, NULL)) >= 0)
		n++;
	CHECK_EQ_U64(n, GW_GUARD_SLOTS);
	CHECK_EQ_U64(gw_guard_add(dummy, 1, -1, NULL, NULL), -ENOSPC);
	gw_guard_del(slot[7]);
	CHECK_EQ_U64(gw_guard_add(dummy, 1, -1, NULL, NULL), slot[7]);
	for (unsigned i = 0; i < n; i++)
		gw_guard_del(slot[i]);
	CHECK(gw_guard_add(dummy, 0, -1, NULL, NULL) < 0);
}

static long read_long(const char *path, const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen(path, "r");

	while (f && fgets(line, sizeof(line), f))
		if (!key ? sscanf(line, "%ld", &v) == 1 : !strncmp(line, key, strlen(key)))
			v = key ? strtol(line + strlen(key), NULL, 10) : v;
	if (f)
		fclose(f);
	return v;
}

/*
 * hugetlbfs (`test_guard hugetlb`): the repair must split the mapping at a
 * huge page, and a sealed hugetlb memfd is guarded too. Reserves two huge
 * pages for the run when none are free (root), and gives them back.
 */
static int test_hugetlb(void)
{
	const size_t H = 2u << 20;
	long old = read_long("/proc/sys/vm/nr_hugepages", NULL);
	bool raised = false;
	struct seen s = { 0 };
	volatile uint8_t *v;
	uint8_t *p;
	int fd, sealed, slot;

	if (read_long("/proc/meminfo", "HugePages_Free:") < 2) {
		FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");

		raised = f && fprintf(f, "%ld\n", old + 2) > 0;
		if (f && fclose(f) != 0)
			raised = false;
	}
	fd = memfd_create("test-guard-huge", MFD_CLOEXEC | MFD_HUGETLB | MFD_ALLOW_SEALING);
	if (fd < 0 || read_long("/proc/meminfo", "HugePages_Free:") < 2 ||
	    ftruncate(fd, 2 * H) < 0) {
		printf("SKIP: no two 2 MiB huge pages for a hugetlb memfd (%s; needs root to reserve them)\n",
		       fd < 0 ? strerror(errno) : "none free");
		return 77;
	}
	p = mmap(NULL, 2 * H, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED);
	memset(p, 0x5a, 2 * H);
	CHECK(gw_guard_needed(fd));
	sealed = memfd_create("test-guard-huge-sealed",
			      MFD_CLOEXEC | MFD_HUGETLB | MFD_ALLOW_SEALING);
	CHECK(sealed >= 0 && fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
	CHECK(gw_guard_needed(sealed)); /* holes can still be punched */

	slot = gw_guard_add(p, 2 * H - 4096, fd, on_fault, &s); /* a length the kernel rounds up */
	CHECK(slot >= 0);
	CHECK(ftruncate(fd, H) == 0);
	v = p;
	CHECK_EQ_U64(v[H + 4096 * 3], 0); /* repaired from its huge page on */
	CHECK_EQ_U64(v[2 * H - 1], 0);    /* in the rounded-up tail too */
	CHECK_EQ_U64(v[0], 0x5a);         /* the first huge page is still the file's */
	CHECK_EQ_U64(v[H - 1], 0x5a);
	gw_guard_dispatch();
	CHECK_EQ_U64(s.calls, 1);
	CHECK_EQ_U64(s.off, H + 4096 * 3);
	gw_guard_del(slot);
	munmap(p, 2 * H);
	close(fd);
	close(sealed);
	if (raised) {
		FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");

		if (f) {
			fprintf(f, "%ld\n", old);
			fclose(f);
		}
	}
	return check_report();
}

int main(int argc, char **argv)
{
	CHECK(gw_guard_init(NULL) == 0);
	if (argc > 1 && !strcmp(argv[1], "hugetlb"))
		return test_hugetlb();
	test_needed();
	test_fault_repaired();
	test_fault_in_worker();
	test_not_ours();
	test_slots_run_out();
	return check_report();
}
