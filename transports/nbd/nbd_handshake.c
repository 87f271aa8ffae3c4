/*
 * NBD fixed-newstyle negotiation: client flags, then options until
 * EXPORT_NAME, GO or ABORT. Runs on the connection's worker.
 *
 * Every length is checked before use; option data is capped (NBD_OPT_MAX)
 * and anything larger is read and thrown away, then refused, so a hostile
 * client can make the server neither allocate nor stall.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/nbd/nbd_conn.h"
#include "transports/nbd/nbd_proto.h"

/* Largest option data we buffer; bigger ones are discarded and refused. */
#define NBD_OPT_MAX      (32u * 1024)
/* Options taken in one go before other clients get a turn. */
#define HS_OPTS_PER_TURN 32
/* Options per connection before we give up on the client. */
#define NBD_MAX_OPTS     4096

int nbd_hs_greet(struct nbd_conn *c)
{
	uint8_t g[18];

	nbd_put64(g, NBD_MAGIC);
	nbd_put64(g + 8, NBD_IHAVEOPT);
	nbd_put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	return nbd_out_copy(c, g, sizeof(g));
}

int nbd_opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data, size_t len)
{
	uint8_t *b = malloc(NBD_REP_HDR_SIZE + len);

	if (!b)
		return -ENOMEM;
	nbd_put64(b, NBD_REP_MAGIC);
	nbd_put32(b + 8, opt);
	nbd_put32(b + 12, type);
	nbd_put32(b + 16, (uint32_t)len);
	if (len)
		memcpy(b + NBD_REP_HDR_SIZE, data, len);
	return nbd_out_own(c, b, NBD_REP_HDR_SIZE + len);
}

int nbd_opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	return nbd_opt_reply(c, opt, type, msg, (size_t)n);
}

/* Lines a client can cause: rate-limited, so no client can fill the disk. */
static struct gw_ratelimit refused_rl = GW_RATELIMIT_DEFAULT;
static struct gw_ratelimit hs_rl = GW_RATELIMIT_DEFAULT;

/* A client's bytes as a log-safe string: at most 64 printable characters. */
static const char *printable(char out[80], const char *in, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n < 64; i++)
		out[n++] = (in[i] >= 0x20 && in[i] < 0x7f && in[i] != '\'') ? in[i] : '?';
	if (len > 64) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
	return out;
}

static void log_refused(struct nbd_conn *c, const char *name, size_t len, const char *how)
{
	char p[80];

	gw_info_rl(&refused_rl, "nbd: %s: client %s asked for unknown export '%s' (%s): refused",
		   c->lis->key + (c->lis->is_unix ? 5 : 4), c->peer, printable(p, name, len), how);
}

/* ---- INFO / GO ---- */

static int send_info(struct nbd_conn *c, uint32_t opt, struct nbd_exp *x, const uint16_t *req,
		     unsigned nreq)
{
	uint8_t b[14];
	bool want_name = false, want_desc = false;
	struct gw_export *e = x->exp;
	int rc;

	for (unsigned i = 0; i < nreq; i++) {
		if (req[i] == NBD_INFO_NAME)
			want_name = true;
		else if (req[i] == NBD_INFO_DESCRIPTION)
			want_desc = true;
	}
	nbd_put16(b, NBD_INFO_EXPORT);
	nbd_put64(b + 2, e->size);
	nbd_put16(b + 10, nbd_tflags(x, c->structured));
	rc = nbd_opt_reply(c, opt, NBD_REP_INFO, b, 12);
	/* Block sizes always: clients must honour them only when they asked, the rest may. */
	nbd_put16(b, NBD_INFO_BLOCK_SIZE);
	nbd_put32(b + 2, e->min_block);
	nbd_put32(b + 6, e->pref_block);
	nbd_put32(b + 10, e->max_xfer);
	rc = rc ? rc : nbd_opt_reply(c, opt, NBD_REP_INFO, b, 14);
	if (!rc && want_name) {
		size_t n = strlen(x->name);
		uint8_t *p = malloc(2 + n);

		if (!p)
			return -ENOMEM;
		nbd_put16(p, NBD_INFO_NAME);
		memcpy(p + 2, x->name, n);
		rc = nbd_opt_reply(c, opt, NBD_REP_INFO, p, 2 + n);
		free(p);
	}
	if (!rc && want_desc && x->o->description) {
		size_t n = GW_MIN(strlen(x->o->description), (size_t)NBD_MAX_STRING);
		uint8_t *p = malloc(2 + n);

		if (!p)
			return -ENOMEM;
		nbd_put16(p, NBD_INFO_DESCRIPTION);
		memcpy(p + 2, x->o->description, n);
		rc = nbd_opt_reply(c, opt, NBD_REP_INFO, p, 2 + n);
		free(p);
	}
	return rc;
}

