/*
 * NBD connections on worker threads: socket I/O, output batching and the
 * transmission phase.
 *
 * Input is read in large chunks and every complete request in the buffer is
 * dispatched before the worker's loop blocks; replies are queued as iovec
 * segments (headers live in the request, data in its pool buffer) and go
 * out in one writev per loop iteration. A connection stops reading when it
 * has too much in flight or too much unsent output, so a slow or hostile
 * client costs bounded memory and never blocks the worker.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/nbd/nbd_conn.h"
#include "transports/nbd/nbd_proto.h"

/* IBUF_HS fits the largest option we accept; write payloads of DIRECT_PAYLOAD
 * bytes or more are read straight into their buffer. */
#define IBUF_HS            (NBD_OPT_HDR_SIZE + 32u * 1024 + 1024)
#define IBUF_TX            (256u * 1024)
#define MAX_INFLIGHT       512
#define MAX_INFLIGHT_BYTES (96u << 20)
#define MAX_QUEUED_BYTES   (64u << 20)
#define MAX_IOV            128
#define READS_PER_EVENT    16
#define MAX_EXTENTS        1024
#define DIRECT_PAYLOAD     (64u * 1024)

struct nbd_req {
	struct gw_io io;
	struct nbd_conn *c;
	struct nbd_req *next;
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
	uint16_t cmd, flags;
	void *buf;
	size_t buflen;
	struct iovec iov;
	unsigned segs; /* queued segments still referencing this request */
	uint8_t hdr[32];
};

/* Per worker: its connections, for draining. Touched only by that worker. */
struct nbd_wlist {
	struct nbd_conn *head;
};

static struct nbd_wlist *wlists;
static unsigned nwlists;
static pthread_once_t wlists_once = PTHREAD_ONCE_INIT;

static void wlists_init(void)
{
	nwlists = gw_workers_count();
	wlists = calloc(nwlists ? nwlists : 1, sizeof(*wlists));
}

static void conn_readable(struct ev_loop *loop, ev_io *w, int revents);
static void conn_writable(struct ev_loop *loop, ev_io *w, int revents);
static void conn_process(struct nbd_conn *c);
static void conn_kill(struct nbd_conn *c);
static void conn_maybe_finish(struct nbd_conn *c);

/* ---- output ---- */

static int seg_push(struct nbd_conn *c, const void *base, size_t len, struct nbd_req *r,
		    void *owned)
{
	struct nbd_seg *s;

	if ((c->otail + 1) % (c->ocap ? c->ocap : 1) == c->ohead || c->ocap == 0) {
		size_t ncap = c->ocap ? c->ocap * 2 : 64;
		struct nbd_seg *v = malloc(ncap * sizeof(*v));
		size_t n = 0;

		if (!v)
			return -ENOMEM;
		for (size_t i = c->ohead; c->ocap && i != c->otail; i = (i + 1) % c->ocap)
			v[n++] = c->oseg[i];
		free(c->oseg);
		c->oseg = v;
		c->ocap = ncap;
		c->ohead = 0;
		c->otail = n;
	}
	s = &c->oseg[c->otail];
	s->base = base;
	s->len = len;
	s->req = r;
	s->owned = owned;
	c->otail = (c->otail + 1) % c->ocap;
	c->obytes += len;
	if (r)
		r->segs++;
	return 0;
}

int nbd_out_own(struct nbd_conn *c, void *buf, size_t len)
{
	if (seg_push(c, buf, len, NULL, buf) < 0) {
		free(buf);
		return -ENOMEM;
	}
	return 0;
}

int nbd_out_copy(struct nbd_conn *c, const void *p, size_t len)
{
	void *b = malloc(len ? len : 1);

	if (!b)
		return -ENOMEM;
	memcpy(b, p, len);
	return nbd_out_own(c, b, len);
}

void nbd_out_kick(struct nbd_conn *c)
{
	gw_worker_defer(c->w, &c->flush);
}

