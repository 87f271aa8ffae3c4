/*
 * The VDUSE transport: the image as a virtio-blk disk of the host's own
 * kernel (/dev/vdX), with neither QEMU nor iproute2. blkgw creates the
 * device (/dev/vduse/control), serves its messages and queues, binds it to
 * the vDPA bus over the "vdpa" generic-netlink family, and on stop unbinds
 * (DEV_DEL), closes and destroys it, in that order. Requests are served by
 * the virtio-blk core (transports/virtio/), as for vhost-user-blk; this
 * transport adds only the front door. See docs/transports/vduse.md.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/virtio_config.h>
#include <stdio.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gateway/transport.h"
#include "lib/devlink.h"
#include "lib/log.h"
#include "lib/statefile.h"
#include "lib/util.h"
#include "lib/worker.h"
#include "transports/vduse/vduse_internal.h"

static void vduse_check_opts(const void *opts, struct gw_opt_report *r);

static const struct gw_opt_desc vduse_opts_table[] = {
	{ .key = "name",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct vduse_opts, name),
	  .help = "VDUSE and vdpa device name, unique on the host (default: the export's name)" },
	{ .key = "queues",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vduse_opts, queues),
	  .min = 1,
	  .max = VDUSE_MAX_QUEUES,
	  .def = 1,
	  .help = "virtqueues (virtio_blk uses at most one per CPU; default 1, at most 64)" },
	{ .key = "queue-size",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vduse_opts, queue_size),
	  .min = 4,
	  .max = VDUSE_MAX_QUEUE_SIZE,
	  .def = 128,
	  .help = "entries per virtqueue, a power of two (default 128, at most 1024)" },
	{ .key = "serial",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct vduse_opts, serial),
	  .help = "disk serial (/sys/block/vdX/serial), at most 20 bytes (default: the image name)" },
	{ .key = "msg-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vduse_opts, msg_timeout),
	  .min = 0,
	  .max = 86400,
	  .def = 0,
	  .help = "seconds the kernel waits for an answer to a device message before it breaks the "
		  "device for good (0: wait for blkgw to come back; default 0)" },
	{ .key = "poll-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vduse_opts, poll_us),
	  .min = 0,
	  .max = 1000,
	  .def = 32,
	  .help = "a busy queue polls its ring up to this long before sleeping (adaptive; 0: never; default 32)" },
	{ .key = "notify-hold-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vduse_opts, notify_hold_us),
	  .min = 0,
	  .max = 1000,
	  .def = 40,
	  .help = "hold interrupts for a driver that posts requests slowly until it is quiet this long "
		  "(adaptive; 0: never; default 40)" },
};

static bool name_ok(const char *n)
{
	if (!*n || strlen(n) >= VDUSE_NAME_MAX || strcmp(n, ".") == 0 || strstr(n, ".."))
		return false;
	for (const char *p = n; *p; p++)
		if (*p == '/' || *p <= ' ' || *p > '~')
			return false;
	return true;
}

static void vduse_check_opts(const void *opts, struct gw_opt_report *r)
{
	const struct vduse_opts *o = opts;

	if (o->name && !name_ok(o->name))
		gw_opt_problem(
			r, "name",
			"'name' must be 1 to 255 printable characters without '/', spaces or '..'");
	if (!gw_is_pow2(o->queue_size))
		gw_opt_problem(r, "queue-size", "'queue-size' must be a power of two (4 to 1024)");
	if (o->serial && strlen(o->serial) > VIRTIO_BLK_ID_BYTES)
		gw_opt_problem(r, "serial",
			       "'serial' is longer than 20 bytes (virtio-blk's GET_ID limit)");
}

static const char *dev_name(const struct vduse_opts *o, const char *image)
{
	return o->name ? o->name : image;
}

static const char *vduse_conflict(const struct gw_transport_env *env, const void *a,
				  const char *image_a, const void *b, const char *image_b,
				  char *buf, size_t len)
{
	const char *na = dev_name(a, image_a), *nb = dev_name(b, image_b);

	(void)env;
	if (strcmp(na, nb) != 0)
		return NULL;
	snprintf(buf, len, "VDUSE device name '%s' is used by two exports (set vduse.name)", na);
	return buf;
}

static void vduse_describe(const struct gw_transport_env *env, const void *opts, const char *image,
			   char *buf, size_t len)
{
	snprintf(buf, len, "VDUSE device %s (/dev/vdX, linked at %s/dev/%s)", dev_name(opts, image),
		 env->run_dir, image);
}

static int vduse_probe(const struct gw_transport_env *env, const void *opts, char *why, size_t len)
{
	const struct vduse_opts *o = opts;
	struct stat st;
	int fd;

	(void)env;
	if (stat(VDUSE_CONTROL, &st) < 0) {
		gw_seterr(why, len,
			  "the vduse kernel module is not loaded (modprobe vduse virtio_vdpa)");
		return -ENODEV;
	}
	fd = open(VDUSE_CONTROL, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;

		gw_seterr(why, len, "%s: %s (VDUSE needs root)", VDUSE_CONTROL, strerror(-rc));
		return rc;
	}
	close(fd);
	if (!gw_have_cap(CAP_NET_ADMIN)) {
		gw_seterr(
			why, len,
			"binding a VDUSE device (vdpa netlink) needs CAP_NET_ADMIN (run as root)");
		return -EPERM;
	}
	if (stat("/sys/bus/vdpa/drivers/virtio_vdpa", &st) < 0) {
		gw_seterr(
			why, len,
			"the virtio_vdpa module is not loaded (modprobe virtio_vdpa): without it no /dev/vdX appears");
		return -ENODEV;
	}
	if (stat("/sys/bus/virtio/drivers/virtio_blk", &st) < 0) {
		gw_seterr(
			why, len,
			"the virtio_blk module is not loaded (modprobe virtio_blk): without it no /dev/vdX appears");
		return -ENODEV;
	}
	if (o && o->name) {
		char p[VDUSE_NAME_MAX + 32];

		snprintf(p, sizeof(p), "/dev/vduse/%s", o->name);
		if (stat(p, &st) == 0) {
			gw_seterr(
				why, len,
				"a VDUSE device named '%s' already exists (another process's?): choose another vduse.name",
				o->name);
			return -EEXIST;
		}
	}
	return 0;
}

/* ---- the vdpa request on its own thread ---- */