struct list_names {
	char buf[1024];
	size_t used;
};

static void collect_name(void *arg, struct nbd_exp *x)
{
	struct list_names *l = arg;

	if (l->used < sizeof(l->buf))
		l->used += (size_t)snprintf(l->buf + l->used, sizeof(l->buf) - l->used, "%s'%s'",
					    l->used ? ", " : "", x->name);
}

static int unknown_export(struct nbd_conn *c, uint32_t opt, const char *name, size_t len)
{
	struct list_names l = { .used = 0 };

	log_refused(c, name, len,
		    opt == NBD_OPT_GO     ? "GO"
		    : opt == NBD_OPT_INFO ? "INFO"
					  : "META_CONTEXT");
	nbd_listener_each(c->lis, collect_name, &l);
	return nbd_opt_error(c, opt, NBD_REP_ERR_UNKNOWN,
			     "no export named '%.*s' here (exports: %s)", (int)GW_MIN(len, 256),
			     name, l.used ? l.buf : "none");
}

static int opt_info_go(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
	uint32_t namelen;
	uint16_t nreq;
	uint16_t req[64];
	struct nbd_exp *x;
	const char *name;

	if (len < 6)
		return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID, "option data too short");
	namelen = nbd_get32(d);
	if (namelen > len - 6 || namelen > NBD_MAX_STRING)
		return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
				     "export name length %u does not fit", namelen);
	name = (const char *)d + 4;
	nreq = nbd_get16(d + 4 + namelen);
	if ((uint64_t)4 + namelen + 2 + 2u * nreq != len)
		return nbd_opt_error(
			c, opt, NBD_REP_ERR_INVALID,
			"information request count %u does not match the option length", nreq);
	for (unsigned i = 0; i < nreq && i < GW_ARRAY_SIZE(req); i++)
		req[i] = nbd_get16(d + 6 + namelen + 2 * i);
	if (memchr(name, '\0', namelen))
		return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
				     "export name contains a NUL byte");

	if (opt == NBD_OPT_INFO) {
		int rc;

		x = nbd_listener_get(c->lis, name, namelen);
		if (!x)
			return unknown_export(c, opt, name, namelen);
		rc = send_info(c, opt, x, req, GW_MIN(nreq, GW_ARRAY_SIZE(req)));
		nbd_exp_unbind(x);
		if (rc < 0)
			return -1;
		return nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
	}
	x = nbd_listener_get(c->lis, name, namelen);
	if (!x)
		return unknown_export(c, opt, name, namelen);
	/* A metadata selection counts only for the export finally chosen. */
	if (c->meta && (!c->meta_name || strcmp(c->meta_name, x->name) != 0))
		c->meta = 0;
	if (send_info(c, opt, x, req, GW_MIN(nreq, GW_ARRAY_SIZE(req))) < 0 ||
	    nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0) < 0) {
		nbd_exp_unbind(x);
		return -1;
	}
	return nbd_conn_enter_tx(c, x);
}

