/*
 * NBD transport internals shared by nbd.c (transport ops, listeners,
 * main thread), nbd_handshake.c (option haggling) and nbd_conn.c
 * (connections and the transmission phase, on workers).
 *
 * Lifetimes: a listener is refcounted (the transport holds one reference
 * while exports use it, each connection another); an nbd_exp lives from
 * start() until its last bound connection is gone after stop().
 * Lock order: nbd_listener.lock is a leaf lock.
 */
#pragma once

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "gateway/export.h"
#include "lib/sockets.h"
#include "lib/worker.h"

#define NBD_MAX_LISTEN_FDS 8
#define NBD_PEER_LEN       64 /* "[ipv6]:port" or "pid N uid U" */

struct nbd_opts {
	char *socket; /* unix socket path */
	char *listen; /* HOST:PORT */
	char *name;   /* export name on the wire (default: image name) */
	char *description;
	struct gw_sock_perm perm; /* socket-mode, socket-owner, socket-group */
	uint32_t poll_us;         /* longest socket polling window after a reply */
	/* Limits (docs/reliability.md). */
	uint32_t max_connections;   /* per socket/address, handshakes included; 0: none */
	uint32_t handshake_timeout; /* seconds to reach transmission; 0: none */
	uint32_t idle_timeout;      /* seconds without a request before closing; 0: never */
	uint32_t payload_timeout;   /* seconds for a write's payload to arrive; 0: none */
	uint64_t client_buffer;     /* request data in flight + unsent replies, per client */
	/* Kernel attach (/dev/nbdN through the nbd generic-netlink family). */
	bool attach;
	char *device;               /* "/dev/nbdN" to use; NULL: the kernel picks */
	uint32_t connections;       /* sockets handed to the kernel */
	uint32_t timeout;           /* seconds; 0: the kernel's default */
	uint32_t dead_conn_timeout; /* seconds the kernel waits for a reconnect */
};

struct nbd_exp;

/* What RUN-DIR/nbd/N.state records of an attached device (one line). */
struct nbd_rec {
	uint32_t index;      /* /dev/nbd<index> */
	int pid;             /* the blkgw that attached or last reattached it */
	uint64_t size;       /* bytes */
	uint32_t block_size; /* bytes */
	uint32_t flags;      /* transmission flags handed to the kernel */
	uint32_t conns;      /* sockets the kernel holds */
	char backend_id[96]; /* NBD_ATTR_BACKEND_IDENTIFIER, no blanks */
	char export_id[256];
};

struct nbd_listener {
	char *key; /* "unix:/path" or "tcp:host:port" */
	bool is_unix;
	bool exposed;   /* tcp: bound to an address beyond loopback */
	char *path;     /* unix */
	char *hostport; /* tcp */
	struct gw_sock_perm perm;
	int fds[NBD_MAX_LISTEN_FDS];
	ev_io w[NBD_MAX_LISTEN_FDS];
	unsigned nfds;
	atomic_uint refs;
	atomic_bool closed; /* no longer accepting; handshakes in progress end */
	/* Limits, from the first export's options (shared listeners must agree). */
	uint32_t max_conns, hs_timeout;
	atomic_uint nconns; /* open connections, handshakes included */
	ev_timer resume;    /* out of descriptors: listen again after a pause */
	/* Counted for status. */
	atomic_ullong refused_max, refused_fds, hs_timeouts, idle_timeouts, payload_timeouts;
	pthread_mutex_t lock; /* guards exps */
	struct nbd_exp **exps;
	unsigned nexps, cap;
	struct nbd_listener *next; /* main thread's list */
};

struct nbd_exp {
	struct gw_export *exp;
	const struct nbd_opts *o;
	const char *name; /* wire name */
	struct nbd_listener *lis[2];
	unsigned nlis;
	atomic_uint conns; /* bound connections */
	atomic_bool stopping;
	atomic_bool done_posted;
	void (*stop_done)(struct gw_export *exp);
	/* Socket polling left off for slow requests (nbd_conn.c: went_idle), for status. */
	atomic_ullong poll_slow_stops, poll_slow_resumes;
	atomic_uint poll_slow_conns; /* connections not polled for that now */
	int dev_index;               /* attached /dev/nbdN, or -1 */
	char *dev_link;              /* RUN-DIR/dev/IMAGE -> /dev/nbdN */
	/* The kernel attach, on a thread of its own (it may block in the kernel). */
	pthread_t attach_thread;
	int attach_kfds[16];
	unsigned attach_n;
	int attach_rc;
	uint32_t attach_index;
	uint64_t attach_bs;
	char attach_err[256];
	/*
	 * Reattaching after a restart: the device a previous daemon recorded in
	 * RUN-DIR/nbd/N.state for this export (reuse: RECONFIGURE it), or one to
	 * disconnect before attaching anew (drop_index >= 0).
	 */
	bool reuse, reattached;
	int drop_index;
	struct nbd_rec *prev;
	char backend_id[96];   /* NBD_ATTR_BACKEND_IDENTIFIER of this attach */
	unsigned kernel_conns; /* sockets the kernel holds (for in_use) */
	/*
	 * While serving: connections to the kernel still open (any thread), and
	 * when blkgw last handed the device fresh ones for lost ones (main).
	 */
	atomic_int kconns_live;
	uint64_t repair_ns[4];
};

/* ---- nbd.c ---- */
void nbd_listener_put(struct nbd_listener *l);
/*
 * Find an export by wire name ("" = the listener's first) and take a
 * reference on it (x->conns), or NULL. Release with nbd_exp_unbind().
 */
struct nbd_exp *nbd_listener_get(struct nbd_listener *l, const char *name, size_t len);
/* Names of the listener's exports, for LIST; calls fn under the lock. */
void nbd_listener_each(struct nbd_listener *l, void (*fn)(void *arg, struct nbd_exp *x), void *arg);
/* Drop a reference from nbd_listener_get() or a drain message. Any thread. */
void nbd_exp_unbind(struct nbd_exp *x);
/* A connection to the kernel (attach) ended; x still bound. Any thread. */
void nbd_exp_kernel_conn_gone(struct nbd_exp *x);
/* Transmission flags for this export. */
uint16_t nbd_tflags(const struct nbd_exp *x, bool structured);

/* Daemon-wide bytes of request data in flight and unsent replies (nbd_conn.c). */
extern atomic_llong nbd_buffered;
extern uint64_t nbd_buffer_limit;
/* NBD connections open, all listeners (nbd_conn.c), and how many the descriptor limit allows. */
extern atomic_uint nbd_conns_total;
extern unsigned nbd_conn_budget;

/* ---- nbd_conn.c ---- */
/* Serve an accepted socket on worker w (runs on w through gw_worker_call). */
void nbd_conn_accept(struct gw_worker *w, int fd, struct nbd_listener *l, const char *peer);
/*
 * Serve a socket whose other end goes to the kernel: no handshake, simple
 * replies, bound to x (the caller took the x->conns reference and w's load).
 */
void nbd_conn_attach(struct gw_worker *w, int fd, struct nbd_exp *x);
/* On every worker: finish and close the connections of x; close handshakes on closed listeners. */
void nbd_conns_drain(struct nbd_exp *x);
