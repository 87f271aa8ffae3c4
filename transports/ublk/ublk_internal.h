/*
 * ublk transport internals: options, the per-device state shared by its
 * control thread and its queue threads, and the parts that are plain
 * functions of their inputs (parameters, request decoding, the state file)
 * so the unit tests can check them without a kernel.
 *
 * Threads (docs/architecture.md): the main thread runs the transport ops and
 * the quick control commands (GET_FEATURES, ADD_DEV, SET_PARAMS); one
 * control thread per device runs the commands that block (START_DEV,
 * END_USER_RECOVERY, STOP_DEV, DEL_DEV); one thread per queue owns that
 * queue's io_uring, on which both the ublk commands and the backend's own
 * work (the file backend's reads and writes) are submitted.
 */
#pragma once

#include <sys/ioctl.h>
#include <linux/ublk_cmd.h>
#include "lib/kernel_defs.h"

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backends/backend.h"
#include "gateway/export.h"
#include "lib/coalesce.h"
#include "lib/ioq.h"

#define UBLK_CONTROL_PATH "/dev/ublk-control"
#define UBLK_MAX_QUEUES   64
#define UBLK_ID_AUTO      UINT32_MAX

struct ublk_opts {
	char *id; /* "-1"/"auto" or a device number */
	uint32_t queues;
	uint32_t depth;
	uint64_t max_io;
	uint32_t poll_us;
};

/* "-1", "auto" -> UBLK_ID_AUTO; "N" -> N (< 1<<20). 0 or -EINVAL. */
int ublk_parse_id(const char *s, uint32_t *out);

/* ---- control commands (ublk_ctrl.c) ---- */

struct ublk_ctrl {
	int fd;               /* /dev/ublk-control */
	struct io_uring ring; /* SQE128 */
	bool ring_ok;
};

int ublk_ctrl_open(struct ublk_ctrl *c);
void ublk_ctrl_close(struct ublk_ctrl *c);
/*
 * One control command, synchronously: op a UBLK_U_CMD_*, buf/len its
 * payload (addr/len), data0 the inline value. Returns cqe->res (>= 0) or
 * -errno.
 */
int ublk_ctrl_cmd(struct ublk_ctrl *c, uint32_t op, uint32_t dev_id, void *buf, uint16_t len,
		  uint64_t data0);
int ublk_ctrl_features(struct ublk_ctrl *c, uint64_t *features);
int ublk_ctrl_dev_info(struct ublk_ctrl *c, uint32_t dev_id, struct ublksrv_ctrl_dev_info *info);
/* GET_QUEUE_AFFINITY: the CPUs whose requests land on queue qid. */
int ublk_ctrl_queue_affinity(struct ublk_ctrl *c, uint32_t dev_id, uint16_t qid, cpu_set_t *cpus);

/* Fill an SQE (zeroed, of a ring created with or without SQE128) with a uring_cmd. */
void ublk_prep_cmd(struct io_uring_sqe *sqe, int fd, uint32_t op, const void *cmd, size_t len);

/* ---- pure parts (ublk_proto.c) ---- */

/*
 * What GET_FEATURES answered is enough for blkgw (USER_RECOVERY and
 * USER_RECOVERY_REISSUE: a device must survive a daemon restart)? 0, or
 * -EOPNOTSUPP with a message naming what is missing and the fix.
 */
int ublk_check_features(uint64_t features, char *err, size_t errlen);

/* "0-3,6" for a CPU set (empty: ""). */
void ublk_cpus_format(const cpu_set_t *cpus, char *buf, size_t len);

/*
 * The parameters for an export: block sizes, size, max I/O, cache and FUA
 * attributes, discard and write-zeroes limits. 0 or -EINVAL with a message.
 */
int ublk_build_params(const struct gw_export *e, uint32_t max_io, struct ublk_params *p, char *err,
		      size_t errlen);

/*
 * Decode the descriptor of one request into io (op, flags, offset, len; the
 * data goes to/from buf, buf_len bytes). 0, or -errno to complete the
 * request with (unknown op, too long).
 */
int ublk_decode(const struct ublksrv_io_desc *iod, void *buf, uint32_t buf_len, struct gw_io *io,
		struct iovec *iov);
