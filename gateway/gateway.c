#include "gateway/gateway.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/manifest.h"
#include "config/preflight.h"
#include "gateway/control.h"
#include "lib/blkuse.h"
#include "lib/efd.h"
#include "gateway/export.h"
#include "gateway/metrics.h"
#include "gateway/notify.h"
#include "gateway/track.h"
#include "lib/guard.h"
#include "lib/log.h"
#include "lib/opts.h"
#include "lib/sockets.h"
#include "gateway/transport.h"
#include "lib/util.h"
#include "lib/worker.h"
#include "gw_version.h"

/* A manifest in use: exports and images keep pointers into it (their options). */
struct held {
	struct gw_manifest *m;
	unsigned refs;
};

struct live_image {
	struct gw_backend *b;
	struct gw_manifest *m; /* holds s */
	const struct gw_image_spec *s;
};

struct live_export {
	struct gw_export *e;
	struct gw_manifest *m; /* holds x, and e->topts */
	const struct gw_export_spec *x;
	bool in_shutdown; /* an apply's stop that shutdown also waits for */
};

struct apply;

static struct {
	struct gw_manifest *boot; /* the manifest serve started with: gateway settings */
	struct gw_manifest *m;    /* the desired state last applied */
	struct gw_transport_env env;
	char *run_dir;
	struct held *held;
	size_t nheld;
	struct live_image *images;
	size_t nimages;
	struct live_export *exports;
	size_t nexports;
	struct apply *applying;
	struct apply *closing;   /* its images in closing[] are closed, or being closed */
	unsigned stopping;       /* exports still stopping */
	unsigned starting;       /* a transport's start() runs (it may run the loop: VDUSE) */
	unsigned serve_starting; /* serve: exports not settled yet */
	bool stop_requested;
	uint64_t start_ns;
	ev_signal sig[3];
	const char *pidfile;
} gw;

static struct gw_manifest *m_ref(struct gw_manifest *m)
{
	struct held *h;

	for (size_t i = 0; i < gw.nheld; i++) {
		if (gw.held[i].m == m) {
			gw.held[i].refs++;
			return m;
		}
	}
	h = realloc(gw.held, (gw.nheld + 1) * sizeof(*h));
	if (!h)
		abort(); /* a few bytes; nothing sensible to do without them */
	gw.held = h;
	gw.held[gw.nheld++] = (struct held){ .m = m, .refs = 1 };
	return m;
}

static void m_unref(struct gw_manifest *m)
{
	for (size_t i = 0; i < gw.nheld; i++) {
		if (gw.held[i].m != m)
			continue;
		if (--gw.held[i].refs == 0) {
			gw_manifest_free(m);
			gw.held[i] = gw.held[--gw.nheld];
		}
		return;
	}
}

static bool image_closing(const struct gw_backend *b);

/* ---- status ---- */

static json_object *u64(uint64_t v)
{
	return json_object_new_int64((int64_t)v);
}

static json_object *export_json(struct gw_export *e)
{
	json_object *o = json_object_new_object(), *c = json_object_new_object();
	struct gw_export_status st;
	struct gw_stats_total t;
	char desc[512] = "";

	memset(&st, 0, sizeof(st));
	if (e->transport && e->transport->status && e->tpriv)
		e->transport->status(e, &st);
	if (image_closing(e->backend)) /* an apply's thread closes it: the export is going */
		snprintf(desc, sizeof(desc), "(closing)");
	else if (e->backend->ops->describe)
		e->backend->ops->describe(e->backend, desc, sizeof(desc));
	gw_export_stats(e, &t);
	json_object_object_add(o, "id", json_object_new_string(e->id));
	json_object_object_add(o, "image", json_object_new_string(e->image));
	json_object_object_add(o, "backend", json_object_new_string(desc));
	json_object_object_add(o, "size", u64(e->size));
	json_object_object_add(o, "read_only", json_object_new_boolean(e->read_only));
	json_object_object_add(o, "transport",
			       e->transport ? json_object_new_string(e->transport->name) : NULL);
	json_object_object_add(o, "endpoint", json_object_new_string(st.endpoint));
	json_object_object_add(o, "device", json_object_new_string(st.device));
	json_object_object_add(o, "state", json_object_new_string(gw_export_state_name(e->state)));
	json_object_object_add(o, "clients", json_object_new_int((int)atomic_load(&e->clients)));
	if (st.has_conn_counters) {
		json_object *l = json_object_new_object();

		json_object_object_add(l, "refused_max_connections", u64(st.refused_connections));
		json_object_object_add(l, "refused_no_fds", u64(st.refused_no_fds));
		json_object_object_add(l, "handshake_timeouts", u64(st.handshake_timeouts));
		json_object_object_add(l, "idle_timeouts", u64(st.idle_timeouts));
		json_object_object_add(l, "payload_timeouts", u64(st.payload_timeouts));
		json_object_object_add(o, "limits", l);
	}
	if (st.has_poll_counters) {
		json_object *p = json_object_new_object();

		json_object_object_add(p, "stopped_slow", u64(st.poll_slow_stops));
		json_object_object_add(p, "resumed", u64(st.poll_slow_resumes));
		json_object_object_add(p, "slow_connections", u64(st.poll_slow_now));
		json_object_object_add(o, "socket_poll", p);
	}
	json_object_object_add(o, "notes", json_object_new_string(e->notes));
	if (e->backend->cbt && !image_closing(e->backend))
		json_object_object_add(o, "tracking", gw_track_status(e->backend));
	{
		json_object *rj = json_object_new_array();

		for (size_t i = 0; i < e->nrejected; i++) {
			json_object *r = json_object_new_object();

			json_object_object_add(r, "transport",
					       json_object_new_string(e->rejected[i].transport));
			json_object_object_add(r, "reason",
					       json_object_new_string(e->rejected[i].why));
			json_object_array_add(rj, r);
		}
		json_object_object_add(o, "rejected", rj);
	}
	json_object_object_add(c, "requests", u64(t.requests));
	json_object_object_add(c, "reads", u64(t.reads));
	json_object_object_add(c, "writes", u64(t.writes));
	json_object_object_add(c, "flushes", u64(t.flushes));
	json_object_object_add(c, "fua", u64(t.fua));
	json_object_object_add(c, "trims", u64(t.trims));
	json_object_object_add(c, "zeroes", u64(t.zeroes));
	json_object_object_add(c, "caches", u64(t.caches));
	json_object_object_add(c, "block_status", u64(t.extents));
	json_object_object_add(c, "bytes_read", u64(t.bytes_read));
	json_object_object_add(c, "bytes_written", u64(t.bytes_written));
	json_object_object_add(c, "errors", u64(t.errors));
	json_object_object_add(c, "read_total_time_ns", u64(t.time_ns[GW_OP_READ]));
	json_object_object_add(c, "write_total_time_ns", u64(t.time_ns[GW_OP_WRITE]));
	json_object_object_add(c, "flush_total_time_ns", u64(t.time_ns[GW_OP_FLUSH]));
	json_object_object_add(c, "trim_total_time_ns", u64(t.time_ns[GW_OP_TRIM]));
	json_object_object_add(c, "zero_total_time_ns", u64(t.time_ns[GW_OP_WRITE_ZEROES]));
	json_object_object_add(c, "cache_total_time_ns", u64(t.time_ns[GW_OP_CACHE]));
	json_object_object_add(o, "counters", c);
	return o;
}

/* What each worker's loop does (lib/worker.h struct gw_worker_counters). */
static json_object *workers_json(void)
{
	json_object *a = json_object_new_array();

	for (unsigned i = 0; i < gw_workers_total(); i++) {
		struct gw_worker *w = gw_worker_get(i);
		struct gw_worker_counters c;
		json_object *o, *co;

		if (!w)
			continue; /* the background worker before its first use */
		o = json_object_new_object();
		co = json_object_new_object();
		gw_worker_counters_get(w, &c);
		json_object_object_add(o, "name", json_object_new_string(w->name));
		json_object_object_add(o, "background", json_object_new_boolean(w->background));
		json_object_object_add(
			o, "load",
			json_object_new_int((int)__atomic_load_n(&w->load, __ATOMIC_RELAXED)));
		json_object_object_add(o, "turns", u64(c.turns));
		json_object_object_add(o, "sleeps", u64(c.sleeps));
		json_object_object_add(o, "spin_turns", u64(c.spin_turns));
		json_object_object_add(o, "spin_turns_with_work", u64(c.spin_found));
		json_object_object_add(o, "requests", u64(c.requests));
		json_object_object_add(o, "kicks", u64(c.kicks));
		json_object_object_add(o, "ring_polls", u64(c.ring_polls));
		json_object_object_add(o, "ring_polls_with_work", u64(c.ring_polls_found));
		json_object_object_add(o, "held_signals", u64(c.held_signals));
		json_object_object_add(co, "phase",
				       json_object_new_string(gw_coalesce_phase_name(
					       (enum gw_coalesce_phase)c.co_phase)));
		json_object_object_add(co, "window_us",
				       json_object_new_double((double)c.co_window_ns / 1000.0));
		json_object_object_add(co, "kept", u64(c.co_decided_wait));
		json_object_object_add(co, "dropped", u64(c.co_decided_nowait));
		json_object_object_add(o, "coalesce", co);
		json_object_array_add(a, o);
	}
	return a;
}

static json_object *cmd_status(json_object *req)
{
	json_object *r = json_object_new_object(), *a = json_object_new_array();

	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "version", json_object_new_string(GW_VERSION));
	json_object_object_add(r, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(r, "uptime_s",
			       json_object_new_double((double)(gw_now_ns() - gw.start_ns) / 1e9));
	json_object_object_add(r, "manifest", json_object_new_string(gw.boot->abs_path));
	json_object_object_add(r, "applied", json_object_new_string(gw.m->abs_path));
	json_object_object_add(r, "run_dir", json_object_new_string(gw.run_dir));
	json_object_object_add(r, "workers", json_object_new_int((int)gw_workers_count()));
	json_object_object_add(r, "stopping", json_object_new_boolean(gw.stop_requested));
	/* Wake-ups of the main loop (listeners, control socket, timers): a loop
	 * that spins shows here as a count, whatever the machine's speed. */
	json_object_object_add(r, "main_loop_iterations", u64(ev_iteration(EV_DEFAULT)));
	json_object_object_add(r, "worker_loops", workers_json());
	for (size_t i = 0; i < gw.nexports; i++)
		json_object_array_add(a, export_json(gw.exports[i].e));
	json_object_object_add(r, "exports", a);
	return r;
}

static json_object *cmd_version(json_object *req)
{
	json_object *r = json_object_new_object();

	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "version", json_object_new_string(GW_VERSION));
	return r;
}

/* ---- metrics ---- */

/* A Prometheus label value: backslash, quote and newline escaped. */
static void label(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fprintf(f, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *const op_names[GW_OP__COUNT] = { "read", "write",        "flush",
						    "trim", "write_zeroes", "cache" };

/* Per worker loop: the counters of workers_json(). */
static void worker_metrics(FILE *f)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} m[] = {
		{ "blkgw_worker_turns_total", "Loop turns of the worker.",
		  offsetof(struct gw_worker_counters, turns) },
		{ "blkgw_worker_sleeps_total",
		  "Turns after which the worker's loop could block (no poller spinning, no work left).",
		  offsetof(struct gw_worker_counters, sleeps) },
		{ "blkgw_worker_spin_turns_total",
		  "Turns while a poller kept the loop from sleeping.",
		  offsetof(struct gw_worker_counters, spin_turns) },
		{ "blkgw_worker_spin_turns_with_work_total",
		  "Spinning turns that handled requests.",
		  offsetof(struct gw_worker_counters, spin_found) },
		{ "blkgw_worker_requests_total", "Requests the coalescer counted (NBD, FUSE).",
		  offsetof(struct gw_worker_counters, requests) },
		{ "blkgw_worker_kicks_total", "virtio queue kicks taken.",
		  offsetof(struct gw_worker_counters, kicks) },
		{ "blkgw_worker_ring_polls_total", "virtio queue polling slices.",
		  offsetof(struct gw_worker_counters, ring_polls) },
		{ "blkgw_worker_ring_polls_with_work_total",
		  "virtio queue polling slices that found requests.",
		  offsetof(struct gw_worker_counters, ring_polls_found) },
		{ "blkgw_worker_held_signals_total", "virtio completion signals held back.",
		  offsetof(struct gw_worker_counters, held_signals) },
	};
	unsigned n = gw_workers_total();
	struct gw_worker_counters *c = calloc(n ? n : 1, sizeof(*c));
	bool *have = calloc(n ? n : 1, sizeof(*have));

	if (!c || !have)
		goto out;
	for (unsigned i = 0; i < n; i++) {
		struct gw_worker *w = gw_worker_get(i);

		if (w) {
			gw_worker_counters_get(w, &c[i]);
			have[i] = true;
		}
	}
	for (size_t k = 0; k < GW_ARRAY_SIZE(m); k++) {
		head(f, m[k].name, "counter", m[k].help);
		for (unsigned i = 0; i < n; i++)
			if (have[i])
				fprintf(f, "%s{worker=\"%s\"} %llu\n", m[k].name,
					gw_worker_get(i)->name,
					(unsigned long long)*(
						const uint64_t *)((const char *)&c[i] + m[k].off));
	}
	head(f, "blkgw_worker_coalesce_window_seconds", "gauge",
	     "The event-coalescing window in force (0: none).");
	for (unsigned i = 0; i < n; i++)
		if (have[i])
			fprintf(f, "blkgw_worker_coalesce_window_seconds{worker=\"%s\"} %.9f\n",
				gw_worker_get(i)->name, (double)c[i].co_window_ns / 1e9);
out:
	free(c);
	free(have);
}

