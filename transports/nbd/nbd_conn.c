/*
 * NBD connections on worker threads: socket I/O, output batching, flow
 * control and lifecycle (request decoding and replies are nbd_tx.c's).
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
#define IBUF_HS         (NBD_OPT_HDR_SIZE + 32u * 1024 + 1024)
#define IBUF_TX         (256u * 1024)
#define MAX_INFLIGHT    512
/* Unsent option replies that stop a handshake being read. */
#define HS_OUT_CAP      (256u * 1024)
/* Over the daemon-wide buffer limit, a client holding less than this is still read. */
#define FAIR_FLOOR      (1u << 20)
#define RETRY_S         0.02
#define MAX_IOV         128
#define READS_PER_EVENT 16
#define DIRECT_PAYLOAD  (64u * 1024)

/* Per worker: its connections, for draining. Touched only by that worker. */
struct nbd_wlist {
	struct nbd_conn *head;
};

static struct nbd_wlist *wlists;
static unsigned nwlists;
static pthread_once_t wlists_once = PTHREAD_ONCE_INIT;

atomic_llong nbd_buffered;
uint64_t nbd_buffer_limit = 512u << 20;
atomic_uint nbd_conns_total;
unsigned nbd_conn_budget = ~0u;

/* Connection lines: one per client, but a flood of clients cannot flood the log. */
static struct gw_ratelimit conn_rl = GW_RATELIMIT_INIT(5, 20);

static void wlists_init(void)
{
	nwlists = gw_workers_total();
	wlists = calloc(nwlists ? nwlists : 1, sizeof(*wlists));
}

static void conn_readable(struct ev_loop *loop, ev_io *w, int revents);
static void conn_writable(struct ev_loop *loop, ev_io *w, int revents);
static void conn_process(struct nbd_conn *c);
void nbd_conn_kill(struct nbd_conn *c);
void nbd_conn_maybe_finish(struct nbd_conn *c);

/* ---- output ---- */

int nbd_seg_push(struct nbd_conn *c, const void *base, size_t len, struct nbd_req *r, void *owned)
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
	if (nbd_seg_push(c, buf, len, NULL, buf) < 0) {
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

struct nbd_req *nbd_req_get(struct nbd_conn *c)
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

void nbd_req_put(struct nbd_req *r)
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

int nbd_req_buf(struct nbd_req *r, size_t len)
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
		nbd_req_put(s->req);
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

/* Bring the daemon-wide count up to date with this connection's bytes. */
static void account(struct nbd_conn *c)
{
	int64_t now = (int64_t)(c->inflight_bytes + c->obytes);

	if (now != c->accounted) {
		atomic_fetch_add(&nbd_buffered, now - c->accounted);
		c->accounted = now;
	}
}

static bool global_pressure(const struct nbd_conn *c)
{
	return (uint64_t)atomic_load(&nbd_buffered) >= nbd_buffer_limit;
}

static bool over_limits(const struct nbd_conn *c)
{
	if (c->state != CS_TX)
		return c->obytes >= HS_OUT_CAP;
	/*
	 * A write's payload is part of a request already taken (its buffer is
	 * counted): it is always read to its end, or a write larger than the
	 * cap could never complete, and an EOF inside it would go unseen. The
	 * limits stop the next request instead.
	 */
	if (c->wr || c->skip)
		return false;
	return c->inflight >= MAX_INFLIGHT || c->inflight_bytes + c->obytes >= c->cap ||
	       (global_pressure(c) && c->inflight_bytes + c->obytes >= FAIR_FLOOR);
}

static bool under_limits(const struct nbd_conn *c)
{
	if (c->state != CS_TX)
		return c->obytes <= HS_OUT_CAP / 2;
	return c->inflight <= MAX_INFLIGHT / 2 && c->inflight_bytes + c->obytes <= c->cap / 2 &&
	       !(global_pressure(c) && c->inflight_bytes + c->obytes >= FAIR_FLOOR);
}

bool nbd_conn_may_take(struct nbd_conn *c, uint32_t bytes)
{
	uint64_t held = c->inflight_bytes + c->obytes;

	/* Over the daemon-wide limit, only what keeps a client under the floor goes in. */
	return held + bytes < FAIR_FLOOR || (uint64_t)atomic_load(&nbd_buffered) < nbd_buffer_limit;
}

void nbd_conn_wait_buffer(struct nbd_conn *c)
{
	account(c);
	c->paused = true;
	rd_set(c, false);
	if (!ev_is_active(&c->retry))
		ev_timer_start(c->w->loop, &c->retry);
}

void nbd_conn_wait_turn(struct nbd_conn *c)
{
	c->paused = true;
	rd_set(c, false);
	if (!ev_is_active(&c->retry))
		ev_timer_start(c->w->loop, &c->retry);
}

void nbd_conn_pause_if_full(struct nbd_conn *c)
{
	account(c);
	if (!over_limits(c))
		return;
	c->paused = true;
	rd_set(c, false);
	/* Nothing of ours will wake us when other clients drain: look again soon. */
	if (global_pressure(c) && !ev_is_active(&c->retry))
		ev_timer_start(c->w->loop, &c->retry);
}

/* Resume reading once below the limits (and process what is already buffered). */
void nbd_conn_maybe_resume(struct nbd_conn *c)
{
	account(c);
	if (!global_pressure(c) && !(c->paused && c->state < CS_TX))
		ev_timer_stop(c->w->loop, &c->retry);
	if (!c->paused || c->state >= CS_CLOSING)
		return;
	if (!under_limits(c)) {
		if (global_pressure(c) && !ev_is_active(&c->retry))
			ev_timer_start(c->w->loop, &c->retry);
		return;
	}
	c->paused = false;
	if (!c->in_process)
		conn_process(c);
	if (c->state < CS_CLOSING && !c->paused)
		rd_set(c, true);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	nbd_conn_maybe_resume(container_of(t, struct nbd_conn, retry));
}

static void tmo_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct nbd_conn *c = container_of(t, struct nbd_conn, tmo);
	static struct gw_ratelimit rl = GW_RATELIMIT_DEFAULT;
	ev_tstamp idle, left;

	if (c->state == CS_HS_FLAGS || c->state == CS_HS_OPT) {
		atomic_fetch_add(&c->lis->hs_timeouts, 1);
		gw_info_rl(&rl, "nbd: %s: client %s did not finish negotiating in %u s: closing",
			   c->lis->key + (c->lis->is_unix ? 5 : 4), c->peer, c->lis->hs_timeout);
		nbd_conn_kill(c);
		return;
	}
	if (c->state != CS_TX || !c->x)
		return;
	idle = c->x->o->idle_timeout;
	left = c->last_active + idle - ev_now(loop);
	if (c->inflight || c->obytes || c->wr || c->skip)
		left = idle; /* busy: not idle */
	if (left > 0.001) {
		ev_timer_set(t, left, 0);
		ev_timer_start(loop, t);
		return;
	}
	if (c->lis)
		atomic_fetch_add(&c->lis->idle_timeouts, 1);
	gw_info_rl(&rl, "nbd: export '%s': client %s sent nothing for %u s: closing", c->x->name,
		   c->peer, c->x->o->idle_timeout);
	nbd_conn_close_gracefully(c);
}

