/* `blkgw checkpoint ...` and `blkgw backup ...`: the control socket's checkpoint and backup
 * commands. */
#include <getopt.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/manifest.h"
#include "gateway/control.h"
#include "gateway/track.h"
#include "lib/opts.h"

void gw_cli_checkpoint_usage(FILE *f)
{
	fprintf(f,
		"Usage: blkgw checkpoint create IMAGE NAME [--snapshot|--no-snapshot]\n"
		"                                [--control SOCKET] [--json]\n"
		"       blkgw checkpoint list IMAGE [--control SOCKET] [--json]\n"
		"       blkgw checkpoint delete IMAGE NAME [--control SOCKET] [--json]\n"
		"       blkgw checkpoint changes IMAGE SINCE [UPTO] [--control SOCKET] [--json]\n"
		"Checkpoints of an image served with 'track-changes: true' (docs/backup.md).\n"
		"\n"
		"  create   end the changes recorded so far as checkpoint NAME and start\n"
		"           a new record; with a point-in-time view of the image (a\n"
		"           reflink copy beside the records) where its file system can\n"
		"           (XFS, btrfs). --snapshot: fail without one; --no-snapshot: none\n"
		"  list     each checkpoint: when it was taken, how much changed between\n"
		"           it and the one before, whether that record can be trusted,\n"
		"           whether it has a point-in-time view\n"
		"  delete   delete NAME; its changes merge into the next record, so none\n"
		"           is lost from the chain\n"
		"  changes  the byte ranges changed after checkpoint SINCE up to UPTO (default:\n"
		"           now), one 'OFFSET LENGTH' line each; exit 3 when the record\n"
		"           cannot be trusted (a backup must then be full)\n"
		"\n"
		"  --control SOCKET    the daemon's control socket (default: $BLKGW_CONTROL,\n"
		"                      else RUN-DIR/control.sock of the default run dir)\n"
		"  --json              print the daemon's JSON reply\n");
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static int64_t jint(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : 0;
}

static bool jtrue(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && v && json_object_get_boolean(v);
}

/* Send req (consumed) to the daemon; the reply, or NULL after saying why on stderr. */
static json_object *ask(const char *who, const char *control, json_object *req, bool as_json)
{
	char *owned = NULL, err[1024];
	const char *sock = gw_ctl_socket_path(control, NULL, &owned);
	int code = 0;
	/* backup-start waits for an apply: longer than a plain question. */
	json_object *reply = sock ? gw_ctl_request_ms(sock, req, 60000, &code, err, sizeof(err))
				  : NULL;

	json_object_put(req);
	free(owned);
	if (!reply) {
		fprintf(stderr, "blkgw %s: %s\n", who, sock ? err : "no control socket");
		return NULL;
	}
	if (as_json)
		printf("%s\n", json_object_to_json_string_ext(
				       reply, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
	if (!jtrue(reply, "ok")) {
		json_object *e = NULL;

		json_object_object_get_ex(reply, "error", &e);
		if (!as_json)
			fprintf(stderr, "blkgw %s: %s\n", who, e ? jstr(e, "message") : "error");
		if (!as_json && json_object_object_get_ex(reply, "problems", &e))
			for (size_t i = 0; i < json_object_array_length(e); i++)
				fprintf(stderr, "  %s\n",
					json_object_get_string(json_object_array_get_idx(e, i)));
		json_object_put(reply);
		return NULL;
	}
	return reply;
}

static void print_record(json_object *r, const char *name)
{
	char when[64] = "";
	time_t t = (time_t)jint(r, "time");
	struct tm tm;
	json_object *tr;
	bool trusted = json_object_object_get_ex(r, "trusted", &tr) && json_object_get_boolean(tr);

	if (localtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	printf("%-24s %-19s %14lld  %-4s %s%s\n", name, when, (long long)jint(r, "changed_bytes"),
	       json_object_object_get(r, "snapshot") ? (jtrue(r, "snapshot") ? "yes" : "no") : "-",
	       trusted ? "yes" : "NO: ", trusted ? "" : jstr(r, "untrusted_why"));
}

int gw_cli_checkpoint(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "snapshot", no_argument, NULL, 's' },
		{ "no-snapshot", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *control = NULL, *verb;
	bool as_json = false;
	json_object *req, *reply;
	int c, rc = 0, want, snap = -1;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			control = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 's':
		case 'n':
			snap = c == 's';
			break;
		case 'h':
			gw_cli_checkpoint_usage(stdout);
			return 0;
		default:
			gw_cli_checkpoint_usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		gw_cli_checkpoint_usage(stderr);
		return 2;
	}
	verb = argv[optind];
	want = strcmp(verb, "list") == 0 ? 2 : 3;
	if (strcmp(verb, "changes") == 0 && argc - optind == 4)
		want = 4;
	if ((strcmp(verb, "create") != 0 && strcmp(verb, "list") != 0 &&
	     strcmp(verb, "delete") != 0 && strcmp(verb, "changes") != 0) ||
	    argc - optind != want || (snap >= 0 && strcmp(verb, "create") != 0)) {
		gw_cli_checkpoint_usage(stderr);
		return 2;
	}
	req = json_object_new_object();
	{
		char cmd[32];

		snprintf(cmd, sizeof(cmd), "checkpoint-%s", verb);
		json_object_object_add(req, "command", json_object_new_string(cmd));
	}
	json_object_object_add(req, "image", json_object_new_string(argv[optind + 1]));
	if (strcmp(verb, "changes") == 0) {
		json_object_object_add(req, "since", json_object_new_string(argv[optind + 2]));
		if (want == 4)
			json_object_object_add(req, "upto",
					       json_object_new_string(argv[optind + 3]));
	} else if (want == 3) {
		json_object_object_add(req, "name", json_object_new_string(argv[optind + 2]));
	}
	if (snap >= 0)
		json_object_object_add(req, "snapshot", json_object_new_boolean(snap));
	reply = ask("checkpoint", control, req, as_json);
	if (!reply) {
		return 1;
	} else if (strcmp(verb, "create") == 0) {
		if (!as_json && snap < 0 && !jtrue(reply, "snapshot"))
			fprintf(stderr,
				"blkgw checkpoint: %s has no point-in-time view%s%s: a backup of it "
				"needs --inconsistent ('blkgw backup start %s NEWNAME' makes a "
				"checkpoint with a copy-before-write view)\n",
				argv[optind + 2], *jstr(reply, "snapshot_why") ? ": " : "",
				jstr(reply, "snapshot_why"), argv[optind + 1]);
	} else if (strcmp(verb, "changes") == 0) {
		json_object *a = NULL, *tr = NULL;

		json_object_object_get_ex(reply, "ranges", &a);
		for (size_t i = 0; !as_json && a && i < json_object_array_length(a); i++) {
			json_object *p = json_object_array_get_idx(a, i);

			printf("%lld %lld\n",
			       (long long)json_object_get_int64(json_object_array_get_idx(p, 0)),
			       (long long)json_object_get_int64(json_object_array_get_idx(p, 1)));
		}
		if (json_object_object_get_ex(reply, "trusted", &tr) &&
		    !json_object_get_boolean(tr)) {
			if (!as_json)
				fprintf(stderr, "blkgw checkpoint: not trusted: %s\n",
					jstr(reply, "untrusted_why"));
			rc = 3;
		}
	} else if (!as_json && want == 2) {
		json_object *a = NULL;

		printf("%-24s %-19s %14s  %-4s %s\n", "CHECKPOINT", "TIME", "CHANGED", "VIEW",
		       "TRUSTED");
		json_object_object_get_ex(reply, "checkpoints", &a);
		for (size_t i = 0; a && i < json_object_array_length(a); i++) {
			json_object *r = json_object_array_get_idx(a, i);

			print_record(r, jstr(r, "name"));
		}
		json_object_object_get_ex(reply, "current", &a);
		if (a)
			print_record(a, "(since the last)");
	}
	json_object_put(reply);
	return rc;
}

void gw_cli_backup_usage(FILE *f)
{
	fprintf(f,
		"Usage: blkgw backup start IMAGE CHECKPOINT [--since PREV [--only-changed]]\n"
		"                          [--inconsistent] [--socket PATH | --listen HOST:PORT]\n"
		"                          [--rate BYTES] [--control SOCKET] [--json]\n"
		"       blkgw backup stop IMAGE@CHECKPOINT [--force] [--control SOCKET] [--json]\n"
		"Back up a tracked image (docs/backup.md).\n"
		"\n"
		"  start  export checkpoint CHECKPOINT's point-in-time view of IMAGE, read-only,\n"
		"         over NBD as IMAGE@CHECKPOINT, and print its URI. A CHECKPOINT that\n"
		"         does not exist yet is made now, with a view: a reflink copy where the\n"
		"         file system can, else copy-before-write for as long as the backup runs\n"
		"  stop   end that export (and its copy-before-write view); a reader still\n"
		"         connected after 5 s makes it refuse, unless --force\n"
		"\n"
		"  --since PREV        also offer the chunks changed after checkpoint PREV as\n"
		"                      NBD context qemu:dirty-bitmap:PREV\n"
		"  --only-changed      report the chunks not changed since PREV as not\n"
		"                      allocated: qemu-img convert -B PREV's-backup writes only\n"
		"                      the changed clusters\n"
		"  --inconsistent      read the live image when an existing checkpoint has no\n"
		"                      view (the copy may mix moments: refused without this)\n"
		"  --socket PATH       serve on this unix socket (default: RUN-DIR/backup.sock,\n"
		"                      the backups' own)\n"
		"  --listen HOST:PORT  serve on TCP instead\n"
		"  --rate BYTES        read the backup at most this fast, per second (200M:\n"
		"                      200 MiB/s), leaving the disk and CPU to the guest\n"
		"                      (default: no cap)\n"
		"  --control SOCKET    the daemon's control socket\n"
		"  --json              print the daemon's JSON reply\n");
}

/* After backup-start: the export's state and where a client finds it. */
static int backup_started(const char *control, const char *id, bool as_json)
{
	json_object *req = json_object_new_object(), *st, *xs = NULL;
	int rc = 1;

	json_object_object_add(req, "command", json_object_new_string("status"));
	st = ask("backup", control, req, false);
	if (!st)
		return 1;
	json_object_object_get_ex(st, "exports", &xs);
	for (size_t i = 0; xs && i < json_object_array_length(xs); i++) {
		json_object *x = json_object_array_get_idx(xs, i);

		if (strcmp(jstr(x, "id"), id) != 0)
			continue;
		if (strcmp(jstr(x, "state"), "running") == 0) {
			if (!as_json)
				printf("%s\n", jstr(x, "endpoint"));
			rc = 0;
		} else {
			fprintf(stderr, "blkgw backup: %s is %s (see the daemon's log)\n", id,
				jstr(x, "state"));
		}
	}
	if (rc && xs)
		fprintf(stderr, "blkgw backup: %s did not start (see the daemon's log)\n", id);
	json_object_put(st);
	return rc;
}

int gw_cli_backup(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "since", required_argument, NULL, 's' },
		{ "only-changed", no_argument, NULL, 'o' },
		{ "inconsistent", no_argument, NULL, 'i' },
		{ "socket", required_argument, NULL, 'S' },
		{ "listen", required_argument, NULL, 'l' },
		{ "force", no_argument, NULL, 'f' },
		{ "rate", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *control = NULL, *since = NULL, *sockp = NULL, *listen = NULL, *rate = NULL;
	const char *verb;
	bool as_json = false, only = false, inconsistent = false, force = false, start;
	json_object *req, *reply;
	char *id = NULL;
	int c, rc;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			control = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 's':
			since = optarg;
			break;
		case 'o':
			only = true;
			break;
		case 'i':
			inconsistent = true;
			break;
		case 'S':
			sockp = optarg;
			break;
		case 'l':
			listen = optarg;
			break;
		case 'f':
			force = true;
			break;
		case 'r':
			rate = optarg;
			break;
		case 'h':
			gw_cli_backup_usage(stdout);
			return 0;
		default:
			gw_cli_backup_usage(stderr);
			return 2;
		}
	}
	verb = optind < argc ? argv[optind] : "";
	start = strcmp(verb, "start") == 0;
	if ((!start && strcmp(verb, "stop") != 0) || argc - optind != (start ? 3 : 2) ||
	    (!start && (since || only || inconsistent || sockp || listen || rate)) ||
	    (start && force) || (only && !since) || (sockp && listen)) {
		gw_cli_backup_usage(stderr);
		return 2;
	}
	req = json_object_new_object();
	json_object_object_add(req, "command",
			       json_object_new_string(start ? "backup-start" : "backup-stop"));
	if (!start) {
		json_object_object_add(req, "id", json_object_new_string(argv[optind + 1]));
		json_object_object_add(req, "force", json_object_new_boolean(force));
		reply = ask("backup", control, req, as_json);
		json_object_put(reply);
		return reply ? 0 : 1;
	}
	json_object_object_add(req, "image", json_object_new_string(argv[optind + 1]));
	json_object_object_add(req, "checkpoint", json_object_new_string(argv[optind + 2]));
	if (since)
		json_object_object_add(req, "since", json_object_new_string(since));
	json_object_object_add(req, "only_changed", json_object_new_boolean(only));
	json_object_object_add(req, "inconsistent", json_object_new_boolean(inconsistent));
	if (rate) {
		uint64_t v = 0;
		char adv[160];
		int prc = gw_parse_size(rate, &v);

		if (prc < 0 || !v) {
			fprintf(stderr, "blkgw backup: --rate %s: %s\n", rate,
				prc < 0 ? gw_size_advice(rate, adv, sizeof(adv))
					: "give the most bytes per second, such as 200M");
			json_object_put(req);
			return 2;
		}
		json_object_object_add(req, "rate", json_object_new_int64((int64_t)v));
	}
	if (sockp || listen) {
		json_object *n = json_object_new_object();

		json_object_object_add(n, sockp ? "socket" : "listen",
				       json_object_new_string(sockp ? sockp : listen));
		json_object_object_add(req, "nbd", n);
	}
	reply = ask("backup", control, req, as_json);
	if (!reply)
		return 1;
	json_object_put(reply);
	if (asprintf(&id, "%s@%s", argv[optind + 1], argv[optind + 2]) < 0)
		return 1;
	rc = backup_started(control, id, as_json);
	free(id);
	return rc;
}
