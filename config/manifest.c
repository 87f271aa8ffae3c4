#include "config/manifest.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/yaml_tree.h"
#include "lib/util.h"

/* ---- diagnostics ---- */

void gw_diag_add(struct gw_diags *d, int line, int col, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 16;
		struct gw_diag_item *v = realloc(d->v, cap * sizeof(*v));

		if (!v)
			return;
		d->v = v;
		d->cap = cap;
	}
	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (!msg)
		return;
	d->v[d->n].line = line;
	d->v[d->n].col = col;
	d->v[d->n].msg = msg;
	d->n++;
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

#define E(node, ...) gw_diag_add(d, (node)->line, (node)->col, __VA_ARGS__)

static const char *closest_word(const char *key, const char *const *cands, size_t n)
{
	const char *best = NULL;
	unsigned bestd = UINT_MAX;

	for (size_t i = 0; i < n; i++) {
		unsigned dist;

		if (!cands[i])
			continue;
		dist = gw_edit_distance(key, cands[i]);
		if (dist < bestd) {
			bestd = dist;
			best = cands[i];
		}
	}
	if (best && bestd <= GW_MAX(1u, (unsigned)strlen(key) / 3))
		return best;
	return NULL;
}

/* " (did you mean 'x'?)" or "" */
static const char *hint(char *buf, size_t len, const char *key, const char *const *cands, size_t n)
{
	const char *c = closest_word(key, cands, n);

	if (!c)
		return "";
	snprintf(buf, len, " (did you mean '%s'?)", c);
	return buf;
}

static void list_words(char *buf, size_t len, const char *const *words, size_t n)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", words[i]);
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
			E(k, "keys must be single values, not %s", ynode_kind(k));
			bad = 1;
			continue;
		}
		for (size_t j = 0; j < i; j += 2) {
			const struct ynode *p = map->items[j];

			if (p->type == YN_SCALAR && strcmp(p->text, k->text) == 0) {
				E(k, "duplicate key '%s' (first defined at line %d)", k->text,
				  p->line);
				bad = 1;
				break;
			}
		}
	}
	return bad;
}

/*
 * Decode a mapping through a schema. extra: keys the caller handles itself
 * (skipped here, offered in hints). prefix: "image 'disk0': " for messages.
 */
static int decode(const struct ynode *map, const struct gw_opt_schema *s, void *out,
		  const char *const *extra, size_t nextra, const char *dir, const char *prefix,
		  const struct ynode *owner, struct gw_diags *d)
{
	size_t before = d->n;
	const char *cands[64];
	size_t nc = 0;
	char err[512], hb[128];

	gw_opt_defaults(s, out);
	for (size_t i = 0; i < s->nopts && nc < GW_ARRAY_SIZE(cands); i++)
		cands[nc++] = s->opts[i].key;
	for (size_t i = 0; i < nextra && nc < GW_ARRAY_SIZE(cands); i++)
		cands[nc++] = extra[i];

	if (map && ynode_is_null(map))
		map = NULL;
	if (map && map->type != YN_MAP) {
		E(map, "%smust be a mapping of settings, not %s", prefix, ynode_kind(map));
		return -1;
	}
	if (map) {
		check_dup_keys(map, d);
		for (size_t i = 0; i + 1 < map->n; i += 2) {
			const struct ynode *k = map->items[i], *v = map->items[i + 1];
			const struct gw_opt_desc *od;
			bool skip = false;

			if (k->type != YN_SCALAR)
				continue;
			for (size_t e = 0; e < nextra; e++)
				if (strcmp(extra[e], k->text) == 0)
					skip = true;
			if (skip)
				continue;
			od = gw_opt_find(s, k->text);
			if (!od) {
				E(k, "%sunknown key '%s'%s", prefix, k->text,
				  hint(hb, sizeof(hb), k->text, cands, nc));
				continue;
			}
			if (v->type != YN_SCALAR || ynode_is_null(v)) {
				E(v, "%s'%s' must be %s, not %s", prefix, od->key,
				  gw_opt_type_hint(od), ynode_is_null(v) ? "empty" : ynode_kind(v));
				continue;
			}
			if (gw_opt_set(od, v->text, dir, out, err, sizeof(err)) < 0)
				E(v, "%s%s", prefix, err);
		}
	}
	for (size_t i = 0; i < s->nopts; i++) {
		const struct gw_opt_desc *od = &s->opts[i];

		if ((od->flags & GW_OPT_REQUIRED) && !ymap_get(map, od->key))
			gw_diag_add(d, map ? map->line : owner->line, map ? map->col : owner->col,
				    "%smissing '%s': %s", prefix, od->key,
				    od->help ? od->help : gw_opt_type_hint(od));
	}
	if (d->n == before && s->check) {
		const char *key = NULL;
		const char *msg = s->check(out, &key);

		if (msg) {
			const struct ynode *at = key ? ymap_get(map, key) : NULL;

			at = at ? at : (map ? map : owner);
			E(at, "%s%s", prefix, msg);
		}
	}
	return d->n == before ? 0 : -1;
}

