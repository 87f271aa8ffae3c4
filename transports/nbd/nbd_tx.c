/*
 * The NBD transmission phase: decoding requests, handing them to the
 * export, and building the replies (simple, or structured chunks laid out
 * by the packed structs of nbd_proto.h). Connection I/O, output batching
 * and lifecycle are nbd_conn.c's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/nbd/nbd_conn.h"
#include "transports/nbd/nbd_proto.h"

/* Extents one BLOCK_STATUS reply carries at most. */
#define MAX_EXTENTS 1024

static void put_chunk(struct nbd_chunk *h, uint16_t flags, uint16_t type, uint64_t cookie,
		      uint32_t len)
{
	h->magic = htobe32(NBD_STRUCTURED_MAGIC);
	h->flags = htobe16(flags);
	h->type = htobe16(type);
	h->cookie = htobe64(cookie);
	h->length = htobe32(len);
}

/* Where a successful read's data is: the backend's memory (borrowed) or our buffer. */
static const void *read_data(const struct nbd_req *r)
{
	return (r->io.rflags & GW_IO_R_REF) ? r->io.ref : r->buf;
}

/* Queue the reply for r; r is released when it has been sent. */
static void reply(struct nbd_req *r, int result)
{
	struct nbd_conn *c = r->c;
	uint32_t err = nbd_errno(result);
	int rc;

	if (c->state == CS_DEAD) {
		nbd_req_put(r);
		return;
	}
	if (c->structured && (r->cmd == NBD_CMD_READ || r->cmd == NBD_CMD_BLOCK_STATUS)) {
		if (err) {
			struct nbd_chunk_error *e = &r->hdr.error;

			put_chunk(&e->h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie,
				  sizeof(*e) - sizeof(e->h));
			e->error = htobe32(err);
			e->msglen = 0;
			rc = nbd_seg_push(c, e, sizeof(*e), r, NULL);
		} else if (r->cmd == NBD_CMD_BLOCK_STATUS) {
			rc = nbd_seg_push(c, r->buf, r->len, r, NULL); /* built by the caller */
		} else if (r->len == 0) {
			put_chunk(&r->hdr.chunk, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
				  r->cookie, 0);
			rc = nbd_seg_push(c, &r->hdr.chunk, sizeof(r->hdr.chunk), r, NULL);
		} else if (r->io.rflags & GW_IO_R_HOLE) {
			struct nbd_chunk_offset_hole *h = &r->hdr.hole;

			put_chunk(&h->h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie,
				  sizeof(*h) - sizeof(h->h));
			h->offset = htobe64(r->offset);
			h->length = htobe32(r->len);
			rc = nbd_seg_push(c, h, sizeof(*h), r, NULL);
		} else {
			struct nbd_chunk_offset_data *d = &r->hdr.data;

			put_chunk(&d->h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie,
				  sizeof(*d) - sizeof(d->h) + r->len);
			d->offset = htobe64(r->offset);
			rc = nbd_seg_push(c, d, sizeof(*d), r, NULL);
			if (!rc)
				rc = nbd_seg_push(c, read_data(r), r->len, r, NULL);
		}
	} else {
		struct nbd_simple_reply *h = &r->hdr.simple;

		h->magic = htobe32(NBD_SIMPLE_MAGIC);
		h->error = htobe32(err);
		h->cookie = htobe64(r->cookie);
		rc = nbd_seg_push(c, h, sizeof(*h), r, NULL);
		if (!rc && !err && r->cmd == NBD_CMD_READ && r->len)
			rc = nbd_seg_push(c, read_data(r), r->len, r, NULL);
	}
	if (rc < 0) {
		/* No memory to queue a reply: the client cannot be answered correctly. */
		if (!r->segs)
			nbd_req_put(r);
		nbd_conn_kill(c);
		return;
	}
	if (!r->segs)
		nbd_req_put(r);
	nbd_out_kick(c);
}