static void metrics_fill(FILE *f, void *arg)
{
	struct gw_stats_total *t = calloc(gw.nexports + 1, sizeof(*t));

	if (!t)
		return;
	for (size_t i = 0; i < gw.nexports; i++)
		gw_export_stats(gw.exports[i].e, &t[i]);
	head(f, "blkgw_uptime_seconds", "gauge", "Seconds since blkgw started.");
	fprintf(f, "blkgw_uptime_seconds %.3f\n", (double)(gw_now_ns() - gw.start_ns) / 1e9);
	head(f, "blkgw_export_info", "gauge",
	     "One per export: its image, active transport (\"\" when none) and state.");
	for (size_t i = 0; i < gw.nexports; i++) {
		struct gw_export *e = gw.exports[i].e;

		fputs("blkgw_export_info{export=\"", f);
		label(f, e->id);
		fputs("\",image=\"", f);
		label(f, e->image);
		fprintf(f, "\",transport=\"%s\",state=\"%s\"} 1\n",
			e->transport ? e->transport->name : "", gw_export_state_name(e->state));
	}
#define PER_EXPORT(name, type, help, fmt, expr)                \
	do {                                                   \
		head(f, name, type, help);                     \
		for (size_t i = 0; i < gw.nexports; i++) {     \
			struct gw_export *e = gw.exports[i].e; \
			fputs(name "{export=\"", f);           \
			label(f, e->id);                       \
			fprintf(f, "\"} " fmt "\n", (expr));   \
		}                                              \
	} while (0)
	PER_EXPORT("blkgw_export_up", "gauge", "1 while the export serves.", "%d",
		   e->state == GW_EXPORT_RUNNING);
	PER_EXPORT("blkgw_export_read_bytes_total", "counter", "Bytes read by clients.", "%llu",
		   (unsigned long long)t[i].bytes_read);
	PER_EXPORT("blkgw_export_written_bytes_total", "counter", "Bytes written by clients.",
		   "%llu", (unsigned long long)t[i].bytes_written);
	PER_EXPORT("blkgw_export_errors_total", "counter",
		   "Requests answered with an error (refused ones included).", "%llu",
		   (unsigned long long)t[i].errors);
	PER_EXPORT("blkgw_export_in_flight", "gauge",
		   "Requests handed to the backend and not yet complete.", "%lld",
		   (long long)(t[i].inflight > 0 ? t[i].inflight : 0));
	PER_EXPORT("blkgw_export_clients", "gauge", "Connections or queues attached.", "%u",
		   atomic_load(&e->clients));
	PER_EXPORT("blkgw_export_fallbacks", "gauge",
		   "Transports of the export's list passed over before the active one.", "%zu",
		   e->nrejected);
#undef PER_EXPORT
	head(f, "blkgw_export_limit_hits_total", "counter",
	     "Connections refused or closed by a limit (docs/reliability.md), per limit; exports on one socket share them.");
	for (size_t i = 0; i < gw.nexports; i++) {
		struct gw_export *e = gw.exports[i].e;
		struct gw_export_status st;
		static const char *const names[] = { "max_connections", "no_fds",
						     "handshake_timeout", "idle_timeout",
						     "payload_timeout" };
		unsigned long long v[GW_ARRAY_SIZE(names)];

		memset(&st, 0, sizeof(st));
		if (e->transport && e->transport->status && e->tpriv)
			e->transport->status(e, &st);
		if (!st.has_conn_counters)
			continue;
		v[0] = st.refused_connections;
		v[1] = st.refused_no_fds;
		v[2] = st.handshake_timeouts;
		v[3] = st.idle_timeouts;
		v[4] = st.payload_timeouts;
		for (size_t k = 0; k < GW_ARRAY_SIZE(names); k++) {
			fputs("blkgw_export_limit_hits_total{export=\"", f);
			label(f, e->id);
			fprintf(f, "\",limit=\"%s\"} %llu\n", names[k], v[k]);
		}
	}
	head(f, "blkgw_export_transport_rejected", "gauge",
	     "One per transport an export passed over, with the reason.");
	for (size_t i = 0; i < gw.nexports; i++) {
		struct gw_export *e = gw.exports[i].e;

		for (size_t r = 0; r < e->nrejected; r++) {
			fputs("blkgw_export_transport_rejected{export=\"", f);
			label(f, e->id);
			fprintf(f, "\",transport=\"%s\",reason=\"", e->rejected[r].transport);
			label(f, e->rejected[r].why);
			fputs("\"} 1\n", f);
		}
	}
	head(f, "blkgw_export_requests_total", "counter", "Requests completed, per operation.");
	for (size_t i = 0; i < gw.nexports; i++)
		for (unsigned o = 0; o < GW_OP__COUNT; o++) {
			uint64_t n = 0;

			for (unsigned b = 0; b < GW_LAT_BUCKETS; b++)
				n += t[i].lat[o][b];
			fputs("blkgw_export_requests_total{export=\"", f);
			label(f, gw.exports[i].e->id);
			fprintf(f, "\",op=\"%s\"} %llu\n", op_names[o], (unsigned long long)n);
		}
	head(f, "blkgw_export_request_duration_seconds", "histogram",
	     "Time from the checked layer to completion, per operation.");
	for (size_t i = 0; i < gw.nexports; i++)
		for (unsigned o = 0; o < GW_OP__COUNT; o++) {
			uint64_t cum = 0;

			for (unsigned b = 0; b < GW_LAT_BUCKETS; b++) {
				cum += t[i].lat[o][b];
				fputs("blkgw_export_request_duration_seconds_bucket{export=\"", f);
				label(f, gw.exports[i].e->id);
				if (b + 1 < GW_LAT_BUCKETS)
					fprintf(f, "\",op=\"%s\",le=\"%.6f\"} %llu\n", op_names[o],
						(double)(1ull << b) / 1e6, (unsigned long long)cum);
				else
					fprintf(f, "\",op=\"%s\",le=\"+Inf\"} %llu\n", op_names[o],
						(unsigned long long)cum);
			}
			fputs("blkgw_export_request_duration_seconds_sum{export=\"", f);
			label(f, gw.exports[i].e->id);
			fprintf(f, "\",op=\"%s\"} %.9f\n", op_names[o],
				(double)t[i].time_ns[o] / 1e9);
			fputs("blkgw_export_request_duration_seconds_count{export=\"", f);
			label(f, gw.exports[i].e->id);
			fprintf(f, "\",op=\"%s\"} %llu\n", op_names[o], (unsigned long long)cum);
		}
	free(t);
	worker_metrics(f);
}

/* ---- lifecycle ---- */

/* Record a transport the export did not get, and why. */
static void reject(struct gw_export *e, const char *tname, const char *why)
{
	struct gw_rejected *r = realloc(e->rejected, (e->nrejected + 1) * sizeof(*r));
	char *n;

	if (r) {
		e->rejected = r;
		r[e->nrejected].transport = tname;
		r[e->nrejected].why = strdup(why);
		if (r[e->nrejected].why)
			e->nrejected++;
	}
	if (asprintf(&n, "%s%s%s: %s", e->notes, *e->notes ? "; " : "", tname, why) < 0)
		return;
	free(e->notes);
	e->notes = n;
}

static void export_stopped(struct gw_export *e);

/*
 * Starting an export: its transports in order of preference. A transport
 * whose start() returns GW_START_PENDING creates its device off the main
 * thread; the export is "starting" until exp->started() or the timeout, so
 * a wedged kernel call holds up neither the daemon nor the other exports.
 */
struct starting {
	struct gw_export *e;
	const struct gw_export_spec *x;
	size_t idx;                                   /* the transport of x being tried */
	ev_timer timer;                               /* start-timeout, while a start is pending */
	void (*then)(struct gw_export *e, void *arg); /* settled: running or failed */
	void *arg;
	struct starting *next;
};

static struct starting *starting_list;

static struct starting *starting_find(struct gw_export *e)
{
	for (struct starting *st = starting_list; st; st = st->next)
		if (st->e == e)
			return st;
	return NULL;
}

static void settle(struct starting *st)
{
	struct starting **p;

	for (p = &starting_list; *p && *p != st; p = &(*p)->next)
		;
	if (*p)
		*p = st->next;
	ev_timer_stop(EV_DEFAULT, &st->timer);
	st->then(st->e, st->arg);
	free(st);
}

static void now_running(struct gw_export *e, size_t idx)
{
	struct gw_export_status st;

	memset(&st, 0, sizeof(st));
	e->state = GW_EXPORT_RUNNING;
	if (e->transport->status)
		e->transport->status(e, &st);
	gw_info("export %s: serving over %s%s%s%s%s", e->id, e->transport->name,
		*st.endpoint ? " at " : "", st.endpoint, *st.device ? " as " : "", st.device);
	if (idx > 0)
		gw_warn("export %s: fell back to %s (%s)", e->id, e->transport->name, e->notes);
}

/* The transport in use is given up: the next one may start. */
static void transport_clear(struct gw_export *e)
{
	e->transport = NULL;
	e->topts = NULL;
	e->tpriv = NULL;
	gw_log_export_transport(e->id, NULL);
}

static void on_started(struct gw_export *e, int rc, const char *why);
static void on_died(struct gw_export *e, const char *why);
static void try_from(struct starting *st);

/* An abandoned start's device is gone at last. */
static void abandoned_done(struct gw_export *e)
{
	gw_info("export %s: the device creation given up earlier has ended; its device is "
		"removed",
		e->id);
	if (--e->abandoned == 0 && e->free_when_idle)
		gw_export_free(e);
}

/* Give up a pending start: the transport removes the device whenever the kernel returns. */
static void abandon(struct starting *st)
{
	struct gw_export *e = st->e;

	ev_timer_stop(EV_DEFAULT, &st->timer);
	e->abandoned++;
	e->state = GW_EXPORT_STOPPING;
	e->transport->stop(e, abandoned_done);
	transport_clear(e);
}

static void start_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct starting *st = w->data;
	struct gw_export *e = st->e;
	const char *name = e->transport->name;
	char why[256];

	snprintf(why, sizeof(why),
		 "creating the device did not finish within %u s (start-timeout): given up, "
		 "it is removed when the kernel returns",
		 gw.m->gw.start_timeout);
	gw_warn("export %s: %s: %s", e->id, name, why);
	abandon(st);
	reject(e, name, why);
	st->idx++;
	try_from(st);
}

static void try_from(struct starting *st)
{
	struct gw_export *e = st->e;
	const struct gw_export_spec *x = st->x;
	char why[512];

	for (; st->idx < x->ntransports; st->idx++) {
		const struct gw_transport_spec *t = &x->transports[st->idx];
		int rc;

		why[0] = '\0';
		if (t->ops->probe && (rc = t->ops->probe(e->env, t->opts, why, sizeof(why))) < 0) {
			reject(e, t->ops->name, *why ? why : strerror(-rc));
			gw_warn("export %s: %s is not available here: %s", e->id, t->ops->name,
				*why ? why : strerror(-rc));
			continue;
		}
		e->transport = t->ops;
		e->topts = t->opts;
		e->started = on_started;
		e->died = on_died;
		gw_log_export_transport(e->id, t->ops->name);
		gw.starting++;
		rc = t->ops->start(e, why, sizeof(why));
		gw.starting--;
		if (rc == 0 && gw.stop_requested) {
			/* SIGTERM came while start() ran the loop (VDUSE): stop_all() missed it. */
			e->state = GW_EXPORT_STOPPING;
			gw.stopping++;
			t->ops->stop(e, export_stopped);
			settle(st);
			return;
		}
		if (rc == 0) {
			now_running(e, st->idx);
			settle(st);
			return;
		}
		if (rc == GW_START_PENDING) {
			e->state = GW_EXPORT_STARTING;
			ev_timer_init(&st->timer, start_timeout_cb, (double)gw.m->gw.start_timeout,
				      0);
			st->timer.data = st;
			ev_timer_start(EV_DEFAULT, &st->timer);
			return;
		}
		transport_clear(e);
		reject(e, t->ops->name, *why ? why : strerror(-rc));
		gw_warn("export %s: %s failed to start: %s", e->id, t->ops->name,
			*why ? why : strerror(-rc));
	}
	e->state = GW_EXPORT_FAILED;
	settle(st);
}

