#include "config/preflight.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/sockets.h"
#include "lib/util.h"

/* A unix socket path someone would create: a transport of an export, or the gateway. */
struct claim {
	char *path;
	size_t exp;                         /* export index; SIZE_MAX: the control socket */
	const struct gw_transport_spec *ts; /* NULL for the control socket */
};

struct claims {
	struct claim *v;
	size_t n, cap;
};

/* What the transports' listens() callback adds to. */
struct collect {
	struct gw_preflight *pf;
	struct claims *c;
	size_t exp;
	const struct gw_transport_spec *ts;
};

static const char *str_or(const char *s, const char *otherwise)
{
	return s ? s : otherwise;
}

/* Append a formatted line to a list of strings (dropped when out of memory). */
static void GW_PRINTF(3, 4) lines_add(char ***v, size_t *n, const char *fmt, ...)
{
	va_list ap;
	char *s, **nv;
	int rc;

	va_start(ap, fmt);
	rc = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return;
	for (size_t i = 0; i < *n; i++) {
		if (strcmp((*v)[i], s) == 0) { /* once is enough */
			free(s);
			return;
		}
	}
	nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (!nv) {
		free(s);
		return;
	}
	nv[(*n)++] = s;
	*v = nv;
}

static void lines_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void claim_add(struct claims *c, const char *path, size_t exp,
		      const struct gw_transport_spec *ts)
{
	char *p = strdup(path);

	if (!p)
		return;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 16;
		struct claim *v = realloc(c->v, cap * sizeof(*v));

		if (!v) {
			free(p);
			return;
		}
		c->v = v;
		c->cap = cap;
	}
	c->v[c->n++] = (struct claim){ .path = p, .exp = exp, .ts = ts };
}

static void collect_listen(void *arg, enum gw_listen_kind kind, const char *where)
{
	struct collect *k = arg;

	if (kind == GW_LISTEN_UNIX)
		claim_add(k->c, where, k->exp, k->ts);
	else
		lines_add(
			&k->pf->unchecked, &k->pf->nunchecked,
			"whether TCP %s is free: it is bound when serving, and a port can be taken by then",
			where);
}

/* "export 2: nbd: " or "gateway: control socket: ", for messages about a claim. */
static void claim_who(const struct gw_manifest *m, const struct claim *c, char *buf, size_t len)
{
	if (!c->ts)
		snprintf(buf, len, "gateway: control socket: ");
	else
		snprintf(buf, len, "export %zu: %s: ", c->exp + 1, c->ts->ops->name);
}

static void claim_diag(const struct gw_manifest *m, const struct claim *c, struct gw_diags *d,
		       const char *msg)
{
	char who[128];

	claim_who(m, c, who, sizeof(who));
	if (c->ts)
		gw_diag_add(d, c->ts->line, c->ts->col, "%s%s", who, msg);
	else
		gw_diag_add(d, m->gw.control_line, m->gw.control_col, "%s%s", who, msg);
}

/* One path, two claims: refuse it unless one transport shares it by design. */
static void check_clash(const struct gw_manifest *m, const struct claim *a, const struct claim *b,
			struct gw_diags *d)
{
	char msg[4400];

	if (a->ts && b->ts && (a->ts->ops == b->ts->ops || a->exp == b->exp))
		return; /* the transport's own conflict() rules; one export serves one at a time */
	if (!a->ts)
		snprintf(msg, sizeof(msg), "socket %s is the gateway's control socket", b->path);
	else
		snprintf(
			msg, sizeof(msg),
			"socket %s is also the %s socket of export %zu (line %d): one path, one server",
			b->path, a->ts->ops->name, a->exp + 1, m->exports[a->exp].line);
	claim_diag(m, b, d, msg);
}