static void finish(struct nbd_req *r, int result)
{
	struct nbd_conn *c = r->c;

	c->inflight--;
	c->inflight_bytes -= r->buflen;
	reply(r, result);
	if (c->state == CS_DEAD || c->state == CS_CLOSING)
		nbd_conn_maybe_finish(c);
	else
		nbd_conn_maybe_resume(c);
}

static void io_done(struct gw_io *io)
{
	struct nbd_req *r = container_of(io, struct nbd_req, io);

	finish(r, io->result);
}

static void submit(struct nbd_req *r, uint8_t op, uint32_t gwflags)
{
	struct nbd_conn *c = r->c;

	r->io.op = op;
	r->io.flags = gwflags;
	r->io.offset = r->offset;
	r->io.len = r->len;
	r->io.done = io_done;
	if (r->iov.iov_len) {
		r->io.iov = &r->iov;
		r->io.iovcnt = 1;
	}
	c->inflight++;
	c->inflight_bytes += r->buflen;
	if (gw_export_submit(c->exp, &c->w->ioq, &r->io))
		finish(r, r->io.result);
}

/* Answer a request that never reaches the backend. */
static void reply_now(struct nbd_conn *c, uint16_t cmd, uint64_t cookie, uint64_t offset, int err)
{
	struct nbd_req *r = nbd_req_get(c);

	if (!r) {
		nbd_conn_kill(c);
		return;
	}
	r->cmd = cmd;
	r->cookie = cookie;
	r->offset = offset;
	if (c->exp)
		gw_export_count_error(c->exp, &c->w->ioq);
	reply(r, err);
}

/*
 * A BLOCK_STATUS reply is one chunk per selected context, in the request's
 * buffer: first room for every chunk at its largest (cap descriptors each,
 * in context id order), then the backend's extents. Once filled, the
 * chunks are moved together and the last one carries FLAG_DONE.
 */
#define CTX_MAX 3 /* NBD_META_ALLOCATION_ID .. NBD_META_DEPTH_ID */

static size_t chunk_room(uint32_t cap)
{
	return sizeof(struct nbd_chunk_block_status) + sizeof(struct nbd_block_descriptor) * cap;
}

static size_t ext_area(uint32_t cap)
{
	size_t off = chunk_room(cap) * CTX_MAX;

	return (off + _Alignof(struct gw_extent) - 1) & ~(size_t)(_Alignof(struct gw_extent) - 1);
}