/*
 * Whether the device GET_DEV_INFO described (recorded as dev_id in the run
 * dir) can be taken over: NULL, or why not (never started, no user
 * recovery, geometry blkgw never makes: the queues are sized by it).
 */
const char *ublk_info_unfit(const struct ublksrv_ctrl_dev_info *info, uint32_t dev_id);
/* GET_PARAMS' answer (have) fits the export's parameters (want): size, block size, read-only. */
bool ublk_params_match(const struct ublk_params *have, const struct ublk_params *want);
/* The COMMIT result for a finished request: bytes for READ/WRITE, else 0, or -errno. */
int ublk_result(const struct gw_io *io);

/* What the run dir keeps per device so a restarted daemon can recover it. */
struct ublk_state {
	uint32_t dev_id;
	int pid; /* the daemon serving it */
	uint32_t queues, depth, max_io;
	char export_id[256];
};

/* "dev_id pid queues depth max_io export_id\n" (one line, the id last). */
int ublk_state_format(const struct ublk_state *s, char *buf, size_t len);
int ublk_state_parse(const char *buf, struct ublk_state *s);

/* ---- devices and queues (ublk.c, ublk_queue.c) ---- */

struct ublk_dev;
struct ublk_queue;

struct ublk_tag {
	struct gw_uring_cb cb; /* the FETCH / COMMIT_AND_FETCH command */
	struct gw_io io;
	struct iovec iov;
	struct ublk_queue *q;
	uint16_t tag;
	bool live; /* a command of ours is with the kernel */
};

struct ublk_queue {
	struct ublk_dev *d;
	uint16_t id;
	pthread_t thread;
	bool started;
	struct gw_ioq ioq;
	const struct ublksrv_io_desc *iods; /* mmap of /dev/ublkcN, read-only */
	size_t iods_len;
	uint8_t *bufs; /* depth x max_io, page-aligned */
	struct ublk_tag *tags;
	unsigned live; /* tags with a command of ours pending */
	unsigned busy; /* tags with the backend */
	bool ring_ok;
	/* Polling for a queue-depth-1 client (see ublk_queue.c) */
	struct gw_serial_poll sp; /* idle_since: when the last answer left */
	bool polled;              /* the window opened once (logged) */
	int quit_fd;              /* eventfd: the control thread asks the thread to end */
	struct gw_uring_cb quit_cb;
	bool quit;
	cpu_set_t cpus; /* GET_QUEUE_AFFINITY's answer, applied to the thread */
	bool have_cpus;
	int init_rc; /* set before the thread reports ready (under the device lock) */
	bool ready;
};

struct ublk_dev {
	struct gw_export *exp;
	struct ublk_ctrl ctrl;
	uint32_t dev_id;
	uint16_t nr_queues, depth;
	uint32_t max_io;
	uint32_t poll_us; /* the poll-us option */
	uint64_t flags;   /* what ADD_DEV returned */
	int cdev_fd;      /* /dev/ublkcN */
	struct ublk_queue q[UBLK_MAX_QUEUES];
	bool recovered; /* taken over from a dead daemon */
	int old_pid;
	char *state_path;
	char *dev_link;

	/* the control thread */
	pthread_t ctl_thread;
	bool ctl_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop_requested;
	bool live;        /* START_DEV / END_USER_RECOVERY succeeded */
	bool queue_ended; /* a queue thread ended without being told to */
	char ctl_err[256];
	int start_rc; /* the control thread's verdict: 0 live, or -errno (ctl_err) */
	bool verdict; /* main thread: start_rc is known */
	void (*stop_done)(struct gw_export *e);
};

int ublk_queue_start(struct ublk_dev *d, unsigned qid, char *err, size_t errlen);
/*
 * On the queue's thread, q->tags allocated: give tag its completion callback
 * and queue its first FETCH_REQ (submitted with the queue's next submit).
 * Each completion of its commands then runs the request the kernel put in
 * q->iods[tag] through the export and queues the COMMIT_AND_FETCH_REQ.
 */
void ublk_tag_arm(struct ublk_queue *q, uint16_t tag);
void ublk_queue_quit(struct ublk_queue *q);
void ublk_queue_join(struct ublk_queue *q);
