/*
 * SIGBUS guard for shared memory that another process can shrink (see
 * guard.h). The slot table is static so that the signal handler can read
 * it without locks or allocation: the main thread writes a slot under a
 * sequence count (odd while it is being rewritten), the handler and
 * gw_guard_poisoned() skip a slot whose count is odd or moved while they
 * read it. A slot being rewritten cannot be the one a thread faults in:
 * mappings are registered before first use and unregistered after last.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <ev.h>

#include "lib/guard.h"
#include "lib/log.h"

enum {
	CLEAN,
	POISONED,
	REPORTED
};

struct slot {
	unsigned seq;
	uintptr_t base;
	size_t len;  /* 0: free */
	size_t page; /* the mapping's page size (huge pages on hugetlbfs) */
	int state;   /* CLEAN, POISONED (by the handler), REPORTED (by the main thread) */
	size_t fault_off;
	void (*on_fault)(void *arg, size_t off);
	void *arg;
};

static struct slot slots[GW_GUARD_SLOTS];
static unsigned used_slots; /* high-water mark: slots at or past it were never used */
static int wake_fd = -1;
static struct ev_loop *main_loop;
static ev_io wake_w;
static bool installed;
unsigned long gw_guard_fault_count;

/* Read slot i's range consistently; false if it is free or being rewritten. */
static bool slot_range(unsigned i, uintptr_t *base, size_t *len, size_t *page)
{
	const struct slot *s = &slots[i];
	unsigned seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);

	if (seq & 1)
		return false;
	*base = __atomic_load_n(&s->base, __ATOMIC_RELAXED);
	*len = __atomic_load_n(&s->len, __ATOMIC_RELAXED);
	*page = __atomic_load_n(&s->page, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return __atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq && *len;
}

/*
 * Replace [page of a, end of the mapping) with private zero pages: the part
 * the file lost, and possibly more (the handler does not know the new file
 * size). Memory before the faulting page stays shared. A hugetlbfs mapping
 * splits only at its huge pages (page); if the split is refused anyway,
 * the whole mapping goes.
 */
static bool replace_tail(uintptr_t base, size_t len, size_t page, uintptr_t a)
{
	uintptr_t from = a & ~(page - 1);
	const int flags = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

	if (from < base)
		from = base;
	if (mmap((void *)from, base + len - from, PROT_READ | PROT_WRITE, flags, -1, 0) !=
	    MAP_FAILED)
		return true;
	return from != base &&
	       mmap((void *)base, len, PROT_READ | PROT_WRITE, flags, -1, 0) != MAP_FAILED;
}

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
	uintptr_t a = (uintptr_t)si->si_addr, base;
	unsigned n = __atomic_load_n(&used_slots, __ATOMIC_ACQUIRE);
	int saved = errno;
	size_t len, page;

	(void)sig;
	(void)uctx;
	/* si_code <= 0: sent by kill() or sigqueue(); its address means nothing. */
	for (unsigned i = 0; si->si_code > 0 && i < n; i++) {
		struct slot *s = &slots[i];
		int clean = CLEAN;

		if (!slot_range(i, &base, &len, &page) || a - base >= len)
			continue;
		if (__atomic_compare_exchange_n(&s->state, &clean, POISONED, false,
						__ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
			static const uint64_t one = 1;

			__atomic_store_n(&s->fault_off, a - base, __ATOMIC_RELAXED);
			if (wake_fd >= 0 && write(wake_fd, &one, sizeof(one)) < 0) {
				/* The count moves anyway; the owner learns it at its next check. */
			}
		}
		/* Counted before the zeros appear: whoever reads them sees the count move. */
		__atomic_add_fetch(&gw_guard_fault_count, 1, __ATOMIC_SEQ_CST);
		if (!replace_tail(base, len, page, a))
			break; /* cannot repair: the default action */
		errno = saved;
		return;
	}
	/* Not ours: the default action (terminate with a core) when the access repeats. */
	struct sigaction dfl;

	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGBUS, &dfl, NULL);
	if (si->si_code <= 0)
		raise(SIGBUS);
	errno = saved;
}

