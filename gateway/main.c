/* blkgw: the command line. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/manifest.h"
#include "config/preflight.h"
#include "gateway/control.h"
#include "gateway/gateway.h"
#include "gateway/track.h"
#include "lib/log.h"
#include "gateway/transport.h"
#include "lib/util.h"
#include "gw_version.h"

static void usage_main(FILE *f)
{
	size_t nt, nb;
	const struct gw_transport_ops *const *tl = gw_transport_list(&nt);
	const struct gw_backend_ops *const *bl = gw_backend_list(&nb);

	fprintf(f, "Usage: blkgw COMMAND [OPTIONS]\n"
		   "Export disk images over block transports, as a YAML manifest declares.\n"
		   "\n"
		   "Commands:\n"
		   "  serve MANIFEST   run the gateway in the foreground until SIGTERM/SIGINT\n"
		   "  check MANIFEST   validate a manifest and show what serve would do\n"
		   "  status           show the exports of a running gateway\n"
		   "  apply MANIFEST   make a running gateway converge on MANIFEST\n"
		   "  save-manifest    write a manifest of a running gateway's state\n"
		   "  checkpoint       create, list or delete checkpoints of tracked images\n"
		   "  backup           export a checkpoint of a tracked image for a backup\n"
		   "  version          print the version\n"
		   "  help [COMMAND]   show help\n"
		   "\n"
		   "Transports in this build:\n");
	for (size_t i = 0; i < nt; i++)
		fprintf(f, "  %-16s %s\n", tl[i]->name, tl[i]->summary);
	fprintf(f, "Backends in this build:\n");
	for (size_t i = 0; i < nb; i++)
		fprintf(f, "  %-16s %s\n", bl[i]->name, bl[i]->summary);
	fprintf(f, "\n'blkgw COMMAND --help' describes each command; blkgw-manifest(5)\n"
		   "(docs/manifest.md) the manifest.\n");
}

static void usage_serve(FILE *f)
{
	fprintf(f,
		"Usage: blkgw serve MANIFEST [--pidfile FILE] [--log-level LEVEL] [--log-format F]\n"
		"Open every image of MANIFEST, serve every export, and run in the foreground,\n"
		"logging to stderr. SIGTERM or SIGINT stops it cleanly: no new connections,\n"
		"in-flight requests finish, images are flushed and closed, sockets removed.\n"
		"A manifest with any error starts nothing (see 'blkgw check').\n"
		"\n"
		"Options:\n"
		"  --pidfile FILE      write the daemon's pid to FILE once it serves\n"
		"  --log-level LEVEL   error, warn, info or debug (overrides the manifest)\n"
		"  --log-format F      text (default), or json: one JSON object per line with\n"
		"                      time, level, thread, export (when about one) and msg\n"
		"  -h, --help          show this help\n");
}

static void usage_check(FILE *f)
{
	fprintf(f, "Usage: blkgw check MANIFEST\n"
		   "Validate MANIFEST without starting anything, and check on this host what\n"
		   "serve would refuse: transports that cannot work here (kernel module,\n"
		   "privileges), writable exports of read-only images, socket paths that cannot\n"
		   "be created or are claimed twice, the run dir. Prints each export and the\n"
		   "transport it would use, fallbacks, and what cannot be checked before serving\n"
		   "(TCP ports); exits 0 when valid, or 1 listing every problem as\n"
		   "FILE:LINE:COL: message, the same messages serve gives.\n"
		   "\n"
		   "Options:\n"
		   "  -h, --help          show this help\n");
}

static void usage_status(FILE *f)
{
	fprintf(f, "Usage: blkgw status [--control SOCKET | --manifest MANIFEST] [--json]\n"
		   "Ask a running gateway for its exports: image, transport, state, size,\n"
		   "read-only, clients, counters (requests, bytes read/written, errors), backend\n"
		   "and endpoint. --json prints the daemon's answer, with per-op total times;\n"
		   "without a daemon it prints a JSON error object. Exits 1 on any error.\n"
		   "\n"
		   "Options:\n"
		   "  --control SOCKET    the daemon's control socket (default: $BLKGW_CONTROL,\n"
		   "                      else RUN-DIR/control.sock of the default run dir)\n"
		   "  --manifest FILE     use the control socket that manifest declares\n"
		   "  --json              print the daemon's JSON answer\n"
		   "  -h, --help          show this help\n");
}

static void usage_apply(FILE *f)
{
	fprintf(f, "Usage: blkgw apply MANIFEST [--dry-run] [--force] [--control SOCKET] [--json]\n"
		   "Make the running gateway converge on MANIFEST: exports new in it start,\n"
		   "exports gone from it stop, changed ones restart, the rest are not touched.\n"
		   "The daemon validates MANIFEST fully first (as 'blkgw check' does): a\n"
		   "manifest with any error changes nothing. Removing or restarting an export\n"
		   "in use (a client connected, a kernel device held open) is refused unless\n"
		   "--force. Gateway settings that cannot change live (run-dir, workers,\n"
		   "control socket) are listed as needing a restart. SIGHUP to the daemon\n"
		   "applies the manifest it was started with.\n"
		   "\n"
		   "Options:\n"
		   "  --dry-run           print what would change, change nothing\n"
		   "  --force             stop exports even while in use\n"
		   "  --control SOCKET    the daemon's control socket (default: the one MANIFEST\n"
		   "                      declares)\n"
		   "  --json              print the daemon's JSON answer\n"
		   "  -h, --help          show this help\n");
}

static void usage_save(FILE *f)
{
	fprintf(f, "Usage: blkgw save-manifest [FILE] [--control SOCKET | --manifest MANIFEST]\n"
		   "Write the running gateway's state (its gateway settings, images and exports,\n"
		   "with every path absolute) as a manifest that 'blkgw apply' or 'blkgw serve'\n"
		   "turns back into the same state: to FILE (atomically), or to stdout.\n"
		   "\n"
		   "Options:\n"
		   "  --control SOCKET    the daemon's control socket (default: $BLKGW_CONTROL,\n"
		   "                      else RUN-DIR/control.sock of the default run dir)\n"
		   "  --manifest FILE     use the control socket that manifest declares\n"
		   "  -h, --help          show this help\n");
}

static void usage_version(FILE *f)
{
	fprintf(f, "Usage: blkgw version\n"
		   "Print the version of this blkgw binary ('blkgw status' shows a running\n"
		   "daemon's). Also 'blkgw --version'.\n"
		   "\n"
		   "Options:\n"
		   "  -h, --help          show this help\n");
}

/*
 * The one MANIFEST argument of serve and check: 0, or 2 after saying what is
 * wrong (nothing given, or more than one).
 */
