#include "config/manifest.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/yaml_tree.h"
#include "lib/cbt.h"
#include "lib/util.h"

/* ---- diagnostics ---- */

static GW_PRINTF(4, 0) void diag_vadd(struct gw_diags *d, int line, int col, const char *fmt,
				      va_list ap)
{
	char *msg;

	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 16;
		struct gw_diag_item *v = realloc(d->v, cap * sizeof(*v));

		if (!v)
			return;
		d->v = v;
		d->cap = cap;
	}
	if (vasprintf(&msg, fmt, ap) < 0)
		return;
	d->v[d->n].line = line;
	d->v[d->n].col = col;
	d->v[d->n].msg = msg;
	d->n++;
}

void gw_diag_add(struct gw_diags *d, int line, int col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(d, line, col, fmt, ap);
	va_end(ap);
}

static int diag_cmp(const void *a, const void *b)
{
	const struct gw_diag_item *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return 0;
}

void gw_diags_print(const struct gw_diags *d, const char *file, FILE *out)
{
	struct gw_diag_item *v = malloc((d->n ? d->n : 1) * sizeof(*v));

	if (!v)
		return;
	memcpy(v, d->v, d->n * sizeof(*v));
	/* Stable enough: messages at one position keep the order they were found in. */
	for (size_t i = 1; i < d->n; i++) {
		struct gw_diag_item t = v[i];
		size_t j = i;

		while (j > 0 && diag_cmp(&v[j - 1], &t) > 0) {
			v[j] = v[j - 1];
			j--;
		}
		v[j] = t;
	}
	for (size_t i = 0; i < d->n; i++) {
		if (v[i].line > 0)
			fprintf(out, "%s:%d:%d: %s\n", file, v[i].line, v[i].col, v[i].msg);
		else
			fprintf(out, "%s: %s\n", file, v[i].msg);
	}
	free(v);
}

void gw_diags_free(struct gw_diags *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].msg);
	free(d->v);
	memset(d, 0, sizeof(*d));
}

/* ---- helpers ---- */

/* A problem at a YAML node's position. */
static void GW_PRINTF(3, 4) diag_at(struct gw_diags *d, const struct ynode *n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(d, n->line, n->col, fmt, ap);
	va_end(ap);
}

/*
 * A growable list of words (keys, names) for "did you mean" hints and
 * "one of: ..." lists; it borrows the strings.
 */
struct words {
	const char **v;
	size_t n, cap;
};

static void words_add(struct words *w, const char *s)
{
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 16;
		const char **v = realloc(w->v, cap * sizeof(*v));

		if (!v)
			return;
		w->v = v;
		w->cap = cap;
	}
	w->v[w->n++] = s;
}

static void words_add_all(struct words *w, const char *const *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		words_add(w, s[i]);
}

static bool words_has(const struct words *w, const char *s)
{
	for (size_t i = 0; i < w->n; i++)
		if (strcmp(w->v[i], s) == 0)
			return true;
	return false;
}

static void words_free(struct words *w)
{
	free(w->v);
	memset(w, 0, sizeof(*w));
}

/* "a, b, c", malloc'd (NULL when out of memory). */
static char *words_join(const struct words *w)
{
	size_t len = 1;
	char *s, *p;

	for (size_t i = 0; i < w->n; i++)
		len += strlen(w->v[i]) + 2;
	s = p = malloc(len);
	if (!s)
		return NULL;
	*p = '\0';
	for (size_t i = 0; i < w->n; i++)
		p += snprintf(p, len - (size_t)(p - s), "%s%s", i ? ", " : "", w->v[i]);
	return s;
}

/* The word closest to key, when close enough to be the one meant; else NULL. */
static const char *words_closest(const struct words *w, const char *key)
{
	const char *best = NULL;
	unsigned bestd = UINT_MAX;

	for (size_t i = 0; i < w->n; i++) {
		unsigned dist = gw_edit_distance(key, w->v[i]);

		if (dist < bestd) {
			bestd = dist;
			best = w->v[i];
		}
	}
	if (best && bestd <= GW_MAX(1u, (unsigned)strlen(key) / 3))
		return best;
	return NULL;
}

/* " (did you mean 'x'?)" or "", malloc'd (NULL when out of memory). */
static char *hint(const struct words *w, const char *key)
{
	const char *c = words_closest(w, key);
	char *s;

	if (!c)
		return strdup("");
	if (asprintf(&s, " (did you mean '%s'?)", c) < 0)
		return NULL;
	return s;
}

/* For messages: a hint that could not be made is no hint. */
static const char *str_or_empty(const char *s)
{
	return s ? s : "";
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 64)
		return false;
	if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') ||
	      (s[0] >= '0' && s[0] <= '9')))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Report duplicate keys of a mapping; 0 when none. */
static int check_dup_keys(const struct ynode *map, struct gw_diags *d)
{
	int bad = 0;

	for (size_t i = 0; i + 1 < map->n; i += 2) {
		const struct ynode *k = map->items[i];

		if (k->type != YN_SCALAR) {
			diag_at(d, k, "keys must be single values, not %s", ynode_kind(k));
			bad = 1;
			continue;
		}
		for (size_t j = 0; j < i; j += 2) {
			const struct ynode *p = map->items[j];

			if (p->type == YN_SCALAR && strcmp(p->text, k->text) == 0) {
				diag_at(d, k, "duplicate key '%s' (first defined at line %d)",
					k->text, p->line);
				bad = 1;
				break;
			}
		}
	}
	return bad;
}

/* Report every key of map that is not in known. */
static void check_known_keys(const struct ynode *map, const struct words *known, const char *prefix,
			     struct gw_diags *d)
{
	for (size_t i = 0; i + 1 < map->n; i += 2) {
		const struct ynode *k = map->items[i];
		GW_CLEANUP_FREE char *h = NULL;

		if (k->type != YN_SCALAR || words_has(known, k->text))
			continue;
		h = hint(known, k->text);
		diag_at(d, k, "%sunknown key '%s'%s", prefix, k->text, str_or_empty(h));
	}
}

