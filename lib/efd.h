/*
 * Eventfds another process shares with us (a vhost-user frontend's kick,
 * call and err fds), used so that it cannot hang one of our threads.
 *
 * The other process holds the same open file, so it can clear O_NONBLOCK
 * whenever it likes: a read of a kick eventfd it drained itself, or a write
 * to a call eventfd whose counter it filled up (to 2^64 - 2) and never reads,
 * would then block the thread, and with it every export that thread serves.
 *
 *   - gw_efd_check(): refuse anything but an eventfd (a pipe, /dev/null or a
 *     file would make the reads and writes mean something else, or spin);
 *     sets O_NONBLOCK for the honest case.
 *   - gw_efd_take(): read with RWF_NOWAIT, which does not depend on the
 *     file's flags (kernels from 5.12; before that a plain read).
 *   - gw_efd_signal(): a write that a watchdog thread abandons after
 *     GW_EFD_STALL_MS (SIGURG, then a jump out of the handler) for threads
 *     that called gw_efd_thread(); the watchdog runs only while some
 *     connection holds such fds (gw_efd_watch).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A guarded write blocked this long (at most twice that) is abandoned. */
#define GW_EFD_STALL_MS 100

/* Install the SIGURG handler and start the watchdog thread (paused). 0 or -errno. */
int gw_efd_init(void);
/* Stop the watchdog thread. */
void gw_efd_shutdown(void);
/* Let the watchdog rescue the calling thread (main, workers). 0 or -errno. */
int gw_efd_thread(void);
/* One more (true) or one fewer (false) connection with a peer's eventfds. */
void gw_efd_watch(bool on);

/*
 * 0 when fd is an eventfd (now non-blocking); -EINVAL and what it is in why
 * otherwise, or when it is a semaphore eventfd (where the kernel says so:
 * /proc/self/fdinfo of 6.x kernels).
 */
int gw_efd_check(int fd, char *why, size_t len);
/* Read and reset the counter without blocking: 0, -EAGAIN when it was 0, or -errno. */
int gw_efd_take(int fd, uint64_t *v);
/* Add 1: 0 (also when the counter is full and fd non-blocking), -ETIMEDOUT when abandoned, or
 * -errno. */
int gw_efd_signal(int fd);