static void nl_finished(void *arg)
{
	struct vduse_exp *x = arg;

	pthread_join(x->nl_thread, NULL);
	x->nl_busy = false;
	if (x->nl_add && x->nl_rc == 0)
		x->attached = true;
	if (!x->nl_add && x->nl_rc == 0)
		x->attached = false;
	x->nl_done(x);
}

static void *nl_main(void *arg)
{
	struct vduse_exp *x = arg;

	x->nl_rc = vduse_vdpa_request(x->name, x->nl_add, x->nl_err, sizeof(x->nl_err));
	if (x->nl_add && x->nl_rc == 0) {
		int rc = vduse_vdpa_disk(x->name, x->disk, sizeof(x->disk), x->nl_err,
					 sizeof(x->nl_err));

		if (rc < 0) {
			/* Attached, but useless: report it; the caller unbinds. */
			x->attached_no_disk = true;
			x->nl_disk_rc = rc;
		}
	}
	while (gw_main_call(nl_finished, x) < 0)
		usleep(1000);
	return NULL;
}

int vduse_nl_start(struct vduse_exp *x, bool add, void (*done)(struct vduse_exp *x))
{
	int rc;

	x->nl_add = add;
	x->nl_done = done;
	x->nl_rc = 0;
	x->nl_err[0] = '\0';
	x->nl_busy = true;
	rc = pthread_create(&x->nl_thread, NULL, nl_main, x);
	if (rc) {
		x->nl_busy = false;
		return -rc;
	}
	return 0;
}

static void nl_noop(struct vduse_exp *x)
{
	(void)x;
}

/* Run the vdpa request and serve the device meanwhile (start-up: before the daemon's loop). */
static int nl_run(struct vduse_exp *x, bool add)
{
	int rc = vduse_nl_start(x, add, nl_noop);

	if (rc < 0)
		return rc;
	while (x->nl_busy)
		ev_run(EV_DEFAULT, EVRUN_ONCE);
	return x->nl_rc;
}

/* ---- start and stop ---- */