/* What a schema's check reports to: problems go to the manifest's diagnostics. */
struct check_sink {
	struct gw_opt_report r;
	const struct ynode *map, *owner;
	const struct words *failed; /* keys that did not decode */
	const char *prefix;
	struct gw_diags *d;
};

static void sink_problem(struct gw_opt_report *r, const char *key, const char *msg)
{
	struct check_sink *s = container_of(r, struct check_sink, r);
	const struct ynode *at = key ? ymap_get(s->map, key) : NULL;

	if (key && words_has(s->failed, key))
		return; /* its own message says what is wrong */
	diag_at(s->d, at ? at : (s->map ? s->map : s->owner), "%s%s", s->prefix, msg);
}

static bool sink_bad(const struct gw_opt_report *r, const char *key)
{
	const struct check_sink *s = container_of(r, const struct check_sink, r);

	return words_has(s->failed, key);
}

/* Decode one key's value; false (reported) when it cannot be read. */
static bool decode_value(const struct gw_opt_desc *od, const struct ynode *v, void *out,
			 const char *dir, const char *prefix, struct gw_diags *d)
{
	char err[512];

	if (v->type != YN_SCALAR || ynode_is_null(v)) {
		diag_at(d, v, "%s'%s' must be %s, not %s", prefix, od->key, gw_opt_type_hint(od),
			ynode_is_null(v) ? "empty" : ynode_kind(v));
		return false;
	}
	if (gw_opt_set(od, v->text, dir, out, err, sizeof(err)) < 0) {
		diag_at(d, v, "%s%s", prefix, err);
		return false;
	}
	return true;
}

/*
 * Decode a mapping through a schema. extra: keys the caller handles itself
 * (skipped here, offered in hints). prefix: "image 'disk0': " for messages.
 * Every problem is reported, the schema's cross-field ones included.
 */
static int decode(const struct ynode *map, const struct gw_opt_schema *s, void *out,
		  const char *const *extra, size_t nextra, const char *dir, const char *prefix,
		  const struct ynode *owner, struct gw_diags *d)
{
	size_t before = d->n;
	struct words keys = { 0 }, failed = { 0 };

	gw_opt_defaults(s, out);
	for (size_t i = 0; i < s->nopts; i++)
		words_add(&keys, s->opts[i].key);
	words_add_all(&keys, extra, nextra);

	if (map && ynode_is_null(map))
		map = NULL;
	if (map && map->type != YN_MAP) {
		diag_at(d, map, "%smust be a mapping of settings, not %s", prefix, ynode_kind(map));
		words_free(&keys);
		return -1;
	}
	if (map) {
		check_dup_keys(map, d);
		check_known_keys(map, &keys, prefix, d);
		for (size_t i = 0; i + 1 < map->n; i += 2) {
			const struct ynode *k = map->items[i], *v = map->items[i + 1];
			const struct gw_opt_desc *od;

			if (k->type != YN_SCALAR || !(od = gw_opt_find(s, k->text)))
				continue; /* reported above, or the caller's own key */
			if (!decode_value(od, v, out, dir, prefix, d))
				words_add(&failed, od->key);
		}
	}
	for (size_t i = 0; i < s->nopts; i++) {
		const struct gw_opt_desc *od = &s->opts[i];

		if ((od->flags & GW_OPT_REQUIRED) && !ymap_get(map, od->key))
			diag_at(d, map ? map : owner, "%smissing '%s': %s", prefix, od->key,
				od->help ? od->help : gw_opt_type_hint(od));
	}
	if (s->check) {
		struct check_sink sink = {
			.r = { .problem = sink_problem, .bad = sink_bad },
			.map = map,
			.owner = owner,
			.failed = &failed,
			.prefix = prefix,
			.d = d,
		};

		s->check(out, &sink.r);
	}
	words_free(&keys);
	words_free(&failed);
	return d->n == before ? 0 : -1;
}

/* ---- gateway ---- */

struct gw_section {
	char *control_socket;
	struct gw_sock_perm control_perm;
	char *run_dir;
	uint32_t workers;
	uint32_t coalesce_us;
	uint32_t start_timeout;
	char *log_level;
	uint64_t buffer_limit;
	char *metrics;
	uint32_t control_max_clients;
	uint64_t control_max_line, control_max_output;
};

static const char *const log_levels[] = { "error", "warn", "info", "debug", NULL };

static const struct gw_opt_desc gateway_opts[] = {
	{ .key = "control-socket",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct gw_section, control_socket),
	  .help = "unix socket for `blkgw status` and other control commands (default RUN-DIR/control.sock)" },
	GW_SOCK_PERM_OPTS(struct gw_section, control_perm, "control-"),
	{ .key = "run-dir",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct gw_section, run_dir),
	  .help = "sockets, state that must survive a restart, device links (default /run/blkgw)" },
	{ .key = "workers",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct gw_section, workers),
	  .min = 1,
	  .max = 256,
	  .help = "I/O threads (default: online CPUs)" },
	{ .key = "coalesce-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct gw_section, coalesce_us),
	  .max = 1000,
	  .def = 20,
	  .help = "microseconds a busy worker may let events gather before polling, when measuring shows it helps (default 20; 0: never)" },
	{ .key = "start-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct gw_section, start_timeout),
	  .min = 1,
	  .max = 3600,
	  .def = 60,
	  .help = "seconds a transport may take to create a kernel device before it counts as failed and the next transport is tried (default 60)" },
	{ .key = "buffer-limit",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct gw_section, buffer_limit),
	  .min = 16 << 20,
	  .def = 512 << 20,
	  .help = "bytes of request data and unsent replies buffered for all clients together; past it, clients holding more than 1M stop being read until it drains (default 512M)" },
	{ .key = "control-max-clients",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct gw_section, control_max_clients),
	  .min = 1,
	  .max = 65536,
	  .def = 64,
	  .help = "control socket clients at once; one more makes room by closing the one quiet longest (default 64)" },
	{ .key = "control-max-line",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct gw_section, control_max_line),
	  .min = 4096,
	  .max = 64 << 20,
	  .def = 64 << 10,
	  .help = "longest control request line; a longer one is answered with an error and its client closed (default 64K)" },
	{ .key = "control-max-output",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct gw_section, control_max_output),
	  .min = 64 << 10,
	  .max = 1ull << 30,
	  .def = 1 << 20,
	  .help = "unsent control replies beyond which a client's requests are not read until it reads (default 1M)" },
	{ .key = "log-level",
	  .type = GW_OPT_ENUM,
	  .offset = offsetof(struct gw_section, log_level),
	  .choices = log_levels,
	  .help = "error, warn, info or debug (default info)" },
	{ .key = "metrics",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct gw_section, metrics),
	  .help = "Prometheus text endpoint: HOST:PORT (http://HOST:PORT/metrics) or an absolute unix socket path (default: none)" },
};