static uint32_t req_cap(const struct nbd_req *r)
{
	return (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_EXTENTS;
}

static struct nbd_block_descriptor *ctx_descs(struct nbd_req *r, unsigned id)
{
	return (struct nbd_block_descriptor *)((char *)r->buf + chunk_room(req_cap(r)) * (id - 1) +
					       sizeof(struct nbd_chunk_block_status));
}

/* base:allocation from the backend's extents; returns how many descriptors. */
static size_t alloc_descs(struct nbd_req *r)
{
	struct gw_extents *e = &r->exts;
	struct nbd_block_descriptor *d = ctx_descs(r, NBD_META_ALLOCATION_ID);
	uint64_t left = r->len;
	size_t n = 0;

	for (size_t i = 0; i < e->n && left; i++) {
		uint64_t l = GW_MIN(e->v[i].len, left);
		uint32_t st = 0;

		if (e->v[i].flags & GW_EXT_HOLE)
			st |= NBD_STATE_HOLE;
		if (e->v[i].flags & GW_EXT_ZERO)
			st |= NBD_STATE_ZERO;
		d[n].length = htobe32((uint32_t)l);
		d[n++].status = htobe32(st);
		left -= l;
		if (l < e->v[i].len)
			break;
	}
	return n;
}

/*
 * qemu:dirty-bitmap (1 where changed) and qemu:allocation-depth (a layer
 * view: 1 where changed, 0 where not; otherwise the image is one layer,
 * depth 1 throughout), from the export's change map.
 */
static size_t map_descs(struct nbd_req *r, unsigned id)
{
	struct gw_export *e = r->c->exp;
	struct nbd_block_descriptor *d = ctx_descs(r, id);
	uint32_t cap = req_cap(r);
	uint64_t off = r->offset, end = r->offset + r->len;
	size_t n = 0;

	if (id == NBD_META_DEPTH_ID && !(e->changes && e->changes->only_changed)) {
		d[0].length = htobe32(r->len);
		d[0].status = htobe32(1);
		return 1;
	}
	while (off < end && n < cap) {
		bool changed;
		uint64_t run = gw_export_changed_run(e, off, end - off, &changed);

		d[n].length = htobe32((uint32_t)run);
		d[n++].status =
			htobe32(changed ? (id == NBD_META_DIRTY_ID ? NBD_STATE_DIRTY : 1) : 0);
		off += run;
	}
	return n;
}

/* Every selected context answered: lay out the chunks one after another, and send. */
static void block_status_done(struct nbd_req *r, int rc)
{
	struct nbd_conn *c = r->c;
	char *out = r->buf;
	unsigned last = 0;

	if (rc < 0) {
		finish(r, rc);
		return;
	}
	for (unsigned id = 1; id <= CTX_MAX; id++)
		if (c->meta & (1u << id))
			last = id;
	for (unsigned id = 1; id <= CTX_MAX; id++) {
		struct nbd_chunk_block_status *bs;
		size_t n;
		uint32_t body;

		if (!(c->meta & (1u << id)))
			continue;
		n = id == NBD_META_ALLOCATION_ID ? alloc_descs(r) : map_descs(r, id);
		bs = (struct nbd_chunk_block_status *)out;
		/* Chunks only move toward the start: each lands at or before its room. */
		memmove(bs + 1, ctx_descs(r, id), sizeof(struct nbd_block_descriptor) * n);
		body = (uint32_t)(sizeof(*bs) - sizeof(bs->h) +
				  sizeof(struct nbd_block_descriptor) * n);
		put_chunk(&bs->h, id == last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS,
			  r->cookie, body);
		bs->context_id = htobe32(id);
		out += sizeof(bs->h) + body;
	}
	r->len = (uint32_t)(out - (char *)r->buf);
	finish(r, 0);
}

static void ext_done(struct gw_ext_req *x)
{
	struct nbd_req *r = container_of(x, struct nbd_req, ext);

	block_status_done(r, x->result);
}

/*
 * BLOCK_STATUS: base:allocation is asked of the backend like any request
 * (in flight until it answers: a backend whose map is on a network answers
 * later, rbd), the extents landing in the request's own buffer behind the
 * reply they become; the other contexts come from the export's change map.
 */
static void block_status(struct nbd_conn *c, struct nbd_req *r)
{
	uint32_t cap = req_cap(r);
	size_t off = ext_area(cap);

	if (!c->structured || !c->meta || r->len == 0) {
		gw_export_count_error(c->exp, &c->w->ioq);
		reply(r, -EINVAL);
		return;
	}
	if (nbd_req_buf(r, off + sizeof(struct gw_extent) * cap) < 0) {
		reply(r, -ENOMEM);
		return;
	}
	c->inflight++;
	c->inflight_bytes += r->buflen;
	if (!(c->meta & (1u << NBD_META_ALLOCATION_ID))) {
		block_status_done(r, 0);
		return;
	}
	r->exts =
		(struct gw_extents){ .v = (struct gw_extent *)((char *)r->buf + off), .cap = cap };
	r->ext = (struct gw_ext_req){
		.offset = r->offset, .len = r->len, .out = &r->exts, .done = ext_done
	};
	if (gw_export_extents_submit(c->exp, &c->w->ioq, &r->ext))
		block_status_done(r, r->ext.result);
}

static const uint16_t allowed_flags[] = {
	[NBD_CMD_READ] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
	[NBD_CMD_WRITE] = NBD_CMD_FLAG_FUA,
	[NBD_CMD_DISC] = NBD_CMD_FLAG_FUA,
	[NBD_CMD_FLUSH] = NBD_CMD_FLAG_FUA,
	[NBD_CMD_TRIM] = NBD_CMD_FLAG_FUA,
	[NBD_CMD_CACHE] = NBD_CMD_FLAG_FUA,
	[NBD_CMD_WRITE_ZEROES] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
	[NBD_CMD_BLOCK_STATUS] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

/*
 * Refuse a write without reading its payload into memory: the payload is
 * skipped, and only then answered (clients expect no reply to a request
 * they are still sending).
 */
static void refuse_write(struct nbd_conn *c, uint64_t cookie, uint32_t len, int err)
{
	if (!len) {
		reply_now(c, NBD_CMD_WRITE, cookie, 0, err);
		return;
	}
	c->skip = len;
	c->skip_cookie = cookie;
	c->skip_err = err;
}

/* What a request header will cost in buffers: its data (READ, WRITE), else 0. */
static uint32_t request_bytes(const uint8_t *p)
{
	struct nbd_request q;
	uint16_t cmd;

	memcpy(&q, p, sizeof(q));
	cmd = be16toh(q.type);
	return cmd == NBD_CMD_READ || cmd == NBD_CMD_WRITE ? be32toh(q.length) : 0;
}

/* One request header at c->ibuf + c->ipos (28 bytes available). 0, or -1 to close. */
static int tx_request(struct nbd_conn *c)
{
	struct nbd_request q;
	uint16_t flags, cmd;
	uint64_t cookie, offset;
	uint32_t len;
	struct nbd_req *r;
	uint32_t fua;

	memcpy(&q, c->ibuf + c->ipos, sizeof(q));
	flags = be16toh(q.flags);
	cmd = be16toh(q.type);
	cookie = be64toh(q.cookie);
	offset = be64toh(q.offset);
	len = be32toh(q.length);
	gw_worker_note_work(c->w, 1);
	c->sp.turn_reqs++;
	c->last_active = ev_now(c->w->loop);
	if (be32toh(q.magic) != NBD_REQUEST_MAGIC) {
		static struct gw_ratelimit rl = GW_RATELIMIT_DEFAULT;

		gw_info_rl(&rl,
			   "nbd: export '%s': client %s sent bad request magic 0x%08x: closing",
			   c->x->name, c->peer[0] ? c->peer : "(kernel)", be32toh(q.magic));
		return -1;
	}
	c->ipos += NBD_REQUEST_SIZE;

	if (cmd == NBD_CMD_DISC) {
		nbd_conn_close_gracefully(c);
		return 0;
	}
	if (c->shutting) {
		if (cmd == NBD_CMD_WRITE)
			refuse_write(c, cookie, len, -ESHUTDOWN);
		else
			reply_now(c, cmd, cookie, offset, -ESHUTDOWN);
		return 0;
	}
	if (cmd >= GW_ARRAY_SIZE(allowed_flags) || (flags & ~allowed_flags[cmd]) ||
	    ((flags & NBD_CMD_FLAG_DF) && !c->structured) ||
	    /* Never allocate what a client asks for beyond the advertised maximum. */
	    ((cmd == NBD_CMD_READ || cmd == NBD_CMD_WRITE) && len > c->exp->max_xfer)) {
		if (cmd == NBD_CMD_WRITE)
			refuse_write(c, cookie, len, -EINVAL);
		else
			reply_now(c, cmd, cookie, offset, -EINVAL);
		return 0;
	}
	r = nbd_req_get(c);
	if (!r)
		return -1;
	r->cookie = cookie;
	r->offset = offset;
	r->len = len;
	r->cmd = cmd;
	r->flags = flags;
	fua = (flags & NBD_CMD_FLAG_FUA) ? GW_IO_FUA : 0;

	switch (cmd) {
	case NBD_CMD_READ:
		/* A backend that can lend its memory is read without a copy. */
		if (c->exp->caps & GW_CAP_BORROW) {
			submit(r, GW_OP_READ, GW_IO_BORROW | (c->structured ? GW_IO_HOLE_OK : 0));
			return 0;
		}
		if (len && nbd_req_buf(r, len) < 0) {
			reply(r, -ENOMEM);
			return 0;
		}
		submit(r, GW_OP_READ, c->structured ? GW_IO_HOLE_OK : 0);
		return 0;
	case NBD_CMD_WRITE:
		/*
		 * A backend that completes inline can take the payload straight
		 * from the input buffer: no copy, no buffer from the pool.
		 */
		if ((c->exp->caps & GW_CAP_INLINE) && len && c->iend - c->ipos >= len) {
			r->iov.iov_base = c->ibuf + c->ipos;
			r->iov.iov_len = len;
			c->ipos += len;
			submit(r, GW_OP_WRITE, fua);
			return 0;
		}
		if (len && nbd_req_buf(r, len) < 0) {
			nbd_req_put(r);
			refuse_write(c, cookie, len, -ENOMEM);
			return 0;
		}
		c->wr = r;
		c->wr_have = 0;
		c->inflight_bytes += r->buflen; /* counted while its payload arrives */
		nbd_conn_payload_started(c);
		return 0;
	case NBD_CMD_FLUSH:
		submit(r, GW_OP_FLUSH, 0);
		return 0;
	case NBD_CMD_TRIM:
		submit(r, GW_OP_TRIM, fua);
		return 0;
	case NBD_CMD_CACHE:
		submit(r, GW_OP_CACHE, 0);
		return 0;
	case NBD_CMD_WRITE_ZEROES:
		submit(r, GW_OP_WRITE_ZEROES,
		       fua | ((flags & NBD_CMD_FLAG_NO_HOLE) ? GW_IO_NO_UNMAP : 0) |
			       ((flags & NBD_CMD_FLAG_FAST_ZERO) ? GW_IO_FAST_ZERO : 0));
		return 0;
	case NBD_CMD_BLOCK_STATUS:
		block_status(c, r);
		return 0;
	default:
		reply(r, -EINVAL);
		return 0;
	}
}

/* The write payload is complete: send it to the backend. */
void nbd_tx_write_ready(struct nbd_conn *c)
{
	struct nbd_req *r = c->wr;

	c->wr = NULL;
	nbd_conn_payload_done(c);
	c->inflight_bytes -= r->buflen; /* submit counts it again */
	submit(r, GW_OP_WRITE, (r->flags & NBD_CMD_FLAG_FUA) ? GW_IO_FUA : 0);
}

int nbd_tx_process(struct nbd_conn *c)
{
	while (c->state == CS_TX && !c->paused) {
		size_t avail = c->iend - c->ipos;

		if (c->skip) {
			size_t n = (size_t)GW_MIN((uint64_t)avail, c->skip);

			c->ipos += n;
			c->skip -= n;
			if (c->skip)
				return 0;
			if (c->skip_err) {
				reply_now(c, NBD_CMD_WRITE, c->skip_cookie, 0, c->skip_err);
				c->skip_err = 0;
			}
			continue;
		}
		if (c->wr) {
			size_t n = GW_MIN(avail, (size_t)(c->wr->len - c->wr_have));

			if (n) /* a zero-length write has no buffer */
				memcpy((uint8_t *)c->wr->buf + c->wr_have, c->ibuf + c->ipos, n);
			c->ipos += n;
			c->wr_have += (uint32_t)n;
			if (c->wr_have < c->wr->len)
				return 0;
			nbd_tx_write_ready(c);
		} else {
			if (avail < NBD_REQUEST_SIZE)
				return 0;
			if (!nbd_conn_may_take(c, request_bytes(c->ibuf + c->ipos))) {
				nbd_conn_wait_buffer(c);
				return 0;
			}
			if (tx_request(c) < 0)
				return -1;
		}
		nbd_conn_pause_if_full(c);
	}
	return 0;
}