static int want_manifest(const char *cmd, int argc, char **argv, void (*usage)(FILE *f))
{
	if (optind + 1 == argc)
		return 0;
	if (optind == argc)
		fprintf(stderr,
			"blkgw %s: missing MANIFEST, the YAML file that declares the images and exports (see docs/manifest.md)\n\n",
			cmd);
	else
		fprintf(stderr, "blkgw %s: one MANIFEST only, got %d arguments\n\n", cmd,
			argc - optind);
	usage(stderr);
	return 2;
}

static int cmd_version(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			usage_version(stdout);
			return 0;
		}
		usage_version(stderr);
		return 2;
	}
	if (optind != argc) {
		usage_version(stderr);
		return 2;
	}
	printf("blkgw %s\n", GW_VERSION);
	return 0;
}

static int cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "pidfile", required_argument, NULL, 'p' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "log-format", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct gw_serve_opts so = { 0 };
	struct gw_manifest *m = NULL;
	struct gw_preflight pf = { 0 };
	struct gw_diags d = { 0 };
	enum gw_log_level lvl;
	int c, rc;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			so.pidfile = optarg;
			break;
		case 'l':
			if (gw_log_parse_level(optarg, &lvl) < 0) {
				fprintf(stderr,
					"blkgw serve: unknown log level '%s' (error, warn, info, debug)\n",
					optarg);
				return 2;
			}
			so.log_level = optarg;
			break;
		case 'f':
			if (strcmp(optarg, "text") != 0 && strcmp(optarg, "json") != 0) {
				fprintf(stderr,
					"blkgw serve: unknown log format '%s' (text or json)\n",
					optarg);
				return 2;
			}
			gw_log_set_json(strcmp(optarg, "json") == 0);
			break;
		case 'h':
			usage_serve(stdout);
			return 0;
		default:
			usage_serve(stderr);
			return 2;
		}
	}
	if (want_manifest("serve", argc, argv, usage_serve))
		return 2;
	if (gw_manifest_load(argv[optind], true, &m, &d) < 0 || gw_preflight_run(m, &pf, &d) < 0) {
		gw_diags_print(&d, argv[optind], stderr);
		fprintf(stderr, "blkgw: %zu problem%s in %s; nothing was started\n", d.n,
			d.n == 1 ? "" : "s", argv[optind]);
		gw_diags_free(&d);
		if (m)
			gw_preflight_free(&pf);
		gw_manifest_free(m);
		return 1;
	}
	gw_preflight_free(&pf);
	rc = gw_serve(m, &so); /* it owns m now */
	return rc;
}