static bool vdpa_bound(const char *name)
{
	char p[VDUSE_NAME_MAX + 64];
	struct stat st;

	snprintf(p, sizeof(p), "/sys/bus/vdpa/devices/%s", name);
	return stat(p, &st) == 0;
}

/* The record at the end of the log at path, checked. 0 or -errno. */
static int rec_read(const char *path, struct vduse_rec *r)
{
	struct vduse_opts o;
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	bool ok;

	memset(r, 0, sizeof(*r));
	if (fd < 0)
		return -errno;
	ok = fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(*r) &&
	     pread(fd, r, sizeof(*r), st.st_size - (off_t)sizeof(*r)) == (ssize_t)sizeof(*r);
	close(fd);
	if (!ok || memcmp(r->magic, VDUSE_REC_MAGIC, sizeof(r->magic)) != 0)
		return -EINVAL;
	r->name[sizeof(r->name) - 1] = '\0';
	r->export_id[sizeof(r->export_id) - 1] = '\0';
	memset(&o, 0, sizeof(o));
	o.queues = r->queues;
	o.queue_size = r->queue_size;
	if (!name_ok(r->name) || o.queues == 0 || o.queues > VDUSE_MAX_QUEUES || o.queue_size < 4 ||
	    o.queue_size > VDUSE_MAX_QUEUE_SIZE || !gw_is_pow2(o.queue_size) ||
	    (size_t)st.st_size != vduse_regions_len(&o) + sizeof(*r))
		return -EINVAL;
	return 0;
}

/* Device name exists and the log at path says blkgw made it: true, with the record. */
static bool survivor(const char *path, const char *name, struct vduse_rec *r)
{
	char dev[VDUSE_NAME_MAX + 16];
	struct stat st;

	snprintf(dev, sizeof(dev), "/dev/vduse/%s", name);
	return stat(dev, &st) == 0 && rec_read(path, r) == 0 && strcmp(r->name, name) == 0;
}

/*
 * Map the inflight log (x->infl_path) for x's layout: one vq_inflight region
 * per queue, then the record. fresh: start it afresh (zeros, a new record).
 */
static int log_map(struct vduse_exp *x, bool fresh, char *err, size_t errlen)
{
	size_t regions = vduse_regions_len(x->o);
	int fd, rc;
	void *p;

	x->infl_len = regions + sizeof(struct vduse_rec);
	fd = open(x->infl_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || (fresh && ftruncate(fd, 0) < 0) || ftruncate(fd, (off_t)x->infl_len) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "inflight log %s: %s", x->infl_path, strerror(-rc));
		if (fd >= 0)
			close(fd);
		return rc;
	}
	p = mmap(NULL, x->infl_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		rc = -errno;
		gw_seterr(err, errlen, "inflight log %s: mmap: %s", x->infl_path, strerror(-rc));
		return rc;
	}
	x->infl = p;
	x->rec = (struct vduse_rec *)(x->infl + regions);
	if (fresh) {
		memcpy(x->rec->magic, VDUSE_REC_MAGIC, sizeof(x->rec->magic));
		x->rec->queues = (uint16_t)x->o->queues;
		x->rec->queue_size = (uint16_t)x->o->queue_size;
		gw_strlcpy(x->rec->name, x->name, sizeof(x->rec->name));
	}
	if (x->exp)
		gw_strlcpy(x->rec->export_id, x->exp->id, sizeof(x->rec->export_id));
	return 0;
}

/* remove: the device is gone for good (not after kill -9: then the file stays). */
static void exp_free(struct vduse_exp *x, bool remove)
{
	ev_timer_stop(EV_DEFAULT, &x->gone_w);
	gw_devlink_remove(&x->link);
	if (x->infl)
		munmap(x->infl, x->infl_len);
	if (x->infl && x->infl_path && remove)
		unlink(x->infl_path);
	free(x->infl_path);
	free(x);
}

/* Undo a start: unbind if bound, then close and destroy (synchronously). */
static void undo(struct vduse_exp *x)
{
	char err[512];

	if (x->attached) {
		snprintf(err, sizeof(err), "%s", x->nl_err);
		if (nl_run(x, false) < 0)
			gw_warn("%s: %s", x->log, x->nl_err);
		snprintf(x->nl_err, sizeof(x->nl_err), "%s", err);
	}
	x->stopping = true;
	vduse_dev_stop_queues(x);
	while (x->pending)
		ev_run(EV_DEFAULT, EVRUN_ONCE);
	vduse_dev_destroy(x);
}