static void gateway_check(const void *opts, struct gw_opt_report *r)
{
	const struct gw_section *g = opts;
	char *h, *p;

	if (!g->metrics || g->metrics[0] == '/')
		return;
	if (gw_split_hostport(g->metrics, &h, &p) == 0) {
		free(h);
		free(p);
		return;
	}
	gw_opt_problem(r, "metrics",
		       "'metrics' must be HOST:PORT such as 127.0.0.1:9333, or an absolute unix "
		       "socket path (got '%s')",
		       g->metrics);
}

static const struct gw_opt_schema gateway_schema =
	GW_OPT_SCHEMA(gateway_opts, struct gw_section, gateway_check);

char *gw_default_run_dir(void)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	char *p;

	if (geteuid() == 0)
		return strdup("/run/blkgw");
	if (xdg && *xdg) {
		if (asprintf(&p, "%s/blkgw", xdg) < 0)
			return NULL;
		return p;
	}
	if (asprintf(&p, "/tmp/blkgw-%u", (unsigned)geteuid()) < 0)
		return NULL;
	return p;
}

/* ---- images ---- */

static const char *const image_common[] = { "backend",       "block-size",         "fault",
					    "track-changes", "change-granularity", "backup" };

/* What loading needs besides the manifest: where problems go, and this build's names. */
struct source_check;

struct loader {
	struct gw_manifest *m;
	struct gw_diags *d;
	struct words backends;       /* backend names */
	struct words transports;     /* transport names */
	char *backend_list;          /* "file, memory, null" */
	char *transport_list;        /* "nbd, vhost-user-blk" */
	struct source_check *checks; /* images whose source is to be checked */
	size_t nchecks;
};

/* The 'backend' key: which backend an image uses. 0, or -1 when reported. */
static int image_backend(struct loader *L, struct gw_image_spec *img, const struct ynode *v,
			 const char *prefix)
{
	const struct ynode *bn = ymap_get(v, "backend");
	GW_CLEANUP_FREE char *h = NULL;

	if (!bn) {
		diag_at(L->d, v, "%smissing 'backend' (one of: %s)", prefix,
			str_or_empty(L->backend_list));
		return -1;
	}
	if (bn->type == YN_SCALAR && (img->ops = gw_backend_find(bn->text)))
		return 0;
	if (bn->type == YN_SCALAR)
		h = hint(&L->backends, bn->text);
	diag_at(L->d, bn, "%sunknown backend '%s'%s; backends: %s", prefix,
		bn->type == YN_SCALAR ? bn->text : "?", str_or_empty(h),
		str_or_empty(L->backend_list));
	return -1;
}

/* The 'block-size' key every image takes. */
static void image_block_size(struct loader *L, struct gw_image_spec *img, const struct ynode *v,
			     const char *prefix)
{
	const struct ynode *bs = ymap_get(v, "block-size");
	uint64_t b = 0;
	char advice[256];

	if (!bs)
		return;
	if (bs->type == YN_SCALAR && gw_parse_size(bs->text, &b) == -EINVAL)
		diag_at(L->d, bs, "%s'block-size': bad size '%s': %s", prefix, bs->text,
			gw_size_advice(bs->text, advice, sizeof(advice)));
	else if (bs->type != YN_SCALAR || !gw_is_pow2(b) || b < 512 || b > 65536)
		diag_at(L->d, bs,
			"%s'block-size' must be a power of two from 512 to 64K (got '%s')", prefix,
			bs->type == YN_SCALAR ? bs->text : ynode_kind(bs));
	else
		img->block_size = (uint32_t)b;
}

/* 'track-changes' and 'change-granularity': changed-block tracking (docs/backup.md). */
static void image_tracking(struct loader *L, struct gw_image_spec *img, const struct ynode *v,
			   const char *prefix)
{
	const struct ynode *tc = ymap_get(v, "track-changes");
	const struct ynode *g = ymap_get(v, "change-granularity");
	uint64_t b = 0;

	img->change_granularity = 64 << 10;
	if (tc && (tc->type != YN_SCALAR || gw_parse_bool(tc->text, &img->track_changes)))
		diag_at(L->d, tc, "%s'track-changes' must be true or false (got '%s')", prefix,
			tc->type == YN_SCALAR ? tc->text : ynode_kind(tc));
	if (!g)
		return;
	if (g->type != YN_SCALAR || gw_parse_size(g->text, &b) < 0 || !gw_is_pow2(b) || b < 4096 ||
	    b > (1u << 20))
		diag_at(L->d, g,
			"%s'change-granularity' must be a power of two from 4K to 1M (got '%s')",
			prefix, g->type == YN_SCALAR ? g->text : ynode_kind(g));
	else if (!img->track_changes)
		diag_at(L->d, g, "%s'change-granularity' needs 'track-changes: true'", prefix);
	else
		img->change_granularity = (uint32_t)b;
}