/* ---- gateway ---- */

struct gw_section {
	char *control_socket;
	char *run_dir;
	uint32_t workers;
	uint32_t coalesce_us;
	char *log_level;
};

static const char *const log_levels[] = { "error", "warn", "info", "debug", NULL };

static const struct gw_opt_desc gateway_opts[] = {
	{ .key = "control-socket",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct gw_section, control_socket),
	  .help = "unix socket for `blkgw status` and other control commands (default RUN-DIR/control.sock)" },
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
	{ .key = "log-level",
	  .type = GW_OPT_ENUM,
	  .offset = offsetof(struct gw_section, log_level),
	  .choices = log_levels,
	  .help = "error, warn, info or debug (default info)" },
};

static const struct gw_opt_schema gateway_schema =
	GW_OPT_SCHEMA(gateway_opts, struct gw_section, NULL);

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

static const char *const image_common[] = { "backend", "block-size" };

static void load_images(struct gw_manifest *m, const struct ynode *images, bool check_sources,
			struct gw_diags *d)
{
	size_t nb;
	const struct gw_backend_ops *const *bl = gw_backend_list(&nb);
	const char *bnames[16];
	char words[256], hb[128], prefix[128];

	for (size_t i = 0; i < nb && i < GW_ARRAY_SIZE(bnames); i++)
		bnames[i] = bl[i]->name;
	list_words(words, sizeof(words), bnames, GW_MIN(nb, GW_ARRAY_SIZE(bnames)));

	if (images->type != YN_MAP) {
		E(images, "'images' must be a mapping of image names to backends, not %s",
		  ynode_kind(images));
		return;
	}
	check_dup_keys(images, d);
	m->images = calloc(images->n / 2 + 1, sizeof(*m->images));
	if (!m->images)
		return;
	for (size_t i = 0; i + 1 < images->n; i += 2) {
		const struct ynode *k = images->items[i], *v = images->items[i + 1];
		const struct ynode *bn, *bs;
		struct gw_image_spec *img;
		bool dup = false;

		if (k->type != YN_SCALAR)
			continue;
		for (size_t j = 0; j < m->nimages; j++)
			if (strcmp(m->images[j].name, k->text) == 0)
				dup = true;
		if (dup)
			continue; /* reported by check_dup_keys */
		if (!valid_name(k->text)) {
			E(k,
			  "image name '%s' is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
			  k->text);
			continue;
		}
		snprintf(prefix, sizeof(prefix), "image '%s': ", k->text);
		img = &m->images[m->nimages++];
		img->name = strdup(k->text);
		img->line = k->line;
		img->col = k->col;
		if (v->type != YN_MAP) {
			E(v, "%smust be a mapping such as { backend: memory, size: 1G }, not %s",
			  prefix, ynode_is_null(v) ? "empty" : ynode_kind(v));
			continue;
		}
		bn = ymap_get(v, "backend");
		if (!bn) {
			E(v, "%smissing 'backend' (one of: %s)", prefix, words);
			continue;
		}
		if (bn->type != YN_SCALAR || !(img->ops = gw_backend_find(bn->text))) {
			E(bn, "%sunknown backend '%s'%s; backends: %s", prefix,
			  bn->type == YN_SCALAR ? bn->text : "?",
			  bn->type == YN_SCALAR ? hint(hb, sizeof(hb), bn->text, bnames, nb) : "",
			  words);
			continue;
		}
		bs = ymap_get(v, "block-size");
		if (bs) {
			uint64_t b = 0;

			if (bs->type != YN_SCALAR || gw_parse_size(bs->text, &b) ||
			    !gw_is_pow2(b) || b < 512 || b > 65536)
				E(bs,
				  "%s'block-size' must be a power of two from 512 to 64K (got '%s')",
				  prefix, bs->type == YN_SCALAR ? bs->text : ynode_kind(bs));
			else
				img->block_size = (uint32_t)b;
		}
		img->opts = calloc(1, img->ops->schema.size ? img->ops->schema.size : 1);
		if (!img->opts)
			continue;
		if (decode(v, &img->ops->schema, img->opts, image_common,
			   GW_ARRAY_SIZE(image_common), m->dir, prefix, k, d) < 0)
			continue;
		/* A size that is not a multiple of the block size leaves a tail no client can
		 * reach. */
		if (img->block_size) {
			const struct gw_opt_desc *sd = gw_opt_find(&img->ops->schema, "size");

			if (sd && sd->type == GW_OPT_SIZE) {
				uint64_t sz = *(uint64_t *)((char *)img->opts + sd->offset);

				if (sz % img->block_size)
					E(ymap_get(v, "size") ? ymap_get(v, "size") : v,
					  "%s'size' must be a multiple of block-size %u", prefix,
					  img->block_size);
			}
		}
		if (check_sources && img->ops->check) {
			char msg[512] = "";

			if (img->ops->check(img->opts, msg, sizeof(msg)) < 0)
				E(ymap_get(v, "path") ? ymap_get(v, "path") : v, "%s%s", prefix,
				  msg);
		}
	}
}