static int opt_export_name(struct nbd_conn *c, const uint8_t *d, uint32_t len)
{
	uint8_t b[10 + 124];
	struct nbd_exp *x;

	x = nbd_listener_get(c->lis, (const char *)d, len);
	if (!x) {
		log_refused(c, (const char *)d, len, "EXPORT_NAME, closing");
		return -1; /* the protocol has no way to say no here */
	}
	c->meta = 0; /* requires GO per the spec; be strict */
	memset(b, 0, sizeof(b));
	nbd_put64(b, x->exp->size);
	nbd_put16(b + 8, nbd_tflags(x, c->structured));
	if (nbd_out_copy(c, b, c->no_zeroes ? 10 : sizeof(b)) < 0) {
		nbd_exp_unbind(x);
		return -1;
	}
	return nbd_conn_enter_tx(c, x);
}

/* ---- LIST ---- */

struct list_ctx {
	struct nbd_conn *c;
	int rc;
};

static void list_one(void *arg, struct nbd_exp *x)
{
	struct list_ctx *l = arg;
	size_t n = strlen(x->name);
	size_t dn = x->o->description ? GW_MIN(strlen(x->o->description), (size_t)NBD_MAX_STRING)
				      : 0;
	uint8_t *p = malloc(4 + n + dn);

	if (!p) {
		l->rc = -ENOMEM;
		return;
	}
	nbd_put32(p, (uint32_t)n);
	memcpy(p + 4, x->name, n);
	if (dn)
		memcpy(p + 4 + n, x->o->description, dn);
	if (nbd_opt_reply(l->c, NBD_OPT_LIST, NBD_REP_SERVER, p, 4 + n + dn) < 0)
		l->rc = -ENOMEM;
	free(p);
}

static int opt_list(struct nbd_conn *c, uint32_t len)
{
	struct list_ctx l = { .c = c, .rc = 0 };

	if (len)
		return nbd_opt_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "LIST takes no data");
	nbd_listener_each(c->lis, list_one, &l);
	if (l.rc < 0)
		return -1;
	return nbd_opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* ---- META_CONTEXT ---- */

static int meta_select(struct nbd_conn *c, uint32_t opt, struct nbd_exp *x, const uint8_t *d,
		       uint32_t pos, uint32_t nq);

static int opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
	uint32_t namelen, nq, pos;
	bool set = opt == NBD_OPT_SET_META_CONTEXT;
	struct nbd_exp *x;
	const char *name;
	int rc;

	if (set) {
		/* Replaces the selection even when it fails. */
		c->meta = 0;
		free(c->meta_name);
		c->meta_name = NULL;
	}
	if (set && !c->structured)
		return nbd_opt_error(
			c, opt, NBD_REP_ERR_INVALID,
			"negotiate structured replies before selecting metadata contexts");
	if (len < 8)
		return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID, "option data too short");
	namelen = nbd_get32(d);
	if (namelen > len - 8 || namelen > NBD_MAX_STRING)
		return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
				     "export name length %u does not fit", namelen);
	name = (const char *)d + 4;
	nq = nbd_get32(d + 4 + namelen);
	pos = 8 + namelen;
	/* Validate the whole query list before answering anything. */
	for (uint32_t i = 0, p = pos; i < nq; i++) {
		uint32_t ql;

		if (len - p < 4)
			return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
					     "query %u runs past the option", i + 1);
		ql = nbd_get32(d + p);
		if (ql > len - p - 4 || ql > NBD_MAX_STRING)
			return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
					     "query %u runs past the option", i + 1);
		p += 4 + ql;
		if (i + 1 == nq && p != len)
			return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
					     "trailing bytes after the queries");
	}
	if (nq == 0 && pos != len)
		return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
				     "trailing bytes after the queries");
	x = nbd_listener_get(c->lis, name, namelen);
	if (!x)
		return unknown_export(c, opt, name, namelen);
	rc = meta_select(c, opt, x, d, pos, nq);
	nbd_exp_unbind(x);
	return rc;
}

/* A context's name: qemu:dirty-bitmap: and a checkpoint name (at most 64). */
#define META_NAME_MAX 96

/* The contexts export x offers, by id; "" where it offers none. Backup exports
 * (a change map) add qemu:dirty-bitmap:SINCE and qemu:allocation-depth. */