/* An image name: a plain one, or a backup image's IMAGE@CHECKPOINT. */
static bool image_name_ok(const char *s)
{
	const char *at = strchr(s, '@');
	char left[65];

	if (!at)
		return valid_name(s);
	if ((size_t)(at - s) >= sizeof(left))
		return false;
	memcpy(left, s, (size_t)(at - s));
	left[at - s] = '\0';
	return valid_name(left) && gw_cbt_valid_name(at + 1);
}

/* One string field of 'backup'; reports and returns NULL when absent or not a name. */
static char *backup_field(struct loader *L, const struct ynode *b, const char *key, bool need,
			  bool checkpoint, const char *prefix)
{
	const struct ynode *v = ymap_get(b, key);
	char *s;

	if (!v) {
		if (need)
			diag_at(L->d, b, "%s'backup' needs '%s'", prefix, key);
		return NULL;
	}
	if (v->type != YN_SCALAR || !*v->text ||
	    (checkpoint ? !gw_cbt_valid_name(v->text) : !valid_name(v->text))) {
		diag_at(L->d, v, "%s'backup': '%s' must be %s (got '%s')", prefix, key,
			checkpoint ? "a checkpoint name" : "an image name",
			v->type == YN_SCALAR ? v->text : ynode_kind(v));
		return NULL;
	}
	s = strdup(v->text);
	if (!s)
		diag_at(L->d, v, "%sout of memory", prefix);
	return s;
}

/*
 * 'backup': { of: IMAGE, checkpoint: NAME, since: NAME, only-changed: BOOL,
 * view: VIEW, rate: SIZE }
 * makes the image a checkpoint's view, named IMAGE@NAME. Whether IMAGE is
 * declared and tracked is checked once every image is known.
 */
static void image_backup(struct loader *L, struct gw_image_spec *img, const struct ynode *v,
			 const char *prefix)
{
	static const char *const keys[] = { "of",           "checkpoint", "since",
					    "only-changed", "view",       "rate" };
	static const char *const views[] = GW_VIEW_NAMES;
	const struct ynode *b = ymap_get(v, "backup"), *oc;
	struct words known = { 0 };
	struct gw_backup_spec *s;
	char *want = NULL, inner[160];

	if (!b) {
		if (strchr(img->name, '@'))
			diag_at(L->d, v,
				"%s'@' belongs in the names of backup images only "
				"(IMAGE@CHECKPOINT, with 'backup: { of: IMAGE, checkpoint: "
				"CHECKPOINT }')",
				prefix);
		return;
	}
	if (b->type != YN_MAP) {
		diag_at(L->d, b,
			"%s'backup' must be a mapping such as { of: vm1, checkpoint: mon }",
			prefix);
		return;
	}
	snprintf(inner, sizeof(inner), "%s'backup': ", prefix);
	words_add_all(&known, keys, GW_ARRAY_SIZE(keys));
	check_known_keys(b, &known, inner, L->d);
	words_free(&known);
	s = img->backup = calloc(1, sizeof(*s));
	if (!s)
		return;
	s->of = backup_field(L, b, "of", true, false, prefix);
	s->checkpoint = backup_field(L, b, "checkpoint", true, true, prefix);
	s->since = backup_field(L, b, "since", false, true, prefix);
	oc = ymap_get(b, "only-changed");
	if (oc && (oc->type != YN_SCALAR || gw_parse_bool(oc->text, &s->only_changed)))
		diag_at(L->d, oc, "%s'only-changed' must be true or false (got '%s')", prefix,
			oc->type == YN_SCALAR ? oc->text : ynode_kind(oc));
	else if (s->only_changed && !s->since)
		diag_at(L->d, oc,
			"%s'only-changed' needs 'since': the checkpoint the layer is over", prefix);
	if ((oc = ymap_get(b, "view"))) {
		size_t k = 0;

		while (k < GW_ARRAY_SIZE(views) &&
		       !(oc->type == YN_SCALAR && strcmp(oc->text, views[k]) == 0))
			k++;
		if (k == GW_ARRAY_SIZE(views))
			diag_at(L->d, oc,
				"%s'view' must be snapshot, copy-before-write or live (got '%s')",
				prefix, oc->type == YN_SCALAR ? oc->text : ynode_kind(oc));
		else
			s->view = (enum gw_backup_view)k;
	}
	if ((oc = ymap_get(b, "rate"))) {
		char adv[160];

		if (oc->type != YN_SCALAR)
			diag_at(L->d, oc,
				"%s'rate' must be the most bytes per second the backup is read "
				"at, such as 200M (got %s)",
				prefix, ynode_kind(oc));
		else if (gw_parse_size(oc->text, &s->rate) < 0)
			diag_at(L->d, oc, "%s'rate' '%s' is not a size: %s", prefix, oc->text,
				gw_size_advice(oc->text, adv, sizeof(adv)));
		else if (!s->rate)
			diag_at(L->d, oc, "%s'rate' must be more than 0 (leave it out for no cap)",
				prefix);
	}
	if (s->of && s->checkpoint && asprintf(&want, "%s@%s", s->of, s->checkpoint) > 0 &&
	    strcmp(want, img->name) != 0)
		diag_at(L->d, v, "%sa backup image is named after what it shows: call it '%s'",
			prefix, want);
	free(want);
	if (img->track_changes)
		diag_at(L->d, v, "%sa backup image does not change: it takes no 'track-changes'",
			prefix);
}

/* Each backup image's 'of' names a declared image that tracks changes. */
static void backup_sources(struct loader *L)
{
	struct gw_manifest *m = L->m;

	for (size_t i = 0; i < m->nimages; i++) {
		const struct gw_backup_spec *b = m->images[i].backup;
		size_t j;

		if (!b || !b->of)
			continue;
		for (j = 0; j < m->nimages; j++)
			if (strcmp(m->images[j].name, b->of) == 0)
				break;
		if (j == m->nimages || !m->images[j].track_changes)
			gw_diag_add(
				L->d, m->images[i].line, m->images[i].col,
				"image '%s': 'backup': '%s' is %s: a backup needs an image with "
				"'track-changes: true'",
				m->images[i].name, b->of,
				j == m->nimages ? "not declared" : "not tracked");
	}
}