/* ---- requests ---- */

static struct nbd_req *req_get(struct nbd_conn *c)
{
	struct nbd_req *r = c->free_reqs;

	if (r) {
		c->free_reqs = r->next;
		c->nfree--;
	} else {
		r = malloc(sizeof(*r));
		if (!r)
			return NULL;
	}
	memset(r, 0, offsetof(struct nbd_req, hdr));
	r->c = c;
	return r;
}

static void req_put(struct nbd_req *r)
{
	struct nbd_conn *c = r->c;

	if (r->buf) {
		gw_buf_put(&c->w->pool, r->buf, r->buflen);
		r->buf = NULL;
	}
	if (c->nfree < 64) {
		r->next = c->free_reqs;
		c->free_reqs = r;
		c->nfree++;
	} else {
		free(r);
	}
}

static int req_buf(struct nbd_req *r, size_t len)
{
	r->buf = gw_buf_get(&r->c->w->pool, len);
	if (!r->buf)
		return -ENOMEM;
	r->buflen = len;
	r->iov.iov_base = r->buf;
	r->iov.iov_len = len;
	return 0;
}

static void seg_release(struct nbd_conn *c, struct nbd_seg *s)
{
	free(s->owned);
	if (s->req && --s->req->segs == 0)
		req_put(s->req);
}

/* Drop everything queued (the socket is gone). */
static void out_drop(struct nbd_conn *c)
{
	while (c->ohead != c->otail) {
		seg_release(c, &c->oseg[c->ohead]);
		c->ohead = (c->ohead + 1) % c->ocap;
	}
	c->ooff = 0;
	c->obytes = 0;
}

static void rd_set(struct nbd_conn *c, bool on)
{
	if (on == c->rd_on)
		return;
	c->rd_on = on;
	if (on)
		ev_io_start(c->w->loop, &c->rio);
	else
		ev_io_stop(c->w->loop, &c->rio);
}

static void wr_set(struct nbd_conn *c, bool on)
{
	if (on == c->wr_on)
		return;
	c->wr_on = on;
	if (on)
		ev_io_start(c->w->loop, &c->wio);
	else
		ev_io_stop(c->w->loop, &c->wio);
}

static bool over_limits(const struct nbd_conn *c)
{
	return c->inflight >= MAX_INFLIGHT || c->inflight_bytes >= MAX_INFLIGHT_BYTES ||
	       c->obytes >= MAX_QUEUED_BYTES;
}

/* Resume reading once below the limits (and process what is already buffered). */
static void maybe_resume(struct nbd_conn *c)
{
	if (!c->paused || c->state != CS_TX)
		return;
	if (c->inflight > MAX_INFLIGHT / 2 || c->inflight_bytes > MAX_INFLIGHT_BYTES / 2 ||
	    c->obytes > MAX_QUEUED_BYTES / 2)
		return;
	c->paused = false;
	if (!c->in_process)
		conn_process(c);
	if (c->state == CS_TX && !c->paused)
		rd_set(c, true);
}

/*
 * Socket polling. A client at queue depth 1 sends its next request a few
 * microseconds after reading a reply; a worker asleep in epoll then costs a
 * wake-up (an IPI to a halted CPU in a VM: tens of microseconds) on every
 * request. So a connection that has answered everything remembers when, and
 * if its client came back in time before, keeps the worker polling for that
 * long. The window grows (from 4 us, doubling, up to poll-us) while the
 * client keeps coming back in time and closes when it does not, so an idle
 * or slow client costs nothing. A gap measured without polling includes the
 * wake-up that polling would have saved, so arrivals up to twice poll-us
 * still count as in time.
 *
 * Only a strictly serial client is polled for: one request per wake-up, many
 * times running. A client with several requests in flight keeps the worker
 * busy anyway, and polling between its bursts only burns CPU (the
 * coalescing controller takes care of those).
 */
