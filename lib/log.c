#include "lib/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum gw_log_level gw_log_threshold = GW_LOG_INFO;
static bool log_json;

static __thread char thread_name[16] = "main";
static const char *const level_names[] = {
	[GW_LOG_ERR] = "error",
	[GW_LOG_WARN] = "warn",
	[GW_LOG_INFO] = "info",
	[GW_LOG_DEBUG] = "debug",
};

void gw_log_set_level(enum gw_log_level level)
{
	gw_log_threshold = level;
}

int gw_log_parse_level(const char *s, enum gw_log_level *out)
{
	for (size_t i = 0; i < GW_ARRAY_SIZE(level_names); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum gw_log_level)i;
			return 0;
		}
	}
	if (strcmp(s, "warning") == 0) {
		*out = GW_LOG_WARN;
		return 0;
	}
	return -1;
}

const char *gw_log_level_name(enum gw_log_level level)
{
	return level < GW_ARRAY_SIZE(level_names) ? level_names[level] : "?";
}

void gw_log_set_thread_name(const char *name)
{
	gw_strlcpy(thread_name, name, sizeof(thread_name));
	pthread_setname_np(pthread_self(), thread_name);
}

void gw_log_set_json(bool json)
{
	log_json = json;
}

/* Export id -> transport name (static strings), for JSON lines. */
static pthread_mutex_t xt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct xt {
	char *id;
	const char *transport;
} * xt;
static size_t nxt;

void gw_log_export_transport(const char *id, const char *transport)
{
	size_t i;

	pthread_mutex_lock(&xt_lock);
	for (i = 0; i < nxt && strcmp(xt[i].id, id) != 0; i++)
		;
	if (i < nxt && !transport) {
		free(xt[i].id);
		xt[i] = xt[--nxt];
	} else if (i < nxt) {
		xt[i].transport = transport;
	} else if (transport) {
		struct xt *n = realloc(xt, (nxt + 1) * sizeof(*n));
		char *d = strdup(id);

		if (n)
			xt = n;
		if (n && d)
			xt[nxt++] = (struct xt){ .id = d, .transport = transport };
		else
			free(d);
	}
	pthread_mutex_unlock(&xt_lock);
}

/* The transport of export id (len bytes), or NULL. */
static const char *xt_find(const char *id, size_t len)
{
	const char *t = NULL;

	pthread_mutex_lock(&xt_lock);
	for (size_t i = 0; i < nxt && !t; i++)
		if (strlen(xt[i].id) == len && memcmp(xt[i].id, id, len) == 0)
			t = xt[i].transport;
	pthread_mutex_unlock(&xt_lock);
	return t;
}

/* Append s to b[*n..len) as JSON string content (without quotes). */
static void json_escape(char *b, size_t *n, size_t len, const char *s, size_t slen)
{
	for (size_t i = 0; i < slen && *n + 7 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			b[(*n)++] = '\\';
			b[(*n)++] = (char)c;
		} else if (c < 0x20) {
			*n += (size_t)snprintf(b + *n, len - *n, "\\u%04x", c);
		} else {
			b[(*n)++] = (char)c;
		}
	}
}

static void log_json_line(enum gw_log_level level, const struct timespec *ts, const char *msg)
{
	char line[2048];
	struct tm tm;
	size_t n;
	const char *colon;

	gmtime_r(&ts->tv_sec, &tm);
	n = strftime(line, sizeof(line), "{\"time\": \"%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n,
			      ".%03ldZ\", \"level\": \"%s\", \"thread\": \"", ts->tv_nsec / 1000000,
			      gw_log_level_name(level));
	json_escape(line, &n, sizeof(line), thread_name, strlen(thread_name));
	if (strncmp(msg, "export ", 7) == 0 && (colon = strchr(msg + 7, ':')) &&
	    !memchr(msg + 7, ' ', (size_t)(colon - msg - 7))) {
		const char *t = xt_find(msg + 7, (size_t)(colon - msg - 7));

		n += (size_t)snprintf(line + n, sizeof(line) - n, "\", \"export\": \"");
		json_escape(line, &n, sizeof(line), msg + 7, (size_t)(colon - msg - 7));
		if (t) {
			n += (size_t)snprintf(line + n, sizeof(line) - n, "\", \"transport\": \"");
			json_escape(line, &n, sizeof(line), t, strlen(t));
		}
	}
	n += (size_t)snprintf(line + n, sizeof(line) - n, "\", \"msg\": \"");
	json_escape(line, &n, sizeof(line), msg, strlen(msg));
	if (n + 3 >= sizeof(line))
		n = sizeof(line) - 3;
	line[n++] = '"';
	line[n++] = '}';
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, n) < 0) {
		/* nothing sensible to do */
	}
}

void gw_log(enum gw_log_level level, const char *fmt, ...)
{
	char line[1024];
	int saved = errno;
	struct timespec ts;
	struct tm tm;
	size_t n;
	va_list ap;

	if (level > gw_log_threshold)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (log_json) {
		char msg[1024];

		va_start(ap, fmt);
		errno = saved;
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		log_json_line(level, &ts, msg);
		errno = saved;
		return;
	}
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n,
			      ".%03ld blkgw[%s] %s: ", ts.tv_nsec / 1000000, thread_name,
			      gw_log_level_name(level));
	if (n < sizeof(line)) {
		va_start(ap, fmt);
		errno = saved;
		vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		va_end(ap);
	}
	n = strlen(line);
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line so threads never interleave inside a line. */
	if (write(STDERR_FILENO, line, n) < 0) {
		/* nothing sensible to do */
	}
	errno = saved;
}

void gw_log_rl(struct gw_ratelimit *rl, enum gw_log_level level, const char *fmt, ...)
{
	char msg[900];
	uint64_t now, dropped = 0;
	bool last = false;
	struct timespec ts;
	va_list ap;

	if (level > gw_log_threshold)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	pthread_mutex_lock(&rl->lock);
	if (!rl->start || now - rl->start >= (uint64_t)rl->interval * 1000000000ull) {
		dropped = rl->dropped;
		rl->start = now;
		rl->printed = 0;
		rl->dropped = 0;
	}
	if (rl->printed >= rl->burst) {
		rl->dropped++;
		rl->dropped_total++;
		pthread_mutex_unlock(&rl->lock);
		return;
	}
	last = ++rl->printed == rl->burst;
	pthread_mutex_unlock(&rl->lock);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (dropped && last)
		gw_log(level, "%s (%llu like this dropped before; more in the next %u s dropped)",
		       msg, (unsigned long long)dropped, rl->interval);
	else if (dropped)
		gw_log(level, "%s (%llu like this dropped before)", msg,
		       (unsigned long long)dropped);
	else if (last)
		gw_log(level, "%s (more like this in the next %u s dropped)", msg, rl->interval);
	else
		gw_log(level, "%s", msg);
}

uint64_t gw_ratelimit_dropped(struct gw_ratelimit *rl)
{
	uint64_t n;

	pthread_mutex_lock(&rl->lock);
	n = rl->dropped_total;
	pthread_mutex_unlock(&rl->lock);
	return n;
}
