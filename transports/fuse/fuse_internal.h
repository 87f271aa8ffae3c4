/*
 * The FUSE transport's internals: one export = one FUSE connection whose
 * only node is the root, a regular file (the image). Requests are decoded
 * once (fuse_ops.c) whatever carried them: a cloned /dev/fuse fd per worker
 * (fuse_dev.c, the read loop) or FUSE-over-io_uring queues on the workers'
 * rings (fuse_uring.c).
 */
#pragma once

#include <linux/fuse.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "gateway/export.h"
#include "lib/coalesce.h"
#include "lib/kernel_defs.h"
#include "lib/worker.h"

#define FUSE_MAX_WRITE  (1u << 20) /* 256 pages: the kernel's default max_pages limit */
#define FUSE_MAX_QUEUES 64

enum fuse_mode {
	FUSE_MODE_READ = 0, /* cloned /dev/fuse fds, read() and writev() */
	FUSE_MODE_URING,    /* FUSE-over-io_uring (kernel 6.14+) */
};

struct fuse_opts {
	char *path;       /* the regular file the image is mounted onto */
	bool allow_other; /* let other users open it (mount option allow_other) */
	char *io_uring;   /* "auto", "on", "off" */
	uint32_t queues;  /* read loop: cloned fds (0 = one per worker) */
	uint32_t poll_us; /* io_uring: longest ring polling window for a serial client */
};

struct fuse_exp;
struct fuse_req;

/* One queue on one worker: a cloned fd, or a set of io_uring ring entries. */
struct fuse_queue {
	struct fuse_exp *x;
	struct gw_worker *w;
	unsigned id;
	int fd; /* the cloned /dev/fuse fd this queue reads (read loop) */
	ev_io watcher;
	struct fuse_req *free; /* request slots not in use */
	struct fuse_req *all;  /* every slot, for freeing */
	unsigned nreq, inflight;
	bool stopping, dead, eof;
	void (*reply)(struct fuse_req *r, int err, const void *arg, size_t arglen, const void *data,
		      size_t datalen);
	/* io_uring mode: ring entries of the kernel queues this worker serves */
	struct fuse_req *ents;
	unsigned nent;
	unsigned armed;               /* entries in the kernel (waiting for a request) */
	unsigned busy;                /* entries holding a request here */
	uint64_t ring_reqs, dev_reqs; /* requests taken from the ring / read from the fd (status) */
	/* io_uring mode, polling for a serial client (fuse_uring.c) */
	struct gw_serial_poll sp;  /* idle_since: when the last busy entry was answered */
	bool polling;              /* the worker polls for this queue's next request */
	int client_cpu;            /* the kernel queue (= the client's CPU) of the last request */
	uint64_t polls, poll_hits; /* windows opened, and those a request ended early (status) */
	uint64_t poll_same_cpu;    /* windows not opened: the client ran on the worker's CPU */
};

/* One request slot: its buffers and the backend request in flight. */
struct fuse_req {
	struct fuse_queue *q;
	struct fuse_req *next;
	struct gw_io io;
	struct iovec iov;
	uint64_t unique;
	uint32_t opcode;
	uint64_t skip;   /* READ: bytes of the aligned read before the requested offset */
	uint32_t want;   /* READ: bytes asked for (after EOF clipping); WRITE: bytes */
	uint8_t *bounce; /* misaligned buffered WRITE: the aligned blocks around it */
	struct iovec rmw_iov;
	uint32_t wflags;
	bool rmw_wrote;
	/* read loop: header area, then the data buffer (readv of both) */
	_Alignas(8) uint8_t hdr[sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in)];
	_Alignas(8) uint8_t arg[256]; /* arguments that spilled into the data buffer, contiguous */
	uint8_t *data;                /* page-aligned, FUSE_DATA_BUF bytes */
	/* io_uring mode */
	struct fuse_uring_req_header *uhdr;
	struct iovec uiov[2]; /* REGISTER: header buffer, payload buffer (= data) */
	struct gw_uring_cb ucb;
	unsigned qid;
};

struct fuse_exp {
	struct gw_export *exp;
	const struct fuse_opts *o;
	char *path;
	int devfd; /* the mount's /dev/fuse fd (INIT, and what keeps it alive) */
	enum fuse_mode mode;
	bool mounted;
	uint32_t max_write;
	size_t data_buf; /* bytes of each request's data buffer */
	uint32_t uid, gid, mode_bits;
	uint64_t start_time; /* the file's times: when it was mounted */
	unsigned nq, nq_running;
	struct fuse_queue *qs;
	unsigned kernel_queues; /* io_uring: the kernel's queue count (possible CPUs) */
	unsigned depth;         /* io_uring: entries per kernel queue */
	void (*stop_done)(struct gw_export *e);
	bool stopping;
	bool warned_truncate;
	char why_read[200]; /* io-uring auto: why the read loop serves */
	int uring_failed;   /* errno the kernel refused a ring entry with (atomic) */
};

/* Answer r: an error (arg and data ignored), or arg then data as the reply. */
void fuse_dev_reply(struct fuse_req *r, int err, const void *arg, size_t arglen, const void *data,
		    size_t datalen);
void fuse_uring_reply(struct fuse_req *r, int err, const void *arg, size_t arglen, const void *data,
		      size_t datalen);
static inline void fuse_reply(struct fuse_req *r, int err, const void *arg, size_t arglen,
			      const void *data, size_t datalen)
{
	if (r->uhdr)
		fuse_uring_reply(r, err, arg, arglen, data, datalen);
	else
		fuse_dev_reply(r, err, arg, arglen, data, datalen);
}

/* fuse_ops.c: decode one request and answer it (now or when the backend completes). */
void fuse_dispatch(struct fuse_req *r, const struct fuse_in_header *in, const void *arg,
		   size_t arglen, void *payload, size_t paylen);
/* A request slot is free again (queue bookkeeping). */
void fuse_req_done(struct fuse_req *r);

/* fuse_dev.c: the read loop on cloned fds. */
int fuse_dev_start(struct fuse_exp *x, char *err, size_t errlen);
/* fuse_uring.c: FUSE over io_uring. */
int fuse_uring_available(char *why, size_t len);
int fuse_uring_start(struct fuse_exp *x, char *err, size_t errlen);
/* Any queue: gone once nothing is in flight and no entry is in the kernel. */
void fuse_queue_check_gone(struct fuse_queue *q);
/* Both: stop every queue, then call fuse_queues_gone(x) on the main thread. */
void fuse_queues_stop(struct fuse_exp *x);
void fuse_queue_gone(struct fuse_queue *fq); /* any worker: this queue is finished */
void fuse_queue_free(struct fuse_queue *q);