/* What check found: each export, its transports and endpoints, and what was not checked. */
static void print_check(const char *path, const struct gw_manifest *m,
			const struct gw_preflight *pf)
{
	printf("%s: valid (run dir %s, control socket %s, %u worker%s)\n", path, m->gw.run_dir,
	       m->gw.control_socket, m->gw.workers, m->gw.workers == 1 ? "" : "s");
	for (size_t i = 0; i < m->nexports; i++) {
		const struct gw_export_spec *x = &m->exports[i];
		const struct gw_image_spec *img = &m->images[x->image_index];
		const struct gw_preflight_export *pe = &pf->exports[i];

		printf("export %s: image %s (%s)%s\n", x->id, img->name, img->ops->name,
		       x->read_only ? " read-only" : "");
		for (size_t t = 0; t < x->ntransports; t++) {
			const struct gw_transport_spec *ts = &x->transports[t];
			char where[2048] = "";

			if (ts->ops->describe)
				ts->ops->describe(&m->env, ts->opts, x->image, where,
						  sizeof(where));
			if (pe->probe_rc[t] < 0)
				printf("  %s: not available here: %s\n", ts->ops->name,
				       pe->probe_why[t]);
			else if ((int)t == pe->chosen)
				printf("  %s: would serve at %s\n", ts->ops->name, where);
			else
				printf("  %s: fallback, at %s\n", ts->ops->name, where);
		}
		if (pe->chosen > 0)
			printf("  falls back to %s: the transports before it cannot work here\n",
			       x->transports[pe->chosen].ops->name);
	}
	for (size_t i = 0; i < pf->nnotes; i++)
		printf("note: %s\n", pf->notes[i]);
	for (size_t i = 0; i < pf->nunchecked; i++)
		printf("not checked: %s\n", pf->unchecked[i]);
}

static int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct gw_manifest *m;
	struct gw_diags d = { 0 };
	struct gw_preflight pf;
	int c, rc;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage_check(stdout);
			return 0;
		default:
			usage_check(stderr);
			return 2;
		}
	}
	if (want_manifest("check", argc, argv, usage_check))
		return 2;
	if (gw_manifest_load(argv[optind], true, &m, &d) < 0) {
		gw_diags_print(&d, argv[optind], stderr);
		fprintf(stderr, "%zu problem%s found\n", d.n, d.n == 1 ? "" : "s");
		gw_diags_free(&d);
		return 1;
	}
	rc = gw_preflight_run(m, &pf, &d);
	if (rc < 0) {
		gw_diags_print(&d, argv[optind], stderr);
		fprintf(stderr, "%zu problem%s found\n", d.n, d.n == 1 ? "" : "s");
	} else {
		print_check(argv[optind], m, &pf);
	}
	gw_preflight_free(&pf);
	gw_diags_free(&d);
	gw_manifest_free(m);
	return rc < 0 ? 1 : 0;
}

static void human_size(uint64_t v, char *buf, size_t len)
{
	static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double d = (double)v;
	unsigned i = 0;

	while (d >= 1024 && i + 1 < GW_ARRAY_SIZE(u)) {
		d /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)v);
	else
		snprintf(buf, len, "%.1f %s", d, u[i]);
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !v)
		return "";
	return json_object_get_string(v);
}

static uint64_t jnum(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !v)
		return 0;
	return (uint64_t)json_object_get_int64(v);
}