/* A size that is not a multiple of the block size leaves a tail no client can reach. */
static void image_size_fits_block(struct loader *L, const struct gw_image_spec *img,
				  const struct ynode *v, const char *prefix)
{
	const struct gw_opt_desc *sd = gw_opt_find(&img->ops->schema, "size");
	uint64_t sz;

	if (!img->block_size || !sd || sd->type != GW_OPT_SIZE)
		return;
	sz = *(uint64_t *)((char *)img->opts + sd->offset);
	if (sz % img->block_size)
		diag_at(L->d, ymap_get(v, "size") ? ymap_get(v, "size") : v,
			"%s'size' must be a multiple of block-size %u", prefix, img->block_size);
}

/*
 * Ask each backend whether its source is usable (a missing file, a cluster
 * that does not answer...) and writable. A check may wait on a network (rbd
 * connects to a cluster, bounded by its connect-timeout), so the checks run
 * at once, each on a thread of its own, at most CHECK_THREADS together; the
 * answers are then reported in the manifest's order.
 */
#define CHECK_THREADS 16

struct source_check {
	struct gw_image_spec *img;
	const struct ynode *v;
	int rc;
	char msg[1536];
};

static void *check_one(void *arg)
{
	struct source_check *c = arg;

	c->msg[0] = '\0';
	c->rc = c->img->ops->check(c->img->opts, c->msg, sizeof(c->msg));
	return NULL;
}

