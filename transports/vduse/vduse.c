/*
 * The VDUSE transport: the image as a virtio-blk disk of the host's own
 * kernel (/dev/vdX), with neither QEMU nor iproute2. blkgw creates the
 * device (/dev/vduse/control), serves its messages and queues, binds it to
 * the vDPA bus over the "vdpa" generic-netlink family, and on stop unbinds
 * (DEV_DEL), closes and destroys it, in that order. Requests are served by
 * the virtio-blk core (transports/virtio/), as for vhost-user-blk; this
 * transport adds only the front door. See docs/transports/vduse.md.
 */
#include <errno.h>
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

/* The inflight log: one vq_inflight region per queue, in a file of the run dir. */
static int infl_open(struct vduse_exp *x, const char *run_dir, char *err, size_t errlen)
{
	struct stat st;
	int fd, rc;
	void *p;

	if (asprintf(&x->infl_path, "%s/vduse-%s.inflight", run_dir, x->name) < 0) {
		x->infl_path = NULL;
		return -ENOMEM;
	}
	x->infl_len = vq_inflight_size(x->o->queue_size) * x->o->queues;
	fd = open(x->infl_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || fstat(fd, &st) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "inflight log %s: %s", x->infl_path, strerror(-rc));
		if (fd >= 0)
			close(fd);
		return rc;
	}
	x->infl_existed = st.st_size != 0;
	if (x->infl_existed && (size_t)st.st_size != x->infl_len) {
		close(fd);
		gw_seterr(
			err, errlen,
			"inflight log %s was written for other queues or queue-size than the manifest "
			"says; a VDUSE device that survives a restart keeps its layout: restore the "
			"settings, or stop blkgw with SIGTERM first",
			x->infl_path);
		return -EINVAL;
	}
	if (ftruncate(fd, (off_t)x->infl_len) < 0) {
		rc = -errno;
		close(fd);
		gw_seterr(err, errlen, "inflight log %s: %s", x->infl_path, strerror(-rc));
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
	return 0;
}

/* remove: the device is gone for good (not after kill -9: then the file stays). */
static void exp_free(struct vduse_exp *x, bool remove)
{
	gw_devlink_remove(&x->link);
	if (x->infl)
		munmap(x->infl, x->infl_len);
	if (x->infl_path && remove)
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

static int vduse_start(struct gw_export *e, char *err, size_t errlen)
{
	const struct vduse_opts *o = e->topts;
	struct vduse_exp *x = calloc(1, sizeof(*x));
	bool remove;
	int rc;

	if (!x)
		return -ENOMEM;
	x->exp = e;
	x->o = o;
	x->ctl_fd = -1;
	x->dev_fd = -1;
	snprintf(x->name, sizeof(x->name), "%s", dev_name(o, e->id));
	snprintf(x->log, sizeof(x->log), "vduse %s", x->name);
	for (unsigned i = 0; i < VDUSE_MAX_QUEUES; i++) {
		x->vq[i].x = x;
		x->vq[i].index = i;
	}
	rc = vblk_dev_init(&x->dev, e, o->serial, (uint16_t)o->queues, (uint16_t)o->queue_size);
	if (rc < 0) {
		gw_seterr(err, errlen, "block size %u cannot be expressed in virtio-blk",
			  e->min_block);
		free(x);
		return rc;
	}
	/* VDUSE requires ACCESS_PLATFORM; its config space is read-only (no CONFIG_WCE). */
	x->features = (x->dev.features | VIRTIO_BIT(VIRTIO_F_ACCESS_PLATFORM)) &
		      ~VIRTIO_BIT(VIRTIO_BLK_F_CONFIG_WCE);
	rc = infl_open(x, e->env->run_dir, err, errlen);
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
		rc = nl_run(x, true);
		if (rc == 0 && x->attached_no_disk)
			rc = x->nl_disk_rc;
		if (rc < 0) {
			gw_seterr(err, errlen, "%s", x->nl_err);
			goto fail;
		}
	}
	x->link = gw_devlink_set(e->env->run_dir, e->id, x->disk);
	e->tpriv = x;
	return 0;
fail:
	/* Keep a log that belongs to a device this start did not touch. */
	remove = !x->infl_existed || x->created;
	undo(x);
	exp_free(x, remove);
	return rc;
}

static void stop_finish(struct vduse_exp *x)
{
	struct gw_export *e = x->exp;
	void (*done)(struct gw_export *) = x->stop_done;

	vduse_dev_destroy(x);
	gw_info("%s: device removed", x->log);
	e->tpriv = NULL;
	exp_free(x, true);
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

static void vduse_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	struct vduse_exp *x = e->tpriv;

	x->stop_done = done;
	x->stopping = true;
	gw_devlink_remove(&x->link);
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
};