/* A pending start ended (transport, main thread). */
static void on_started(struct gw_export *e, int rc, const char *why)
{
	struct starting *st = starting_find(e);

	if (!st || e->state != GW_EXPORT_STARTING) {
		gw_err("export %s: a transport reported a start nobody waits for", e->id);
		return;
	}
	ev_timer_stop(EV_DEFAULT, &st->timer);
	if (rc == 0) {
		now_running(e, st->idx);
		settle(st);
		return;
	}
	reject(e, e->transport->name, why && *why ? why : strerror(-rc));
	gw_warn("export %s: %s failed to start: %s", e->id, e->transport->name,
		why && *why ? why : strerror(-rc));
	transport_clear(e);
	st->idx++;
	try_from(st);
}

/*
 * Start e over x's transports from index from; then(e, arg) runs once it
 * serves or none could (e->state RUNNING or FAILED), maybe before this
 * returns.
 */
static void start_export(struct gw_export *e, const struct gw_export_spec *x, size_t from,
			 void (*then)(struct gw_export *e, void *arg), void *arg)
{
	struct starting *st = calloc(1, sizeof(*st));

	if (!st) {
		reject(e, "(all)", "out of memory");
		e->state = GW_EXPORT_FAILED;
		then(e, arg);
		return;
	}
	*st = (struct starting){ .e = e, .x = x, .idx = from, .then = then, .arg = arg };
	ev_init(&st->timer, start_timeout_cb);
	st->next = starting_list;
	starting_list = st;
	try_from(st);
}

/* Free e now, or once the device creations given up earlier have ended. */
static void export_release(struct gw_export *e)
{
	if (e->abandoned)
		e->free_when_idle = true;
	else
		gw_export_free(e);
}

/* Stop or give up e, whatever it is doing; done(e) when it is stopped. false: nothing to stop. */
static bool export_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	struct starting *st;

	if (e->state == GW_EXPORT_RUNNING) {
		e->state = GW_EXPORT_STOPPING;
		e->transport->stop(e, done);
		return true;
	}
	if (e->state == GW_EXPORT_STARTING && (st = starting_find(e))) {
		const char *name = e->transport->name;

		abandon(st);
		reject(e, name, "stopped while creating its device");
		e->state = GW_EXPORT_FAILED;
		settle(st);
	}
	return false;
}

static void notify_status(void);
static void shutdown_one(void);

/* A re-export after a transport died has ended. */
static void reexported(struct gw_export *e, void *arg)
{
	if (e->state == GW_EXPORT_RUNNING)
		gw_warn("export %s: re-exported over %s (%s)", e->id, e->transport->name, e->notes);
	else
		gw_err("export %s: no further transport could serve it: %s", e->id, e->notes);
	notify_status();
}

static struct live_export *live_find(struct gw_export *e)
{
	for (size_t k = 0; k < gw.nexports; k++)
		if (gw.exports[k].e == e)
			return &gw.exports[k];
	return NULL;
}

/* The dead transport is stopped: the next one of the list may take the image. */
static void died_stopped(struct gw_export *e)
{
	struct live_export *le = live_find(e);
	size_t idx = 0;

	e->state = GW_EXPORT_STOPPED;
	gw_info("export %s: stopped", e->id);
	for (size_t i = 0; le && i < le->x->ntransports; i++)
		if (le->x->transports[i].opts == e->topts)
			idx = i;
	transport_clear(e);
	if (le && le->in_shutdown) {
		le->in_shutdown = false;
		shutdown_one();
		return;
	}
	if (!le || gw.stop_requested || gw.applying)
		return; /* stopping, or an apply decides what it becomes */
	start_export(e, le->x, idx + 1, reexported, NULL);
}

/*
 * The running export's device is gone for good (transport, main thread).
 * Data safety: the dead transport is stopped completely before the next
 * one starts, so the image is never exported twice.
 */
static void on_died(struct gw_export *e, const char *why)
{
	char r[512];

	if (e->state != GW_EXPORT_RUNNING)
		return;
	snprintf(r, sizeof(r), "died while serving: %s", why);
	gw_err("export %s: %s %s; serving it over the next transport of its list", e->id,
	       e->transport->name, r);
	reject(e, e->transport->name, r);
	e->state = GW_EXPORT_STOPPING;
	e->transport->stop(e, died_stopped);
}

struct reclaim_ctx {
	const struct gw_transport_ops *t;
};

/* Is export id served by the transport being reclaimed for? */
static bool reclaim_wanted(void *arg, const char *id)
{
	const struct reclaim_ctx *c = arg;

	for (size_t i = 0; i < gw.nexports; i++) {
		const struct gw_export *e = gw.exports[i].e;

		if (e && e->transport == c->t && e->state == GW_EXPORT_RUNNING &&
		    strcmp(e->id, id) == 0)
			return true;
	}
	return false;
}

/* At start-up: let each transport remove what a crashed daemon left for dropped exports. */
static void reclaim_all(const struct gw_transport_env *env)
{
	size_t n;
	const struct gw_transport_ops *const *list = gw_transport_list(&n);

	for (size_t i = 0; i < n; i++) {
		struct reclaim_ctx c = { .t = list[i] };

		if (list[i]->reclaim)
			list[i]->reclaim(env, reclaim_wanted, &c);
	}
}

static void shutdown_one(void)
{
	if (--gw.stopping == 0)
		ev_break(EV_DEFAULT, EVBREAK_ALL);
}

static void export_stopped(struct gw_export *e)
{
	e->state = GW_EXPORT_STOPPED;
	gw_info("export %s: stopped", e->id);
	gw_log_export_transport(e->id, NULL);
	shutdown_one();
}

static void stop_all(void)
{
	gw.stopping = 1; /* held until every stop is issued */
	for (size_t i = 0; i < gw.nexports; i++) {
		struct live_export *le = &gw.exports[i];
		struct gw_export *e = le->e;

		if (e->state == GW_EXPORT_STOPPING && !le->in_shutdown) {
			le->in_shutdown = true; /* an apply stops it: wait for that too */
			gw.stopping++;
		}
		if (e->state != GW_EXPORT_RUNNING && e->state != GW_EXPORT_STARTING)
			continue;
		gw.stopping++;
		if (!export_stop(e, export_stopped))
			gw.stopping--;
	}
	shutdown_one();
}

static void notify_line(bool ready);

static void notify_ready(void)
{
	notify_line(true);
}

static void notify_status(void)
{
	notify_line(false);
}

/* One line for systemd's STATUS=: how many exports serve, fell back, failed. */
static void notify_line(bool ready)
{
	unsigned run = 0, fell = 0, failed = 0;

	for (size_t i = 0; i < gw.nexports; i++) {
		struct gw_export *e = gw.exports[i].e;

		run += e->state == GW_EXPORT_RUNNING;
		fell += e->state == GW_EXPORT_RUNNING && e->nrejected > 0;
		failed += e->state == GW_EXPORT_FAILED;
	}
	gw_notify("%sSTATUS=%u of %zu export%s serving, %u fell back, %u failed",
		  ready ? "READY=1\n" : "", run, gw.nexports, gw.nexports == 1 ? "" : "s", fell,
		  failed);
}

/* Flush and close an image the daemon no longer serves. */
static void image_close(struct gw_backend *b)
{
	if (b->ops->sync) {
		int rc = b->ops->sync(b);

		if (rc < 0)
			gw_err("image %s: flushing before closing failed: %s", b->name,
			       strerror(-rc));
	}
	gw_track_detach(b);
	gw_backend_close(b);
}

/* ---- apply: converge on a manifest ---- */

enum act {
	ACT_KEEP,
	ACT_ADD,
	ACT_RESTART,
};

static const char *const act_names[] = { "keep", "add", "restart" };

struct apply {
	struct gw_manifest *nm; /* held */
	const char *origin;     /* "apply", "SIGHUP", "export-add"... */
	bool dry_run, force;
	struct gw_ctl_pending *reply_to; /* NULL: log the result only */
	/* Run once the apply is over (every start settled), just before it is freed. */
	void (*after)(void *arg);
	void *after_arg;
	/* Per new export: what happens, and the live export it keeps or replaces. */
	enum act *xact;
	size_t *xlive;
	char **xwhy;
	/* Per live export: it goes away (not in the new manifest). */
	bool *lremove;
	/* Per new image: the live image kept (SIZE_MAX: opened anew), and the new backend. */
	size_t *ikeep;
	struct gw_backend **iopen;
	/* Per live image: closed (gone or changed). */
	bool *ldrop;
	json_object *needs_restart; /* gateway settings that cannot change live */
	json_object *problems;
	unsigned pending; /* stops still running */
	/* Per new export: the export started anew (NULL: kept, or it could not be made). */
	struct gw_export **xexp;
	const char **xfail; /* why it could not be made */
	unsigned starting;  /* starts not settled yet */
	json_object *reply; /* being filled in as they settle */

	/*
	 * Work that may wait on a network (rbd: checking a source, opening or
	 * closing an image) runs on a thread of the apply's own while the main
	 * loop goes on (status answers); `then` runs on the main loop after.
	 */
	char *path, *shown; /* the manifest, and its name in messages */
	bool unlink_path;   /* a private file (export-add): removed once read */
	struct gw_manifest *loaded;
	int load_rc;
	struct gw_diags d;
	struct gw_backend_open_req *rq; /* images to open */
	size_t *rq_img;                 /* the new image each is for */
	size_t nrq;
	struct gw_backend **closing; /* images to close (before the opens) */
	size_t nclosing;
	void (*work)(struct apply *a);
	void (*then)(struct apply *a);
	pthread_t thread;
	bool working; /* the thread runs or is not yet joined */
};

static void apply_thread_done(void *arg);
static void problem(struct apply *a, const char *fmt, ...) GW_PRINTF(2, 3);

static void apply_free(struct apply *a)
{
	if (!a)
		return;
	if (a->after)
		a->after(a->after_arg);
	if (gw.closing == a)
		gw.closing = NULL;
	for (size_t j = 0; a->xwhy && j < a->nm->nexports; j++)
		free(a->xwhy[j]);
	for (size_t j = 0; a->iopen && j < a->nm->nimages; j++)
		if (a->iopen[j])
			image_close(a->iopen[j]);
	free(a->xact);
	free(a->xlive);
	free(a->xwhy);
	free(a->lremove);
	free(a->ikeep);
	free(a->iopen);
	free(a->ldrop);
	free(a->xexp);
	free(a->xfail);
	json_object_put(a->reply);
	json_object_put(a->needs_restart);
	json_object_put(a->problems);
	m_unref(a->nm);
	for (size_t i = 0; a->rq && i < a->nrq; i++)
		if (a->rq[i].b)
			image_close(a->rq[i].b);
	free(a->rq);
	free(a->rq_img);
	free(a->closing);
	if (a->loaded)
		gw_manifest_free(a->loaded);
	gw_diags_free(&a->d);
	if (a->unlink_path && a->path)
		unlink(a->path);
	free(a->path);
	free(a->shown);
	free(a);
}

/* Is b being closed by an apply's thread (so not to be touched)? */
static bool image_closing(const struct gw_backend *b)
{
	for (size_t i = 0; gw.closing && i < gw.closing->nclosing; i++)
		if (gw.closing->closing[i] == b)
			return true;
	return false;
}

static void *apply_thread(void *arg)
{
	struct apply *a = arg;

	a->work(a);
	if (gw_main_call(apply_thread_done, a) < 0)
		gw_err("%s: cannot hand the apply back to the main loop", a->origin);
	return NULL;
}

/* Main loop: the thread's work is done. */
static void apply_thread_done(void *arg)
{
	struct apply *a = arg;

	if (a->working) {
		pthread_join(a->thread, NULL);
		a->working = false;
	}
	a->then(a);
}

/* Run work(a) on a thread, then then(a) on the main loop. 0, or -errno (nothing ran). */
static int apply_bg(struct apply *a, void (*work)(struct apply *), void (*then)(struct apply *))
{
	int rc;

	a->work = work;
	a->then = then;
	rc = pthread_create(&a->thread, NULL, apply_thread, a);
	if (rc)
		return -rc;
	a->working = true;
	return 0;
}

/* The thread's half of opening and closing images. */
static void work_images(struct apply *a)
{
	for (size_t i = 0; i < a->nclosing; i++)
		image_close(a->closing[i]);
	gw_backend_open_all(a->rq, a->nrq);
}