#define POLL_SERIAL_RUN 8

static void went_idle(struct nbd_conn *c)
{
	if (c->state != CS_TX || !c->x->o->poll_us || c->inflight || c->wr || c->skip ||
	    c->ipos != c->iend || c->paused)
		return;
	c->serial = c->burst == 1 ? (uint8_t)GW_MIN(c->serial + 1u, 255u) : 0;
	c->burst = 0;
	c->idle_since = gw_now_ns();
	if (c->poll_ns && c->serial >= POLL_SERIAL_RUN)
		gw_worker_spin(c->w, c->idle_since + c->poll_ns);
}

static void came_back(struct nbd_conn *c)
{
	uint32_t max = c->x->o->poll_us * 1000u;

	c->poll_ns = gw_poll_window_next(c->poll_ns, gw_now_ns() - c->idle_since, max, 2 * max);
	c->idle_since = 0;
}

static void conn_flush(struct nbd_conn *c)
{
	struct iovec iov[MAX_IOV];

	while (c->ohead != c->otail) {
		unsigned n = 0;
		ssize_t w;

		for (size_t i = c->ohead; i != c->otail && n < MAX_IOV; i = (i + 1) % c->ocap) {
			iov[n].iov_base = (char *)c->oseg[i].base + (n == 0 ? c->ooff : 0);
			iov[n].iov_len = c->oseg[i].len - (n == 0 ? c->ooff : 0);
			n++;
		}
		w = writev(c->fd, iov, (int)n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				wr_set(c, true);
				return;
			}
			gw_debug("nbd: write: %s: closing connection", strerror(errno));
			conn_kill(c);
			return;
		}
		c->obytes -= (size_t)w;
		while (w > 0) {
			struct nbd_seg *s = &c->oseg[c->ohead];
			size_t left = s->len - c->ooff;

			if ((size_t)w < left) {
				c->ooff += (size_t)w;
				break;
			}
			w -= (ssize_t)left;
			c->ooff = 0;
			seg_release(c, s);
			c->ohead = (c->ohead + 1) % c->ocap;
		}
	}
	wr_set(c, false);
	maybe_resume(c);
	went_idle(c);
	conn_maybe_finish(c);
}

static void conn_writable(struct ev_loop *loop, ev_io *w, int revents)
{
	conn_flush(container_of(w, struct nbd_conn, wio));
}

/* ---- lifecycle ---- */

static void conn_free(struct nbd_conn *c)
{
	struct nbd_wlist *wl = &wlists[c->w->id];

	if (c->prev)
		c->prev->next = c->next;
	else if (wl->head == c)
		wl->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->x) {
		atomic_fetch_sub(&c->exp->clients, 1);
		nbd_exp_unbind(c->x);
	}
	if (c->lis)
		nbd_listener_put(c->lis);
	while (c->free_reqs) {
		struct nbd_req *r = c->free_reqs;

		c->free_reqs = r->next;
		free(r);
	}
	gw_worker_unload(c->w);
	free(c->oseg);
	free(c->ibuf);
	free(c->meta_name);
	free(c);
}

/* Close the socket now; free once in-flight I/O has come back. */
static void conn_kill(struct nbd_conn *c)
{
	if (c->state == CS_DEAD)
		return;
	c->state = CS_DEAD;
	rd_set(c, false);
	wr_set(c, false);
	close(c->fd);
	c->fd = -1;
	if (c->wr) {
		req_put(c->wr);
		c->wr = NULL;
	}
	out_drop(c);
	conn_maybe_finish(c);
}

/*
 * Closing with nothing in flight and nothing to send: close. Dead with
 * nothing in flight: free, from the worker's deferred list, so no caller up
 * the stack is left holding a freed connection.
 */
static void conn_maybe_finish(struct nbd_conn *c)
{
	if (c->inflight)
		return;
	if (c->state == CS_CLOSING && c->ohead == c->otail && !c->in_process) {
		conn_kill(c); /* comes back here as CS_DEAD */
		return;
	}
	if (c->state == CS_DEAD)
		gw_worker_defer(c->w, &c->flush);
}

