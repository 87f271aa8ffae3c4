/* Small helpers shared by every module. */
#pragma once

#include <stddef.h>
#include <stdbool.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>

#define GW_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#endif

#define gw_likely(x)   __builtin_expect(!!(x), 1)
#define gw_unlikely(x) __builtin_expect(!!(x), 0)

#define GW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GW_MAX(a, b) ((a) > (b) ? (a) : (b))

#define GW_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define GW_CACHELINE         64

static inline void gw_freep(void *p)
{
	free(*(void **)p);
}
/* A local that is freed when it goes out of scope. */
#define GW_CLEANUP_FREE __attribute__((cleanup(gw_freep)))

static inline int gw_is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Copy a C string into a fixed buffer, always terminated; returns -1 when truncated. */
int gw_strlcpy(char *dst, const char *src, size_t size);
/* snprintf into a fixed error buffer (NULL/0 allowed). */
void gw_seterr(char *err, size_t errlen, const char *fmt, ...) GW_PRINTF(3, 4);
/* Format a byte count in binary units ("1 GiB", "512 KiB", "1536 B"). */
const char *gw_fmt_size(uint64_t bytes, char *buf, size_t len);
/* Is capability cap (CAP_SYS_ADMIN, ...) in this process's effective set? */
bool gw_have_cap(int cap);
/* Monotonic clock in nanoseconds. */
uint64_t gw_now_ns(void);

/*
 * The signals a helper thread blocks: every one except those that report a
 * fault of the thread itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP,
 * SIGSYS, SIGABRT). Blocked, those would kill the process with no handler
 * run: no sanitizer report, no crash input for a fuzzer.
 */
void gw_thread_sigset(sigset_t *set);