static void exp_init(struct vduse_exp *x, const char *name)
{
	x->o = &x->oc;
	x->ctl_fd = -1;
	x->dev_fd = -1;
	snprintf(x->name, sizeof(x->name), "%s", name);
	snprintf(x->log, sizeof(x->log), "vduse %s", x->name);
	for (unsigned i = 0; i < VDUSE_MAX_QUEUES; i++) {
		x->vq[i].x = x;
		x->vq[i].index = i;
	}
}

static int scrap_sync(const char *run_dir, const struct vduse_rec *rec, char *err, size_t errlen);
static void unbound(struct vduse_exp *x);

/* Main thread: the vdpa device's creation (VDPA_CMD_DEV_NEW) answered; start() ends here. */
static void add_done(struct vduse_exp *x)
{
	struct gw_export *e = x->exp;
	int rc = x->nl_rc == 0 && x->attached_no_disk ? x->nl_disk_rc : x->nl_rc;
	char err[sizeof(x->nl_err)];
	bool remove;

	if (x->stopping) {
		/* Given up (start-timeout) or stopped meanwhile: never announced; it goes now. */
		gw_info("export %s: the device creation given up earlier has ended; removing it",
			e->id);
		if (x->attached && vduse_nl_start(x, false, unbound) == 0)
			return;
		unbound(x);
		return;
	}
	if (rc == 0) {
		x->link = gw_devlink_set(e->env->run_dir, e->id, x->disk);
		x->rec->pid = (int32_t)getpid(); /* ours now: reclaim leaves it alone */
		e->started(e, 0, NULL);
		return;
	}
	snprintf(err, sizeof(err), "%s", x->nl_err);
	/* Keep a log that belongs to a device this start did not touch. */
	remove = !x->infl_existed || x->created;
	e->tpriv = NULL;
	undo(x);
	exp_free(x, remove && !x->destroy_failed);
	e->started(e, rc, err);
}

