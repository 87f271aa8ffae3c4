#include "gateway/gateway.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/manifest.h"
#include "gateway/control.h"
#include "lib/efd.h"
#include "gateway/export.h"
#include "lib/guard.h"
#include "lib/log.h"
#include "lib/sockets.h"
#include "gateway/transport.h"
#include "lib/util.h"
#include "lib/worker.h"
#include "gw_version.h"

static struct {
	struct gw_manifest *m;
	struct gw_backend **images;
	struct gw_export **exports;
	size_t nexports;
	unsigned stopping; /* exports still stopping */
	bool stop_requested;
	uint64_t start_ns;
	ev_signal sig[3];
	const char *pidfile;
} gw;

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
	if (e->backend->ops->describe)
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
	json_object_object_add(o, "notes", json_object_new_string(e->notes));
	json_object_object_add(c, "requests", u64(t.requests));
	json_object_object_add(c, "reads", u64(t.reads));
	json_object_object_add(c, "writes", u64(t.writes));
	json_object_object_add(c, "flushes", u64(t.flushes));
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

static json_object *cmd_status(json_object *req)
{
	json_object *r = json_object_new_object(), *a = json_object_new_array();

	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "version", json_object_new_string(GW_VERSION));
	json_object_object_add(r, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(r, "uptime_s",
			       json_object_new_double((double)(gw_now_ns() - gw.start_ns) / 1e9));
	json_object_object_add(r, "manifest", json_object_new_string(gw.m->abs_path));
	json_object_object_add(r, "run_dir", json_object_new_string(gw.m->gw.run_dir));
	json_object_object_add(r, "workers", json_object_new_int((int)gw_workers_count()));
	json_object_object_add(r, "stopping", json_object_new_boolean(gw.stop_requested));
	for (size_t i = 0; i < gw.nexports; i++)
		if (gw.exports[i])
			json_object_array_add(a, export_json(gw.exports[i]));
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

static const struct {
	const char *name;
	json_object *(*fn)(json_object *req);
	const char *help;
} commands[] = {
	{ "status", cmd_status, "the gateway and every export with its counters" },
	{ "version", cmd_version, "the daemon's version" },
};

static json_object *ctl_handler(json_object *req, void *arg)
{
	json_object *cmd;
	const char *name;

	if (!json_object_object_get_ex(req, "command", &cmd) ||
	    !json_object_is_type(cmd, json_type_string))
		return gw_ctl_error(-EINVAL, "missing \"command\" (a string such as \"status\")");
	name = json_object_get_string(cmd);
	for (size_t i = 0; i < GW_ARRAY_SIZE(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return commands[i].fn(req);
	return gw_ctl_error(-EOPNOTSUPP, "unknown command '%s' (commands: status, version)", name);
}

/* ---- lifecycle ---- */

static void note(struct gw_export *e, const char *tname, const char *why)
{
	char *n;

	if (asprintf(&n, "%s%s%s: %s", e->notes, *e->notes ? "; " : "", tname, why) < 0)
		return;
	free(e->notes);
	e->notes = n;
}

/* Try the export's transports in order of preference. */
static int start_export(struct gw_export *e, const struct gw_export_spec *x)
{
	char why[512];

	for (size_t i = 0; i < x->ntransports; i++) {
		const struct gw_transport_spec *t = &x->transports[i];
		int rc;

		why[0] = '\0';
		if (t->ops->probe && (rc = t->ops->probe(e->env, t->opts, why, sizeof(why))) < 0) {
			note(e, t->ops->name, *why ? why : strerror(-rc));
			gw_warn("export %s: %s is not available here: %s", e->id, t->ops->name,
				*why ? why : strerror(-rc));
			continue;
		}
		e->transport = t->ops;
		e->topts = t->opts;
		rc = t->ops->start(e, why, sizeof(why));
		if (rc == 0) {
			struct gw_export_status st;

			memset(&st, 0, sizeof(st));
			e->state = GW_EXPORT_RUNNING;
			if (t->ops->status)
				t->ops->status(e, &st);
			gw_info("export %s: serving over %s%s%s%s%s", e->id, t->ops->name,
				*st.endpoint ? " at " : "", st.endpoint, *st.device ? " as " : "",
				st.device);
			if (i > 0)
				gw_warn("export %s: fell back to %s (%s)", e->id, t->ops->name,
					e->notes);
			return 0;
		}
		e->transport = NULL;
		e->topts = NULL;
		note(e, t->ops->name, *why ? why : strerror(-rc));
		gw_warn("export %s: %s failed to start: %s", e->id, t->ops->name,
			*why ? why : strerror(-rc));
	}
	e->state = GW_EXPORT_FAILED;
	return -1;
}

static void export_stopped(struct gw_export *e)
{
	e->state = GW_EXPORT_STOPPED;
	gw_info("export %s: stopped", e->id);
	if (--gw.stopping == 0)
		ev_break(EV_DEFAULT, EVBREAK_ALL);
}

static void stop_all(void)
{
	gw.stopping = 1; /* held until every stop is issued */
	for (size_t i = 0; i < gw.nexports; i++) {
		struct gw_export *e = gw.exports[i];

		if (!e || e->state != GW_EXPORT_RUNNING)
			continue;
		e->state = GW_EXPORT_STOPPING;
		gw.stopping++;
		e->transport->stop(e, export_stopped);
	}
	if (--gw.stopping == 0)
		ev_break(EV_DEFAULT, EVBREAK_ALL);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	if (w->signum == SIGHUP) {
		gw_warn("SIGHUP: reloading the manifest is not supported yet; restart blkgw to apply changes");
		return;
	}
	if (gw.stop_requested) {
		gw_warn("%s again while stopping: exiting now", strsignal(w->signum));
		_exit(1);
	}
	gw.stop_requested = true;
	gw_info("%s: stopping (finishing in-flight requests)", strsignal(w->signum));
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
	gw_ctl_stop();
	if (gw_workers_count())
		gw_workers_stop();
	gw_main_exit(); /* runs what workers posted last (stop completions) */
	gw_guard_shutdown();
	gw_efd_shutdown();
	for (size_t i = 0; i < gw.m->nimages; i++) {
		struct gw_backend *b = gw.images ? gw.images[i] : NULL;

		if (!b)
			continue;
		if (b->ops->sync) {
			int rc = b->ops->sync(b);

			if (rc < 0)
				gw_err("image %s: flushing at shutdown failed: %s", b->name,
				       strerror(-rc));
		}
		gw_backend_close(b);
	}
	for (size_t i = 0; i < gw.nexports; i++)
		gw_export_free(gw.exports[i]);
	free(gw.exports);
	free(gw.images);
	if (gw.pidfile)
		unlink(gw.pidfile);
}

int gw_serve(struct gw_manifest *m, const struct gw_serve_opts *o)
{
	struct ev_loop *loop = EV_DEFAULT;
	enum gw_log_level lvl = GW_LOG_INFO;
	const char *lname = o->log_level ? o->log_level : m->gw.log_level;
	char err[1024];
	int rc;

	memset(&gw, 0, sizeof(gw));
	gw.m = m;
	gw.start_ns = gw_now_ns();
	if (lname && gw_log_parse_level(lname, &lvl) < 0) {
		fprintf(stderr, "blkgw: unknown log level '%s' (error, warn, info, debug)\n",
			lname);
		return 2;
	}
	gw_log_set_level(lvl);
	signal(SIGPIPE, SIG_IGN);

	rc = gw_mkdir_p(m->gw.run_dir);
	if (rc < 0) {
		gw_err("cannot create run dir %s: %s", m->gw.run_dir, strerror(-rc));
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
	gw.images = calloc(m->nimages + 1, sizeof(*gw.images));
	gw.exports = calloc(m->nexports + 1, sizeof(*gw.exports));
	if (!gw.images || !gw.exports)
		goto fail;

	/* Open every image before serving anything: a bad one stops the start. */
	for (size_t i = 0; i < m->nimages; i++) {
		const struct gw_image_spec *s = &m->images[i];

		err[0] = '\0';
		gw.images[i] = gw_backend_open(s->ops, s->name, s->opts, err, sizeof(err));
		if (!gw.images[i]) {
			fprintf(stderr, "%s:%d:%d: image '%s': %s\n", m->path, s->line, s->col,
				s->name, err);
			goto fail;
		}
	}
	for (size_t i = 0; i < m->nexports; i++) {
		const struct gw_export_spec *x = &m->exports[i];
		struct gw_backend *b = gw.images[x->image_index];

		if (!x->read_only && (b->caps & GW_CAP_READ_ONLY)) {
			fprintf(stderr,
				"%s:%d:%d: export %zu: image '%s' can only be read (permissions?); set 'read-only: true'\n",
				m->path, x->line, x->col, i + 1, x->image);
			goto fail;
		}
		gw.exports[i] =
			gw_export_new(x->id, b, x->read_only, m->images[x->image_index].block_size);
		if (!gw.exports[i])
			goto fail;
		gw.exports[i]->env = &m->env;
		gw.nexports = i + 1;
	}

	gw_workers_set_coalesce_us(m->gw.coalesce_us);
	rc = gw_workers_start(m->gw.workers, err, sizeof(err));
	if (rc < 0) {
		gw_err("%s", err);
		goto fail;
	}
	for (size_t i = 0; i < gw.nexports; i++) {
		if (start_export(gw.exports[i], &m->exports[i]) < 0) {
			fprintf(stderr, "%s:%d:%d: export %zu (%s): no transport could start: %s\n",
				m->path, m->exports[i].line, m->exports[i].col, i + 1,
				gw.exports[i]->id, gw.exports[i]->notes);
			goto fail_stop;
		}
	}
	rc = gw_ctl_start(m->gw.control_socket, &m->gw.control_perm, ctl_handler, NULL, err,
			  sizeof(err));
	if (rc < 0) {
		gw_err("%s", err);
		goto fail_stop;
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
	cleanup();
	return 1;
}
