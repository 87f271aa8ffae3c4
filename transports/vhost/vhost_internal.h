/*
 * vhost-user-blk transport internals, shared by
 *   vhost.c       transport ops, option schema, the listening socket, one
 *                 frontend connection per export (main thread);
 *   vhost_msg.c   reading and validating messages, sending replies;
 *   vhost_dev.c   the message handlers: features, config, vrings;
 *   vhost_mem.c   memory table (mmaps, guest-physical and QEMU-virtual maps),
 *                 the inflight region.
 *
 * Threads: everything here runs on the main thread (EV_DEFAULT), one
 * message at a time. Queues run on workers (transports/virtio/vblk_queue.h);
 * a message that needs them (GET_VRING_BASE, a memory table change, ...)
 * posts the work, stops reading the socket, and is answered once every
 * queue has called back (c->pending == 0).
 */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "gateway/export.h"
#include "lib/sockets.h"
#include "lib/worker.h"
#include "transports/vhost/vhost_proto.h"
#include "transports/virtio/vblk_queue.h"
#include "transports/virtio/virtio_blk.h"
#include "transports/virtio/virtio_mem.h"

#define VHOST_MAX_QUEUES     64u
#define VHOST_MAX_QUEUE_SIZE 1024u
#define VHOST_MAX_MEM_SLOTS  64u

struct vhost_opts {
	char *socket;
	uint32_t queues;
	uint32_t queue_size;
	char *serial;
	struct gw_sock_perm perm; /* socket-mode, socket-owner, socket-group */
	uint32_t poll_us;
	uint32_t notify_hold_us;
	uint32_t handshake_timeout; /* seconds for a frontend's first message; 0: none */
};

/* ---- memory ---- */

/* One mmap of a frontend region; shared by the snapshots that contain it. */
struct vhost_mapping {
	unsigned refs; /* main thread only: snapshots holding it */
	void *base;
	size_t len;
	uint64_t gpa, size, uva; /* the region as the frontend described it */
	uint8_t *host;           /* gpa / uva map here */
	int guard;               /* SIGBUS guard slot (lib/guard.h), -1: sealed, none needed */
};

/* A memory table snapshot. Its lifetime is that of `gpa` (refcounted). */
struct vhost_mem {
	struct virtio_memmap *gpa; /* guest-physical: descriptor addresses */
	struct virtio_memmap *uva; /* QEMU virtual: ring addresses */
	unsigned n;
	struct vhost_mapping *m[VHOST_MAX_MEM_SLOTS];
};

/* ---- messages ---- */

struct vhost_msg {
	uint32_t request, flags, size;
	uint8_t payload[VHOST_USER_MAX_PAYLOAD] __attribute__((aligned(8)));
	int fds[VHOST_USER_MAX_FDS];
	unsigned nfds;
};

/* ---- a connection ---- */

enum vhost_enable {
	VR_ENABLE_UNSET = 0,
	VR_ENABLE_ON,
	VR_ENABLE_OFF
};

struct vhost_vring {
	uint16_t num;  /* SET_VRING_NUM (0: not yet) */
	uint16_t base; /* SET_VRING_BASE, or where the last stop ended */
	bool addr_set;
	uint64_t desc_ua, avail_ua, used_ua;
	int kick_fd, call_fd, err_fd;
	enum vhost_enable enable;
	bool running;         /* started on its worker */
	struct vblk_queue *q; /* created at first start */
	struct gw_worker *w;  /* picked at first start, kept for the connection */
};

struct vhost_exp;

struct vhost_conn {
	struct vhost_exp *x;
	int fd;
	ev_io rio;
	bool reading;

	/* Incoming message. */
	struct vhost_msg msg;
	size_t have; /* bytes of header + payload received */

	/* Negotiated. */
	uint64_t features;
	uint64_t proto;
	bool features_set;
	bool spoke; /* has sent a whole message */

	struct vhost_vring vr[VHOST_MAX_QUEUES];
	struct vhost_mem *mem; /* current table, or NULL */

	/* Inflight region (INFLIGHT_SHMFD). */
	void *infl_base;
	size_t infl_len; /* mapped bytes */
	uint8_t *infl;   /* start of queue 0's region */
	uint16_t infl_queues, infl_qsize;
	int infl_guard; /* SIGBUS guard slot of a frontend's region, or -1 */

	/* The message being answered asynchronously. */
	unsigned pending; /* queue operations still to call back */
	int pending_rc;
	uint32_t pending_req;
	bool pending_ack;       /* send a REPLY_ACK when done */
	uint64_t pending_value; /* GET_VRING_BASE: the index to report */
	uint32_t pending_index;

	bool closing;                              /* tearing down: no more messages */
	bool broken;                               /* a queue reported a malformed ring */
	unsigned stopping;                         /* queue stops outstanding during teardown */
	char name[160];                            /* "vhost-user-blk EXPORT" for logs */
	struct vhost_conn *live_next, **live_prev; /* every connection (main thread) */
};

/* ---- an export ---- */