/* Queue the opening of new image j (its fault layer is added on the main loop). */
static void rq_add(struct apply *a, size_t j)
{
	const struct gw_image_spec *s = &a->nm->images[j];

	a->rq_img[a->nrq] = j;
	a->rq[a->nrq++] = (struct gw_backend_open_req){
		.ops = s->ops, .name = s->name, .opts = s->opts, .read_only = s->read_only
	};
}

/* Main loop: move what the thread opened into iopen (fault layers added); how many failed. */
static size_t rq_take(struct apply *a, bool report)
{
	size_t bad = 0;

	for (size_t i = 0; i < a->nrq; i++) {
		size_t j = a->rq_img[i];
		const struct gw_image_spec *s = &a->nm->images[j];
		struct gw_backend *b = a->rq[i].b;

		a->rq[i].b = NULL;
		if (b && s->fault)
			b = gw_fault_wrap(b, s->fault, a->rq[i].err, sizeof(a->rq[i].err));
		if (b &&
		    gw_track_attach(b, s, gw.run_dir, a->rq[i].err, sizeof(a->rq[i].err)) < 0) {
			gw_backend_close(b);
			b = NULL;
		}
		a->iopen[j] = b;
		if (b)
			continue;
		bad++;
		if (report)
			problem(a, "%s:%d:%d: image '%s': %s", a->shown, s->line, s->col, s->name,
				a->rq[i].err);
		else
			gw_err("image %s: cannot open: %s", s->name, a->rq[i].err);
	}
	a->nrq = 0;
	return bad;
}

static size_t live_image_find(const char *name)
{
	for (size_t k = 0; k < gw.nimages; k++)
		if (strcmp(gw.images[k].s->name, name) == 0)
			return k;
	return SIZE_MAX;
}

static bool str_same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static bool backup_same(const struct gw_backup_spec *a, const struct gw_backup_spec *b)
{
	return a == b ||
	       (a && b && str_same(a->of, b->of) && str_same(a->checkpoint, b->checkpoint) &&
		str_same(a->since, b->since) && a->only_changed == b->only_changed &&
		a->view == b->view && a->rate == b->rate);
}

static bool image_same(const struct gw_image_spec *a, const struct gw_image_spec *b)
{
	return backup_same(a->backup, b->backup) && a->ops == b->ops &&
	       a->block_size == b->block_size && a->read_only == b->read_only &&
	       a->track_changes == b->track_changes &&
	       a->change_granularity == b->change_granularity &&
	       gw_opt_equal(&a->ops->schema, a->opts, b->opts);
}

/* What differs between two exports of one id ("" when nothing); malloc'd. */
static char *export_diff(const struct gw_export_spec *a, const struct gw_export_spec *b)
{
	char *s = NULL;
	int rc = 0;

	if (strcmp(a->image, b->image) != 0)
		rc = asprintf(&s, "image %s -> %s", a->image, b->image);
	else if (a->read_only != b->read_only)
		rc = asprintf(&s, "read-only %s -> %s", a->read_only ? "true" : "false",
			      b->read_only ? "true" : "false");
	else if (a->ntransports != b->ntransports)
		rc = asprintf(&s, "transports list changed");
	else
		for (size_t t = 0; t < a->ntransports && !s; t++) {
			const struct gw_transport_spec *ta = &a->transports[t],
						       *tb = &b->transports[t];

			if (ta->ops != tb->ops)
				rc = asprintf(&s, "transports list changed");
			else if (!gw_opt_equal(&ta->ops->schema, ta->opts, tb->opts))
				rc = asprintf(&s, "%s settings changed", ta->ops->name);
		}
	if (rc < 0)
		return NULL;
	return s ? s : strdup("");
}

static void needs_restart(struct apply *a, const char *what, const char *from, const char *to)
{
	char *s;

	if (asprintf(&s, "%s (%s -> %s): takes effect when blkgw restarts", what, from, to) < 0)
		return;
	json_object_array_add(a->needs_restart, json_object_new_string(s));
	free(s);
}

/* Gateway settings: which can change live (log level), which need a restart. */
static void plan_gateway(struct apply *a)
{
	const struct gw_gateway_cfg *o = &gw.boot->gw, *n = &a->nm->gw;
	char x[32], y[32];

	if (strcmp(o->run_dir, n->run_dir) != 0)
		needs_restart(a, "run-dir", o->run_dir, n->run_dir);
	if (strcmp(o->control_socket, n->control_socket) != 0)
		needs_restart(a, "control-socket", o->control_socket, n->control_socket);
	if (!gw_sock_perm_equal(&o->control_perm, &n->control_perm))
		needs_restart(a, "control-socket permissions",
			      gw_sock_perm_str(&o->control_perm, x, sizeof(x)),
			      gw_sock_perm_str(&n->control_perm, y, sizeof(y)));
	if (o->workers != n->workers) {
		snprintf(x, sizeof(x), "%u", o->workers);
		snprintf(y, sizeof(y), "%u", n->workers);
		needs_restart(a, "workers", x, y);
	}
	if (!o->metrics != !n->metrics || (o->metrics && strcmp(o->metrics, n->metrics) != 0))
		needs_restart(a, "metrics", o->metrics ? o->metrics : "none",
			      n->metrics ? n->metrics : "none");
	if (gw.env.buffer_limit != a->nm->env.buffer_limit) {
		snprintf(x, sizeof(x), "%llu", (unsigned long long)gw.env.buffer_limit);
		snprintf(y, sizeof(y), "%llu", (unsigned long long)a->nm->env.buffer_limit);
		needs_restart(a, "buffer-limit", x, y);
	}
	if (o->coalesce_us != n->coalesce_us) {
		snprintf(x, sizeof(x), "%u", o->coalesce_us);
		snprintf(y, sizeof(y), "%u", n->coalesce_us);
		needs_restart(a, "coalesce-us", x, y);
	}
	if (o->control_max_clients != n->control_max_clients ||
	    o->control_max_line != n->control_max_line ||
	    o->control_max_output != n->control_max_output) {
		char u[96], v[96];

		snprintf(u, sizeof(u), "%u, %llu, %llu", o->control_max_clients,
			 (unsigned long long)o->control_max_line,
			 (unsigned long long)o->control_max_output);
		snprintf(v, sizeof(v), "%u, %llu, %llu", n->control_max_clients,
			 (unsigned long long)n->control_max_line,
			 (unsigned long long)n->control_max_output);
		needs_restart(a, "control-max-clients, -line, -output", u, v);
	}
}

static void problem(struct apply *a, const char *fmt, ...) GW_PRINTF(2, 3);
static void problem(struct apply *a, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) >= 0) {
		json_object_array_add(a->problems, json_object_new_string(s));
		free(s);
	}
	va_end(ap);
}

/*
 * Is the live export in use (so stopping it would cut someone off)? The
 * transport's answer; else, for a transport with a kernel device, whether
 * the device is mounted, held or open (its queues are the kernel's, not
 * users); else any attached client.
 */
static bool in_use(struct gw_export *e, char *why, size_t len)
{
	struct gw_export_status st;
	unsigned c;

	if (e->state != GW_EXPORT_RUNNING)
		return false;
	if (e->transport->in_use)
		return e->transport->in_use(e, why, len) > 0;
	memset(&st, 0, sizeof(st));
	if (e->transport->status && e->tpriv)
		e->transport->status(e, &st);
	if (*st.device)
		return gw_blockdev_in_use(st.device, why, len) > 0;
	c = atomic_load(&e->clients);
	if (c == 0)
		return false;
	snprintf(why, len, "%u client%s connected", c, c == 1 ? "" : "s");
	return true;
}

#define ABANDONED_PENDING                                                                   \
	"a device creation given up after start-timeout has not ended yet (the kernel has " \
	"not returned; its I/O still reaches the image): try again once the log says it "   \
	"ended"

/* Work out the diff. 0, or -1 with problems (nothing changes then). */
static int plan(struct apply *a)
{
	struct gw_manifest *nm = a->nm;
	char why[512];

	a->xact = calloc(nm->nexports + 1, sizeof(*a->xact));
	a->xlive = calloc(nm->nexports + 1, sizeof(*a->xlive));
	a->xwhy = calloc(nm->nexports + 1, sizeof(*a->xwhy));
	a->lremove = calloc(gw.nexports + 1, sizeof(*a->lremove));
	a->ikeep = calloc(nm->nimages + 1, sizeof(*a->ikeep));
	a->iopen = calloc(nm->nimages + 1, sizeof(*a->iopen));
	a->ldrop = calloc(gw.nimages + 1, sizeof(*a->ldrop));
	a->xfail = calloc(nm->nexports + 1, sizeof(*a->xfail));
	if (!a->xact || !a->xlive || !a->xwhy || !a->lremove || !a->ikeep || !a->iopen ||
	    !a->ldrop || !a->xfail) {
		problem(a, "out of memory");
		return -1;
	}
	plan_gateway(a);

	for (size_t k = 0; k < gw.nimages; k++)
		a->ldrop[k] = true;
	for (size_t j = 0; j < nm->nimages; j++) {
		size_t k = live_image_find(nm->images[j].name);

		a->ikeep[j] = SIZE_MAX;
		if (k != SIZE_MAX && image_same(gw.images[k].s, &nm->images[j])) {
			a->ikeep[j] = k;
			a->ldrop[k] = false;
		}
	}

	for (size_t k = 0; k < gw.nexports; k++)
		a->lremove[k] = true;
	for (size_t j = 0; j < nm->nexports; j++) {
		const struct gw_export_spec *x = &nm->exports[j];
		size_t k, ki;

		a->xlive[j] = SIZE_MAX;
		a->xact[j] = ACT_ADD;
		for (k = 0; k < gw.nexports; k++)
			if (strcmp(gw.exports[k].e->id, x->id) == 0)
				break;
		if (k == gw.nexports)
			continue;
		a->xlive[j] = k;
		a->lremove[k] = false;
		a->xwhy[j] = export_diff(gw.exports[k].x, x);
		ki = live_image_find(gw.exports[k].x->image);
		if (a->xwhy[j] && !*a->xwhy[j] && ki != SIZE_MAX && a->ldrop[ki]) {
			free(a->xwhy[j]);
			if (asprintf(&a->xwhy[j], "image %s changed", x->image) < 0)
				a->xwhy[j] = NULL;
		}
		if (a->xwhy[j] && !*a->xwhy[j] && gw.exports[k].e->state != GW_EXPORT_RUNNING) {
			free(a->xwhy[j]);
			if (asprintf(&a->xwhy[j], "it is %s: starting it again",
				     gw_export_state_name(gw.exports[k].e->state)) < 0)
				a->xwhy[j] = NULL;
		}
		a->xact[j] = a->xwhy[j] && !*a->xwhy[j] ? ACT_KEEP : ACT_RESTART;
		if (a->xact[j] == ACT_RESTART && gw.exports[k].e->abandoned)
			problem(a, "export %s: %s", x->id, ABANDONED_PENDING);
		if (a->xact[j] == ACT_RESTART && !a->force &&
		    in_use(gw.exports[k].e, why, sizeof(why)))
			problem(a,
				"export %s: %s would restart it, but it is in use: %s "
				"(--force stops it anyway)",
				x->id, a->xwhy[j] ? a->xwhy[j] : "a change", why);
	}
	for (size_t k = 0; k < gw.nexports; k++)
		if (a->lremove[k] && gw.exports[k].e->abandoned)
			problem(a, "export %s: %s", gw.exports[k].e->id, ABANDONED_PENDING);
	for (size_t k = 0; k < gw.nexports; k++)
		if (a->lremove[k] && !a->force && in_use(gw.exports[k].e, why, sizeof(why)))
			problem(a,
				"export %s: removing it, but it is in use: %s "
				"(--force stops it anyway)",
				gw.exports[k].e->id, why);
	return json_object_array_length(a->problems) ? -1 : 0;
}

/* The reply: per export what happened (or would), and settings needing a restart. */
static json_object *apply_reply(struct apply *a, bool done)
{
	json_object *r = json_object_new_object(), *xs = json_object_new_array();

	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "dry_run", json_object_new_boolean(a->dry_run));
	for (size_t j = 0; j < a->nm->nexports; j++) {
		json_object *o = json_object_new_object();

		json_object_object_add(o, "id", json_object_new_string(a->nm->exports[j].id));
		json_object_object_add(o, "action", json_object_new_string(act_names[a->xact[j]]));
		if (a->xwhy[j] && *a->xwhy[j])
			json_object_object_add(o, "why", json_object_new_string(a->xwhy[j]));
		json_object_array_add(xs, o);
	}
	for (size_t k = 0; k < gw.nexports; k++) {
		json_object *o;

		if (!a->lremove[k])
			continue;
		o = json_object_new_object();
		json_object_object_add(o, "id", json_object_new_string(gw.exports[k].e->id));
		json_object_object_add(o, "action", json_object_new_string("remove"));
		json_object_array_add(xs, o);
	}
	json_object_object_add(r, "exports", xs);
	json_object_object_add(r, "needs_restart", json_object_get(a->needs_restart));
	return r;
}