static int vduse_start(struct gw_export *e, char *err, size_t errlen)
{
	const struct vduse_opts *o = e->topts;
	struct vduse_exp *x = calloc(1, sizeof(*x));
	struct vduse_rec rec;
	bool remove;
	int rc;

	if (!x)
		return -ENOMEM;
	x->exp = e;
	x->oc = *o;
	exp_init(x, dev_name(o, e->id));
	if (asprintf(&x->infl_path, "%s/vduse-%s.inflight", e->env->run_dir, x->name) < 0) {
		x->infl_path = NULL;
		rc = -ENOMEM;
		goto fail;
	}
	if (survivor(x->infl_path, x->name, &rec)) {
		if (rec.pid != (int32_t)getpid() && gw_pid_alive(rec.pid)) {
			gw_seterr(err, errlen,
				  "VDUSE device %s is served by another blkgw (pid %d)", x->name,
				  rec.pid);
			rc = -EBUSY;
			goto fail;
		}
		if (e->caps & GW_CAP_EPHEMERAL) {
			/* Its data died with the old process: taken over, the disk would show other
			 * data. */
			gw_warn("%s: deleting the device left by pid %d: its image lived in that blkgw's "
				"memory, so the disk would show other data; a new, empty one replaces it",
				x->log, rec.pid);
			rc = scrap_sync(e->env->run_dir, &rec, err, errlen);
			if (rc < 0)
				goto fail;
		} else {
			x->infl_existed = true;
			if (rec.queues != o->queues || rec.queue_size != o->queue_size) {
				gw_warn("%s: the surviving device keeps its %u queue%s of %u entries "
					"until it is recreated (stop blkgw with SIGTERM, start it again)",
					x->log, rec.queues, rec.queues == 1 ? "" : "s",
					rec.queue_size);
				x->oc.queues = rec.queues;
				x->oc.queue_size = rec.queue_size;
			}
		}
	}
	rc = vblk_dev_init(&x->dev, e, o->serial, (uint16_t)x->o->queues,
			   (uint16_t)x->o->queue_size);
	if (rc < 0) {
		gw_seterr(err, errlen, "block size %u cannot be expressed in virtio-blk",
			  e->min_block);
		goto fail;
	}
	/* VDUSE requires ACCESS_PLATFORM; its config space is read-only (no CONFIG_WCE). */
	x->features = (x->dev.features | VIRTIO_BIT(VIRTIO_F_ACCESS_PLATFORM)) &
		      ~VIRTIO_BIT(VIRTIO_BLK_F_CONFIG_WCE);
	rc = log_map(x, !x->infl_existed, err, errlen);
	if (rc < 0)
		goto fail;
	rc = vduse_dev_create(x, err, errlen);
	if (rc < 0)
		goto fail;
	vduse_dev_serve(x);
	if (x->reopened && vdpa_bound(x->name)) {
		/* Still bound: find its disk, resume its queues where the log says. */
		x->attached = true;
		rc = vduse_vdpa_disk(x->name, x->disk, sizeof(x->disk), err, errlen);
		if (rc < 0)
			goto fail;
		rc = vduse_dev_resume(x);
		while (x->pending)
			ev_run(EV_DEFAULT, EVRUN_ONCE);
		if (rc < 0 || x->pending_rc < 0) {
			gw_seterr(err, errlen,
				  "cannot resume the queues of the surviving device: %s",
				  strerror(rc < 0 ? -rc : -x->pending_rc));
			rc = rc < 0 ? rc : x->pending_rc;
			goto fail;
		}
	} else {
		/*
		 * Binding (VDPA_CMD_DEV_NEW) makes the kernel read the disk's
		 * partition table through blkgw, so a stalled image wedges it: it
		 * runs on its thread, bounded by the gateway's start-timeout.
		 */
		x->rec->pid = (int32_t)getpid(); /* being made here: reclaim leaves it alone */
		rc = vduse_nl_start(x, true, add_done);
		if (rc < 0) {
			gw_seterr(err, errlen, "cannot start the vdpa request: %s", strerror(-rc));
			goto fail;
		}
		e->tpriv = x;
		return GW_START_PENDING;
	}
	x->link = gw_devlink_set(e->env->run_dir, e->id, x->disk);
	x->rec->pid = (int32_t)getpid(); /* ours now: reclaim leaves it alone */
	e->tpriv = x;
	return 0;
fail:
	/* Keep a log that belongs to a device this start did not touch. */
	remove = !x->infl_existed || x->created;
	undo(x);
	exp_free(x, remove && !x->destroy_failed);
	return rc;
}

static void scrap_end(struct vduse_exp *x);

static void stop_finish(struct vduse_exp *x)
{
	struct gw_export *e = x->exp;
	void (*done)(struct gw_export *) = x->stop_done;

	vduse_dev_destroy(x);
	if (!e) {
		scrap_end(x);
		return;
	}
	gw_info("%s: device removed", x->log);
	if (e->tpriv == x) /* a given-up start's export may be served by another transport now */
		e->tpriv = NULL;
	exp_free(x, !x->destroy_failed);
	done(e);
}

static void stop_queues_done(struct vduse_exp *x)
{
	x->queues_stopped = NULL;
	stop_finish(x);
}

static void unbound(struct vduse_exp *x)
{
	if (x->nl_rc < 0)
		gw_warn("%s: %s", x->log, x->nl_err);
	vduse_dev_stop_queues(x); /* DEV_DEL reset the device; whatever still runs stops */
	if (x->pending) {
		x->queues_stopped = stop_queues_done;
		return;
	}
	stop_finish(x);
}

/* ---- a device left behind by a dead blkgw, torn down ---- */

static void scrap_end(struct vduse_exp *x)
{
	void (*done)(void *arg, int rc) = x->scrap_done;
	void *arg = x->scrap_arg;
	int rc = x->destroy_failed ? -EBUSY : 0;

	if (rc == 0)
		gw_info("%s: device removed", x->log);
	if (rc == 0 && x->old_link && x->disk[0]) {
		char to[sizeof(x->disk)];
		ssize_t n = readlink(x->old_link, to, sizeof(to) - 1);

		if (n > 0 && (to[n] = '\0', strcmp(to, x->disk) == 0))
			unlink(x->old_link);
	}
	free(x->old_link);
	exp_free(x, rc == 0); /* a device still there keeps its record */
	done(arg, rc);
}