/* The deferred hook: flush output, or free a dead connection. */
static void conn_flush_or_free(struct gw_deferred *d)
{
	struct nbd_conn *c = container_of(d, struct nbd_conn, flush);

	if (c->state == CS_DEAD) {
		if (!c->inflight)
			conn_free(c);
		return;
	}
	conn_flush(c);
}

/* Stop taking requests; what is in flight finishes and is answered. */
static void conn_close_gracefully(struct nbd_conn *c)
{
	if (c->state >= CS_CLOSING)
		return;
	c->state = CS_CLOSING;
	rd_set(c, false);
	if (c->wr) { /* half-received write: never acknowledged, drop it */
		req_put(c->wr);
		c->wr = NULL;
	}
	nbd_out_kick(c);
	conn_maybe_finish(c);
}

static struct nbd_conn *conn_new(struct gw_worker *w, int fd)
{
	struct nbd_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->w = w;
	c->fd = fd;
	c->icap = IBUF_HS;
	c->ibuf = malloc(c->icap);
	if (!c->ibuf) {
		free(c);
		return NULL;
	}
	c->flush.fn = conn_flush_or_free;
	ev_io_init(&c->rio, conn_readable, fd, EV_READ);
	ev_io_init(&c->wio, conn_writable, fd, EV_WRITE);
	pthread_once(&wlists_once, wlists_init);
	c->next = wlists[w->id].head;
	if (c->next)
		c->next->prev = c;
	wlists[w->id].head = c;
	return c;
}

struct accept_msg {
	struct gw_worker *w;
	int fd;
	struct nbd_listener *l;
	struct nbd_exp *x; /* kernel attach: bound from the start */
};

static void attach_on_worker(void *arg)
{
	struct accept_msg *m = arg;
	struct nbd_conn *c = conn_new(m->w, m->fd);

	if (!c || nbd_conn_enter_tx(c, m->x) < 0) {
		if (c) {
			c->x = m->x; /* released with the connection */
			conn_kill(c);
		} else {
			close(m->fd);
			nbd_exp_unbind(m->x);
			gw_worker_unload(m->w);
		}
		free(m);
		return;
	}
	free(m);
	rd_set(c, true);
}

void nbd_conn_attach(struct gw_worker *w, int fd, struct nbd_exp *x)
{
	struct accept_msg *m = calloc(1, sizeof(*m));

	if (m) {
		m->w = w;
		m->fd = fd;
		m->x = x;
	}
	if (!m || gw_worker_call(w, attach_on_worker, m) < 0) {
		free(m);
		close(fd);
		nbd_exp_unbind(x);
		gw_worker_unload(w);
	}
}

static void accept_on_worker(void *arg)
{
	struct accept_msg *m = arg;
	struct nbd_conn *c;

	if (atomic_load(&m->l->closed) || !(c = conn_new(m->w, m->fd))) {
		close(m->fd);
		nbd_listener_put(m->l);
		gw_worker_unload(m->w);
		free(m);
		return;
	}
	c->lis = m->l;
	c->state = CS_HS_FLAGS;
	free(m);
	if (nbd_hs_greet(c) < 0) {
		conn_kill(c);
		return;
	}
	nbd_out_kick(c);
	rd_set(c, true);
}

void nbd_conn_accept(struct gw_worker *w, int fd, struct nbd_listener *l)
{
	struct accept_msg *m = calloc(1, sizeof(*m));

	if (m) {
		m->w = w;
		m->fd = fd;
		m->l = l;
	}
	if (!m || gw_worker_call(w, accept_on_worker, m) < 0) {
		free(m);
		close(fd);
		nbd_listener_put(l);
		gw_worker_unload(w);
	}
}