static void meta_names(const struct nbd_exp *x, char names[][META_NAME_MAX])
{
	const struct gw_change_map *m = x->exp->changes;

	snprintf(names[NBD_META_ALLOCATION_ID], sizeof(names[0]), "%s", NBD_META_ALLOCATION);
	names[NBD_META_DIRTY_ID][0] = names[NBD_META_DEPTH_ID][0] = '\0';
	if (!m || !m->since)
		return; /* plain exports: one layer, nothing tracked */
	snprintf(names[NBD_META_DIRTY_ID], sizeof(names[0]), "%s%s", NBD_META_DIRTY_PREFIX,
		 m->since);
	snprintf(names[NBD_META_DEPTH_ID], sizeof(names[0]), "%s", NBD_META_DEPTH);
}

/*
 * Which offered contexts a query names: SET takes exact names only; LIST
 * also takes a namespace ("base:", "qemu:") or a leaf prefix
 * ("qemu:dirty-bitmap:") and lists what it covers.
 */
static unsigned meta_match(char names[][META_NAME_MAX], bool set, const char *q, uint32_t ql)
{
	unsigned hit = 0;

	for (unsigned id = NBD_META_ALLOCATION_ID; id <= NBD_META_DEPTH_ID; id++) {
		size_t n = strlen(names[id]);

		if (!n)
			continue;
		if (ql == n && memcmp(q, names[id], n) == 0)
			hit |= 1u << id;
		else if (!set && ql < n && ql && q[ql - 1] == ':' && memcmp(q, names[id], ql) == 0)
			hit |= 1u << id;
	}
	return hit;
}

static int meta_select(struct nbd_conn *c, uint32_t opt, struct nbd_exp *x, const uint8_t *d,
		       uint32_t pos, uint32_t nq)
{
	char names[NBD_META_DEPTH_ID + 1][META_NAME_MAX];
	bool set = opt == NBD_OPT_SET_META_CONTEXT;
	unsigned match = 0;

	meta_names(x, names);
	if (nq == 0) {
		/* LIST with no query lists everything; SET with none selects nothing */
		for (unsigned id = NBD_META_ALLOCATION_ID; !set && id <= NBD_META_DEPTH_ID; id++)
			match |= names[id][0] ? 1u << id : 0;
	} else {
		for (uint32_t i = 0; i < nq; i++) {
			uint32_t ql = nbd_get32(d + pos);

			/* other namespaces and leaves: ignored, as the spec requires */
			match |= meta_match(names, set, (const char *)d + pos + 4, ql);
			pos += 4 + ql;
		}
	}
	for (unsigned id = NBD_META_ALLOCATION_ID; id <= NBD_META_DEPTH_ID; id++) {
		size_t n = strlen(names[id]);
		uint8_t b[4 + sizeof(names[0])];

		if (!(match & (1u << id)))
			continue;
		nbd_put32(b, set ? id : 0);
		memcpy(b + 4, names[id], n);
		if (nbd_opt_reply(c, opt, NBD_REP_META_CONTEXT, b, (uint32_t)(4 + n)) < 0)
			return -1;
	}
	if (set && match) {
		c->meta = match;
		c->meta_name = strdup(x->name);
		if (!c->meta_name)
			return -1;
	}
	return nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* ---- dispatch ---- */

/* Returns 0 to continue, 1 when transmission began or the client aborted, -1 to close. */
static int handle_option(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
	if (!c->fixed && opt != NBD_OPT_EXPORT_NAME)
		return -1; /* old newstyle: nothing else exists, and no way to say so */
	switch (opt) {
	case NBD_OPT_EXPORT_NAME:
		if (memchr(d, '\0', len))
			return -1;
		return opt_export_name(c, d, len) < 0 ? -1 : 1;
	case NBD_OPT_GO:
		if (opt_info_go(c, opt, d, len) < 0)
			return -1;
		return c->state == CS_TX ? 1 : 0;
	case NBD_OPT_INFO:
		return opt_info_go(c, opt, d, len) < 0 ? -1 : 0;
	case NBD_OPT_ABORT:
		nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
		c->state = CS_CLOSING;
		return 1;
	case NBD_OPT_LIST:
		return opt_list(c, len) < 0 ? -1 : 0;
	case NBD_OPT_STRUCTURED_REPLY:
		if (len)
			return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
					     "STRUCTURED_REPLY takes no data") < 0
				       ? -1
				       : 0;
		c->structured = true;
		return nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0) < 0 ? -1 : 0;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		return opt_meta(c, opt, d, len) < 0 ? -1 : 0;
	case NBD_OPT_STARTTLS:
		return nbd_opt_error(c, opt, NBD_REP_ERR_UNSUP,
				     "TLS is not supported by this server") < 0
			       ? -1
			       : 0;
	case NBD_OPT_EXTENDED_HEADERS:
	default:
		return nbd_opt_error(c, opt, NBD_REP_ERR_UNSUP, "option %u is not supported", opt) <
				       0
			       ? -1
			       : 0;
	}
}