static void apply_answer(struct apply *a, json_object *reply)
{
	if (a->reply_to) {
		gw_ctl_reply_later(a->reply_to, reply);
		a->reply_to = NULL;
	} else {
		json_object_put(reply);
	}
}

static void apply_fail(struct apply *a, int code, const char *msg)
{
	json_object *r = gw_ctl_error(code, "%s", msg);

	json_object_object_add(r, "problems", json_object_get(a->problems));
	gw_err("%s: %s", a->origin, msg);
	for (size_t i = 0; i < json_object_array_length(a->problems); i++)
		gw_err("%s: %s", a->origin,
		       json_object_get_string(json_object_array_get_idx(a->problems, i)));
	apply_answer(a, r);
}

static void apply_finish(struct apply *a);
static void apply_started(struct gw_export *e, void *arg);

static void apply_stopped(struct gw_export *e)
{
	struct apply *a = gw.applying;

	e->state = GW_EXPORT_STOPPED;
	gw_info("export %s: stopped", e->id);
	gw_log_export_transport(e->id, NULL);
	for (size_t k = 0; k < gw.nexports; k++) {
		if (gw.exports[k].e == e && gw.exports[k].in_shutdown) {
			gw.exports[k].in_shutdown = false;
			shutdown_one();
		}
	}
	if (a && --a->pending == 0)
		apply_finish(a);
}

static void apply_finish2(struct apply *a);

/*
 * Every stop is done: close the images that went or changed and open the
 * changed ones again (on the apply's thread: both may wait on a network),
 * then apply_finish2.
 */
static void apply_finish(struct apply *a)
{
	struct gw_manifest *nm = a->nm;

	if (gw.stop_requested) {
		apply_finish2(a);
		return;
	}
	free(a->rq); /* apply_loaded's, all taken */
	free(a->rq_img);
	a->closing = calloc(gw.nimages + 1, sizeof(*a->closing));
	a->rq = calloc(nm->nimages + 1, sizeof(*a->rq));
	a->rq_img = calloc(nm->nimages + 1, sizeof(*a->rq_img));
	if (!a->closing || !a->rq || !a->rq_img) {
		apply_finish2(a); /* fails it: out of memory */
		return;
	}
	gw.closing = a;
	for (size_t k = 0; k < gw.nimages; k++) {
		if (a->ldrop[k]) {
			a->closing[a->nclosing++] = gw.images[k].b;
			gw.images[k].b = NULL; /* now the thread's to close */
		}
	}
	for (size_t j = 0; j < nm->nimages; j++)
		if (a->ikeep[j] == SIZE_MAX && !a->iopen[j])
			rq_add(a, j);
	if ((a->nclosing || a->nrq) && apply_bg(a, work_images, apply_finish2) == 0)
		return;
	work_images(a); /* nothing to do, or no thread: here */
	apply_finish2(a);
}

/* Images closed and opened: start what is new; then the new state is the live one. */
static void apply_finish2(struct apply *a)
{
	struct gw_manifest *nm = a->nm;
	struct live_image *ni = NULL;
	struct live_export *nx = NULL;
	size_t n = 0;

	gw.applying = NULL;
	for (size_t k = 0; k < gw.nimages; k++)
		if (a->ldrop[k] && !gw.images[k].b)
			gw_info("image %s: closed", gw.images[k].s->name);
	if (a->rq_img)
		rq_take(a, false);
	if (!gw.stop_requested && a->closing && a->rq) {
		ni = calloc(nm->nimages + 1, sizeof(*ni));
		nx = calloc(nm->nexports + 1, sizeof(*nx));
	}
	if (gw.stop_requested || !ni || !nx) {
		free(ni);
		free(nx);
		apply_fail(a, -ECANCELED,
			   gw.stop_requested ? "blkgw is stopping: the apply was not finished"
					     : "out of memory");
		apply_free(a);
		return;
	}
	for (size_t j = 0; j < nm->nimages; j++) {
		if (a->ikeep[j] != SIZE_MAX) {
			ni[j] = gw.images[a->ikeep[j]];
			continue;
		}
		ni[j] = (struct live_image){ .b = a->iopen[j],
					     .m = m_ref(nm),
					     .s = &nm->images[j] };
		a->iopen[j] = NULL;
	}
	for (size_t k = 0; k < gw.nimages; k++)
		if (a->ldrop[k])
			m_unref(gw.images[k].m);

	a->xexp = calloc(nm->nexports + 1, sizeof(*a->xexp));
	if (!a->xexp)
		abort();                 /* a few bytes; nothing sensible to do without them */
	a->reply = apply_reply(a, true); /* names the removed exports: before they go */
	a->starting = 1;                 /* held until every start is issued */
	gw.applying = a;                 /* no other apply until its starts settled */
	for (size_t j = 0; j < nm->nexports; j++) {
		const struct gw_export_spec *x = &nm->exports[j];
		struct gw_backend *b = ni[x->image_index].b;
		struct gw_export *e;

		if (a->xact[j] == ACT_KEEP) {
			nx[n++] = gw.exports[a->xlive[j]];
			continue;
		}
		e = b ? gw_export_new(x->id, b, x->read_only, nm->images[x->image_index].block_size)
		      : NULL;
		if (!e) {
			/* Without its image (or memory) the export cannot exist: say so. */
			a->xfail[j] = b ? "failed: out of memory" : "failed: image did not open";
			gw_err("export %s: %s", x->id,
			       b ? "out of memory" : "its image did not open");
			continue;
		}
		if (nm->images[x->image_index].backup) {
			char why[768];

			e->background = true;
			e->rate = nm->images[x->image_index].backup->rate;
			if (gw_track_backup_attach(nm->images[x->image_index].backup, b->size,
						   &e->changes, &e->view, why, sizeof(why)) < 0) {
				gw_err("export %s: %s", x->id, why);
				gw_export_free(e);
				a->xfail[j] =
					"failed: its view or changes cannot be had (see the log)";
				continue;
			}
		}
		nx[n++] = (struct live_export){ .e = e, .m = m_ref(nm), .x = x };
		e->env = &gw.env;
		a->xexp[j] = e;
	}
	/* The exports that went away or were replaced. */
	for (size_t k = 0; k < gw.nexports; k++) {
		bool kept = false;

		for (size_t j = 0; j < nm->nexports; j++)
			kept = kept || (a->xact[j] == ACT_KEEP && a->xlive[j] == k);
		if (kept)
			continue;
		export_release(gw.exports[k].e);
		m_unref(gw.exports[k].m);
	}
	free(gw.exports);
	free(gw.images);
	gw.exports = nx;
	gw.nexports = n;
	gw.images = ni;
	gw.nimages = nm->nimages;
	m_unref(gw.m);
	gw.m = m_ref(nm);
	if (nm->gw.log_level) {
		enum gw_log_level lvl;

		if (gw_log_parse_level(nm->gw.log_level, &lvl) == 0)
			gw_log_set_level(lvl);
	}
	for (size_t j = 0; j < nm->nexports; j++) {
		if (!a->xexp[j])
			continue;
		a->starting++;
		start_export(a->xexp[j], &nm->exports[j], 0, apply_started, a);
	}
	apply_started(NULL, a);
}

/* An export the apply started serves, or none of its transports could; the last one answers. */
static void apply_started(struct gw_export *e, void *arg)
{
	struct apply *a = arg;
	struct gw_manifest *nm = a->nm;
	json_object *reply, *xs;

	if (--a->starting)
		return;
	gw.applying = NULL;
	reply = a->reply;
	a->reply = NULL;
	json_object_object_get_ex(reply, "exports", &xs);
	for (size_t j = 0; j < nm->nexports; j++) {
		json_object *o = json_object_array_get_idx(xs, j);
		struct gw_export *x = a->xexp[j];

		if (a->xact[j] == ACT_KEEP) {
			json_object_object_add(o, "result", json_object_new_string("unchanged"));
		} else if (!x) {
			json_object_object_add(o, "result", json_object_new_string(a->xfail[j]));
		} else if (x->state == GW_EXPORT_RUNNING) {
			json_object_object_add(o, "result", json_object_new_string("started"));
			json_object_object_add(o, "transport",
					       json_object_new_string(x->transport->name));
			if (x->nrejected)
				json_object_object_add(o, "notes",
						       json_object_new_string(x->notes));
		} else {
			char *r;

			if (asprintf(&r, "failed: no transport could start: %s", x->notes) >= 0) {
				json_object_object_add(o, "result", json_object_new_string(r));
				free(r);
			}
			gw_err("export %s: no transport could start: %s", x->id, x->notes);
		}
	}
	for (size_t i = nm->nexports; i < json_object_array_length(xs); i++)
		json_object_object_add(json_object_array_get_idx(xs, i), "result",
				       json_object_new_string("stopped"));
	for (size_t i = 0; i < json_object_array_length(xs); i++) {
		json_object *o = json_object_array_get_idx(xs, i), *v;

		json_object_object_get_ex(o, "result", &v);
		gw_info("%s: export %s: %s%s%s", a->origin,
			json_object_get_string(json_object_object_get(o, "id")),
			json_object_get_string(json_object_object_get(o, "action")), v ? ": " : "",
			v ? json_object_get_string(v) : "");
	}
	for (size_t i = 0; i < json_object_array_length(a->needs_restart); i++)
		gw_warn("%s: %s", a->origin,
			json_object_get_string(json_object_array_get_idx(a->needs_restart, i)));
	apply_answer(a, reply);
	apply_free(a);
	notify_ready();
}

/* Diags as "FILE:LINE:COL: message" strings. */
static void diags_to(json_object *arr, const struct gw_diags *d, const char *file)
{
	char *buf = NULL, *line, *save = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return;
	gw_diags_print(d, file, f);
	fclose(f);
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		json_object_array_add(arr, json_object_new_string(line));
	free(buf);
}

/*
 * Converge on the manifest at path: validate it fully (nothing changes when
 * anything is wrong), then stop what went or changed, start what came or
 * changed, and leave the rest alone. reply_to: where the answer goes (NULL:
 * the log). shown: the name messages use for the file. unlink_path: path is
 * a private file, removed once read. Reading it (its sources checked) and
 * opening new images run on the apply's thread: they may wait on a network.
 */
static void apply_loaded(struct apply *a);
static void apply_opened(struct apply *a);
static void apply_go(struct apply *a);

static void work_load(struct apply *a)
{
	a->load_rc = gw_manifest_load(a->path, true, &a->loaded, &a->d);
	if (a->unlink_path) {
		unlink(a->path);
		a->unlink_path = false;
	}
}

static void apply_path(const char *path, const char *shown, const char *origin, bool dry_run,
		       bool force, struct gw_ctl_pending *reply_to, bool unlink_path,
		       void (*after)(void *arg), void *after_arg)
{
	struct apply *a = calloc(1, sizeof(*a));
	json_object *problems = json_object_new_array();

	if (!a || !(a->path = strdup(path)) || !(a->shown = strdup(shown))) {
		if (a)
			free(a->path);
		free(a);
		json_object_put(problems);
		if (unlink_path)
			unlink(path);
		if (reply_to)
			gw_ctl_reply_later(reply_to, gw_ctl_error(-ENOMEM, "out of memory"));
		if (after)
			after(after_arg);
		return;
	}
	a->after = after;
	a->after_arg = after_arg;
	a->origin = origin;
	a->dry_run = dry_run;
	a->force = force;
	a->reply_to = reply_to;
	a->problems = problems;
	a->unlink_path = unlink_path;
	a->needs_restart = json_object_new_array();
	if (gw.applying || gw.starting || gw.stop_requested) {
		problem(a, "%s",
			gw.stop_requested ? "blkgw is stopping"
					  : "another apply is in progress; try again");
		apply_fail(a, -EBUSY, "nothing was changed");
		apply_free(a);
		return;
	}
	gw.applying = a; /* from here on, another apply waits for this one */
	gw_info("%s: reading %s", origin, shown);
	if (apply_bg(a, work_load, apply_loaded) < 0) {
		work_load(a);
		apply_loaded(a);
	}
}