static void image_sources(struct loader *L, struct source_check *c, size_t n)
{
	pthread_t t[CHECK_THREADS];
	bool started[CHECK_THREADS];

	for (size_t base = 0; base < n; base += CHECK_THREADS) {
		size_t k = GW_MIN(n - base, (size_t)CHECK_THREADS);

		/* One alone needs no thread. */
		for (size_t i = 0; i < k; i++)
			started[i] = k > 1 &&
				     pthread_create(&t[i], NULL, check_one, &c[base + i]) == 0;
		for (size_t i = 0; i < k; i++) {
			if (started[i])
				pthread_join(t[i], NULL);
			else
				check_one(&c[base + i]);
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct gw_image_spec *img = c[i].img;

		if (c[i].rc == GW_CHECK_READ_ONLY) {
			img->read_only_why = strdup(c[i].msg);
			img->read_only_source = true;
		} else if (c[i].rc < 0) {
			diag_at(L->d, ymap_get(c[i].v, "path") ? ymap_get(c[i].v, "path") : c[i].v,
				"image '%s': %s", img->name, c[i].msg);
		}
	}
}

/* The 'fault' key: a fault layer over the image's backend (backends/fault.c). */
static void image_fault(struct loader *L, struct gw_image_spec *img, const struct ynode *v,
			const char *prefix, const struct ynode *k)
{
	const struct ynode *f = ymap_get(v, "fault");
	char fprefix[160];

	if (!f)
		return;
	img->fault = calloc(1, sizeof(*img->fault));
	if (!img->fault)
		return;
	snprintf(fprefix, sizeof(fprefix), "%s'fault': ", prefix);
	decode(f, &gw_fault_schema, img->fault, NULL, 0, L->m->dir, fprefix, k, L->d);
}

static void load_image(struct loader *L, const struct ynode *k, const struct ynode *v,
		       bool check_sources)
{
	struct gw_manifest *m = L->m;
	struct gw_image_spec *img;
	char prefix[128]; /* the name is at most 64 bytes */

	for (size_t j = 0; j < m->nimages; j++)
		if (m->images[j].name && strcmp(m->images[j].name, k->text) == 0)
			return; /* reported by check_dup_keys */
	if (!image_name_ok(k->text)) {
		diag_at(L->d, k,
			"image name '%s' is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit (a backup image: IMAGE@CHECKPOINT)",
			k->text);
		return;
	}
	snprintf(prefix, sizeof(prefix), "image '%s': ", k->text);
	img = &m->images[m->nimages++];
	img->name = strdup(k->text);
	if (!img->name) {
		m->nimages--;
		diag_at(L->d, k, "%sout of memory", prefix);
		return;
	}
	img->line = k->line;
	img->col = k->col;
	if (v->type != YN_MAP) {
		diag_at(L->d, v,
			"%smust be a mapping such as { backend: memory, size: 1G }, not %s", prefix,
			ynode_is_null(v) ? "empty" : ynode_kind(v));
		return;
	}
	if (image_backend(L, img, v, prefix) < 0)
		return;
	image_block_size(L, img, v, prefix);
	image_tracking(L, img, v, prefix);
	image_backup(L, img, v, prefix);
	img->opts = calloc(1, img->ops->schema.size ? img->ops->schema.size : 1);
	if (!img->opts)
		return;
	if (decode(v, &img->ops->schema, img->opts, image_common, GW_ARRAY_SIZE(image_common),
		   m->dir, prefix, k, L->d) < 0)
		return;
	image_size_fits_block(L, img, v, prefix);
	image_fault(L, img, v, prefix, k);
	if (check_sources && img->ops->check) {
		struct source_check one = { .img = img, .v = v };

		if (L->checks)
			L->checks[L->nchecks++] = one;
		else
			image_sources(L, &one, 1); /* no memory for the list: now, alone */
	}
}

static void load_images(struct loader *L, const struct ynode *images, bool check_sources)
{
	struct gw_manifest *m = L->m;

	if (images->type != YN_MAP) {
		diag_at(L->d, images,
			"'images' must be a mapping of image names to backends, not %s",
			ynode_kind(images));
		return;
	}
	check_dup_keys(images, L->d);
	m->images = calloc(images->n / 2 + 1, sizeof(*m->images));
	if (!m->images)
		return;
	if (check_sources)
		L->checks = calloc(images->n / 2 + 1, sizeof(*L->checks));
	for (size_t i = 0; i + 1 < images->n; i += 2)
		if (images->items[i]->type == YN_SCALAR)
			load_image(L, images->items[i], images->items[i + 1], check_sources);
	image_sources(L, L->checks, L->nchecks);
	backup_sources(L);
	free(L->checks);
	L->checks = NULL;
	L->nchecks = 0;
}

/* ---- exports ---- */

static const char *const export_keys[] = { "image", "transports", "read-only" };

/* Keys of an export mapping: its own, and one per transport of this build. */
static void export_check_keys(struct loader *L, const struct ynode *e, const char *prefix)
{
	struct words known = { 0 };

	words_add_all(&known, export_keys, GW_ARRAY_SIZE(export_keys));
	words_add_all(&known, L->transports.v, L->transports.n);
	check_known_keys(e, &known, prefix, L->d);
	words_free(&known);
}

/* The 'image' key: which image is exported. */
static void export_image(struct loader *L, struct gw_export_spec *x, const struct ynode *e,
			 const char *prefix)
{
	const struct gw_manifest *m = L->m;
	const struct ynode *img = ymap_get(e, "image");
	struct words names = { 0 };
	GW_CLEANUP_FREE char *h = NULL;

	if (!img) {
		diag_at(L->d, e, "%smissing 'image' (the name of an image under 'images')", prefix);
		return;
	}
	if (img->type != YN_SCALAR) {
		diag_at(L->d, img, "%s'image' must be an image name, not %s", prefix,
			ynode_kind(img));
		return;
	}
	x->image = strdup(img->text);
	for (size_t i = 0; i < m->nimages; i++) {
		if (strcmp(m->images[i].name, img->text) == 0) {
			x->image_index = i;
			return;
		}
	}
	/* Unknown names are worth reporting only when 'images' could be read at all. */
	if (!m->images_ok || !image_name_ok(img->text))
		return;
	for (size_t i = 0; i < m->nimages; i++)
		words_add(&names, m->images[i].name);
	h = hint(&names, img->text);
	diag_at(L->d, img, "%sunknown image '%s'%s", prefix, img->text, str_or_empty(h));
	words_free(&names);
}

static void export_read_only(struct loader *L, struct gw_export_spec *x, const struct ynode *e,
			     const char *prefix)
{
	const struct ynode *ro = ymap_get(e, "read-only");

	if (ro && (ro->type != YN_SCALAR || gw_parse_bool(ro->text, &x->read_only)))
		diag_at(L->d, ro, "%s'read-only' must be true or false (got '%s')", prefix,
			ro->type == YN_SCALAR ? ro->text : ynode_kind(ro));
}

/* One entry of 'transports': its name, then its settings mapping decoded. */
static void export_transport(struct loader *L, struct gw_export_spec *x, const struct ynode *e,
			     const struct ynode *t, const char *prefix)
{
	const struct gw_transport_ops *ops;
	struct gw_transport_spec *sp;
	GW_CLEANUP_FREE char *h = NULL, *tp = NULL;

	if (t->type != YN_SCALAR) {
		diag_at(L->d, t, "%seach transport is a name (available: %s), not %s", prefix,
			str_or_empty(L->transport_list), ynode_kind(t));
		return;
	}
	ops = gw_transport_find(t->text);
	if (!ops) {
		h = hint(&L->transports, t->text);
		diag_at(L->d, t, "%sunknown transport '%s'%s; available in this build: %s", prefix,
			t->text, str_or_empty(h), str_or_empty(L->transport_list));
		return;
	}
	for (size_t j = 0; j < x->ntransports; j++) {
		if (x->transports[j].ops == ops) {
			diag_at(L->d, t, "%stransport '%s' is listed twice", prefix, t->text);
			return;
		}
	}
	sp = &x->transports[x->ntransports++];
	sp->ops = ops;
	sp->line = t->line;
	sp->col = t->col;
	sp->opts = calloc(1, ops->schema.size ? ops->schema.size : 1);
	if (!sp->opts || asprintf(&tp, "%s%s: ", prefix, ops->name) < 0)
		return;
	decode(ymap_get(e, ops->name), &ops->schema, sp->opts, NULL, 0, L->m->dir, tp, t, L->d);
}

/* The 'transports' list, in order of preference. */
static void export_transports(struct loader *L, struct gw_export_spec *x, const struct ynode *e,
			      const char *prefix)
{
	const struct ynode *ts = ymap_get(e, "transports");

	if (!ts) {
		diag_at(L->d, e,
			"%smissing 'transports' (a list in order of preference, e.g. [nbd]; available: %s)",
			prefix, str_or_empty(L->transport_list));
		return;
	}
	if (ts->type == YN_SCALAR && !ynode_is_null(ts) && gw_transport_find(ts->text)) {
		diag_at(L->d, ts, "%s'transports' must be a list, e.g. [%s]", prefix, ts->text);
		return;
	}
	if (ts->type != YN_SEQ || ts->n == 0) {
		diag_at(L->d, ts,
			"%s'transports' must be a non-empty list in order of preference (available: %s)",
			prefix, str_or_empty(L->transport_list));
		return;
	}
	x->transports = calloc(ts->n, sizeof(*x->transports));
	for (size_t i = 0; x->transports && i < ts->n; i++)
		export_transport(L, x, e, ts->items[i], prefix);
}

/* Settings for a transport that is not listed are a mistake worth naming. */
static void export_unlisted_settings(struct loader *L, const struct gw_export_spec *x,
				     const struct ynode *e, const char *prefix)
{
	const struct ynode *ts = ymap_get(e, "transports");

	if (!ts || ts->type != YN_SEQ)
		return; /* the list itself is what is wrong */
	for (size_t j = 0; j + 1 < e->n; j += 2) {
		const struct ynode *k = e->items[j];
		bool listed = false;

		if (k->type != YN_SCALAR || !words_has(&L->transports, k->text))
			continue;
		for (size_t i = 0; i < x->ntransports; i++)
			if (strcmp(x->transports[i].ops->name, k->text) == 0)
				listed = true;
		if (!listed)
			diag_at(L->d, k,
				"%ssettings for '%s' given, but '%s' is not in 'transports'",
				prefix, k->text, k->text);
	}
}

static void load_export(struct loader *L, const struct ynode *e, size_t idx)
{
	struct gw_manifest *m = L->m;
	struct gw_export_spec *x = &m->exports[m->nexports];
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "export %zu: ", idx + 1);
	if (e->type != YN_MAP) {
		diag_at(L->d, e, "%smust be a mapping with 'image' and 'transports', not %s",
			prefix, ynode_kind(e));
		return;
	}
	m->nexports++;
	x->line = e->line;
	x->col = e->col;
	check_dup_keys(e, L->d);
	export_check_keys(L, e, prefix);
	export_image(L, x, e, prefix);
	export_read_only(L, x, e, prefix);
	export_transports(L, x, e, prefix);
	export_unlisted_settings(L, x, e, prefix);
}