int nbd_conn_enter_tx(struct nbd_conn *c, struct nbd_exp *x)
{
	c->x = x;
	c->exp = x->exp;
	c->tflags = nbd_tflags(x, c->structured);
	c->state = CS_TX;
	atomic_fetch_add(&c->exp->clients, 1);
	if (c->icap < IBUF_TX) {
		uint8_t *b = malloc(IBUF_TX);

		if (!b)
			return -1;
		memcpy(b, c->ibuf + c->ipos, c->iend - c->ipos);
		c->iend -= c->ipos;
		c->ipos = 0;
		free(c->ibuf);
		c->ibuf = b;
		c->icap = IBUF_TX;
	}
	gw_debug("nbd: client bound to export '%s'%s", x->name,
		 c->structured ? " (structured replies)" : "");
	return 0;
}

/* ---- replies ---- */

static void put_simple(uint8_t *h, uint32_t err, uint64_t cookie)
{
	nbd_put32(h, NBD_SIMPLE_MAGIC);
	nbd_put32(h + 4, err);
	nbd_put64(h + 8, cookie);
}

static void put_chunk(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len)
{
	nbd_put32(h, NBD_STRUCTURED_MAGIC);
	nbd_put16(h + 4, flags);
	nbd_put16(h + 6, type);
	nbd_put64(h + 8, cookie);
	nbd_put32(h + 16, len);
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
		req_put(r);
		return;
	}
	if (c->structured && (r->cmd == NBD_CMD_READ || r->cmd == NBD_CMD_BLOCK_STATUS)) {
		if (err) {
			put_chunk(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie, 6);
			nbd_put32(r->hdr + 20, err);
			nbd_put16(r->hdr + 24, 0);
			rc = seg_push(c, r->hdr, 26, r, NULL);
		} else if (r->cmd == NBD_CMD_BLOCK_STATUS) {
			rc = seg_push(c, r->buf, r->len, r, NULL); /* built by the caller */
		} else if (r->len == 0) {
			put_chunk(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->cookie, 0);
			rc = seg_push(c, r->hdr, 20, r, NULL);
		} else if (r->io.rflags & GW_IO_R_HOLE) {
			put_chunk(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_HOLE,
				  r->cookie, 12);
			nbd_put64(r->hdr + 20, r->offset);
			nbd_put32(r->hdr + 28, r->len);
			rc = seg_push(c, r->hdr, 32, r, NULL);
		} else {
			put_chunk(r->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
				  r->cookie, 8 + r->len);
			nbd_put64(r->hdr + 20, r->offset);
			rc = seg_push(c, r->hdr, 28, r, NULL);
			if (!rc)
				rc = seg_push(c, read_data(r), r->len, r, NULL);
		}
	} else {
		put_simple(r->hdr, err, r->cookie);
		rc = seg_push(c, r->hdr, NBD_SIMPLE_SIZE, r, NULL);
		if (!rc && !err && r->cmd == NBD_CMD_READ && r->len)
			rc = seg_push(c, read_data(r), r->len, r, NULL);
	}
	if (rc < 0) {
		/* No memory to queue a reply: the client cannot be answered correctly. */
		if (!r->segs)
			req_put(r);
		conn_kill(c);
		return;
	}
	if (!r->segs)
		req_put(r);
	nbd_out_kick(c);
}

static void finish(struct nbd_req *r, int result)
{
	struct nbd_conn *c = r->c;

	c->inflight--;
	c->inflight_bytes -= r->buflen;
	reply(r, result);
	if (c->state == CS_DEAD || c->state == CS_CLOSING)
		conn_maybe_finish(c);
	else
		maybe_resume(c);
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
	struct nbd_req *r = req_get(c);

	if (!r) {
		conn_kill(c);
		return;
	}
	r->cmd = cmd;
	r->cookie = cookie;
	r->offset = offset;
	if (c->exp)
		gw_export_count_error(c->exp, &c->w->ioq);
	reply(r, err);
}