/* Main loop: the manifest is read and its sources checked. */
static void apply_loaded(struct apply *a)
{
	struct gw_manifest *nm = a->loaded;
	struct gw_preflight pf = { 0 };
	struct gw_diags d = { 0 };

	a->loaded = NULL;
	if (gw.stop_requested) {
		if (nm)
			gw_manifest_free(nm);
		gw.applying = NULL;
		apply_fail(a, -ECANCELED, "blkgw is stopping: the apply was not finished");
		apply_free(a);
		return;
	}
	if (a->load_rc < 0) {
		gw.applying = NULL;
		diags_to(a->problems, &a->d, a->shown);
		apply_fail(a, -EINVAL, "the manifest has errors; nothing was changed");
		apply_free(a);
		return;
	}
	a->nm = m_ref(nm);
	if (gw_preflight_run_live(nm, &pf, &d) < 0) {
		gw.applying = NULL;
		diags_to(a->problems, &d, a->shown);
		gw_diags_free(&d);
		gw_preflight_free(&pf);
		apply_fail(a, -EINVAL, "the manifest cannot be served here; nothing was changed");
		apply_free(a);
		return;
	}
	gw_preflight_free(&pf);
	if (plan(a) < 0) {
		gw.applying = NULL;
		apply_fail(a, -EBUSY, "nothing was changed");
		apply_free(a);
		return;
	}
	if (a->dry_run) {
		gw.applying = NULL;
		apply_answer(a, apply_reply(a, false));
		apply_free(a);
		return;
	}
	/* Images new by name open first: one that fails stops the apply before any change. */
	a->rq = calloc(nm->nimages + 1, sizeof(*a->rq));
	a->rq_img = calloc(nm->nimages + 1, sizeof(*a->rq_img));
	if (!a->rq || !a->rq_img) {
		gw.applying = NULL;
		apply_fail(a, -ENOMEM, "out of memory; nothing was changed");
		apply_free(a);
		return;
	}
	for (size_t j = 0; j < nm->nimages; j++)
		if (a->ikeep[j] == SIZE_MAX && live_image_find(nm->images[j].name) == SIZE_MAX)
			rq_add(a, j);
	if (a->nrq && apply_bg(a, work_images, apply_opened) == 0)
		return;
	work_images(a); /* nothing to open, or no thread: here */
	apply_opened(a);
}

/* Main loop: the new images are open (or not). */
static void apply_opened(struct apply *a)
{
	if (rq_take(a, true) || gw.stop_requested) {
		gw.applying = NULL;
		if (gw.stop_requested)
			apply_fail(a, -ECANCELED, "blkgw is stopping: the apply was not finished");
		else
			apply_fail(a, -EIO, "an image did not open; nothing was changed");
		apply_free(a);
		return;
	}
	apply_go(a);
}

/* Stop what goes or changes; apply_finish once every stop is done. */
static void apply_go(struct apply *a)
{
	struct gw_manifest *nm = a->nm;

	gw_info("%s: applying %s", a->origin, a->shown);
	gw_notify("RELOADING=1\nSTATUS=applying %s", a->shown);
	a->pending = 1;
	for (size_t k = 0; k < gw.nexports; k++) {
		struct gw_export *e = gw.exports[k].e;
		bool stop = a->lremove[k];

		for (size_t j = 0; j < nm->nexports; j++)
			stop = stop || (a->xact[j] == ACT_RESTART && a->xlive[j] == k);
		if (!stop)
			continue;
		a->pending++;
		if (!export_stop(e, apply_stopped))
			a->pending--;
	}
	if (--a->pending == 0)
		apply_finish(a);
}

/* ---- save-manifest, export-add, export-del ---- */

/* A YAML double-quoted scalar (JSON's string syntax, which YAML reads). */
static const char *q(json_object **keep, const char *s)
{
	json_object *o = json_object_new_string(s);

	json_object_array_add(*keep, o);
	return json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
							 JSON_C_TO_STRING_NOSLASHESCAPE);
}

static bool export_skipped(size_t k, const char *skip_id, const char *skip_image)
{
	return (skip_id && strcmp(gw.exports[k].e->id, skip_id) == 0) ||
	       (skip_image && strcmp(gw.exports[k].x->image, skip_image) == 0);
}

/*
 * The live state as a manifest that re-applies to it: the gateway settings
 * blkgw runs with, every image (skip_image: one left out), every export
 * (skip_id: one left out; skip_image: its exports too) and extra lines for
 * export-add. NULL when out of memory.
 */
static char *manifest_text(const char *skip_id, const char *skip_image, const char *add_image,
			   const char *add_export)
{
	const struct gw_gateway_cfg *g = &gw.boot->gw;
	json_object *keep = json_object_new_array();
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	size_t nx = 0;

	if (!f) {
		json_object_put(keep);
		return NULL;
	}
	fprintf(f, "# blkgw save-manifest: the state of a running blkgw %s\nversion: 1\n",
		GW_VERSION);
	fprintf(f, "gateway:\n  run-dir: %s\n", q(&keep, gw.run_dir));
	fprintf(f, "  control-socket: %s\n", q(&keep, g->control_socket));
	fprintf(f, "  control-socket-mode: \"0%o\"\n", g->control_perm.mode);
	if (g->control_perm.uid != GW_ID_UNSET)
		fprintf(f, "  control-socket-owner: %u\n", g->control_perm.uid);
	if (g->control_perm.gid != GW_ID_UNSET)
		fprintf(f, "  control-socket-group: %u\n", g->control_perm.gid);
	fprintf(f, "  workers: %u\n  coalesce-us: %u\n", g->workers, g->coalesce_us);
	if (gw.m->gw.log_level)
		fprintf(f, "  log-level: %s\n", gw.m->gw.log_level);
	if (g->metrics)
		fprintf(f, "  metrics: %s\n", q(&keep, g->metrics));
	if (gw.env.buffer_limit)
		fprintf(f, "  buffer-limit: %llu\n", (unsigned long long)gw.env.buffer_limit);
	if (g->control_max_clients)
		fprintf(f,
			"  control-max-clients: %u\n  control-max-line: %llu\n"
			"  control-max-output: %llu\n",
			g->control_max_clients, (unsigned long long)g->control_max_line,
			(unsigned long long)g->control_max_output);
	fprintf(f, "images:%s\n", gw.nimages || add_image ? "" : " {}");
	for (size_t k = 0; k < gw.nimages; k++) {
		const struct gw_image_spec *s = gw.images[k].s;
		char *o;

		if (skip_image && strcmp(s->name, skip_image) == 0)
			continue;
		o = gw_opt_dump(&s->ops->schema, s->opts);
		fprintf(f, "  %s: { backend: %s", q(&keep, s->name), s->ops->name);
		if (s->block_size)
			fprintf(f, ", block-size: %u", s->block_size);
		if (s->track_changes)
			fprintf(f, ", track-changes: true, change-granularity: %u",
				s->change_granularity);
		if (s->backup) {
			fprintf(f, ", backup: { of: %s, checkpoint: %s", q(&keep, s->backup->of),
				q(&keep, s->backup->checkpoint));
			if (s->backup->since)
				fprintf(f, ", since: %s, only-changed: %s",
					q(&keep, s->backup->since),
					s->backup->only_changed ? "true" : "false");
			if (s->backup->view != GW_VIEW_SNAPSHOT) {
				static const char *const views[] = GW_VIEW_NAMES;

				fprintf(f, ", view: %s", views[s->backup->view]);
			}
			if (s->backup->rate)
				fprintf(f, ", rate: %llu", (unsigned long long)s->backup->rate);
			fprintf(f, " }");
		}
		fprintf(f, "%s%s }\n", o && *o ? ", " : "", o ? o : "");
		free(o);
	}
	if (add_image)
		fprintf(f, "%s\n", add_image);
	for (size_t k = 0; k < gw.nexports; k++)
		nx += !export_skipped(k, skip_id, skip_image);
	fprintf(f, "exports:%s\n", nx || add_export ? "" : " []");
	for (size_t k = 0; k < gw.nexports; k++) {
		const struct gw_export_spec *x = gw.exports[k].x;

		if (export_skipped(k, skip_id, skip_image))
			continue;
		fprintf(f, "  - image: %s\n", q(&keep, x->image));
		if (x->read_only)
			fprintf(f, "    read-only: true\n");
		fprintf(f, "    transports: [");
		for (size_t t = 0; t < x->ntransports; t++)
			fprintf(f, "%s%s", t ? ", " : "", x->transports[t].ops->name);
		fprintf(f, "]\n");
		for (size_t t = 0; t < x->ntransports; t++) {
			const struct gw_transport_spec *ts = &x->transports[t];
			char *o = gw_opt_dump(&ts->ops->schema, ts->opts);

			if (o && *o)
				fprintf(f, "    %s: { %s }\n", ts->ops->name, o);
			free(o);
		}
	}
	if (add_export)
		fprintf(f, "%s\n", add_export);
	json_object_put(keep);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* Write text to path atomically (a temporary beside it, then rename). 0 or -errno. */
static int write_file(const char *path, const char *text)
{
	char *tmp;
	FILE *f;
	int rc = 0;

	if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
		return -ENOMEM;
	f = fopen(tmp, "w");
	if (!f) {
		rc = -errno;
		free(tmp);
		return rc;
	}
	if (fputs(text, f) < 0)
		rc = -errno;
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		rc = rc ? rc : -errno;
	if (fclose(f) != 0)
		rc = rc ? rc : -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc < 0)
		unlink(tmp);
	free(tmp);
	return rc;
}

static bool jbool(json_object *req, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

static const char *jstring(json_object *req, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(req, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Apply a manifest given as text (export-add, export-del): a private file in the run dir. */
static json_object *apply_text_to(const char *text, const char *origin, bool dry_run, bool force,
				  struct gw_ctl_pending *p, void (*after)(void *arg),
				  void *after_arg);

static json_object *apply_text(const char *text, const char *origin, json_object *req)
{
	struct gw_ctl_pending *p = gw_ctl_defer();

	if (!p)
		return gw_ctl_error(-ENOMEM, "out of memory");
	return apply_text_to(text, origin, jbool(req, "dry_run"), jbool(req, "force"), p, NULL,
			     NULL);
}

/*
 * The same for a reply already deferred: NULL once the apply owns p, else
 * the error to answer p with.
 */
static json_object *apply_text_to(const char *text, const char *origin, bool dry_run, bool force,
				  struct gw_ctl_pending *p, void (*after)(void *arg),
				  void *after_arg)
{
	char *path;
	int fd;

	if (asprintf(&path, "%s/.%s-XXXXXX.yaml", gw.run_dir, origin) < 0) {
		if (after)
			after(after_arg);
		return gw_ctl_error(-ENOMEM, "out of memory");
	}
	fd = mkstemps(path, 5);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		json_object *r = gw_ctl_error(-errno, "cannot write %s: %s", path, strerror(errno));

		if (fd >= 0) {
			close(fd);
			unlink(path);
		}
		free(path);
		if (after)
			after(after_arg);
		return r;
	}
	close(fd);
	/* The apply removes the file once it has read it. */
	apply_path(path, origin, origin, dry_run, force, p, true, after, after_arg);
	free(path);
	return NULL;
}

static json_object *cmd_apply(json_object *req)
{
	const char *path = jstring(req, "manifest");
	struct gw_ctl_pending *p;

	if (!path)
		return gw_ctl_error(-EINVAL, "apply needs \"manifest\": the path of a manifest "
					     "(absolute: blkgw reads it)");
	p = gw_ctl_defer();
	if (!p)
		return gw_ctl_error(-ENOMEM, "out of memory");
	apply_path(path, path, "apply", jbool(req, "dry_run"), jbool(req, "force"), p, false, NULL,
		   NULL);
	return NULL;
}

static json_object *cmd_save_manifest(json_object *req)
{
	const char *path = jstring(req, "path");
	char *text = manifest_text(NULL, NULL, NULL, NULL);
	json_object *r;
	int rc;

	if (!text)
		return gw_ctl_error(-ENOMEM, "out of memory");
	if (path && (rc = write_file(path, text)) < 0) {
		r = gw_ctl_error(rc, "cannot write %s: %s", path, strerror(-rc));
		free(text);
		return r;
	}
	r = json_object_new_object();
	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "manifest", json_object_new_string(text));
	if (path)
		json_object_object_add(r, "path", json_object_new_string(path));
	free(text);
	return r;
}

static const char *flow(json_object *o)
{
	return json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
							 JSON_C_TO_STRING_NOSLASHESCAPE);
}

