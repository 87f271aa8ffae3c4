#include "lib/opts.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/util.h"

int gw_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno == ERANGE)
		return -ERANGE;
	if (end == s || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Binary unit letters, as QEMU writes them: K = 2^10 ... E = 2^60. */
static const char size_units[] = "KMGTPE";

/* The shift of a unit letter, or 0 when c is not one (upper case only). */
static unsigned unit_shift(char c)
{
	const char *u = c ? strchr(size_units, c) : NULL;

	return u ? 10 * (unsigned)(u - size_units + 1) : 0;
}

int gw_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !*s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	/* "", "B", "K".."E", "KiB".."EiB": nothing else (no "KB", "Gb", "g"). */
	if (strcmp(end, "B") == 0) {
		end++;
	} else if (*end && (shift = unit_shift(*end))) {
		end++;
		if (strcmp(end, "iB") == 0)
			end += 2;
	}
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

const char *gw_size_advice(const char *s, char *buf, size_t len)
{
	const char *num = s, *end = s, *rest;
	char letter;
	size_t ndigits;

	while (*end >= '0' && *end <= '9')
		end++;
	ndigits = (size_t)(end - num);
	if (ndigits && *end == '.') {
		snprintf(buf, len,
			 "use a whole number, in a smaller unit if need be (e.g. 1536M for 1.5G)");
		return buf;
	}
	letter = (char)toupper((unsigned char)*end);
	rest = *end ? end + 1 : end;
	if (!ndigits || (!unit_shift(letter) && strcasecmp(end, "b") != 0)) {
		snprintf(buf, len,
			 "write a whole number of bytes with an optional binary unit "
			 "K, M, G, T, P or E (or KiB ... EiB, or B for bytes), e.g. 64M");
		return buf;
	}
	if (!unit_shift(letter)) { /* a lower-case "b" */
		snprintf(buf, len, "write %.*s or %.*sB for bytes", (int)ndigits, num, (int)ndigits,
			 num);
		return buf;
	}
	if (strcasecmp(rest, "b") == 0) {
		snprintf(buf, len,
			 "write %.*s%c or %.*s%ciB: units are binary (1%c = 2^%u bytes); decimal "
			 "units such as KB or GB, and bits, are not accepted",
			 (int)ndigits, num, letter, (int)ndigits, num, letter, letter,
			 unit_shift(letter));
		return buf;
	}
	if (!*rest || strcasecmp(rest, "ib") == 0) {
		snprintf(buf, len, "write %.*s%c%s: units are upper case", (int)ndigits, num,
			 letter, *rest ? "iB" : "");
		return buf;
	}
	snprintf(buf, len,
		 "write a whole number of bytes with an optional binary unit "
		 "K, M, G, T, P or E (or KiB ... EiB, or B for bytes), e.g. 64M");
	return buf;
}

int gw_parse_bool(const char *s, bool *out)
{
	static const char *yes[] = { "true", "yes", "on", "True", "TRUE", "Yes", "YES", "On", "ON" };
	static const char *no[] = {
		"false", "no", "off", "False", "FALSE", "No", "NO", "Off", "OFF"
	};

	for (size_t i = 0; i < GW_ARRAY_SIZE(yes); i++) {
		if (strcmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

void gw_opt_problem(struct gw_opt_report *r, const char *key, const char *fmt, ...)
{
	va_list ap;
	char *msg;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	r->problem(r, key, msg);
	free(msg);
}

bool gw_opt_bad(const struct gw_opt_report *r, const char *key)
{
	return r->bad && r->bad(r, key);
}

const struct gw_opt_desc *gw_opt_find(const struct gw_opt_schema *s, const char *key)
{
	for (size_t i = 0; i < s->nopts; i++)
		if (strcmp(s->opts[i].key, key) == 0)
			return &s->opts[i];
	return NULL;
}

unsigned gw_edit_distance(const char *a, const char *b)
{
	/* Optimal string alignment: insertions, deletions, substitutions and
	 * swaps of neighbours each cost 1 ("fiel" is one edit from "file"). */
	size_t la = strlen(a), lb = strlen(b);
	unsigned d[65][65];

	if (la > 64 || lb > 64)
		return UINT_MAX;
	for (size_t i = 0; i <= la; i++)
		d[i][0] = (unsigned)i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = (unsigned)j;
	for (size_t i = 1; i <= la; i++) {
		for (size_t j = 1; j <= lb; j++) {
			unsigned cost = a[i - 1] == b[j - 1] ? 0 : 1;
			unsigned best = d[i - 1][j - 1] + cost;

			if (d[i - 1][j] + 1 < best)
				best = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < best)
				best = d[i][j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    d[i - 2][j - 2] + 1 < best)
				best = d[i - 2][j - 2] + 1;
			d[i][j] = best;
		}
	}
	return d[la][lb];
}

const char *gw_opt_closest(const struct gw_opt_schema *s, const char *key)
{
	const char *best = NULL;
	unsigned bestd = UINT_MAX;

	for (size_t i = 0; i < s->nopts; i++) {
		unsigned d = gw_edit_distance(key, s->opts[i].key);

		if (d < bestd) {
			bestd = d;
			best = s->opts[i].key;
		}
	}
	/* Close means: at most a third of the key's letters differ (and at least one may). */
	if (best && bestd <= GW_MAX(1u, (unsigned)strlen(key) / 3))
		return best;
	return NULL;
}

const char *gw_opt_type_hint(const struct gw_opt_desc *d)
{
	switch (d->type) {
	case GW_OPT_STR:
		return "a string";
	case GW_OPT_PATH:
		return "a path";
	case GW_OPT_BOOL:
		return "true or false";
	case GW_OPT_U32:
		return "a whole number";
	case GW_OPT_SIZE:
		return "a size such as 4096, 64M or 1G";
	case GW_OPT_MODE:
		return "an octal file mode such as 0600";
	case GW_OPT_HOSTPORT:
		return "HOST:PORT such as 127.0.0.1:10809";
	case GW_OPT_ENUM:
		return "one of the listed words";
	case GW_OPT_USER:
		return "a user name or a numeric uid";
	case GW_OPT_GROUP:
		return "a group name or a numeric gid";
	}
	return "a value";
}

int gw_split_hostport(const char *s, char **host, char **port)
{
	const char *colon;
	const char *h, *hend;

	if (s[0] == '[') {
		hend = strchr(s, ']');
		if (!hend || hend[1] != ':')
			return -EINVAL;
		h = s + 1;
		colon = hend + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || memchr(s, ':', (size_t)(colon - s)))
			return -EINVAL;
		h = s;
		hend = colon;
	}
	if (hend == h || !colon[1])
		return -EINVAL;
	for (const char *p = colon + 1; *p; p++)
		if (*p < '0' || *p > '9')
			return -EINVAL;
	long pn = strtol(colon + 1, NULL, 10);
	if (pn < 1 || pn > 65535)
		return -ERANGE;
	*host = strndup(h, (size_t)(hend - h));
	*port = strdup(colon + 1);
	if (!*host || !*port) {
		free(*host);
		free(*port);
		return -ENOMEM;
	}
	return 0;
}

/*
 * A user or group name, or a number, to an id. 0, -ENOENT for an unknown
 * name, -EINVAL for a number out of range.
 */
static int resolve_id(const char *text, bool group, uint32_t *id)
{
	uint64_t v;
	char buf[16384];
	int rc;

	if (text[0] >= '0' && text[0] <= '9') {
		if (gw_parse_u64(text, &v) < 0 || v >= GW_ID_UNSET)
			return -EINVAL;
		*id = (uint32_t)v;
		return 0;
	}
	if (group) {
		struct group gr, *g = NULL;

		rc = getgrnam_r(text, &gr, buf, sizeof(buf), &g);
		if (rc)
			return rc > 0 ? -rc : -EIO;
		if (!g)
			return -ENOENT;
		*id = (uint32_t)g->gr_gid;
		return 0;
	} else {
		struct passwd pw, *u = NULL;

		rc = getpwnam_r(text, &pw, buf, sizeof(buf), &u);
		if (rc)
			return rc > 0 ? -rc : -EIO;
		if (!u)
			return -ENOENT;
		*id = (uint32_t)u->pw_uid;
		return 0;
	}
}

static char *resolve_path(const char *text, const char *dir)
{
	char *p;

	if (text[0] == '/' || !dir || !*dir)
		return strdup(text);
	if (asprintf(&p, "%s/%s", dir, text) < 0)
		return NULL;
	return p;
}

int gw_opt_set(const struct gw_opt_desc *d, const char *text, const char *dir, void *base,
	       char *err, size_t errlen)
{
	void *field = (char *)base + d->offset;
	uint64_t v, lo = d->min, hi = d->max;
	bool b;
	int rc;

	switch (d->type) {
	case GW_OPT_STR:
	case GW_OPT_PATH:
		if (!*text) {
			gw_seterr(err, errlen, "'%s' must not be empty", d->key);
			return -1;
		}
		free(*(char **)field);
		*(char **)field = d->type == GW_OPT_PATH ? resolve_path(text, dir) : strdup(text);
		return 0;
	case GW_OPT_ENUM:
		for (const char *const *c = d->choices; c && *c; c++) {
			if (strcmp(*c, text) == 0) {
				free(*(char **)field);
				*(char **)field = strdup(text);
				return 0;
			}
		}
		{
			char list[256] = "";
			size_t n = 0;

			for (const char *const *c = d->choices; c && *c; c++)
				n += (size_t)snprintf(list + n,
						      n < sizeof(list) ? sizeof(list) - n : 0,
						      "%s%s", n ? ", " : "", *c);
			gw_seterr(err, errlen, "'%s' must be one of: %s (got '%s')", d->key, list,
				  text);
		}
		return -1;
	case GW_OPT_HOSTPORT: {
		char *h, *p;

		rc = gw_split_hostport(text, &h, &p);
		if (rc) {
			gw_seterr(err, errlen, "'%s' must be %s (got '%s')", d->key,
				  gw_opt_type_hint(d), text);
			return -1;
		}
		free(h);
		free(p);
		free(*(char **)field);
		*(char **)field = strdup(text);
		return 0;
	}
	case GW_OPT_BOOL:
		if (gw_parse_bool(text, &b)) {
			gw_seterr(err, errlen, "'%s' must be true or false (got '%s')", d->key,
				  text);
			return -1;
		}
		*(bool *)field = b;
		return 0;
	case GW_OPT_U32:
		if (!hi)
			hi = UINT32_MAX;
		rc = gw_parse_u64(text, &v);
		if (rc || v < lo || v > hi) {
			gw_seterr(err, errlen,
				  "'%s' must be a whole number from %llu to %llu (got '%s')",
				  d->key, (unsigned long long)lo, (unsigned long long)hi, text);
			return -1;
		}
		*(uint32_t *)field = (uint32_t)v;
		return 0;
	case GW_OPT_MODE: {
		char *end;
		const char *t = text;

		if (t[0] == '0' && (t[1] == 'o' || t[1] == 'O'))
			t += 2;
		errno = 0;
		v = strtoull(t, &end, 8);
		if (!*t || *end || errno || v > 07777) {
			gw_seterr(err, errlen, "'%s' must be %s (got '%s')", d->key,
				  gw_opt_type_hint(d), text);
			return -1;
		}
		*(uint32_t *)field = (uint32_t)v;
		return 0;
	}
	case GW_OPT_USER:
	case GW_OPT_GROUP: {
		uint32_t id = 0;
		const char *what = d->type == GW_OPT_GROUP ? "group" : "user";

		rc = resolve_id(text, d->type == GW_OPT_GROUP, &id);
		if (rc == -ENOENT) {
			gw_seterr(err, errlen,
				  "'%s': no %s '%s' on this host (give a %s name or a number)",
				  d->key, what, text, what);
			return -1;
		}
		if (rc) {
			gw_seterr(err, errlen, "'%s' must be %s (got '%s'%s%s)", d->key,
				  gw_opt_type_hint(d), text, rc == -EINVAL ? "" : ": ",
				  rc == -EINVAL ? "" : strerror(-rc));
			return -1;
		}
		*(uint32_t *)field = id;
		return 0;
	}
	case GW_OPT_SIZE: {
		char a[256], c[32];

		if (!hi)
			hi = UINT64_MAX;
		rc = gw_parse_size(text, &v);
		if (rc == -ERANGE) {
			gw_seterr(err, errlen, "'%s': size %s is too large", d->key, text);
			return -1;
		}
		if (rc) {
			gw_seterr(err, errlen, "'%s': bad size '%s': %s", d->key, text,
				  gw_size_advice(text, a, sizeof(a)));
			return -1;
		}
		if (v < lo || v > hi) {
			gw_seterr(err, errlen, "'%s': size %s is out of range (%s to %s)", d->key,
				  text, gw_fmt_size(lo, a, sizeof(a)),
				  gw_fmt_size(hi, c, sizeof(c)));
			return -1;
		}
		*(uint64_t *)field = v;
		return 0;
	}
	}
	gw_seterr(err, errlen, "'%s': unsupported option type", d->key);
	return -1;
}

void gw_opt_defaults(const struct gw_opt_schema *s, void *base)
{
	for (size_t i = 0; i < s->nopts; i++) {
		const struct gw_opt_desc *d = &s->opts[i];
		void *field = (char *)base + d->offset;

		switch (d->type) {
		case GW_OPT_BOOL:
			*(bool *)field = d->def != 0;
			break;
		case GW_OPT_U32:
		case GW_OPT_MODE:
			*(uint32_t *)field = (uint32_t)d->def;
			break;
		case GW_OPT_SIZE:
			*(uint64_t *)field = d->def;
			break;
		case GW_OPT_USER:
		case GW_OPT_GROUP:
			*(uint32_t *)field = GW_ID_UNSET;
			break;
		default:
			break;
		}
	}
}

void gw_opt_free(const struct gw_opt_schema *s, void *base)
{
	if (!base)
		return;
	for (size_t i = 0; i < s->nopts; i++) {
		const struct gw_opt_desc *d = &s->opts[i];

		switch (d->type) {
		case GW_OPT_STR:
		case GW_OPT_PATH:
		case GW_OPT_HOSTPORT:
		case GW_OPT_ENUM:
			free(*(char **)((char *)base + d->offset));
			*(char **)((char *)base + d->offset) = NULL;
			break;
		default:
			break;
		}
	}
}

static bool str_eq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

bool gw_opt_equal(const struct gw_opt_schema *s, const void *a, const void *b)
{
	for (size_t i = 0; i < s->nopts; i++) {
		const struct gw_opt_desc *d = &s->opts[i];
		const void *fa = (const char *)a + d->offset, *fb = (const char *)b + d->offset;

		switch (d->type) {
		case GW_OPT_STR:
		case GW_OPT_PATH:
		case GW_OPT_HOSTPORT:
		case GW_OPT_ENUM:
			if (!str_eq(*(char *const *)fa, *(char *const *)fb))
				return false;
			break;
		case GW_OPT_BOOL:
			if (*(const bool *)fa != *(const bool *)fb)
				return false;
			break;
		case GW_OPT_U32:
		case GW_OPT_MODE:
		case GW_OPT_USER:
		case GW_OPT_GROUP:
			if (*(const uint32_t *)fa != *(const uint32_t *)fb)
				return false;
			break;
		case GW_OPT_SIZE:
			if (*(const uint64_t *)fa != *(const uint64_t *)fb)
				return false;
			break;
		}
	}
	return true;
}

/* Append text to a growing string; false when out of memory. */
static bool cat(char **out, size_t *len, const char *fmt, ...)
{
	va_list ap;
	char *s, *n;
	int rc;

	va_start(ap, fmt);
	rc = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return false;
	n = realloc(*out, *len + (size_t)rc + 1);
	if (!n) {
		free(s);
		return false;
	}
	memcpy(n + *len, s, (size_t)rc + 1);
	*out = n;
	*len += (size_t)rc;
	free(s);
	return true;
}

/* A YAML double-quoted scalar (JSON's escapes, which YAML reads the same). */
static bool cat_quoted(char **out, size_t *len, const char *s)
{
	if (!cat(out, len, "\""))
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		bool ok;

		if (c == '"' || c == '\\')
			ok = cat(out, len, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			ok = cat(out, len, "\\x%02x", c);
		else
			ok = cat(out, len, "%c", c);
		if (!ok)
			return false;
	}
	return cat(out, len, "\"");
}

char *gw_opt_dump(const struct gw_opt_schema *s, const void *base)
{
	char *out = strdup("");
	size_t len = 0;
	bool first = true, ok = out != NULL;

	for (size_t i = 0; ok && i < s->nopts; i++) {
		const struct gw_opt_desc *d = &s->opts[i];
		const void *f = (const char *)base + d->offset;
		const char *sep = first ? "" : ", ";

		switch (d->type) {
		case GW_OPT_STR:
		case GW_OPT_PATH:
		case GW_OPT_HOSTPORT:
		case GW_OPT_ENUM:
			if (!*(char *const *)f)
				continue;
			ok = cat(&out, &len, "%s%s: ", sep, d->key) &&
			     cat_quoted(&out, &len, *(char *const *)f);
			break;
		case GW_OPT_BOOL:
			if (*(const bool *)f == (d->def != 0))
				continue;
			ok = cat(&out, &len, "%s%s: %s", sep, d->key,
				 *(const bool *)f ? "true" : "false");
			break;
		case GW_OPT_U32:
			if (*(const uint32_t *)f == (uint32_t)d->def)
				continue;
			ok = cat(&out, &len, "%s%s: %u", sep, d->key, *(const uint32_t *)f);
			break;
		case GW_OPT_MODE:
			if (*(const uint32_t *)f == (uint32_t)d->def)
				continue;
			ok = cat(&out, &len, "%s%s: \"0%o\"", sep, d->key, *(const uint32_t *)f);
			break;
		case GW_OPT_USER:
		case GW_OPT_GROUP:
			if (*(const uint32_t *)f == GW_ID_UNSET)
				continue;
			ok = cat(&out, &len, "%s%s: %u", sep, d->key, *(const uint32_t *)f);
			break;
		case GW_OPT_SIZE:
			if (*(const uint64_t *)f == d->def)
				continue;
			ok = cat(&out, &len, "%s%s: %llu", sep, d->key,
				 (unsigned long long)*(const uint64_t *)f);
			break;
		}
		first = false;
	}
	if (!ok) {
		free(out);
		return NULL;
	}
	return out;
}
