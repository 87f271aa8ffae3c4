/*
 * VDUSE transport internals, shared by
 *   vduse.c        transport ops, option schema, probe, start/stop, status;
 *   vduse_dev.c    the device: create/open/destroy, the message loop
 *                  (GET_VQ_STATE, SET_STATUS, UPDATE_IOTLB), queue start/stop;
 *   vduse_iotlb.c  IOVA mappings (IOTLB_GET_FD mmaps) and the snapshots the
 *                  queues translate descriptors with;
 *   vduse_vdpa.c   binding: the "vdpa" generic-netlink family (DEV_NEW,
 *                  DEV_DEL) and what sysfs says about the binding.
 *
 * Threads: everything here runs on the main thread (EV_DEFAULT) except the
 * queues (workers, transports/virtio/vblk_queue.h), their interrupt
 * injection (VQ_INJECT_IRQ, on the queue's worker) and the vdpa netlink
 * requests, which run on a short-lived thread: the kernel sends the device
 * messages (and virtio_blk does its first I/O) while DEV_NEW or DEV_DEL is
 * in progress, and the main thread must be free to answer them.
 */
#pragma once

#include <ev.h>
#include <linux/vduse.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "gateway/export.h"
#include "lib/worker.h"
#include "transports/virtio/vblk_queue.h"
#include "transports/virtio/virtio_blk.h"
#include "transports/virtio/virtio_mem.h"

#define VDUSE_MAX_QUEUES     64u
#define VDUSE_MAX_QUEUE_SIZE 1024u
#define VDUSE_MAX_MAPS       64u /* IOVA regions mapped at once */
#define VDUSE_CONTROL        "/dev/vduse/control"

struct vduse_opts {
	char *name;
	uint32_t queues;
	uint32_t queue_size;
	char *serial;
	uint32_t msg_timeout;
	uint32_t poll_us;
	uint32_t notify_hold_us;
};

/*
 * What the run dir records of a device: the trailer of its inflight log
 * (RUN-DIR/vduse-NAME.inflight = one vq_inflight region per queue, then
 * this). It says whose device it is, so a restarted blkgw takes over only
 * its own, deletes one whose data is gone, and removes one the manifest no
 * longer wants.
 */
#define VDUSE_REC_MAGIC "blkgwVD1"
struct vduse_rec {
	char magic[8];
	int32_t pid; /* the blkgw serving it; 0 until a start succeeded */
	uint16_t queues, queue_size;
	char export_id[256];
	char name[VDUSE_NAME_MAX];
};

static inline size_t vduse_regions_len(const struct vduse_opts *o)
{
	return vq_inflight_size(o->queue_size) * o->queues;
}

/* ---- vduse_iotlb.c ---- */

/* One IOTLB_GET_FD mmap: [start, last] at host; shared by snapshots. */
struct vduse_map {
	atomic_uint refs;
	uint64_t start, last;
	void *base; /* the mmap */
	size_t len;
	uint8_t *host; /* where start is */
};

/*
 * The device's ioctls (VQ_GET_INFO, IOTLB_GET_FD, ...): ioctl(2), unless a
 * program playing the kernel (tests/fuzz/fuzz_vduse.c) set its own. Returns
 * as ioctl(2) does: >= 0, or -1 with errno.
 */
typedef int (*vduse_ioctl_fn)(int fd, unsigned long req, void *arg);

struct vduse_iotlb {
	int fd;               /* the device */
	vduse_ioctl_fn ioctl; /* NULL: ioctl(2) */
	unsigned n;
	struct vduse_map *m[VDUSE_MAX_MAPS]; /* the cache, main thread */
};

/* ioctl req on fd, through t->ioctl when set. */
int vduse_ioctl(const struct vduse_iotlb *t, int fd, unsigned long req, void *arg);
/* The cached mapping holding [iova, iova + len), fetched with IOTLB_GET_FD if missing. */
int vduse_iotlb_need(struct vduse_iotlb *t, uint64_t iova, uint64_t len, char *err, size_t errlen);
/* Drop cached mappings overlapping [start, last] (UPDATE_IOTLB); all when start > last. */
void vduse_iotlb_drop(struct vduse_iotlb *t, uint64_t start, uint64_t last);
/*
 * Make sure the bounce region [0, size) is mapped (after the rings: it may be
 * reached through their file before the kernel lists it).
 */
int vduse_iotlb_bounce(struct vduse_iotlb *t, uint64_t size, char *err, size_t errlen);
/* A snapshot of the cache for the queues (one reference), or NULL. */
struct virtio_memmap *vduse_iotlb_snapshot(struct vduse_iotlb *t);

/* ---- vduse_vdpa.c ---- */