/* ---- exports ---- */

static const char *const export_keys[] = { "image", "transports", "read-only" };

static void load_export(struct gw_manifest *m, const struct ynode *e, size_t idx,
			struct gw_diags *d)
{
	size_t nt;
	const struct gw_transport_ops *const *tl = gw_transport_list(&nt);
	const char *tnames[16], *cands[24];
	size_t nc = 0;
	char words[256], hb[128], prefix[64];
	struct gw_export_spec *x = &m->exports[m->nexports];
	const struct ynode *img, *ts, *ro;

	for (size_t i = 0; i < nt && i < GW_ARRAY_SIZE(tnames); i++)
		tnames[i] = tl[i]->name;
	nt = GW_MIN(nt, GW_ARRAY_SIZE(tnames));
	list_words(words, sizeof(words), tnames, nt);
	for (size_t i = 0; i < GW_ARRAY_SIZE(export_keys); i++)
		cands[nc++] = export_keys[i];
	for (size_t i = 0; i < nt; i++)
		cands[nc++] = tnames[i];

	snprintf(prefix, sizeof(prefix), "export %zu: ", idx + 1);
	if (e->type != YN_MAP) {
		E(e, "%smust be a mapping with 'image' and 'transports', not %s", prefix,
		  ynode_kind(e));
		return;
	}
	m->nexports++;
	x->line = e->line;
	x->col = e->col;
	check_dup_keys(e, d);
	for (size_t i = 0; i + 1 < e->n; i += 2) {
		const struct ynode *k = e->items[i];
		bool known = false;

		if (k->type != YN_SCALAR)
			continue;
		for (size_t c = 0; c < nc; c++)
			if (strcmp(cands[c], k->text) == 0)
				known = true;
		if (!known) {
			/* A transport this build lacks is worth saying so plainly. */
			E(k, "%sunknown key '%s'%s", prefix, k->text,
			  hint(hb, sizeof(hb), k->text, cands, nc));
		}
	}

	img = ymap_get(e, "image");
	if (!img) {
		E(e, "%smissing 'image' (the name of an image under 'images')", prefix);
	} else if (img->type != YN_SCALAR) {
		E(img, "%s'image' must be an image name, not %s", prefix, ynode_kind(img));
	} else {
		const char *inames[256];
		size_t ni = 0;
		bool found = false;

		for (size_t i = 0; i < m->nimages; i++) {
			if (strcmp(m->images[i].name, img->text) == 0) {
				found = true;
				x->image_index = i;
			}
			if (ni < GW_ARRAY_SIZE(inames))
				inames[ni++] = m->images[i].name;
		}
		x->image = strdup(img->text);
		if (!found && m->images_ok && valid_name(img->text))
			E(img, "%sunknown image '%s'%s", prefix, img->text,
			  hint(hb, sizeof(hb), img->text, inames, ni));
	}