/* payload-timeout: a write's payload did not arrive in time (a client that
 * drips it would otherwise hold its buffer as long as it likes). */
static void ptmo_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct nbd_conn *c = container_of(t, struct nbd_conn, ptmo);
	static struct gw_ratelimit rl = GW_RATELIMIT_DEFAULT;

	if (!c->wr || c->state != CS_TX)
		return;
	if (c->lis)
		atomic_fetch_add(&c->lis->payload_timeouts, 1);
	gw_info_rl(
		&rl,
		"nbd: export '%s': client %s sent %u of a %u-byte write's payload in %u s: closing",
		c->x->name, c->peer, c->wr_have, c->wr->len, c->x->o->payload_timeout);
	nbd_conn_kill(c);
}

void nbd_conn_payload_started(struct nbd_conn *c)
{
	if (c->x && c->x->o->payload_timeout) {
		ev_timer_set(&c->ptmo, c->x->o->payload_timeout, 0);
		ev_timer_start(c->w->loop, &c->ptmo);
	}
}

void nbd_conn_payload_done(struct nbd_conn *c)
{
	ev_timer_stop(c->w->loop, &c->ptmo);
}

/*
 * Socket polling. A client at queue depth 1 sends its next request a few
 * microseconds after reading a reply; a worker asleep in epoll then costs a
 * wake-up (an IPI to a halted CPU in a VM: tens of microseconds) on every
 * request. So a connection that has answered everything keeps the worker
 * polling for a strictly serial client (struct gw_serial_poll,
 * lib/coalesce.h: one request per wake-up, many times running; a window up
 * to poll-us that grows while the client comes back in time and closes
 * when it does not, so an idle or slow client costs nothing). A client
 * with several requests in flight keeps the worker busy anyway (the
 * coalescing controller takes care of those).
 *
 * Nor is a connection whose requests are slow (an rbd image, a disk): the
 * spin runs to its deadline whatever comes in, so once the request arrived
 * the worker spins on through the rest of the window while the backend
 * works, a whole window of CPU per request to save one wake-up, which is a
 * small part of a long request's time. The time from a request's arrival
 * (came_back) to its reply leaving (went_idle) is taken from the two clock
 * readings those make anyway, capped at twice the limit below and averaged
 * from 0 (1/8 weight for the newest), so a few requests held up (the worker
 * preempted for a time slice on a busy machine) do not stop polling.
 * Above POLL_SLOW_RATIO windows (poll-us: 50 us by default) the connection
 * stops polling: past one window the spin cannot catch the completion
 * either, and at two the wake-up saved is at most a fifth of the request's
 * time. Below half that it starts again, about a dozen requests after its
 * backend got fast again. Both changes are counted for status.
 */
