/*
 * Per-thread cache of page-aligned I/O buffers in power-of-two size classes,
 * so the data path allocates nothing per request once warm. Aligned buffers
 * also satisfy O_DIRECT. Thread: owned by one thread; no locks.
 */
#pragma once

#include <stddef.h>

#define GW_BUF_MIN_SHIFT 12 /* 4 KiB */
#define GW_BUF_MAX_SHIFT 25 /* 32 MiB */
#define GW_BUF_CLASSES   (GW_BUF_MAX_SHIFT - GW_BUF_MIN_SHIFT + 1)

struct gw_buf_hdr;

struct gw_bufpool {
	struct gw_buf_hdr *free[GW_BUF_CLASSES];
	unsigned nfree[GW_BUF_CLASSES];
	size_t cached_bytes;
	size_t cache_limit; /* bytes kept on the free lists at most */
};

void gw_bufpool_init(struct gw_bufpool *p, size_t cache_limit);
void gw_bufpool_exit(struct gw_bufpool *p);
/* A buffer of at least len bytes (len <= 32 MiB), page aligned; NULL on ENOMEM. */
void *gw_buf_get(struct gw_bufpool *p, size_t len);
/* Return a buffer from gw_buf_get with the same len. */
void gw_buf_put(struct gw_bufpool *p, void *buf, size_t len);