	ro = ymap_get(e, "read-only");
	if (ro && (ro->type != YN_SCALAR || gw_parse_bool(ro->text, &x->read_only)))
		E(ro, "%s'read-only' must be true or false (got '%s')", prefix,
		  ro->type == YN_SCALAR ? ro->text : ynode_kind(ro));

	ts = ymap_get(e, "transports");
	if (!ts) {
		E(e,
		  "%smissing 'transports' (a list in order of preference, e.g. [nbd]; available: %s)",
		  prefix, words);
	} else if (ts->type == YN_SCALAR && !ynode_is_null(ts) && gw_transport_find(ts->text)) {
		E(ts, "%s'transports' must be a list, e.g. [%s]", prefix, ts->text);
	} else if (ts->type != YN_SEQ || ts->n == 0) {
		E(ts,
		  "%s'transports' must be a non-empty list in order of preference (available: %s)",
		  prefix, words);
	} else {
		x->transports = calloc(ts->n, sizeof(*x->transports));
		for (size_t i = 0; x->transports && i < ts->n; i++) {
			const struct ynode *t = ts->items[i];
			const struct gw_transport_ops *ops;
			struct gw_transport_spec *sp;
			char tp[128];
			bool dup = false;

			if (t->type != YN_SCALAR) {
				E(t, "%seach transport is a name (available: %s), not %s", prefix,
				  words, ynode_kind(t));
				continue;
			}
			ops = gw_transport_find(t->text);
			if (!ops) {
				E(t, "%sunknown transport '%s'%s; available in this build: %s",
				  prefix, t->text, hint(hb, sizeof(hb), t->text, tnames, nt),
				  words);
				continue;
			}
			for (size_t j = 0; j < x->ntransports; j++)
				if (x->transports[j].ops == ops)
					dup = true;
			if (dup) {
				E(t, "%stransport '%s' is listed twice", prefix, t->text);
				continue;
			}
			sp = &x->transports[x->ntransports++];
			sp->ops = ops;
			sp->line = t->line;
			sp->col = t->col;
			sp->opts = calloc(1, ops->schema.size ? ops->schema.size : 1);
			if (!sp->opts)
				continue;
			snprintf(tp, sizeof(tp), "%s%s: ", prefix, ops->name);
			decode(ymap_get(e, ops->name), &ops->schema, sp->opts, NULL, 0, m->dir, tp,
			       t, d);
		}
	}
	/* Settings for a transport that is not listed are a mistake worth naming. */
	for (size_t i = 0; i < nt; i++) {
		const struct ynode *k = NULL;
		bool listed = false;

		for (size_t j = 0; j + 1 < e->n; j += 2)
			if (e->items[j]->type == YN_SCALAR &&
			    strcmp(e->items[j]->text, tnames[i]) == 0)
				k = e->items[j];
		if (!k)
			continue;
		for (size_t j = 0; j < x->ntransports; j++)
			if (strcmp(x->transports[j].ops->name, tnames[i]) == 0)
				listed = true;
		if (!listed && ts && ts->type == YN_SEQ)
			E(k, "%ssettings for '%s' given, but '%s' is not in 'transports'", prefix,
			  tnames[i], tnames[i]);
	}
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
						E(a, "export %zu: %s: %s (export %zu, line %d)",
						  i + 1, a->ops->name, msg, j + 1,
						  m->exports[j].line);
				}
			}
		}
	}
}

/* ---- top level ---- */

static const char *const top_keys[] = { "version", "gateway", "images", "exports" };