int nbd_hs_process(struct nbd_conn *c)
{
	unsigned taken = 0;

	while (c->state == CS_HS_FLAGS || c->state == CS_HS_OPT) {
		size_t avail = c->iend - c->ipos;
		const uint8_t *p = c->ibuf + c->ipos;
		uint32_t opt, len;
		int rc;

		if (c->skip) {
			size_t n = (size_t)GW_MIN((uint64_t)avail, c->skip);

			c->ipos += n;
			c->skip -= n;
			if (c->skip)
				return 0;
			/* The oversized option is gone; now refuse it. */
			if (nbd_opt_error(c, c->skip_opt,
					  c->fixed ? NBD_REP_ERR_TOO_BIG : NBD_REP_ERR_UNSUP,
					  "option data larger than %u bytes", NBD_OPT_MAX) < 0)
				return -1;
			nbd_out_kick(c);
			continue;
		}
		if (c->state == CS_HS_FLAGS) {
			uint32_t flags;

			if (avail < 4)
				return 0;
			flags = nbd_get32(p);
			c->ipos += 4;
			if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
				gw_debug("nbd: client sent unknown flags 0x%x: closing", flags);
				return -1;
			}
			c->fixed = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
			c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
			c->state = CS_HS_OPT;
			continue;
		}
		if (avail < NBD_OPT_HDR_SIZE)
			return 0;
		/* Replies nobody reads: stop taking options until they drain. */
		nbd_conn_pause_if_full(c);
		if (c->paused)
			return 0;
		/* A client sending options by the thousand gets its turn, not the worker. */
		if (taken++ == HS_OPTS_PER_TURN) {
			nbd_conn_wait_turn(c);
			return 0;
		}
		if (nbd_get64(p) != NBD_IHAVEOPT) {
			gw_debug("nbd: bad option magic: closing");
			return -1;
		}
		opt = nbd_get32(p + 8);
		len = nbd_get32(p + 12);
		/* Counted once, when taken: not each time a piece of it arrives. */
		if (len <= NBD_OPT_MAX && avail < NBD_OPT_HDR_SIZE + (size_t)len)
			return 0; /* the buffer always has room for the largest option we accept */
		if (++c->nopts > NBD_MAX_OPTS) {
			gw_info_rl(&hs_rl, "nbd: client %s sent more than %u options: closing",
				   c->peer, NBD_MAX_OPTS);
			return -1;
		}
		if (len > NBD_OPT_MAX) {
			if (opt == NBD_OPT_EXPORT_NAME)
				return -1;
			c->ipos += NBD_OPT_HDR_SIZE;
			c->skip = len;
			c->skip_opt = opt;
			continue;
		}
		c->ipos += NBD_OPT_HDR_SIZE + len;
		rc = handle_option(c, opt, p + NBD_OPT_HDR_SIZE, len);
		nbd_out_kick(c);
		if (rc < 0)
			return -1;
		if (rc > 0)
			return 0;
	}
	return 0;
}
