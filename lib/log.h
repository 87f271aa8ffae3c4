/* Logging: one function, levels, every line tagged with the thread's name. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/util.h"

enum gw_log_level {
	GW_LOG_ERR = 0,
	GW_LOG_WARN,
	GW_LOG_INFO,
	GW_LOG_DEBUG,
};

extern enum gw_log_level gw_log_threshold;

void gw_log_set_level(enum gw_log_level level);
/* "error", "warn", "info", "debug"; returns -1 for anything else. */
int gw_log_parse_level(const char *s, enum gw_log_level *out);
const char *gw_log_level_name(enum gw_log_level level);
/* Name shown in brackets on this thread's lines (copied, at most 15 chars). */
void gw_log_set_thread_name(const char *name);

/*
 * Text lines ("12:00:00.123 blkgw[main] info: export disk: ..."), or JSON
 * lines: {"time": "2026-12-06T12:00:00.123Z", "level": "info", "thread":
 * "main", "export": "disk", "transport": "nbd", "msg": "export disk: ..."}
 * ("export" when the message is about one: it starts "export ID: ";
 * "transport" when that export has one, as gw_log_export_transport said).
 */
void gw_log_set_json(bool json);

/*
 * The transport export id is served over (NULL: none any more), for the
 * "transport" field of JSON lines. The daemon calls it whenever an export's
 * transport changes; any thread may log meanwhile.
 */
void gw_log_export_transport(const char *id, const char *transport);

void gw_log(enum gw_log_level level, const char *fmt, ...) GW_PRINTF(2, 3);

#define gw_log_enabled(l) (gw_unlikely((l) <= gw_log_threshold))
#define gw_err(...)       gw_log(GW_LOG_ERR, __VA_ARGS__)
#define gw_warn(...)      gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_info(...)                                      \
	do {                                              \
		if (gw_log_enabled(GW_LOG_INFO))          \
			gw_log(GW_LOG_INFO, __VA_ARGS__); \
	} while (0)
#define gw_debug(...)                                      \
	do {                                               \
		if (gw_log_enabled(GW_LOG_DEBUG))          \
			gw_log(GW_LOG_DEBUG, __VA_ARGS__); \
	} while (0)

/*
 * Rate-limited logging, for every line a remote peer can trigger: at most
 * `burst` lines per `interval` seconds from one limiter; the first line
 * dropped says so, and the first line of the next window counts what was
 * dropped. One static limiter per call site (or per kind of event).
 */
struct gw_ratelimit {
	pthread_mutex_t lock;
	unsigned interval; /* seconds */
	unsigned burst;
	uint64_t start; /* ns, CLOCK_MONOTONIC: this window's first line */
	unsigned printed;
	uint64_t dropped;
	uint64_t dropped_total;
};
#define GW_RATELIMIT_INIT(interval_s, burst_n)                                                  \
	{                                                                                       \
		.lock = PTHREAD_MUTEX_INITIALIZER, .interval = (interval_s), .burst = (burst_n) \
	}
/* The default for remote-triggerable lines: 10 lines per 5 s per limiter. */
#define GW_RATELIMIT_DEFAULT GW_RATELIMIT_INIT(5, 10)

void gw_log_rl(struct gw_ratelimit *rl, enum gw_log_level level, const char *fmt, ...)
	GW_PRINTF(3, 4);
/* Lines this limiter has dropped since start (for tests and status). */
uint64_t gw_ratelimit_dropped(struct gw_ratelimit *rl);

#define gw_warn_rl(rl, ...) gw_log_rl((rl), GW_LOG_WARN, __VA_ARGS__)
#define gw_info_rl(rl, ...)                                        \
	do {                                                       \
		if (gw_log_enabled(GW_LOG_INFO))                   \
			gw_log_rl((rl), GW_LOG_INFO, __VA_ARGS__); \
	} while (0)