/* Add (true) or delete the vdpa device `name` of management device "vduse". */
int vduse_vdpa_request(const char *name, bool add, char *err, size_t errlen);
/*
 * After DEV_NEW: which driver took it. 0 with dev = "/dev/vdX" when
 * virtio_blk made a disk; -errno with a reason naming the fix otherwise
 * (vhost_vdpa took it, virtio_vdpa is not loaded, no disk appeared).
 */
int vduse_vdpa_disk(const char *name, char *dev, size_t devlen, char *err, size_t errlen);

/* ---- the device ---- */

struct vduse_exp;

struct vduse_vq {
	struct vduse_exp *x;
	unsigned index;
	bool running;
	uint16_t base;        /* where the last stop ended */
	struct vblk_queue *q; /* created at first start */
	struct gw_worker *w;
};

struct vduse_exp {
	struct gw_export *exp;      /* NULL while tearing down a device left behind */
	const struct vduse_opts *o; /* = &oc */
	struct vduse_opts oc;       /* the manifest's, or the surviving device's layout */
	char name[VDUSE_NAME_MAX];
	char log[VDUSE_NAME_MAX + 16]; /* "vduse NAME" */
	struct vblk_dev dev;
	uint64_t features; /* offered */
	int ctl_fd;        /* /dev/vduse/control */
	int dev_fd;        /* /dev/vduse/NAME */
	ev_io dev_w;
	bool created, attached;
	struct vduse_iotlb iotlb;
	struct virtio_memmap *mem; /* the queues' current snapshot */
	uint8_t status;            /* device status the kernel recorded */
	struct vduse_vq vq[VDUSE_MAX_QUEUES];

	/* A message answered once the queues called back. */
	struct vduse_dev_request req;
	bool req_pending;
	unsigned pending;
	int pending_rc;
	void (*queues_stopped)(struct vduse_exp *x); /* pending reached 0 outside a message */

	/* The vdpa netlink request on its thread. */
	pthread_t nl_thread;
	bool nl_busy, nl_add;
	int nl_rc;
	bool attached_no_disk; /* DEV_NEW worked but no /dev/vdX came of it */
	int nl_disk_rc;
	char nl_err[512];
	void (*nl_done)(struct vduse_exp *x);

	/* The inflight log (RUN-DIR/vduse-NAME.inflight, MAP_SHARED: survives kill -9). */
	char *infl_path;
	uint8_t *infl;
	size_t infl_len;
	bool infl_existed;     /* left by an earlier blkgw */
	bool reopened;         /* the device survived that blkgw: serve it again */
	struct vduse_rec *rec; /* in the log's mapping */
	bool destroy_failed;   /* DESTROY_DEV refused: keep the record */

	/* Tearing down a device left behind (vduse_scrap_start). */
	void (*scrap_done)(void *arg, int rc);
	void *scrap_arg;
	char *old_link; /* RUN-DIR/dev/ID of its export: removed if it points at its disk */

	char disk[64]; /* "/dev/vdX" */
	char *link;    /* RUN-DIR/dev/ID */
	/* After a reset while serving: is the vdpa device still there? (vduse_reset_seen) */
	ev_timer gone_w;
	unsigned gone_checks;
	bool stopping;
	void (*stop_done)(struct gw_export *exp);
};

/*
 * The driver reset the device while it served (main thread): a `vdpa dev
 * del` behind blkgw's back resets it first, then removes the vdpa device;
 * vduse.c looks for that for a few seconds and reports the export dead.
 */
void vduse_reset_seen(struct vduse_exp *x);
/* Create the device and open it (EEXIST: -EEXIST with a message). */
int vduse_dev_create(struct vduse_exp *x, char *err, size_t errlen);
/* Open an existing device (to tear it down): control, then /dev/vduse/NAME. */
int vduse_dev_reopen(struct vduse_exp *x, char *err, size_t errlen);
/* Start serving its messages on the main loop. */
void vduse_dev_serve(struct vduse_exp *x);
/*
 * A device that survived the last blkgw: start its ready queues (inflight
 * recovery, resubmission, self-kick). Returns how many calls are pending.
 */
int vduse_dev_resume(struct vduse_exp *x);
/* Stop every running queue, callback vduse_dev_queues_stopped() when all did. */
void vduse_dev_stop_queues(struct vduse_exp *x);
/* Stop serving, close the device, DESTROY_DEV (after DEV_DEL). */
void vduse_dev_destroy(struct vduse_exp *x);
/* Run the vdpa request on its thread; done(x) on the main thread. */
int vduse_nl_start(struct vduse_exp *x, bool add, void (*done)(struct vduse_exp *x));