int gw_manifest_load(const char *path, bool check_sources, struct gw_manifest **out,
		     struct gw_diags *d)
{
	struct gw_manifest *m;
	struct ytree t;
	int line, col;
	char msg[512], hb[128];
	const struct ynode *root, *v, *n;
	struct gw_section gs;
	size_t before = d->n;

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
	{
		char *tmp = strdup(path);
		char *real = tmp ? realpath(dirname(tmp), NULL) : NULL;

		m->dir = real ? real : strdup(".");
		free(tmp);
	}
	root = t.root;
	if (!root || ynode_is_null(root)) {
		gw_diag_add(
			d, 1, 1,
			"the manifest is empty: it needs at least 'version: 1', 'images' and 'exports'");
		goto out;
	}
	if (root->type != YN_MAP) {
		E(root,
		  "the manifest must be a mapping with 'version', 'images' and 'exports', not %s",
		  ynode_kind(root));
		goto out;
	}
	check_dup_keys(root, d);
	for (size_t i = 0; i + 1 < root->n; i += 2) {
		const struct ynode *k = root->items[i];
		bool known = false;

		if (k->type != YN_SCALAR)
			continue;
		for (size_t c = 0; c < GW_ARRAY_SIZE(top_keys); c++)
			if (strcmp(top_keys[c], k->text) == 0)
				known = true;
		if (!known)
			E(k, "unknown key '%s'%s", k->text,
			  hint(hb, sizeof(hb), k->text, top_keys, GW_ARRAY_SIZE(top_keys)));
	}

	v = ymap_get(root, "version");
	if (!v)
		E(root, "missing 'version' (this blkgw reads 'version: 1')");
	else if (v->type != YN_SCALAR || strcmp(v->text, "1") != 0)
		E(v, "unsupported manifest version '%s' (this blkgw reads 'version: 1')",
		  v->type == YN_SCALAR ? v->text : ynode_kind(v));

	memset(&gs, 0, sizeof(gs));
	decode(ymap_get(root, "gateway"), &gateway_schema, &gs, NULL, 0, m->dir, "gateway: ", root,
	       d);
	m->gw.control_socket = gs.control_socket;
	m->gw.run_dir = gs.run_dir ? gs.run_dir : gw_default_run_dir();
	m->gw.log_level = gs.log_level;
	m->gw.workers = gs.workers;
	m->gw.coalesce_us = gs.coalesce_us;
	if (!m->gw.workers) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		m->gw.workers = cpus > 0 ? (uint32_t)GW_MIN(cpus, 256) : 1;
	}
	if (!m->gw.control_socket && m->gw.run_dir &&
	    asprintf(&m->gw.control_socket, "%s/control.sock", m->gw.run_dir) < 0)
		m->gw.control_socket = NULL;
	/* Transports derive default socket paths from it while validating. */
	m->env.run_dir = m->gw.run_dir;

	n = ymap_get(root, "images");
	if (!n || ynode_is_null(n))
		E(n ? n : root,
		  "missing 'images' (a mapping such as 'disk0: { backend: file, path: disk0.raw }')");
	else
		load_images(m, n, check_sources, d);
	m->images_ok = n && n->type == YN_MAP;

	n = ymap_get(root, "exports");
	if (!n || ynode_is_null(n)) {
		E(n ? n : root,
		  "missing 'exports' (a list such as '- { image: disk0, transports: [nbd] }')");
	} else if (n->type != YN_SEQ) {
		E(n, "'exports' must be a list of exports, not %s", ynode_kind(n));
	} else {
		m->exports = calloc(n->n + 1, sizeof(*m->exports));
		for (size_t i = 0; m->exports && i < n->n; i++)
			load_export(m, n->items[i], i, d);
		assign_ids(m);
		if (d->n == before)
			check_conflicts(m, d);
	}

out:
	ytree_free(&t);
	if (d->n != before) {
		gw_manifest_free(m);
		return -1;
	}
	*out = m;
	return 0;
}

void gw_manifest_free(struct gw_manifest *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nimages; i++) {
		struct gw_image_spec *img = &m->images[i];

		if (img->ops && img->opts)
			gw_opt_free(&img->ops->schema, img->opts);
		free(img->opts);
		free(img->name);
	}
	free(m->images);
	for (size_t i = 0; i < m->nexports; i++) {
		struct gw_export_spec *x = &m->exports[i];

		for (size_t t = 0; t < x->ntransports; t++) {
			gw_opt_free(&x->transports[t].ops->schema, x->transports[t].opts);
			free(x->transports[t].opts);
		}
		free(x->transports);
		free(x->image);
		free(x->id);
	}
	free(m->exports);
	free(m->gw.control_socket);
	free(m->gw.run_dir);
	free(m->gw.log_level);
	free(m->path);
	free(m->dir);
	free(m);
}
