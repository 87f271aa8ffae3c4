/*
 * One NBD connection, owned by one worker thread from accept to close.
 * Private to nbd_conn.c (I/O, lifecycle), nbd_handshake.c (options) and
 * nbd_tx.c (requests and replies).
 */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"
#include "lib/coalesce.h"
#include "lib/worker.h"
#include "transports/nbd/nbd_internal.h"
#include "transports/nbd/nbd_proto.h"

enum nbd_cstate {
	CS_HS_FLAGS, /* waiting for the client's 32-bit flags */
	CS_HS_OPT,   /* option haggling */
	CS_TX,       /* transmission */
	CS_CLOSING,  /* no more requests: finish in-flight ones, flush, close */
	CS_DEAD,     /* socket closed; waiting for in-flight I/O to come back */
};

/* One piece of output: bytes to send and what to release once sent. */
struct nbd_seg {
	const void *base;
	size_t len;
	struct nbd_req *req; /* released when its last segment is sent */
	void *owned;         /* freed when sent */
};

struct nbd_conn {
	struct gw_worker *w;
	int fd;
	ev_io rio, wio;
	enum nbd_cstate state;
	struct nbd_listener *lis; /* NULL for sockets the gateway handed to a kernel */
	struct nbd_exp *x;        /* bound export (transmission) */
	struct gw_export *exp;
	uint16_t tflags;
	char peer[NBD_PEER_LEN]; /* for the log */

	/* Negotiated. */
	bool fixed;
	bool no_zeroes;
	bool structured;
	unsigned meta;   /* selected contexts: 1 << NBD_META_*_ID */
	char *meta_name; /* export the selection was made for */
	unsigned nopts;

	/* Input. */
	uint8_t *ibuf;
	size_t ipos, iend, icap;
	struct nbd_req *wr; /* write whose payload is arriving */
	uint32_t wr_have;
	uint64_t skip;        /* payload bytes to throw away */
	uint64_t skip_cookie; /* write refused early: answered once its payload is gone */
	int skip_err;         /* its -errno (0: nothing to answer) */
	uint32_t skip_opt;    /* option being discarded (reply after) */
	bool skip_is_opt;
	bool paused;   /* stopped reading: too much in flight or queued */
	bool shutting; /* server stopping: answer new requests with ESHUTDOWN */
	bool rd_on, wr_on;
	unsigned in_process;

	/* Output. */
	struct nbd_seg *oseg;
	size_t ohead, otail, ocap; /* ring of segments */
	size_t ooff;               /* bytes of oseg[ohead] already sent */
	size_t obytes;             /* queued bytes */
	struct gw_deferred flush;
	int64_t accounted; /* our share of nbd_buffered */
	uint64_t cap;      /* client-buffer */

	/* Timers: handshake or idle (tmo), waiting for the daemon-wide buffer (retry). */
	ev_timer tmo, retry;
	ev_timer ptmo;         /* payload-timeout: the write in c->wr must arrive by then */
	ev_tstamp last_active; /* last request (idle-timeout) */

	/* Socket polling (nbd_conn.c: went_idle). */
	struct gw_serial_poll sp; /* turn_reqs: requests since the last went_idle */
	bool slow;                /* its requests take too long for polling to pay */
	uint64_t busy_since;      /* ns: a request came after went_idle; 0: none */
	uint64_t svc_ns;          /* moving average: request in to reply out, serial only */

	/* Requests. */
	unsigned inflight;
	size_t inflight_bytes;
	struct nbd_req *free_reqs;
	unsigned nfree;

	struct nbd_conn *next, *prev; /* the worker's connections */
};

/* One request, from its header to its last reply byte sent. */
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
	struct gw_ext_req ext;  /* BLOCK_STATUS: the query */
	struct gw_extents exts; /* BLOCK_STATUS: its answer, in buf */
	unsigned segs;          /* queued segments still referencing this request */
	union {                 /* the reply header, as sent */
		struct nbd_simple_reply simple;
		struct nbd_chunk chunk;
		struct nbd_chunk_error error;
		struct nbd_chunk_offset_data data;
		struct nbd_chunk_offset_hole hole;
	} hdr;
};

/* ---- nbd_conn.c: output, request pool, flow control, lifecycle ---- */

/* Queue bytes of r (released when its last segment is sent) or owned (freed). */
int nbd_seg_push(struct nbd_conn *c, const void *base, size_t len, struct nbd_req *r, void *owned);
/* A zeroed request from the connection's pool, or NULL. */
struct nbd_req *nbd_req_get(struct nbd_conn *c);
void nbd_req_put(struct nbd_req *r);
/* A pool buffer of len bytes for r (r->buf, r->iov). 0 or -ENOMEM. */
int nbd_req_buf(struct nbd_req *r, size_t len);
/* May a request needing bytes of buffers go in now (daemon-wide limit)? */
bool nbd_conn_may_take(struct nbd_conn *c, uint32_t bytes);
/* Let other clients go first: continue in 20 ms. */
void nbd_conn_wait_turn(struct nbd_conn *c);
/* Stop reading until the daemon-wide buffer has room (checked every 20 ms). */
void nbd_conn_wait_buffer(struct nbd_conn *c);
/* Stop reading while too much is in flight or queued. */
void nbd_conn_pause_if_full(struct nbd_conn *c);
/* Resume reading once back under the limits. */
void nbd_conn_maybe_resume(struct nbd_conn *c);
/* Close the socket now; the connection is freed once in-flight I/O is back. */
void nbd_conn_kill(struct nbd_conn *c);
/* A write's payload starts arriving (arms payload-timeout) / is complete. */
void nbd_conn_payload_started(struct nbd_conn *c);
void nbd_conn_payload_done(struct nbd_conn *c);
/* Take no more requests; answer what is in flight, then close. */
void nbd_conn_close_gracefully(struct nbd_conn *c);
/* Close or free the connection if it has nothing left to do. */
void nbd_conn_maybe_finish(struct nbd_conn *c);

/* Queue a malloc'd buffer, freed once sent (or on failure). 0 or -ENOMEM. */
int nbd_out_own(struct nbd_conn *c, void *buf, size_t len);
/* Queue a copy of bytes (handshake and other cold paths). 0 or -ENOMEM. */
int nbd_out_copy(struct nbd_conn *c, const void *p, size_t len);
/* Send what is queued as soon as the callback returns. */
void nbd_out_kick(struct nbd_conn *c);
/* Option reply: header + data. 0 or -ENOMEM. */
int nbd_opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data, size_t len);
/* Error reply with a message. */
int nbd_opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Enter transmission bound to x (connection already counted on x). */
int nbd_conn_enter_tx(struct nbd_conn *c, struct nbd_exp *x);

/* nbd_handshake.c: consume option-phase input. 0 (need more / now transmitting) or -1 (close). */
int nbd_hs_process(struct nbd_conn *c);
/* The 18-byte greeting. */
int nbd_hs_greet(struct nbd_conn *c);

/* ---- nbd_tx.c: the transmission phase ---- */

/* Consume buffered requests. 0, or -1 to close. */
int nbd_tx_process(struct nbd_conn *c);
/* The payload of c->wr is complete: submit it. */
void nbd_tx_write_ready(struct nbd_conn *c);