static void block_status(struct nbd_conn *c, struct nbd_req *r)
{
	struct gw_extent ext[MAX_EXTENTS];
	struct gw_extents e = { .v = ext, .n = 0, .cap = MAX_EXTENTS };
	int rc;

	if (!c->structured || !c->meta_alloc || r->len == 0) {
		gw_export_count_error(c->exp, &c->w->ioq);
		reply(r, -EINVAL);
		return;
	}
	if (r->flags & NBD_CMD_FLAG_REQ_ONE)
		e.cap = 1;
	rc = gw_export_extents(c->exp, &c->w->ioq, r->offset, r->len, &e);
	if (rc < 0) {
		reply(r, rc);
		return;
	}
	if (req_buf(r, NBD_CHUNK_HDR_SIZE + 4 + 8 * e.n) < 0) {
		reply(r, -ENOMEM);
		return;
	}
	{
		uint8_t *p = r->buf;
		uint64_t left = r->len;

		for (size_t i = 0; i < e.n; i++) {
			uint64_t l = GW_MIN(e.v[i].len, left);
			uint32_t st = 0;

			if (e.v[i].flags & GW_EXT_HOLE)
				st |= NBD_STATE_HOLE;
			if (e.v[i].flags & GW_EXT_ZERO)
				st |= NBD_STATE_ZERO;
			nbd_put32(p + NBD_CHUNK_HDR_SIZE + 4 + 8 * i, (uint32_t)l);
			nbd_put32(p + NBD_CHUNK_HDR_SIZE + 8 + 8 * i, st);
			left -= l;
			if (!left || l < e.v[i].len) {
				e.n = i + 1;
				break;
			}
		}
		put_chunk(p, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie,
			  (uint32_t)(4 + 8 * e.n));
		nbd_put32(p + NBD_CHUNK_HDR_SIZE, NBD_META_ALLOCATION_ID);
		r->len = (uint32_t)(NBD_CHUNK_HDR_SIZE + 4 + 8 * e.n);
	}
	reply(r, 0);
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

/* One request header at c->ibuf + c->ipos (28 bytes available). 0, or -1 to close. */
static int tx_request(struct nbd_conn *c)
{
	const uint8_t *p = c->ibuf + c->ipos;
	uint16_t flags = nbd_get16(p + 4), cmd = nbd_get16(p + 6);
	uint64_t cookie = nbd_get64(p + 8), offset = nbd_get64(p + 16);
	uint32_t len = nbd_get32(p + 24);
	struct nbd_req *r;
	uint32_t fua;

	gw_worker_note_work(c->w, 1);
	c->burst++;
	if (nbd_get32(p) != NBD_REQUEST_MAGIC) {
		gw_info("nbd: export '%s': bad request magic 0x%08x: closing connection",
			c->x->name, nbd_get32(p));
		return -1;
	}
	c->ipos += NBD_REQUEST_SIZE;

	if (cmd == NBD_CMD_DISC) {
		conn_close_gracefully(c);
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
	r = req_get(c);
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
		if (len && req_buf(r, len) < 0) {
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
		if (len && req_buf(r, len) < 0) {
			req_put(r);
			refuse_write(c, cookie, len, -ENOMEM);
			return 0;
		}
		c->wr = r;
		c->wr_have = 0;
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
static void write_ready(struct nbd_conn *c)
{
	struct nbd_req *r = c->wr;

	c->wr = NULL;
	submit(r, GW_OP_WRITE, (r->flags & NBD_CMD_FLAG_FUA) ? GW_IO_FUA : 0);
}

static int tx_process(struct nbd_conn *c)
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

			memcpy((uint8_t *)c->wr->buf + c->wr_have, c->ibuf + c->ipos, n);
			c->ipos += n;
			c->wr_have += (uint32_t)n;
			if (c->wr_have < c->wr->len)
				return 0;
			write_ready(c);
		} else {
			if (avail < NBD_REQUEST_SIZE)
				return 0;
			if (tx_request(c) < 0)
				return -1;
		}
		if (over_limits(c)) {
			c->paused = true;
			rd_set(c, false);
		}
	}
	return 0;
}

static void conn_process(struct nbd_conn *c)
{
	int rc = 0;

	c->in_process++;
	if (c->state == CS_HS_FLAGS || c->state == CS_HS_OPT)
		rc = nbd_hs_process(c);
	if (rc == 0 && c->state == CS_TX)
		rc = tx_process(c);
	if (c->ipos == c->iend)
		c->ipos = c->iend = 0;
	c->in_process--;
	if (rc < 0)
		conn_kill(c);
	conn_maybe_finish(c);
}

static void conn_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct nbd_conn *c = container_of(w, struct nbd_conn, rio);

	if (c->idle_since)
		came_back(c);
	for (int i = 0; i < READS_PER_EVENT; i++) {
		ssize_t n;
		size_t room;

		if (c->state >= CS_CLOSING || c->paused)
			return;
		/* Large write payloads go straight into their buffer. */
		if (c->wr && c->ipos == c->iend && c->wr->len - c->wr_have >= DIRECT_PAYLOAD) {
			n = read(c->fd, (uint8_t *)c->wr->buf + c->wr_have,
				 c->wr->len - c->wr_have);
			if (n > 0) {
				c->wr_have += (uint32_t)n;
				if (c->wr_have == c->wr->len) {
					write_ready(c);
					if (over_limits(c)) {
						c->paused = true;
						rd_set(c, false);
					}
				}
				continue;
			}
		} else {
			if (c->ipos == c->iend) {
				c->ipos = c->iend = 0;
			} else if (c->icap - c->iend < NBD_REQUEST_SIZE + 4096) {
				memmove(c->ibuf, c->ibuf + c->ipos, c->iend - c->ipos);
				c->iend -= c->ipos;
				c->ipos = 0;
			}
			room = c->icap - c->iend;
			if (room == 0) {
				/* Buffer full of a request we cannot take yet. */
				c->paused = true;
				rd_set(c, false);
				return;
			}
			n = read(c->fd, c->ibuf + c->iend, room);
			if (n > 0) {
				c->iend += (size_t)n;
				conn_process(c);
				if ((size_t)n < room)
					return;
				continue;
			}
		}
		if (n == 0) {
			/* The client went away: in-flight requests finish, their replies are
			 * dropped. */
			conn_kill(c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			conn_kill(c);
		return;
	}
}

/* ---- draining ---- */

/* Answer requests already received with ESHUTDOWN, finish the rest, close. */
static void conn_shutdown(struct nbd_conn *c)
{
	if (c->state == CS_TX) {
		c->shutting = true;
		c->paused = false;
		c->in_process++;
		if (tx_process(c) < 0)
			conn_kill(c);
		c->in_process--;
	}
	conn_close_gracefully(c);
}

static void drain_on_worker(void *arg)
{
	struct nbd_exp *x = arg;
	struct gw_worker *w = gw_worker_self();
	struct nbd_conn *c, *next;

	pthread_once(&wlists_once, wlists_init);
	for (c = wlists[w->id].head; c; c = next) {
		next = c->next;
		if (c->x == x)
			conn_shutdown(c);
		else if (!c->x && c->lis && atomic_load(&c->lis->closed))
			conn_kill(c);
	}
	nbd_exp_unbind(x); /* the reference this message carried */
}

void nbd_conns_drain(struct nbd_exp *x)
{
	unsigned n = gw_workers_count();

	for (unsigned i = 0; i < n; i++) {
		atomic_fetch_add(&x->conns, 1); /* released by drain_on_worker */
		if (gw_worker_call(gw_worker_get(i), drain_on_worker, x) < 0)
			nbd_exp_unbind(x);
	}
}