static void wake_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	uint64_t v;

	(void)loop;
	(void)revents;
	if (read(w->fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		gw_debug("guard: eventfd: %s", strerror(errno));
	gw_guard_dispatch();
}

int gw_guard_init(struct ev_loop *loop)
{
	struct sigaction sa;

	if (!installed) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = on_sigbus;
		sa.sa_flags = SA_SIGINFO | SA_RESTART;
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGBUS, &sa, NULL) < 0)
			return -errno;
		wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (wake_fd < 0)
			return -errno;
		installed = true;
	}
	if (loop && !main_loop) {
		main_loop = loop;
		ev_io_init(&wake_w, wake_cb, wake_fd, EV_READ);
		ev_io_start(loop, &wake_w);
	}
	return 0;
}

void gw_guard_shutdown(void)
{
	if (main_loop)
		ev_io_stop(main_loop, &wake_w);
	main_loop = NULL;
}

/* The page size of fd's file system: huge pages on hugetlbfs, else the base page. */
static size_t fd_page(int fd)
{
	struct statfs sf;

	if (fd >= 0 && fstatfs(fd, &sf) == 0 && (unsigned long)sf.f_type == HUGETLBFS_MAGIC &&
	    sf.f_bsize > 0 && !((size_t)sf.f_bsize & ((size_t)sf.f_bsize - 1)))
		return (size_t)sf.f_bsize;
	return (size_t)sysconf(_SC_PAGESIZE);
}

bool gw_guard_needed(int fd)
{
	int seals;

	/* hugetlbfs: a sealed file can still have holes punched, and refaulting them needs a free
	 * huge page. */
	if (fd_page(fd) != (size_t)sysconf(_SC_PAGESIZE))
		return true;
	seals = fcntl(fd, F_GET_SEALS);
	return seals < 0 || !(seals & F_SEAL_SHRINK);
}

static void slot_write(struct slot *s, uintptr_t base, size_t len, size_t page,
		       void (*on_fault)(void *, size_t), void *arg)
{
	__atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(&s->base, base, __ATOMIC_RELAXED);
	__atomic_store_n(&s->len, len, __ATOMIC_RELAXED);
	__atomic_store_n(&s->page, page, __ATOMIC_RELAXED);
	__atomic_store_n(&s->state, CLEAN, __ATOMIC_RELAXED);
	s->fault_off = 0;
	s->on_fault = on_fault;
	s->arg = arg;
	__atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELEASE);
}

int gw_guard_add(void *base, size_t len, int fd, void (*on_fault)(void *arg, size_t off), void *arg)
{
	size_t page = fd_page(fd);

	if (!installed || !len)
		return -EINVAL;
	len = (len + page - 1) & ~(page - 1); /* the kernel maps whole (huge) pages */
	for (unsigned i = 0; i < GW_GUARD_SLOTS; i++) {
		if (slots[i].len)
			continue;
		slot_write(&slots[i], (uintptr_t)base, len, page, on_fault, arg);
		if (i >= used_slots)
			__atomic_store_n(&used_slots, i + 1, __ATOMIC_RELEASE);
		return (int)i;
	}
	return -ENOSPC;
}

void gw_guard_del(int slot)
{
	if (slot < 0 || (unsigned)slot >= GW_GUARD_SLOTS)
		return;
	slot_write(&slots[slot], 0, 0, 0, NULL, NULL);
}

bool gw_guard_poisoned(const void *p, size_t len)
{
	unsigned n = __atomic_load_n(&used_slots, __ATOMIC_ACQUIRE);
	uintptr_t a = (uintptr_t)p, base;
	size_t l, page;

	for (unsigned i = 0; i < n; i++) {
		if (!slot_range(i, &base, &l, &page) ||
		    __atomic_load_n(&slots[i].state, __ATOMIC_ACQUIRE) == CLEAN)
			continue;
		if (a < base + l && base < a + len)
			return true;
	}
	return false;
}

void gw_guard_dispatch(void)
{
	for (unsigned i = 0; i < used_slots; i++) {
		struct slot *s = &slots[i];
		int poisoned = POISONED;

		if (!s->len || !__atomic_compare_exchange_n(&s->state, &poisoned, REPORTED, false,
							    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			continue;
		if (s->on_fault)
			s->on_fault(s->arg, __atomic_load_n(&s->fault_off, __ATOMIC_RELAXED));
	}
}