static json_object *cmd_export_add(json_object *req)
{
	json_object *x, *img = NULL, *name, *rest = NULL, *r;
	char *ex = NULL, *im = NULL, *text;

	if (!json_object_object_get_ex(req, "export", &x) ||
	    !json_object_is_type(x, json_type_object))
		return gw_ctl_error(-EINVAL,
				    "export-add needs \"export\": an export as the manifest "
				    "writes it, e.g. {\"image\": \"disk\", \"transports\": "
				    "[\"nbd\"]}");
	if (json_object_object_get_ex(req, "image", &img)) {
		if (!json_object_is_type(img, json_type_object) ||
		    !json_object_object_get_ex(img, "name", &name) ||
		    !json_object_is_type(name, json_type_string))
			return gw_ctl_error(-EINVAL,
					    "\"image\" must be an image as the manifest writes it, "
					    "with its \"name\": {\"name\": \"disk\", \"backend\": "
					    "\"file\", \"path\": \"/abs/disk.raw\"}");
		rest = json_object_new_object();
		json_object_object_foreach(img, k, v)
		{
			if (strcmp(k, "name") != 0)
				json_object_object_add(rest, k, json_object_get(v));
		}
		if (asprintf(&im, "  %s: %s", flow(name), flow(rest)) < 0)
			im = NULL;
		json_object_put(rest);
	}
	if (asprintf(&ex, "  - %s", flow(x)) < 0)
		ex = NULL;
	text = ex && (!img || im) ? manifest_text(NULL, NULL, im, ex) : NULL;
	free(ex);
	free(im);
	if (!text)
		return gw_ctl_error(-ENOMEM, "out of memory");
	r = apply_text(text, "export-add", req);
	free(text);
	return r;
}

static json_object *cmd_export_del(json_object *req)
{
	const char *id = jstring(req, "id");
	char *text;
	json_object *r;
	size_t k;

	if (!id)
		return gw_ctl_error(-EINVAL,
				    "export-del needs \"id\": the export's id (see status)");
	for (k = 0; k < gw.nexports; k++)
		if (strcmp(gw.exports[k].e->id, id) == 0)
			break;
	if (k == gw.nexports)
		return gw_ctl_error(-ENOENT, "no export '%s' (see status)", id);
	text = manifest_text(id, NULL, NULL, NULL);
	if (!text)
		return gw_ctl_error(-ENOMEM, "out of memory");
	r = apply_text(text, "export-del", req);
	free(text);
	return r;
}

static bool image_live(const char *name)
{
	for (size_t k = 0; k < gw.nimages; k++)
		if (strcmp(gw.images[k].s->name, name) == 0)
			return true;
	return false;
}

/* After backup-start's apply: undo the checkpoint it made if its export is not serving. */
struct backup_started {
	char *image, *ckpt, *id;
};

static struct backup_started *backup_started_new(const char *image, const char *ckpt,
						 const char *id)
{
	struct backup_started *b = calloc(1, sizeof(*b));

	if (b &&
	    (!(b->image = strdup(image)) || !(b->ckpt = strdup(ckpt)) || !(b->id = strdup(id)))) {
		free(b->image);
		free(b->ckpt);
		free(b);
		b = NULL;
	}
	return b;
}

static void backup_started_check(void *arg)
{
	struct backup_started *b = arg;
	bool running = false;

	if (!b)
		return;
	for (size_t k = 0; k < gw.nexports; k++)
		running = running || (strcmp(gw.exports[k].e->id, b->id) == 0 &&
				      gw.exports[k].e->state == GW_EXPORT_RUNNING);
	if (!running) {
		gw_info("backup %s did not start: checkpoint %s of image %s, made for it, is undone",
			b->id, b->ckpt, b->image);
		gw_track_checkpoint_undo(b->image, b->ckpt);
	}
	free(b->image);
	free(b->ckpt);
	free(b->id);
	free(b);
}

/*
 * backup-start: a read-only NBD export of a checkpoint's point-in-time view,
 * named IMAGE@CHECKPOINT, offering the changes since an earlier checkpoint
 * (docs/backup.md). Made as export-add makes an export: the image and the
 * export join the live state, so save-manifest and apply keep them.
 */
static json_object *cmd_backup_start(json_object *req)
{
	const char *image = jstring(req, "image"), *ckpt = jstring(req, "checkpoint");
	const char *since = jstring(req, "since");
	bool only = jbool(req, "only_changed"), inconsistent = jbool(req, "inconsistent");
	json_object *nbd = NULL, *r, *keep, *jrate = NULL;
	int64_t rate = 0;
	char rate_text[40] = "";
	char err[1024] = "", *fields = NULL, *id = NULL, *im = NULL, *ex = NULL, *text = NULL;
	struct gw_ctl_pending *p;
	static const char *const views[] = GW_VIEW_NAMES;
	enum gw_backup_view view = GW_VIEW_SNAPSHOT;
	struct backup_started *after = NULL;
	bool created;
	int rc;

	if (!image || !ckpt)
		return gw_ctl_error(-EINVAL, "backup-start needs \"image\" and \"checkpoint\"");
	if (only && !since)
		return gw_ctl_error(-EINVAL,
				    "\"only_changed\" needs \"since\": the checkpoint the layer "
				    "is over");
	if (json_object_object_get_ex(req, "rate", &jrate)) {
		rate = json_object_is_type(jrate, json_type_int) ? json_object_get_int64(jrate) : 0;
		if (rate <= 0)
			return gw_ctl_error(-EINVAL, "\"rate\" must be the most bytes per second "
						     "the backup is read at, a number above 0");
		snprintf(rate_text, sizeof(rate_text), ", rate: %lld", (long long)rate);
	}
	if (json_object_object_get_ex(req, "nbd", &nbd) &&
	    !json_object_is_type(nbd, json_type_object))
		return gw_ctl_error(-EINVAL, "\"nbd\" must be the export's nbd settings, e.g. "
					     "{\"socket\": \"/run/backup.sock\"}");
	if (asprintf(&id, "%s@%s", image, ckpt) < 0)
		return gw_ctl_error(-ENOMEM, "out of memory");
	if (image_live(id)) {
		r = gw_ctl_error(-EEXIST, "backup %s is running already (backup-stop ends it)", id);
		free(id);
		return r;
	}
	rc = gw_track_backup_view(image, ckpt, since, inconsistent, &fields, &view, &created, err,
				  sizeof(err));
	if (rc < 0) {
		free(id);
		return gw_ctl_error(rc, "%s", err);
	}
	/* The image (the view's settings, and what it is a backup of) and its export. */
	keep = json_object_new_array();
	if (asprintf(&im, "  %s: { %s, backup: { of: %s, checkpoint: %s, view: %s%s%s%s%s%s } }",
		     q(&keep, id), fields, q(&keep, image), q(&keep, ckpt), views[view],
		     since ? ", since: " : "", since ? q(&keep, since) : "",
		     since ? ", only-changed: " : "", since ? (only ? "true" : "false") : "",
		     rate_text) < 0)
		goto oom;
	/*
	 * Without settings: a socket of the backups' own, so that every export
	 * on it is a backup one and its connections go to the background worker.
	 */
	if (!nbd) {
		char *sock;

		nbd = json_object_new_object();
		json_object_array_add(keep, nbd);
		if (asprintf(&sock, "%s/backup.sock", gw.run_dir) < 0)
			goto oom;
		json_object_object_add(nbd, "socket", json_object_new_string(sock));
		free(sock);
	}
	if (asprintf(&ex, "  - { image: %s, read-only: true, transports: [nbd], nbd: %s }",
		     q(&keep, id), flow(nbd)) < 0)
		goto oom;
	text = manifest_text(NULL, NULL, im, ex);
	if (!text)
		goto oom;
	gw_info("backup %s: starting (%s view: %s)%s%s", id, views[view], fields,
		since ? ", changes since " : "", since ? since : "");
	/* A checkpoint made here is undone if its export does not start (or a dry run). */
	if (created && !(after = backup_started_new(image, ckpt, id)))
		goto oom;
	p = gw_ctl_defer();
	if (!p) {
		backup_started_check(after);
		goto oom;
	}
	r = apply_text_to(text, "backup-start", jbool(req, "dry_run"), jbool(req, "force"), p,
			  after ? backup_started_check : NULL, after);
	if (r) {
		gw_ctl_reply_later(p, r);
		r = NULL;
	}
	goto out;
oom:
	r = gw_ctl_error(-ENOMEM, "out of memory");
out:
	json_object_put(keep);
	free(text);
	free(im);
	free(ex);
	free(fields);
	free(id);
	return r;
}

/*
 * backup-stop gives the backup's readers this long to hang up: a client
 * that just closed its connection (qemu-img convert has exited) may not be
 * counted out yet, and "in use" would then be a false alarm.
 */
#define BACKUP_STOP_GRACE_S 5.0

struct backup_stop {
	ev_timer timer;
	struct gw_ctl_pending *p;
	char *id;
	bool dry_run, force;
	ev_tstamp deadline;
};

static const struct gw_image_spec *backup_image(const char *id)
{
	for (size_t k = 0; k < gw.nimages; k++)
		if (strcmp(gw.images[k].s->name, id) == 0)
			return gw.images[k].s->backup ? gw.images[k].s : NULL;
	return NULL;
}

static unsigned backup_clients(const char *id)
{
	unsigned n = 0;

	for (size_t k = 0; k < gw.nexports; k++)
		if (strcmp(gw.exports[k].x->image, id) == 0)
			n += atomic_load(&gw.exports[k].e->clients);
	return n;
}

static void backup_stop_go(struct backup_stop *b)
{
	const struct gw_image_spec *s = backup_image(b->id);
	json_object *r = NULL;
	char *text;

	if (!s) {
		r = gw_ctl_error(-ENOENT, "no backup '%s' is running (see status)", b->id);
	} else {
		/*
		 * A copy-before-write view ends with its export; not while a
		 * reader holds on (the apply refuses that without force).
		 */
		if (s->backup->view == GW_VIEW_CBW && !b->dry_run &&
		    (b->force || !backup_clients(b->id)))
			gw_track_backup_end(s->backup->of, s->backup->checkpoint);
		text = manifest_text(NULL, b->id, NULL, NULL);
		r = text ? apply_text_to(text, "backup-stop", b->dry_run, b->force, b->p, NULL,
					 NULL)
			 : gw_ctl_error(-ENOMEM, "out of memory");
		free(text);
	}
	if (r)
		gw_ctl_reply_later(b->p, r);
	free(b->id);
	free(b);
}

static void backup_stop_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct backup_stop *b = container_of(w, struct backup_stop, timer);

	(void)revents;
	if (backup_clients(b->id) && ev_now(loop) < b->deadline && backup_image(b->id))
		return;
	ev_timer_stop(loop, w);
	backup_stop_go(b);
}

/* backup-stop: end a backup export and drop its image (a reflink view stays with its checkpoint).
 */
static json_object *cmd_backup_stop(json_object *req)
{
	const char *id = jstring(req, "id");
	struct backup_stop *b;

	if (!id)
		return gw_ctl_error(-EINVAL, "backup-stop needs \"id\": IMAGE@CHECKPOINT");
	if (!backup_image(id))
		return gw_ctl_error(-ENOENT, "no backup '%s' is running (see status)", id);
	b = calloc(1, sizeof(*b));
	if (!b || !(b->id = strdup(id)) || !(b->p = gw_ctl_defer())) {
		if (b)
			free(b->id);
		free(b);
		return gw_ctl_error(-ENOMEM, "out of memory");
	}
	b->dry_run = jbool(req, "dry_run");
	b->force = jbool(req, "force");
	if (!backup_clients(id) || b->force) {
		backup_stop_go(b);
		return NULL;
	}
	b->deadline = ev_now(EV_DEFAULT) + BACKUP_STOP_GRACE_S;
	ev_timer_init(&b->timer, backup_stop_cb, 0.05, 0.05);
	ev_timer_start(EV_DEFAULT, &b->timer);
	return NULL;
}

static const struct {
	const char *name;
	json_object *(*fn)(json_object *req);
	const char *help;
} commands[] = {
	{ "status", cmd_status, "the gateway and every export with its counters" },
	{ "version", cmd_version, "the daemon's version" },
	{ "apply", cmd_apply, "converge on a manifest: {manifest, dry_run, force}" },
	{ "export-add", cmd_export_add, "add an export (and its image): {export, image, force}" },
	{ "export-del", cmd_export_del, "remove an export: {id, force}" },
	{ "save-manifest", cmd_save_manifest, "the live state as a manifest: {path}" },
	{ "backup-start", cmd_backup_start,
	  "export a checkpoint's view over NBD: {image, checkpoint, since, only_changed, rate, "
	  "inconsistent, nbd}" },
	{ "backup-stop", cmd_backup_stop,
	  "end a backup export: {id, force} (waits up to 5 s for its readers to hang up)" },
};

