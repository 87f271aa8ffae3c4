/* Logging: one function, levels, every line tagged with the thread's name. */
#pragma once

#include <stdbool.h>

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