struct vhost_exp {
	struct gw_export *exp;
	const struct vhost_opts *o;
	char *path; /* the socket */
	int lfd;
	ev_io lw;
	struct vblk_dev dev;
	struct vhost_conn *conn; /* the frontend, or NULL */
	int waiting_fd;          /* a frontend that connected while the last one was closing */
	ev_timer silent;         /* a frontend that sends nothing is closed (handshake limit) */
	ev_timer resume;         /* out of descriptors: listen again after a pause */
	/* Limits at work (status): second frontends refused, silent ones closed. */
	unsigned long long refused, silent_closed;
	bool stopping;
	void (*stop_done)(struct gw_export *exp);
};

/* ---- vhost.c ---- */
/* The connection is gone (main thread): free the slot, take a waiting frontend. */
void vhost_conn_gone(struct vhost_exp *x);

/* ---- vhost_msg.c ---- */
/* 1: a whole message in c->msg; 0: need more; -EPIPE at EOF; other -errno: bad input. */
int vhost_msg_read(struct vhost_conn *c);
/* Close every fd the message carried (handlers take the ones they keep: set to -1). */
void vhost_msg_close_fds(struct vhost_msg *m);
/* Send a reply to request req with payload (and one fd, or -1). 0 or -errno. */
int vhost_msg_reply(struct vhost_conn *c, uint32_t req, const void *payload, uint32_t size, int fd);
const char *vhost_req_name(uint32_t req);

/* ---- vhost_dev.c ---- */
/* A handler's answer: 0 done, VHOST_ASYNC waiting for queue callbacks, -EPROTO bad message, -errno
 * failed. */
#define VHOST_ASYNC 1

struct vhost_conn *vhost_conn_new(struct vhost_exp *x, int fd);
/* End the connection: stop every queue, then free (vhost_conn_gone). */
void vhost_conn_close(struct vhost_conn *c, const char *why);
/* Virtio features offered. */
uint64_t vhost_features(const struct vhost_exp *x);
uint64_t vhost_protocol_features(void);
/* Callback for queue operations a message waits on (arg: the connection). */
void vhost_op_cb(void *arg, int rc, unsigned value);
/* Log a refused message (once per message) and return rc. */
int vhost_refuse(struct vhost_conn *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- vhost_vring.c: handlers for vrings and the memory table ---- */
int vhost_h_vring_num(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_vring_addr(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_vring_base(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_get_vring_base(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_vring_fd(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_vring_enable(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_mem_table(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_add_mem(struct vhost_conn *c, struct vhost_msg *m);
int vhost_h_rem_mem(struct vhost_conn *c, struct vhost_msg *m);
/* Stop every running queue (pending++ each, callback cb). */
void vhost_stop_all(struct vhost_conn *c, vblk_queue_cb cb);
/* Forget vring state (RESET_OWNER, after the queues stopped). */
void vhost_vrings_reset(struct vhost_conn *c);
/* Enable every ring (SET_FEATURES without PROTOCOL_FEATURES). */
int vhost_enable_all(struct vhost_conn *c);

/* ---- vhost_mem.c ---- */
/*
 * Build a snapshot from `n` regions with their fds (the fds are consumed).
 * base: a snapshot whose mappings to keep (ADD_MEM_REG), or NULL; skip: a
 * mapping of base to leave out (REM_MEM_REG), or NULL. NULL with a message
 * on failure.
 */
struct vhost_mem *vhost_mem_build(const struct vhost_mem *base, const struct vhost_mapping *skip,
				  const struct vhost_mem_region *r, const int *fds, unsigned n,
				  char *err, size_t errlen);
/* Drop the main thread's reference (mappings go when no queue uses them). */
void vhost_mem_put(struct vhost_mem *m);
/* Whether base is the start of one of m's mappings; its region in *gpa, *size. */
bool vhost_mem_owns(const struct vhost_mem *m, const void *base, uint64_t *gpa, uint64_t *size);
/*
 * The SIGBUS guard's callback (main thread): the mapping at base was shrunk
 * by its frontend; close the connection that uses it.
 */
void vhost_mem_fault(void *base, size_t off);
/* The mapping of base matching a REM_MEM_REG region, or NULL. */
const struct vhost_mapping *vhost_mem_match(const struct vhost_mem *m,
					    const struct vhost_mem_region *r);
/*
 * Translate vring i's ring addresses through the QEMU-virtual map, checking
 * alignment and that each ring lies in one region. 0 or -EFAULT with a message.
 */
int vhost_rings(const struct vhost_mem *m, const struct vhost_vring *vr, struct vring_desc **desc,
		uint16_t **avail, uint8_t **used, char *err, size_t errlen);
/* GET_INFLIGHT_FD: a fresh region; *fd for the reply. 0 or -errno. */
int vhost_inflight_new(struct vhost_conn *c, uint16_t num_queues, uint16_t queue_size, int *fd,
		       uint64_t *size);
/* SET_INFLIGHT_FD: map the frontend's region (fd consumed). 0 or -errno. */
int vhost_inflight_set(struct vhost_conn *c, const struct vhost_inflight_msg *m, int fd);
void vhost_inflight_drop(struct vhost_conn *c);
/* Queue i's part of the inflight region for a ring of num entries, or NULL. */
struct vq_inflight *vhost_inflight_queue(struct vhost_conn *c, unsigned i, uint16_t num);