static void assign_ids(struct gw_manifest *m)
{
	for (size_t i = 0; i < m->nexports; i++) {
		struct gw_export_spec *x = &m->exports[i];
		unsigned n = 1;

		if (!x->image)
			continue;
		for (size_t j = 0; j < i; j++)
			if (m->exports[j].image && strcmp(m->exports[j].image, x->image) == 0)
				n++;
		if (n == 1)
			x->id = strdup(x->image);
		else if (asprintf(&x->id, "%s#%u", x->image, n) < 0)
			x->id = NULL;
	}
}

static void check_conflicts(struct gw_manifest *m, struct gw_diags *d)
{
	char buf[512];

	for (size_t i = 0; i < m->nexports; i++) {
		for (size_t ti = 0; ti < m->exports[i].ntransports; ti++) {
			struct gw_transport_spec *a = &m->exports[i].transports[ti];

			if (!a->ops->conflict)
				continue;
			for (size_t j = 0; j < i; j++) {
				for (size_t tj = 0; tj < m->exports[j].ntransports; tj++) {
					struct gw_transport_spec *b = &m->exports[j].transports[tj];
					const char *msg;

					if (b->ops != a->ops)
						continue;
					msg = a->ops->conflict(&m->env, a->opts,
							       m->exports[i].image, b->opts,
							       m->exports[j].image, buf,
							       sizeof(buf));
					if (msg)
						gw_diag_add(
							d, a->line, a->col,
							"export %zu: %s: %s (export %zu, line %d)",
							i + 1, a->ops->name, msg, j + 1,
							m->exports[j].line);
				}
			}
		}
	}
}

/* ---- top level ---- */

static const char *const top_keys[] = { "version", "gateway", "images", "exports" };

static void load_version(struct loader *L, const struct ynode *root)
{
	const struct ynode *v = ymap_get(root, "version");

	if (!v)
		diag_at(L->d, root, "missing 'version' (this blkgw reads 'version: 1')");
	else if (v->type != YN_SCALAR || strcmp(v->text, "1") != 0)
		diag_at(L->d, v,
			"unsupported manifest version '%s' (this blkgw reads 'version: 1')",
			v->type == YN_SCALAR ? v->text : ynode_kind(v));
}

/* Where key's value was written: it, else the mapping, else 0:0 (not written). */
static void key_pos(const struct ynode *map, const char *key, int *line, int *col)
{
	const struct ynode *at = ymap_get(map, key);

	at = at ? at : (map && map->type == YN_MAP ? map : NULL);
	*line = at ? at->line : 0;
	*col = at ? at->col : 0;
}

static void load_gateway(struct loader *L, const struct ynode *root)
{
	struct gw_manifest *m = L->m;
	const struct ynode *g = ymap_get(root, "gateway");
	struct gw_section gs;

	memset(&gs, 0, sizeof(gs));
	decode(g, &gateway_schema, &gs, NULL, 0, m->dir, "gateway: ", root, L->d);
	key_pos(g, "control-socket", &m->gw.control_line, &m->gw.control_col);
	key_pos(g, "run-dir", &m->gw.run_dir_line, &m->gw.run_dir_col);
	m->gw.control_socket = gs.control_socket;
	m->gw.control_perm = gs.control_perm;
	m->gw.run_dir = gs.run_dir ? gs.run_dir : gw_default_run_dir();
	m->gw.log_level = gs.log_level;
	m->gw.metrics = gs.metrics;
	m->gw.workers = gs.workers;
	m->gw.coalesce_us = gs.coalesce_us;
	m->gw.start_timeout = gs.start_timeout;
	m->gw.control_max_clients = gs.control_max_clients;
	m->gw.control_max_line = gs.control_max_line;
	m->gw.control_max_output = gs.control_max_output;
	if (!m->gw.workers) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		m->gw.workers = cpus > 0 ? (uint32_t)GW_MIN(cpus, 256) : 1;
	}
	if (!m->gw.control_socket && m->gw.run_dir &&
	    asprintf(&m->gw.control_socket, "%s/control.sock", m->gw.run_dir) < 0)
		m->gw.control_socket = NULL;
	/* Transports derive default socket paths from it while validating. */
	m->env.run_dir = m->gw.run_dir;
	m->env.buffer_limit = gs.buffer_limit;
}