static json_object *ctl_handler(json_object *req, void *arg)
{
	json_object *cmd, *reply;
	const char *name;

	if (!json_object_object_get_ex(req, "command", &cmd) ||
	    !json_object_is_type(cmd, json_type_string))
		return gw_ctl_error(-EINVAL, "missing \"command\" (a string such as \"status\")");
	name = json_object_get_string(cmd);
	if ((reply = gw_track_command(name, req)))
		return reply;
	for (size_t i = 0; i < GW_ARRAY_SIZE(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return commands[i].fn(req);
	return gw_ctl_error(-EOPNOTSUPP,
			    "unknown command '%s' (commands: status, version, apply, export-add, "
			    "export-del, save-manifest, checkpoint-create, checkpoint-list, "
			    "checkpoint-delete, checkpoint-changes, backup-start, backup-stop)",
			    name);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	if (w->signum == SIGHUP) {
		gw_info("SIGHUP: re-reading %s", gw.boot->abs_path);
		apply_path(gw.boot->abs_path, gw.boot->abs_path, "SIGHUP", false, false, NULL,
			   false, NULL, NULL);
		return;
	}
	if (gw.stop_requested) {
		gw_warn("%s again while stopping: exiting now", strsignal(w->signum));
		_exit(1);
	}
	gw.stop_requested = true;
	gw_notify("STOPPING=1\nSTATUS=stopping");
	gw_info("%s: stopping (finishing in-flight requests)", strsignal(w->signum));
	/* Requests held on purpose (a fault layer's delay) go on now: a stop waits for them. */
	for (size_t i = 0; i < gw.nimages; i++)
		if (gw.images[i].b && gw.images[i].b->ops->release)
			gw.images[i].b->ops->release(gw.images[i].b);
	stop_all();
}

static int write_pidfile(const char *path)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		return -errno;
	fprintf(f, "%d\n", (int)getpid());
	if (fclose(f) != 0 || rename(tmp, path) < 0) {
		unlink(tmp);
		return -errno;
	}
	return 0;
}

static void cleanup(void)
{
	gw_metrics_stop();
	gw_ctl_stop();
	if (gw_workers_count())
		gw_workers_stop();
	/* An apply's thread may be opening images: let it finish (bounded by their timeouts). */
	if (gw.applying && gw.applying->working) {
		pthread_join(gw.applying->thread, NULL);
		gw.applying->working = false;
	}
	gw_main_exit(); /* runs what workers posted last (stop completions, an apply's end) */
	gw_guard_shutdown();
	gw_efd_shutdown();
	if (gw.applying) {
		apply_free(gw.applying);
		gw.applying = NULL;
	}
	for (size_t i = 0; i < gw.nimages; i++) {
		if (gw.images[i].b)
			image_close(gw.images[i].b);
		m_unref(gw.images[i].m);
	}
	for (size_t i = 0; i < gw.nexports; i++) {
		export_release(gw.exports[i].e);
		m_unref(gw.exports[i].m);
	}
	free(gw.exports);
	free(gw.images);
	if (gw.m)
		m_unref(gw.m);
	m_unref(gw.boot);
	free(gw.held);
	free(gw.run_dir);
	if (gw.pidfile)
		unlink(gw.pidfile);
}

/*
 * Raise the soft limit on open files to the hard one, as QEMU and nbdkit do:
 * the soft default (1024) is for select(), which blkgw does not use, and
 * every client, image and worker takes descriptors (the NBD connection
 * budget is derived from it). Logged either way.
 */
static void raise_nofile(void)
{
	struct rlimit r;
	rlim_t want, was;

	if (getrlimit(RLIMIT_NOFILE, &r) < 0)
		return;
	was = r.rlim_cur;
	want = r.rlim_max;
	if (want == RLIM_INFINITY) { /* the kernel's ceiling, not infinity */
		FILE *f = fopen("/proc/sys/fs/nr_open", "re");
		unsigned long long n = 0;

		if (!f || fscanf(f, "%llu", &n) != 1)
			n = 1u << 20;
		if (f)
			fclose(f);
		want = (rlim_t)n;
	}
	if (was != RLIM_INFINITY && want > was) {
		r.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &r) < 0) {
			gw_warn("open files limit: %llu; raising it to the hard limit %llu failed: %s",
				(unsigned long long)was, (unsigned long long)want, strerror(errno));
			return;
		}
		gw_info("open files limit raised from %llu to %llu (the hard limit)",
			(unsigned long long)was, (unsigned long long)want);
		return;
	}
	gw_info("open files limit: %llu (the hard limit)", (unsigned long long)was);
}

static void serve_started(struct gw_export *e, void *arg)
{
	gw.serve_starting--;
}

int gw_serve(struct gw_manifest *m, const struct gw_serve_opts *o)
{
	struct ev_loop *loop = EV_DEFAULT;
	enum gw_log_level lvl = GW_LOG_INFO;
	const char *lname = o->log_level ? o->log_level : m->gw.log_level;
	char err[1024];
	int rc;

	memset(&gw, 0, sizeof(gw));
	gw.boot = m_ref(m);
	gw.start_ns = gw_now_ns();
	gw.run_dir = strdup(m->gw.run_dir);
	gw.env = m->env; /* the daemon's own copy: a later manifest cannot change it */
	gw.env.run_dir = gw.run_dir;
	if (!gw.run_dir) {
		m_unref(gw.boot);
		return 1;
	}
	if (lname && gw_log_parse_level(lname, &lvl) < 0) {
		fprintf(stderr, "blkgw: unknown log level '%s' (error, warn, info, debug)\n",
			lname);
		m_unref(gw.boot);
		free(gw.run_dir);
		return 2;
	}
	gw_log_set_level(lvl);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	/*
	 * A copy-before-write backup (a saved manifest may hold one) lived in
	 * the daemon that made it: it cannot come back, and it must not stop
	 * the disks from being served.
	 */
	for (size_t i = 0; i < m->nimages;) {
		const struct gw_image_spec *s = &m->images[i];

		if (!s->backup || s->backup->view != GW_VIEW_CBW) {
			i++;
			continue;
		}
		gw_warn("image %s: its copy-before-write view ended with the daemon that kept it; "
			"not served (start a new backup)",
			s->name);
		gw_manifest_drop_image(m, i);
	}

	rc = gw_mkdir_p(m->gw.run_dir);
	if (rc < 0) {
		gw_err("cannot create run dir %s: %s", m->gw.run_dir, strerror(-rc));
		m_unref(gw.boot);
		free(gw.run_dir);
		return 1;
	}
	/* Refuse to run twice on one control socket. */
	{
		json_object *req = json_object_new_object(), *reply;
		int code;

		json_object_object_add(req, "command", json_object_new_string("version"));
		reply = gw_ctl_request(m->gw.control_socket, req, &code, err, sizeof(err));
		json_object_put(req);
		if (reply) {
			json_object_put(reply);
			gw_err("another blkgw is already running on control socket %s",
			       m->gw.control_socket);
			m_unref(gw.boot);
			free(gw.run_dir);
			return 1;
		}
	}

	gw_main_init(loop);
	rc = gw_guard_init(loop);
	if (rc < 0) {
		gw_err("cannot install the SIGBUS guard: %s", strerror(-rc));
		return 1;
	}
	rc = gw_efd_init();
	if (rc < 0) {
		gw_err("cannot start the eventfd watchdog: %s", strerror(-rc));
		return 1;
	}
	gw.m = m_ref(m);
	gw.images = calloc(m->nimages + 1, sizeof(*gw.images));
	gw.exports = calloc(m->nexports + 1, sizeof(*gw.exports));
	if (!gw.images || !gw.exports)
		goto fail;

	/*
	 * Open every image before serving anything, all at once (an rbd image
	 * waits on its cluster): a bad one stops the start.
	 */
	{
		struct gw_backend_open_req *rq = calloc(m->nimages + 1, sizeof(*rq));
		size_t bad;

		if (!rq)
			goto fail;
		for (size_t i = 0; i < m->nimages; i++)
			rq[i] = (struct gw_backend_open_req){ .ops = m->images[i].ops,
							      .name = m->images[i].name,
							      .opts = m->images[i].opts,
							      .read_only = m->images[i].read_only };
		bad = gw_backend_open_all(rq, m->nimages);
		for (size_t i = 0; i < m->nimages; i++) {
			const struct gw_image_spec *s = &m->images[i];

			if (rq[i].b && s->fault &&
			    !(rq[i].b = gw_fault_wrap(rq[i].b, s->fault, rq[i].err,
						      sizeof(rq[i].err))))
				bad++;
			else if (rq[i].b && gw_track_attach(rq[i].b, s, gw.run_dir, rq[i].err,
							    sizeof(rq[i].err)) < 0) {
				gw_backend_close(rq[i].b);
				rq[i].b = NULL;
				bad++;
			}
			if (!rq[i].b)
				fprintf(stderr, "%s:%d:%d: image '%s': %s\n", m->path, s->line,
					s->col, s->name, rq[i].err);
			else
				gw.images[gw.nimages++] =
					(struct live_image){ .b = rq[i].b, .m = m_ref(m), .s = s };
		}
		free(rq);
		if (bad)
			goto fail;
	}
	for (size_t i = 0; i < m->nexports; i++) {
		const struct gw_export_spec *x = &m->exports[i];
		struct gw_backend *b = gw.images[x->image_index].b;
		struct gw_export *e;

		if (!x->read_only && (b->caps & GW_CAP_READ_ONLY)) {
			fprintf(stderr,
				"%s:%d:%d: export %zu: image '%s' can only be read (permissions?); set 'read-only: true'\n",
				m->path, x->line, x->col, i + 1, x->image);
			goto fail;
		}
		e = gw_export_new(x->id, b, x->read_only, m->images[x->image_index].block_size);
		if (!e)
			goto fail;
		e->background = m->images[x->image_index].backup != NULL;
		if (m->images[x->image_index].backup)
			e->rate = m->images[x->image_index].backup->rate;
		if (m->images[x->image_index].backup &&
		    gw_track_backup_attach(m->images[x->image_index].backup, b->size, &e->changes,
					   &e->view, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s:%d:%d: export %zu: %s\n", m->path, x->line, x->col,
				i + 1, err);
			gw_export_free(e);
			goto fail;
		}
		e->env = &gw.env;
		gw.exports[gw.nexports++] = (struct live_export){ .e = e, .m = m_ref(m), .x = x };
	}

	gw_workers_set_coalesce_us(m->gw.coalesce_us);
	rc = gw_workers_start(m->gw.workers, err, sizeof(err));
	if (rc < 0) {
		gw_err("%s", err);
		goto fail;
	}
	/* All at once: one export's slow device creation does not hold up the others. */
	gw.serve_starting = 1;
	for (size_t i = 0; i < gw.nexports; i++) {
		gw.serve_starting++;
		start_export(gw.exports[i].e, &m->exports[i], 0, serve_started, NULL);
	}
	gw.serve_starting--;
	while (gw.serve_starting)
		ev_run(loop, EVRUN_ONCE);
	for (size_t i = 0; i < gw.nexports; i++) {
		struct gw_export *e = gw.exports[i].e;

		if (e->state != GW_EXPORT_RUNNING) {
			fprintf(stderr, "%s:%d:%d: export %zu (%s): no transport could start: %s\n",
				m->path, m->exports[i].line, m->exports[i].col, i + 1, e->id,
				e->notes);
			goto fail_stop;
		}
	}
	gw_ctl_set_limits(&(struct gw_ctl_limits){
		m->gw.control_max_clients, m->gw.control_max_line, m->gw.control_max_output });
	rc = gw_ctl_start(m->gw.control_socket, &m->gw.control_perm, ctl_handler, NULL, err,
			  sizeof(err));
	if (rc < 0) {
		gw_err("%s", err);
		goto fail_stop;
	}
	reclaim_all(&gw.env);
	if (m->gw.metrics) {
		rc = gw_metrics_start(m->gw.metrics, metrics_fill, NULL, err, sizeof(err));
		if (rc < 0) {
			gw_err("%s", err);
			goto fail_stop;
		}
	}
	if (o->pidfile) {
		rc = write_pidfile(o->pidfile);
		if (rc < 0) {
			gw_err("cannot write pid file %s: %s", o->pidfile, strerror(-rc));
			goto fail_stop;
		}
		gw.pidfile = o->pidfile;
	}

	ev_signal_init(&gw.sig[0], signal_cb, SIGTERM);
	ev_signal_init(&gw.sig[1], signal_cb, SIGINT);
	ev_signal_init(&gw.sig[2], signal_cb, SIGHUP);
	for (int i = 0; i < 3; i++)
		ev_signal_start(loop, &gw.sig[i]);
	gw_info("blkgw %s ready: %zu export%s, %u worker%s, control socket %s", GW_VERSION,
		gw.nexports, gw.nexports == 1 ? "" : "s", gw_workers_count(),
		gw_workers_count() == 1 ? "" : "s", m->gw.control_socket);
	notify_ready();

	ev_run(loop, 0);

	for (int i = 0; i < 3; i++)
		ev_signal_stop(loop, &gw.sig[i]);
	cleanup();
	gw_info("stopped");
	return 0;

fail_stop:
	gw.stop_requested = true;
	stop_all();
	if (gw.stopping)
		ev_run(loop, 0);
fail:
	for (size_t i = 0; gw.images && i < gw.nimages; i++)
		if (gw.images[i].b)
			gw.images[i].b->start_failed = true; /* remove what opening created */
	cleanup();
	return 1;
}