/* Its queues answer (every request fails): unbind it, then destroy it. */
static void scrap_resumed(struct vduse_exp *x)
{
	x->queues_stopped = NULL;
	x->stopping = true;
	if (vduse_nl_start(x, false, unbound) == 0)
		return;
	unbound(x);
}

/*
 * Tear down the device rec describes, whose blkgw is gone: reopen it, answer
 * its messages and fail every request (in flight before, or posted since)
 * with IOERR while VDPA_CMD_DEV_DEL runs (virtio_blk's removal waits for
 * them), then close and DESTROY_DEV. done(arg, rc) follows on the main
 * thread, or -errno is returned and done is not called.
 */
static int scrap_start(const char *run_dir, const struct vduse_rec *rec, bool unlink_link,
		       void (*done)(void *arg, int rc), void *arg, char *err, size_t errlen)
{
	struct vduse_exp *x = calloc(1, sizeof(*x));
	int rc;

	if (!x)
		return -ENOMEM;
	x->oc.queues = rec->queues;
	x->oc.queue_size = rec->queue_size;
	exp_init(x, rec->name);
	if (vblk_dev_init_dead(&x->dev, rec->queues, rec->queue_size) < 0 ||
	    asprintf(&x->infl_path, "%s/vduse-%s.inflight", run_dir, x->name) < 0) {
		free(x);
		return -ENOMEM;
	}
	rc = log_map(x, false, err, errlen);
	if (rc == 0)
		rc = vduse_dev_reopen(x, err, errlen);
	if (rc < 0) {
		bool tried = x->created;

		vduse_dev_destroy(x); /* works if nobody has it open or bound */
		exp_free(x, tried && !x->destroy_failed);
		return rc;
	}
	x->scrap_done = done;
	x->scrap_arg = arg;
	vduse_dev_serve(x);
	if (!vdpa_bound(x->name)) {
		stop_finish(x);
		return 0;
	}
	x->attached = true;
	if (unlink_link && rec->export_id[0] &&
	    asprintf(&x->old_link, "%s/dev/%s", run_dir, rec->export_id) < 0)
		x->old_link = NULL;
	if (x->old_link && vduse_vdpa_disk(x->name, x->disk, sizeof(x->disk), err, errlen) < 0)
		x->disk[0] = '\0';
	x->queues_stopped = scrap_resumed;
	rc = vduse_dev_resume(x);
	if (rc < 0)
		gw_warn("%s: cannot resume its queues to fail their requests (%s): its removal may "
			"wait for them",
			x->log, strerror(-rc));
	if (x->pending == 0)
		scrap_resumed(x);
	return 0;
}

struct scrap_wait {
	bool done;
	int rc;
};

static void scrap_waited(void *arg, int rc)
{
	struct scrap_wait *w = arg;

	w->rc = rc;
	w->done = true;
}

/* scrap_start, serving the main loop until it is done (start-up). */
static int scrap_sync(const char *run_dir, const struct vduse_rec *rec, char *err, size_t errlen)
{
	struct scrap_wait w = { false, 0 };
	int rc = scrap_start(run_dir, rec, false, scrap_waited, &w, err, errlen);

	if (rc < 0)
		return rc;
	while (!w.done)
		ev_run(EV_DEFAULT, EVRUN_ONCE);
	if (w.rc < 0)
		gw_seterr(
			err, errlen,
			"the VDUSE device %s left by the last blkgw could not be removed (see the "
			"log above)",
			rec->name);
	return w.rc;
}

static void reclaimed(void *arg, int rc)
{
	char *name = arg;

	if (rc < 0)
		gw_warn("vduse %s: left behind: it could not be removed (see above)", name);
	free(name);
}

/*
 * At start-up: a device recorded in the run dir that no export of this
 * daemon serves now (its blkgw is gone) is torn down, never left half-alive.
 */