/* Print a JSON object the way `status --json` does, and drop it. */
static void print_json(json_object *o)
{
	printf("%s\n",
	       json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
							 JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

/* A table whose columns are as wide as their widest cell. */
enum {
	ST_COLS = 13
};
static const char *const st_head[ST_COLS] = { "EXPORT", "IMAGE",   "TRANSPORT", "STATE", "SIZE",
					      "RO",     "CLIENTS", "REQUESTS",  "READ",  "WRITTEN",
					      "ERRORS", "BACKEND", "ENDPOINT" };
/* Numbers are right-aligned. */
static const bool st_right[ST_COLS] = {
	[4] = true, [6] = true, [7] = true, [8] = true, [9] = true, [10] = true
};

static void st_row(char *const *cells, const int *width)
{
	for (int c = 0; c < ST_COLS; c++) {
		if (c == ST_COLS - 1)
			printf("%s\n", cells[c]);
		else if (st_right[c])
			printf("%*s  ", width[c], cells[c]);
		else
			printf("%-*s  ", width[c], cells[c]);
	}
}

/* Connections refused or closed by a limit, when there were any. */
static void print_limits(const char *id, json_object *e)
{
	json_object *l = NULL;
	unsigned long long mc, fd, hs, idle, pl;

	if (!json_object_object_get_ex(e, "limits", &l))
		return;
	mc = (unsigned long long)jnum(l, "refused_max_connections");
	fd = (unsigned long long)jnum(l, "refused_no_fds");
	hs = (unsigned long long)jnum(l, "handshake_timeouts");
	idle = (unsigned long long)jnum(l, "idle_timeouts");
	pl = (unsigned long long)jnum(l, "payload_timeouts");
	if (mc + fd + hs + idle + pl)
		printf("  %s limits: refused %llu (max-connections), %llu (out of descriptors); "
		       "timed out %llu (handshake), %llu (idle), %llu (payload)\n",
		       id, mc, fd, hs, idle, pl);
}

static void print_status(json_object *reply)
{
	json_object *exports = NULL;
	size_t n;
	char *(*rows)[ST_COLS];
	int width[ST_COLS];

	printf("blkgw %s, pid %d, %d workers, up %.0f s%s\n", jstr(reply, "version"),
	       (int)jnum(reply, "pid"), (int)jnum(reply, "workers"),
	       json_object_get_double(json_object_object_get(reply, "uptime_s")),
	       json_object_get_boolean(json_object_object_get(reply, "stopping")) ? ", stopping"
										  : "");
	json_object_object_get_ex(reply, "exports", &exports);
	n = exports ? json_object_array_length(exports) : 0;
	rows = calloc(n + 1, sizeof(*rows));
	if (!rows)
		return;
	for (int c = 0; c < ST_COLS; c++)
		width[c] = (int)strlen(st_head[c]);
	for (size_t i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(exports, i), *cn = NULL;
		char size[32], rd[32], wr[32];
		const char *dev = jstr(e, "device");

		json_object_object_get_ex(e, "counters", &cn);
		human_size(jnum(e, "size"), size, sizeof(size));
		human_size(jnum(cn, "bytes_read"), rd, sizeof(rd));
		human_size(jnum(cn, "bytes_written"), wr, sizeof(wr));
		rows[i][0] = strdup(jstr(e, "id"));
		rows[i][1] = strdup(jstr(e, "image"));
		rows[i][2] = strdup(*jstr(e, "transport") ? jstr(e, "transport") : "-");
		rows[i][3] = strdup(jstr(e, "state"));
		rows[i][4] = strdup(size);
		rows[i][5] = strdup(json_object_get_boolean(json_object_object_get(e, "read_only"))
					    ? "yes"
					    : "no");
		if (asprintf(&rows[i][6], "%llu", (unsigned long long)jnum(e, "clients")) < 0)
			rows[i][6] = NULL;
		if (asprintf(&rows[i][7], "%llu", (unsigned long long)jnum(cn, "requests")) < 0)
			rows[i][7] = NULL;
		rows[i][8] = strdup(rd);
		rows[i][9] = strdup(wr);
		if (asprintf(&rows[i][10], "%llu", (unsigned long long)jnum(cn, "errors")) < 0)
			rows[i][10] = NULL;
		rows[i][11] = strdup(jstr(e, "backend"));
		if (asprintf(&rows[i][12], "%s%s%s", jstr(e, "endpoint"), *dev ? " " : "", dev) < 0)
			rows[i][12] = NULL;
		for (int c = 0; c < ST_COLS; c++) {
			if (!rows[i][c])
				rows[i][c] = strdup("?");
			if (rows[i][c] && (int)strlen(rows[i][c]) > width[c])
				width[c] = (int)strlen(rows[i][c]);
		}
	}
	st_row((char *const *)st_head, width);
	for (size_t i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(exports, i);
		bool whole = true;

		for (int c = 0; c < ST_COLS; c++)
			whole = whole && rows[i][c];
		if (whole)
			st_row(rows[i], width);
		if (*jstr(e, "notes"))
			printf("  %s fell back: %s\n", rows[i][0] ? rows[i][0] : "",
			       jstr(e, "notes"));
		print_limits(rows[i][0] ? rows[i][0] : "", e);
		for (int c = 0; c < ST_COLS; c++)
			free(rows[i][c]);
	}
	free(rows);
}

static int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "manifest", required_argument, NULL, 'm' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *control = getenv("BLKGW_CONTROL");
	const char *manifest = NULL;
	char *owned = NULL;
	bool as_json = false;
	json_object *req, *reply, *ok;
	char err[1024];
	int c, rc = 0, code = 0;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			control = optarg;
			break;
		case 'm':
			manifest = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			usage_status(stdout);
			return 0;
		default:
			usage_status(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage_status(stderr);
		return 2;
	}
	if (manifest) {
		struct gw_manifest *m;
		struct gw_diags d = { 0 };

		if (gw_manifest_load(manifest, false, &m, &d) < 0) {
			gw_diags_print(&d, manifest, stderr);
			gw_diags_free(&d);
			return 1;
		}
		owned = strdup(m->gw.control_socket);
		control = owned;
		gw_manifest_free(m);
	}
	if (!control || !*control) {
		char *rd = gw_default_run_dir();

		if (rd && asprintf(&owned, "%s/control.sock", rd) < 0)
			owned = NULL;
		free(rd);
		control = owned;
	}
	req = json_object_new_object();
	json_object_object_add(req, "command", json_object_new_string("status"));
	reply = gw_ctl_request(control, req, &code, err, sizeof(err));
	json_object_put(req);
	if (!reply) {
		/* --json callers parse stdout: they get an error object there too. */
		if (as_json)
			print_json(gw_ctl_error(code, "%s", err));
		else
			fprintf(stderr, "blkgw status: %s\n", err);
		free(owned);
		return 1;
	}
	if (!json_object_object_get_ex(reply, "ok", &ok) || !json_object_get_boolean(ok)) {
		json_object *e = NULL;

		json_object_object_get_ex(reply, "error", &e);
		if (as_json)
			print_json(json_object_get(reply));
		else
			fprintf(stderr, "blkgw status: %s\n", e ? jstr(e, "message") : "error");
		rc = 1;
	} else if (as_json) {
		print_json(json_object_get(reply));
	} else {
		print_status(reply);
	}
	json_object_put(reply);
	free(owned);
	return rc;
}

/* Send req (taken), return the reply when it says ok; else print why and NULL. */
static json_object *ask(const char *who, const char *control, json_object *req, bool as_json)
{
	json_object *reply, *ok, *e = NULL, *pr = NULL;
	char err[1024];
	int code = 0;

	reply = gw_ctl_request_ms(control, req, 300000, &code, err, sizeof(err));
	json_object_put(req);
	if (!reply) {
		if (as_json)
			print_json(gw_ctl_error(code, "%s", err));
		else
			fprintf(stderr, "blkgw %s: %s\n", who, err);
		return NULL;
	}
	if (json_object_object_get_ex(reply, "ok", &ok) && json_object_get_boolean(ok))
		return reply;
	if (as_json) {
		print_json(reply);
		return NULL;
	}
	json_object_object_get_ex(reply, "problems", &pr);
	for (size_t i = 0; pr && i < json_object_array_length(pr); i++)
		fprintf(stderr, "%s\n", json_object_get_string(json_object_array_get_idx(pr, i)));
	json_object_object_get_ex(reply, "error", &e);
	fprintf(stderr, "blkgw %s: %s\n", who, e ? jstr(e, "message") : "error");
	json_object_put(reply);
	return NULL;
}

static int cmd_apply(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "dry-run", no_argument, NULL, 'n' },       { "force", no_argument, NULL, 'f' },
		{ "control", required_argument, NULL, 'c' }, { "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },          { 0 },
	};
	const char *control = NULL;
	bool dry = false, force = false, as_json = false;
	char *owned, *abs;
	json_object *req, *reply, *xs, *nr;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			dry = true;
			break;
		case 'f':
			force = true;
			break;
		case 'c':
			control = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			usage_apply(stdout);
			return 0;
		default:
			usage_apply(stderr);
			return 2;
		}
	}
	if (want_manifest("apply", argc, argv, usage_apply))
		return 2;
	control = gw_ctl_socket_path(control, argv[optind], &owned);
	if (!control) {
		fprintf(stderr, "blkgw apply: %s has errors; nothing was changed\n", argv[optind]);
		return 1;
	}
	abs = realpath(argv[optind], NULL);
	if (!abs) {
		fprintf(stderr, "blkgw apply: %s: %s\n", argv[optind], strerror(errno));
		free(owned);
		return 1;
	}
	req = json_object_new_object();
	json_object_object_add(req, "command", json_object_new_string("apply"));
	json_object_object_add(req, "manifest", json_object_new_string(abs));
	json_object_object_add(req, "dry_run", json_object_new_boolean(dry));
	json_object_object_add(req, "force", json_object_new_boolean(force));
	free(abs);
	reply = ask("apply", control, req, as_json);
	free(owned);
	if (!reply)
		return 1;
	if (as_json) {
		print_json(reply);
		return 0;
	}
	json_object_object_get_ex(reply, "exports", &xs);
	for (size_t i = 0; xs && i < json_object_array_length(xs); i++) {
		json_object *o = json_object_array_get_idx(xs, i);
		const char *why = jstr(o, "why"), *res = jstr(o, "result"),
			   *t = jstr(o, "transport");

		printf("%s %s%s%s%s%s%s%s%s\n", jstr(o, "action"), jstr(o, "id"), *why ? " (" : "",
		       why, *why ? ")" : "", *res ? ": " : "", res, *t ? " over " : "", t);
	}
	json_object_object_get_ex(reply, "needs_restart", &nr);
	for (size_t i = 0; nr && i < json_object_array_length(nr); i++)
		printf("needs restart: %s\n",
		       json_object_get_string(json_object_array_get_idx(nr, i)));
	if (dry)
		printf("dry run: nothing was changed\n");
	json_object_put(reply);
	return 0;
}

