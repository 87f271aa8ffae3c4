/*
 * Shared memory that another process can shrink under us.
 *
 * A vhost-user frontend hands over its guest memory as file descriptors. If
 * the file is not sealed against shrinking (F_SEAL_SHRINK: QEMU's
 * memory-backend-memfd seals by default, memory-backend-file on /dev/shm or
 * hugetlbfs does not), the frontend can truncate it while it is mapped
 * here, and the next access past the new end raises SIGBUS, which by
 * default kills the whole daemon, every export with it.
 *
 * Such mappings are registered here. A SIGBUS inside one replaces the
 * mapping from the faulting page to its end with private zero pages (so the
 * faulting access completes and the thread goes on; what lies before stays
 * shared), marks the mapping poisoned, bumps a global fault count and wakes
 * the main thread, which calls the owner's callback (the transport closes
 * that connection). A SIGBUS anywhere else is a real crash and still is.
 *
 * Data read from a poisoned mapping is zeros, not the frontend's: whoever
 * consumed guest memory must check gw_guard_faults() before answering a
 * request and, when it moved, gw_guard_poisoned() on the memory the
 * request used (virtio: vblk_queue's req_done), and never acknowledge such
 * a request.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct ev_loop;

/* Most registered mappings at once (each costs a few words of static memory). */
#define GW_GUARD_SLOTS 4096u

/*
 * Install the SIGBUS handler and the main thread's watcher on loop (NULL:
 * no watcher; call gw_guard_dispatch() yourself). Once per process, before
 * any mapping is registered. 0 or -errno.
 */
int gw_guard_init(struct ev_loop *loop);
/* Stop the watcher (the handler stays: mappings may outlive the loop). */
void gw_guard_shutdown(void);

/*
 * Whether a mapping of fd can fault from outside: false for a memfd sealed
 * with F_SEAL_SHRINK, true for anything else, hugetlbfs included (a sealed
 * hugetlb file can still have holes punched, and refaulting one needs a
 * free huge page).
 */
bool gw_guard_needed(int fd);

/*
 * Register [base, base+len), a mapping of fd (for its page size: huge pages
 * on hugetlbfs; -1: base pages) its owner will not unmap before
 * gw_guard_del(). on_fault runs on the main thread (from the loop given to
 * gw_guard_init, or gw_guard_dispatch) once after the mapping is poisoned,
 * with arg and the offset of the first fault. Main thread only. Returns the
 * slot (>= 0) or -ENOSPC when all GW_GUARD_SLOTS are in use.
 */
int gw_guard_add(void *base, size_t len, int fd, void (*on_fault)(void *arg, size_t off),
		 void *arg);
/* Unregister slot (before unmapping). Main thread only; -1 is ignored. */
void gw_guard_del(int slot);

/* Count of SIGBUS faults caught so far, process-wide (acquire load). */
static inline unsigned long gw_guard_faults(void)
{
	extern unsigned long gw_guard_fault_count;

	return __atomic_load_n(&gw_guard_fault_count, __ATOMIC_ACQUIRE);
}

/* Whether [p, p+len) overlaps a poisoned mapping. Any thread. */
bool gw_guard_poisoned(const void *p, size_t len);

/* Run the callbacks of newly poisoned mappings (main thread). */
void gw_guard_dispatch(void);