static void vduse_reclaim(const struct gw_transport_env *env,
			  bool (*wanted)(void *arg, const char *id), void *arg)
{
	DIR *d = opendir(env->run_dir);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		char *path, *name, dev[VDUSE_NAME_MAX + 16], err[512];
		struct vduse_rec rec;
		struct stat st;

		if (strncmp(de->d_name, "vduse-", 6) != 0 || n <= 6 + 9 ||
		    strcmp(de->d_name + n - 9, ".inflight") != 0)
			continue;
		if (asprintf(&path, "%s/%s", env->run_dir, de->d_name) < 0)
			break;
		if (rec_read(path, &rec) < 0) {
			gw_warn("%s: not a VDUSE record this blkgw can read; left alone", path);
			free(path);
			continue;
		}
		if (rec.pid == (int32_t)getpid() || gw_pid_alive(rec.pid)) {
			free(path); /* served, here or by another blkgw */
			continue;
		}
		snprintf(dev, sizeof(dev), "/dev/vduse/%s", rec.name);
		if (stat(dev, &st) < 0) {
			gw_info("vduse %s: recorded in %s, gone", rec.name, path);
			unlink(path);
			free(path);
			continue;
		}
		free(path);
		gw_warn("vduse %s: removing the device left by pid %d for export %s, %s", rec.name,
			rec.pid, rec.export_id,
			wanted(arg, rec.export_id) ? "which now uses another device"
						   : "which is no longer served over vduse");
		name = strdup(rec.name);
		if (!name || scrap_start(env->run_dir, &rec, !wanted(arg, rec.export_id), reclaimed,
					 name, err, sizeof(err)) < 0) {
			gw_warn("vduse %s: cannot remove it: %s", rec.name,
				name ? err : "no memory");
			free(name);
		}
	}
	closedir(d);
}

/* 0.2 s after a reset, and on for 5 s: the vdpa device deleted means the disk is gone for good. */
static void gone_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct vduse_exp *x = container_of(w, struct vduse_exp, gone_w);
	char why[VDUSE_NAME_MAX + 160];

	(void)revents;
	if (x->stopping || !x->exp || !x->attached || ++x->gone_checks > 25) {
		ev_timer_stop(loop, w);
		return;
	}
	if (vdpa_bound(x->name))
		return;
	ev_timer_stop(loop, w);
	x->attached = false; /* nothing to DEV_DEL any more */
	snprintf(why, sizeof(why),
		 "its vdpa device %s (%s) was deleted behind blkgw's back (vdpa dev del)", x->name,
		 x->disk[0] ? x->disk : "no disk");
	x->exp->died(x->exp, why);
}

void vduse_reset_seen(struct vduse_exp *x)
{
	if (x->stopping || !x->exp || !x->attached)
		return;
	x->gone_checks = 0;
	if (!ev_is_active(&x->gone_w)) {
		ev_timer_init(&x->gone_w, gone_cb, 0.2, 0.2);
		ev_timer_start(EV_DEFAULT, &x->gone_w);
	}
}

static void vduse_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	struct vduse_exp *x = e->tpriv;

	ev_timer_stop(EV_DEFAULT, &x->gone_w);
	x->stop_done = done;
	x->stopping = true;
	gw_devlink_remove(&x->link);
	if (x->nl_busy)
		return; /* the pending creation ends in add_done(), which tears it down */
	if (x->attached && vduse_nl_start(x, false, unbound) == 0)
		return;
	unbound(x);
}

static void vduse_status(struct gw_export *e, struct gw_export_status *st)
{
	struct vduse_exp *x = e->tpriv;
	unsigned running = 0;

	for (unsigned i = 0; i < x->o->queues; i++)
		running += x->vq[i].running;
	snprintf(st->endpoint, sizeof(st->endpoint), "vduse %s, %u/%u queues running", x->name,
		 running, x->o->queues);
	snprintf(st->device, sizeof(st->device), "%s", x->disk);
}

const struct gw_transport_ops gw_vduse_transport = {
	.abi_version = GW_TRANSPORT_ABI,
	.name = "vduse",
	.summary = "virtio-blk disk of the host kernel (/dev/vdX) through VDUSE and virtio_vdpa",
	.schema = GW_OPT_SCHEMA(vduse_opts_table, struct vduse_opts, vduse_check_opts),
	.probe = vduse_probe,
	.conflict = vduse_conflict,
	.describe = vduse_describe,
	.start = vduse_start,
	.stop = vduse_stop,
	.status = vduse_status,
	.reclaim = vduse_reclaim,
};