static void load_exports(struct loader *L, const struct ynode *root)
{
	struct gw_manifest *m = L->m;
	const struct ynode *n = ymap_get(root, "exports");
	size_t before = L->d->n;

	if (!n || ynode_is_null(n)) {
		diag_at(L->d, n ? n : root,
			"missing 'exports' (a list such as '- { image: disk0, transports: [nbd] }')");
		return;
	}
	if (n->type != YN_SEQ) {
		diag_at(L->d, n, "'exports' must be a list of exports, not %s", ynode_kind(n));
		return;
	}
	m->exports = calloc(n->n + 1, sizeof(*m->exports));
	for (size_t i = 0; m->exports && i < n->n; i++)
		load_export(L, n->items[i], i);
	assign_ids(m);
	/* A backup image is a view of the past: nothing writes to it. */
	for (size_t i = 0; i < m->nexports; i++)
		if (m->exports[i].image_index < m->nimages &&
		    m->images[m->exports[i].image_index].backup)
			m->exports[i].read_only = true;
	for (size_t j = 0; j < m->nimages; j++)
		m->images[j].read_only = true;
	for (size_t i = 0; i < m->nexports; i++)
		if (!m->exports[i].read_only && m->exports[i].image_index < m->nimages)
			m->images[m->exports[i].image_index].read_only = false;
	if (L->d->n == before)
		check_conflicts(m, L->d);
}

static void load_root(struct loader *L, const struct ynode *root, bool check_sources)
{
	struct words known = { 0 };
	const struct ynode *n;

	if (!root || ynode_is_null(root)) {
		gw_diag_add(
			L->d, 1, 1,
			"the manifest is empty: it needs at least 'version: 1', 'images' and 'exports'");
		return;
	}
	if (root->type != YN_MAP) {
		diag_at(L->d, root,
			"the manifest must be a mapping with 'version', 'images' and 'exports', not %s",
			ynode_kind(root));
		return;
	}
	check_dup_keys(root, L->d);
	words_add_all(&known, top_keys, GW_ARRAY_SIZE(top_keys));
	check_known_keys(root, &known, "", L->d);
	words_free(&known);
	load_version(L, root);
	load_gateway(L, root);

	n = ymap_get(root, "images");
	if (!n || ynode_is_null(n))
		diag_at(L->d, n ? n : root,
			"missing 'images' (a mapping such as 'disk0: { backend: file, path: disk0.raw }')");
	else
		load_images(L, n, check_sources);
	L->m->images_ok = n && n->type == YN_MAP;

	load_exports(L, root);
}

static void loader_init(struct loader *L, struct gw_manifest *m, struct gw_diags *d)
{
	size_t nb, nt;
	const struct gw_backend_ops *const *bl = gw_backend_list(&nb);
	const struct gw_transport_ops *const *tl = gw_transport_list(&nt);

	memset(L, 0, sizeof(*L));
	L->m = m;
	L->d = d;
	for (size_t i = 0; i < nb; i++)
		words_add(&L->backends, bl[i]->name);
	for (size_t i = 0; i < nt; i++)
		words_add(&L->transports, tl[i]->name);
	L->backend_list = words_join(&L->backends);
	L->transport_list = words_join(&L->transports);
}

static void loader_free(struct loader *L)
{
	words_free(&L->backends);
	words_free(&L->transports);
	free(L->backend_list);
	free(L->transport_list);
}

int gw_manifest_load(const char *path, bool check_sources, struct gw_manifest **out,
		     struct gw_diags *d)
{
	struct gw_manifest *m;
	struct loader L;
	struct ytree t;
	int line, col;
	char msg[512];
	size_t before = d->n;
	char *tmp, *real;

	*out = NULL;
	if (ytree_load(path, &t, &line, &col, msg, sizeof(msg)) < 0) {
		gw_diag_add(d, line, col, "%s", msg);
		return -1;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		ytree_free(&t);
		return -1;
	}
	m->path = strdup(path);
	m->abs_path = realpath(path, NULL);
	if (!m->abs_path)
		m->abs_path = strdup(path);
	tmp = strdup(path);
	real = tmp ? realpath(dirname(tmp), NULL) : NULL;
	m->dir = real ? real : strdup(".");
	free(tmp);

	loader_init(&L, m, d);
	load_root(&L, t.root, check_sources);
	loader_free(&L);
	ytree_free(&t);
	if (d->n != before) {
		gw_manifest_free(m);
		return -1;
	}
	*out = m;
	return 0;
}

static void image_spec_free(struct gw_image_spec *img)
{
	if (img->ops && img->opts)
		gw_opt_free(&img->ops->schema, img->opts);
	free(img->opts);
	if (img->fault)
		gw_opt_free(&gw_fault_schema, img->fault);
	free(img->fault);
	free(img->name);
	free(img->read_only_why);
	if (img->backup) {
		free(img->backup->of);
		free(img->backup->checkpoint);
		free(img->backup->since);
		free(img->backup);
	}
}

static void export_spec_free(struct gw_export_spec *x)
{
	for (size_t t = 0; t < x->ntransports; t++) {
		gw_opt_free(&x->transports[t].ops->schema, x->transports[t].opts);
		free(x->transports[t].opts);
	}
	free(x->transports);
	free(x->image);
	free(x->id);
}

void gw_manifest_drop_image(struct gw_manifest *m, size_t i)
{
	size_t n = 0;

	if (i >= m->nimages)
		return;
	for (size_t k = 0; k < m->nexports; k++) {
		struct gw_export_spec *x = &m->exports[k];

		if (x->image_index == i) {
			export_spec_free(x);
			continue;
		}
		if (x->image_index > i && x->image_index < m->nimages)
			x->image_index--;
		m->exports[n++] = *x;
	}
	m->nexports = n;
	image_spec_free(&m->images[i]);
	memmove(&m->images[i], &m->images[i + 1], (m->nimages - i - 1) * sizeof(*m->images));
	m->nimages--;
}

void gw_manifest_free(struct gw_manifest *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nimages; i++)
		image_spec_free(&m->images[i]);
	free(m->images);
	for (size_t i = 0; i < m->nexports; i++)
		export_spec_free(&m->exports[i]);
	free(m->exports);
	free(m->gw.control_socket);
	free(m->gw.run_dir);
	free(m->gw.log_level);
	free(m->gw.metrics);
	free(m->path);
	free(m->abs_path);
	free(m->dir);
	free(m);
}