static int cmd_save(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "manifest", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *control = NULL, *manifest = NULL;
	char *owned;
	json_object *req, *reply;
	int c, rc = 0;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			control = optarg;
			break;
		case 'm':
			manifest = optarg;
			break;
		case 'h':
			usage_save(stdout);
			return 0;
		default:
			usage_save(stderr);
			return 2;
		}
	}
	if (argc - optind > 1) {
		usage_save(stderr);
		return 2;
	}
	control = gw_ctl_socket_path(control, manifest, &owned);
	if (!control)
		return 1;
	req = json_object_new_object();
	json_object_object_add(req, "command", json_object_new_string("save-manifest"));
	reply = ask("save-manifest", control, req, false);
	free(owned);
	if (!reply)
		return 1;
	if (optind < argc) {
		const char *path = argv[optind];
		char tmp[4096];
		FILE *f;

		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		f = fopen(tmp, "w");
		if (!f || fputs(jstr(reply, "manifest"), f) < 0 || fclose(f) != 0 ||
		    rename(tmp, path) < 0) {
			fprintf(stderr, "blkgw save-manifest: cannot write %s: %s\n", path,
				strerror(errno));
			unlink(tmp);
			rc = 1;
		}
	} else {
		fputs(jstr(reply, "manifest"), stdout);
	}
	json_object_put(reply);
	return rc;
}

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	void (*usage)(FILE *f);
} commands[] = {
	{ "serve", cmd_serve, usage_serve },
	{ "check", cmd_check, usage_check },
	{ "status", cmd_status, usage_status },
	{ "apply", cmd_apply, usage_apply },
	{ "save-manifest", cmd_save, usage_save },
	{ "version", cmd_version, usage_version },
	{ "checkpoint", gw_cli_checkpoint, gw_cli_checkpoint_usage },
	{ "backup", gw_cli_backup, gw_cli_backup_usage },
};

static int cmd_help(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage_main(stdout);
		return 0;
	}
	for (size_t i = 0; i < GW_ARRAY_SIZE(commands); i++) {
		if (strcmp(commands[i].name, argv[1]) == 0) {
			commands[i].usage(stdout);
			return 0;
		}
	}
	fprintf(stderr,
		"blkgw help: unknown command '%s' (commands: serve, check, status, apply, save-manifest, checkpoint, backup, version, help)\n",
		argv[1]);
	return 2;
}

int main(int argc, char **argv)
{
	const char *cmd;

	if (argc < 2) {
		usage_main(stderr);
		return 2;
	}
	cmd = argv[1];
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0)
		return cmd_version(1, argv);
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage_main(stdout);
		return 0;
	}
	if (strcmp(cmd, "help") == 0)
		return cmd_help(argc - 1, argv + 1);
	for (size_t i = 0; i < GW_ARRAY_SIZE(commands); i++)
		if (strcmp(commands[i].name, cmd) == 0)
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "blkgw: unknown command '%s'\n\n", cmd);
	usage_main(stderr);
	return 2;
}