#define POLL_SLOW_RATIO 2u

static void note_service(struct nbd_conn *c, uint64_t now)
{
	uint64_t max = (uint64_t)c->x->o->poll_us * 1000u;
	uint64_t took = now - c->busy_since;

	took = GW_MIN(took, 2 * POLL_SLOW_RATIO * max);
	c->svc_ns = c->svc_ns - c->svc_ns / 8 + took / 8;
	if (!c->slow && c->svc_ns > POLL_SLOW_RATIO * max) {
		c->slow = true;
		atomic_fetch_add_explicit(&c->x->poll_slow_stops, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->x->poll_slow_conns, 1, memory_order_relaxed);
	} else if (c->slow && c->svc_ns < POLL_SLOW_RATIO * max / 2) {
		c->slow = false;
		atomic_fetch_add_explicit(&c->x->poll_slow_resumes, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(&c->x->poll_slow_conns, 1, memory_order_relaxed);
	}
}

static void went_idle(struct nbd_conn *c)
{
	uint64_t now, until;
	bool one;

	if (c->state != CS_TX || !c->x->o->poll_us || c->inflight || c->wr || c->skip ||
	    c->ipos != c->iend || c->paused)
		return;
	one = c->sp.turn_reqs == 1;
	now = gw_now_ns();
	until = gw_serial_poll_went_idle(&c->sp, now);
	if (one && c->busy_since)
		note_service(c, now);
	c->busy_since = 0;
	if (until && !c->slow)
		gw_worker_spin(c->w, until);
}

static void came_back(struct nbd_conn *c)
{
	uint64_t now = gw_now_ns();

	gw_serial_poll_came_back(&c->sp, now, c->x->o->poll_us * 1000u);
	c->busy_since = now;
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
			nbd_conn_kill(c);
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
	nbd_conn_maybe_resume(c);
	went_idle(c);
	nbd_conn_maybe_finish(c);
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
		if (c->slow)
			atomic_fetch_sub_explicit(&c->x->poll_slow_conns, 1, memory_order_relaxed);
		if (!c->lis)
			nbd_exp_kernel_conn_gone(c->x);
		nbd_exp_unbind(c->x);
	}
	atomic_fetch_sub(&nbd_buffered, c->accounted);
	if (c->lis) {
		atomic_fetch_sub(&c->lis->nconns, 1);
		atomic_fetch_sub(&nbd_conns_total, 1);
		nbd_listener_put(c->lis);
	}
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
void nbd_conn_kill(struct nbd_conn *c)
{
	if (c->state == CS_DEAD)
		return;
	c->state = CS_DEAD;
	rd_set(c, false);
	wr_set(c, false);
	ev_timer_stop(c->w->loop, &c->tmo);
	ev_timer_stop(c->w->loop, &c->retry);
	ev_timer_stop(c->w->loop, &c->ptmo);
	close(c->fd);
	c->fd = -1;
	if (c->wr) {
		c->inflight_bytes -= c->wr->buflen;
		nbd_req_put(c->wr);
		c->wr = NULL;
	}
	out_drop(c);
	nbd_conn_maybe_finish(c);
}

/*
 * Closing with nothing in flight and nothing to send: close. Dead with
 * nothing in flight: free, from the worker's deferred list, so no caller up
 * the stack is left holding a freed connection.
 */
void nbd_conn_maybe_finish(struct nbd_conn *c)
{
	if (c->inflight)
		return;
	if (c->state == CS_CLOSING && c->ohead == c->otail && !c->in_process) {
		nbd_conn_kill(c); /* comes back here as CS_DEAD */
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
void nbd_conn_close_gracefully(struct nbd_conn *c)
{
	if (c->state >= CS_CLOSING)
		return;
	c->state = CS_CLOSING;
	rd_set(c, false);
	if (c->wr) { /* half-received write: never acknowledged, drop it */
		nbd_conn_payload_done(c);
		c->inflight_bytes -= c->wr->buflen;
		nbd_req_put(c->wr);
		c->wr = NULL;
	}
	nbd_out_kick(c);
	nbd_conn_maybe_finish(c);
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
	c->cap = 16u << 20;
	ev_timer_init(&c->tmo, tmo_cb, 0, 0);
	ev_timer_init(&c->ptmo, ptmo_cb, 0, 0);
	ev_timer_init(&c->retry, retry_cb, RETRY_S, RETRY_S);
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
	char peer[NBD_PEER_LEN];
};

static void attach_on_worker(void *arg)
{
	struct accept_msg *m = arg;
	struct nbd_conn *c = conn_new(m->w, m->fd);

	if (!c || nbd_conn_enter_tx(c, m->x) < 0) {
		if (c) {
			c->x = m->x; /* released with the connection */
			nbd_conn_kill(c);
		} else {
			close(m->fd);
			nbd_exp_kernel_conn_gone(m->x);
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
		nbd_exp_kernel_conn_gone(x);
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
		atomic_fetch_sub(&m->l->nconns, 1);
		atomic_fetch_sub(&nbd_conns_total, 1);
		nbd_listener_put(m->l);
		gw_worker_unload(m->w);
		free(m);
		return;
	}
	c->lis = m->l;
	c->state = CS_HS_FLAGS;
	memcpy(c->peer, m->peer, sizeof(c->peer));
	free(m);
	if (c->lis->hs_timeout) {
		ev_timer_set(&c->tmo, c->lis->hs_timeout, 0);
		ev_timer_start(c->w->loop, &c->tmo);
	}
	if (nbd_hs_greet(c) < 0) {
		nbd_conn_kill(c);
		return;
	}
	nbd_out_kick(c);
	rd_set(c, true);
}

void nbd_conn_accept(struct gw_worker *w, int fd, struct nbd_listener *l, const char *peer)
{
	struct accept_msg *m = calloc(1, sizeof(*m));

	if (m) {
		m->w = w;
		m->fd = fd;
		m->l = l;
		gw_strlcpy(m->peer, peer, sizeof(m->peer));
	}
	if (!m || gw_worker_call(w, accept_on_worker, m) < 0) {
		free(m);
		close(fd);
		atomic_fetch_sub(&l->nconns, 1);
		atomic_fetch_sub(&nbd_conns_total, 1);
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
	c->cap = x->o->client_buffer ? x->o->client_buffer : c->cap;
	atomic_fetch_add(&c->exp->clients, 1);
	ev_timer_stop(c->w->loop, &c->tmo);
	if (x->o->idle_timeout && c->lis) {
		c->last_active = ev_now(c->w->loop);
		ev_timer_set(&c->tmo, x->o->idle_timeout, 0);
		ev_timer_start(c->w->loop, &c->tmo);
	}
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
	if (c->lis)
		gw_info_rl(&conn_rl, "nbd: %s: client %s on export '%s'%s",
			   c->lis->key + (c->lis->is_unix ? 5 : 4), c->peer, x->name,
			   c->structured ? " (structured replies)" : "");
	return 0;
}
static void conn_process(struct nbd_conn *c)
{
	int rc = 0;

	c->in_process++;
	if (c->state == CS_HS_FLAGS || c->state == CS_HS_OPT)
		rc = nbd_hs_process(c);
	if (rc == 0 && c->state == CS_TX)
		rc = nbd_tx_process(c);
	if (c->ipos == c->iend)
		c->ipos = c->iend = 0;
	c->in_process--;
	if (rc < 0)
		nbd_conn_kill(c);
	nbd_conn_maybe_finish(c);
}

static void conn_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct nbd_conn *c = container_of(w, struct nbd_conn, rio);

	if (c->sp.idle_since)
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
					nbd_tx_write_ready(c);
					nbd_conn_pause_if_full(c);
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
			nbd_conn_kill(c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			nbd_conn_kill(c);
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
		if (nbd_tx_process(c) < 0)
			nbd_conn_kill(c);
		c->in_process--;
	}
	nbd_conn_close_gracefully(c);
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
			nbd_conn_kill(c);
	}
	nbd_exp_unbind(x); /* the reference this message carried */
}

void nbd_conns_drain(struct nbd_exp *x)
{
	unsigned n = gw_workers_total();

	for (unsigned i = 0; i < n; i++) {
		struct gw_worker *w = gw_worker_get(i);

		if (!w)
			continue; /* the background worker, not started: no connection there */
		atomic_fetch_add(&x->conns, 1); /* released by drain_on_worker */
		if (gw_worker_call(w, drain_on_worker, x) < 0)
			nbd_exp_unbind(x);
	}
}