/* Is path inside folder dir? */
static bool inside(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* bad_run_dir: it cannot be created, which was reported; sockets in it say no more. */
static void check_sockets(const struct gw_manifest *m, struct gw_preflight *pf,
			  const struct claims *c, bool bad_run_dir, bool live, struct gw_diags *d)
{
	char why[4400];

	for (size_t i = 0; i < c->n; i++) {
		bool seen = false;
		int rc;

		for (size_t j = 0; j < i; j++) {
			if (strcmp(c->v[j].path, c->v[i].path) == 0) {
				check_clash(m, &c->v[j], &c->v[i], d);
				seen = true;
			}
		}
		if (seen || (bad_run_dir && inside(c->v[i].path, m->gw.run_dir)))
			continue; /* its folder was checked with the first claim, or the run dir's
				   */
		rc = live ? gw_socket_path_check(c->v[i].path, why, sizeof(why))
			  : gw_socket_path_check_quiet(c->v[i].path, why, sizeof(why));
		if (rc < 0)
			claim_diag(m, &c->v[i], d, why);
		else if (rc == GW_SOCKET_LIVE && !c->v[i].ts)
			lines_add(
				&pf->notes, &pf->nnotes,
				"a server answers on control socket %s now (a blkgw running?): serve refuses to start while it does",
				c->v[i].path);
		else if (rc == GW_SOCKET_LIVE)
			lines_add(&pf->notes, &pf->nnotes,
				  "a server answers on %s now: serving there fails while it does",
				  c->v[i].path);
	}
}

/*
 * The images' sources: two images of one file or device are two writers
 * with no lock between them (blkgw's own locks are per open file, and
 * locking may be off); a size a listed transport cannot carry whole. info:
 * one per image, filled here.
 */
static void check_sources(const struct gw_manifest *m, struct gw_source_info *info,
			  struct gw_preflight *pf, struct gw_diags *d)
{
	for (size_t j = 0; j < m->nimages; j++) {
		const struct gw_image_spec *b = &m->images[j];

		if (!b->ops->inspect || b->ops->inspect(b->opts, &info[j]) < 0)
			memset(&info[j], 0, sizeof(info[j]));
		if (info[j].locks_when_served)
			lines_add(
				&pf->unchecked, &pf->nunchecked,
				"whether another program (a QEMU, qemu-nbd, another blkgw) holds image '%s': its locks are taken when serving",
				b->name);
		for (size_t i = 0; i < j && info[j].id[0]; i++) {
			const struct gw_image_spec *a = &m->images[i];

			if (strcmp(info[i].id, info[j].id) != 0)
				continue;
			/* A backup image reading its own source (--inconsistent) never writes. */
			if ((b->backup && b->backup->of && strcmp(b->backup->of, a->name) == 0) ||
			    (a->backup && a->backup->of && strcmp(a->backup->of, b->name) == 0))
				continue;
			gw_diag_add(
				d, b->line, b->col,
				"image '%s' is the same %s as image '%s' (line %d): two images of one source would write it with nothing between them; declare it once and give it several exports",
				b->name, strncmp(info[j].id, "device", 6) == 0 ? "device" : "file",
				a->name, a->line);
			break;
		}
	}
	for (size_t i = 0; i < m->nexports; i++) {
		const struct gw_export_spec *x = &m->exports[i];
		uint64_t size = info[x->image_index].size;

		for (size_t t = 0; size && t < x->ntransports; t++) {
			const struct gw_transport_spec *ts = &x->transports[t];
			uint32_t unit = ts->ops->size_unit ? ts->ops->size_unit(ts->opts) : 0;

			if (!unit || size % unit == 0)
				continue;
			gw_diag_add(
				d, ts->line, ts->col,
				"export %zu: %s: image '%s' is %llu bytes, not a whole number of %u-byte sectors: %s would hide its last %llu bytes; make the image %llu bytes (or %llu), or export it without %s",
				i + 1, ts->ops->name, x->image, (unsigned long long)size, unit,
				ts->ops->name, (unsigned long long)(size % unit),
				(unsigned long long)(size - size % unit),
				(unsigned long long)(size - size % unit + unit), ts->ops->name);
		}
	}
}

/* Probe each transport of export i; none that works is an error, as serve has it. */
static void probe_export(const struct gw_manifest *m, size_t i, struct gw_preflight_export *pe,
			 struct gw_diags *d)
{
	const struct gw_export_spec *x = &m->exports[i];
	char *notes = NULL;

	pe->chosen = -1;
	pe->probe_rc = calloc(x->ntransports + 1, sizeof(*pe->probe_rc));
	pe->probe_why = calloc(x->ntransports + 1, sizeof(*pe->probe_why));
	if (!pe->probe_rc || !pe->probe_why)
		return;
	pe->n = x->ntransports;
	for (size_t t = 0; t < x->ntransports; t++) {
		const struct gw_transport_spec *ts = &x->transports[t];
		char why[512] = "", *n;
		int rc = ts->ops->probe ? ts->ops->probe(&m->env, ts->opts, why, sizeof(why)) : 0;

		pe->probe_rc[t] = rc;
		if (rc == 0) {
			if (pe->chosen < 0)
				pe->chosen = (int)t;
			continue;
		}
		pe->probe_why[t] = strdup(*why ? why : strerror(-rc));
		if (asprintf(&n, "%s%s%s: %s", notes ? notes : "", notes ? "; " : "", ts->ops->name,
			     str_or(pe->probe_why[t], "?")) >= 0) {
			free(notes);
			notes = n;
		}
	}
	if (pe->chosen < 0)
		gw_diag_add(d, x->line, x->col, "export %zu (%s): no transport could start: %s",
			    i + 1, x->id, notes ? notes : "?");
	free(notes);
}

static int preflight(const struct gw_manifest *m, struct gw_preflight *pf, struct gw_diags *d,
		     bool live)
{
	struct claims c = { 0 };
	struct gw_source_info *info;
	size_t before = d->n;
	char why[4400];
	bool bad_run_dir;

	memset(pf, 0, sizeof(*pf));
	pf->exports = calloc(m->nexports + 1, sizeof(*pf->exports));
	if (!pf->exports)
		return -1;
	pf->nexports = m->nexports;

	bad_run_dir = gw_dir_check(m->gw.run_dir, why, sizeof(why)) < 0;
	if (bad_run_dir)
		gw_diag_add(d, m->gw.run_dir_line, m->gw.run_dir_col, "gateway: run dir: %s", why);
	claim_add(&c, m->gw.control_socket, SIZE_MAX, NULL);
	for (size_t i = 0; i < m->nexports; i++) {
		const struct gw_export_spec *x = &m->exports[i];
		const struct gw_image_spec *img = &m->images[x->image_index];

		probe_export(m, i, &pf->exports[i], d);
		if (!x->read_only && img->read_only_source)
			gw_diag_add(
				d, x->line, x->col,
				"export %zu: image '%s' can only be read (%s); set 'read-only: true'",
				i + 1, x->image, str_or(img->read_only_why, "?"));
		for (size_t t = 0; t < x->ntransports; t++) {
			const struct gw_transport_spec *ts = &x->transports[t];
			struct collect k = { .pf = pf, .c = &c, .exp = i, .ts = ts };

			if (ts->ops->listens)
				ts->ops->listens(&m->env, ts->opts, x->image, collect_listen, &k);
		}
	}
	check_sockets(m, pf, &c, bad_run_dir, live, d);
	info = calloc(m->nimages + 1, sizeof(*info));
	if (info)
		check_sources(m, info, pf, d);
	free(info);
	for (size_t i = 0; i < c.n; i++)
		free(c.v[i].path);
	free(c.v);
	return d->n == before ? 0 : -1;
}

int gw_preflight_run(const struct gw_manifest *m, struct gw_preflight *pf, struct gw_diags *d)
{
	return preflight(m, pf, d, true);
}

int gw_preflight_run_live(const struct gw_manifest *m, struct gw_preflight *pf, struct gw_diags *d)
{
	return preflight(m, pf, d, false);
}

void gw_preflight_free(struct gw_preflight *pf)
{
	for (size_t i = 0; pf->exports && i < pf->nexports; i++) {
		struct gw_preflight_export *pe = &pf->exports[i];

		for (size_t t = 0; pe->probe_why && t < pe->n; t++)
			free(pe->probe_why[t]);
		free(pe->probe_rc);
		free(pe->probe_why);
	}
	free(pf->exports);
	lines_free(pf->notes, pf->nnotes);
	lines_free(pf->unchecked, pf->nunchecked);
	memset(pf, 0, sizeof(*pf));
}
