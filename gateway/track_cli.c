/* `blkgw checkpoint create|list|delete`: the control socket's checkpoint commands. */
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

void gw_cli_checkpoint_usage(FILE *f)
{
	fprintf(f,
		"Usage: blkgw checkpoint create IMAGE NAME [--control SOCKET] [--json]\n"
		"       blkgw checkpoint list IMAGE [--control SOCKET] [--json]\n"
		"       blkgw checkpoint delete IMAGE NAME [--control SOCKET] [--json]\n"
		"       blkgw checkpoint changes IMAGE SINCE [UPTO] [--control SOCKET] [--json]\n"
		"Checkpoints of an image served with 'track-changes: true' (docs/backup.md).\n"
		"\n"
		"  create   end the changes recorded so far as checkpoint NAME and start\n"
		"           a new record\n"
		"  list     each checkpoint: when it was taken, how much changed between\n"
		"           it and the one before, whether that record can be trusted\n"
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

static void print_record(json_object *r, const char *name)
{
	char when[64] = "";
	time_t t = (time_t)jint(r, "time");
	struct tm tm;
	json_object *tr;
	bool trusted = json_object_object_get_ex(r, "trusted", &tr) && json_object_get_boolean(tr);

	if (localtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	printf("%-24s %-19s %14lld  %s%s\n", name, when, (long long)jint(r, "changed_bytes"),
	       trusted ? "yes" : "NO: ", trusted ? "" : jstr(r, "untrusted_why"));
}

int gw_cli_checkpoint(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *control = NULL, *sock, *verb;
	char *owned = NULL, err[1024];
	bool as_json = false;
	json_object *req, *reply, *ok;
	int c, code = 0, rc = 0, want;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			control = optarg;
			break;
		case 'j':
			as_json = true;
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
	    argc - optind != want) {
		gw_cli_checkpoint_usage(stderr);
		return 2;
	}
	sock = gw_ctl_socket_path(control, NULL, &owned);
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
	reply = sock ? gw_ctl_request(sock, req, &code, err, sizeof(err)) : NULL;
	json_object_put(req);
	free(owned);
	if (!reply) {
		fprintf(stderr, "blkgw checkpoint: %s\n", sock ? err : "no control socket");
		return 1;
	}
	if (as_json) {
		printf("%s\n", json_object_to_json_string_ext(
				       reply, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
	}
	if (!json_object_object_get_ex(reply, "ok", &ok) || !json_object_get_boolean(ok)) {
		json_object *e = NULL;

		json_object_object_get_ex(reply, "error", &e);
		if (!as_json)
			fprintf(stderr, "blkgw checkpoint: %s\n", e ? jstr(e, "message") : "error");
		rc = 1;
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

		printf("%-24s %-19s %14s  %s\n", "CHECKPOINT", "TIME", "CHANGED", "TRUSTED");
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
