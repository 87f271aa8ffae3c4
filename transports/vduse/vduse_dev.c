/*
 * The VDUSE device: creation through /dev/vduse/control, its message loop
 * on the main thread, and its queues on the workers.
 *
 * Messages (protocols.md §3.1): GET_VQ_STATE, SET_STATUS (DRIVER_OK starts
 * the queues; 0 resets: queues stop, mappings go), UPDATE_IOTLB (mappings in
 * the range go; running queues switch to a new snapshot). A message that
 * needs the queues is answered once they all called back; the device fd is
 * not read meanwhile, so messages are handled one at a time and the main
 * thread never waits for I/O.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/vduse/vduse_internal.h"

#define VDUSE_VQ_ALIGN 4096

/* ---- creation ---- */

static void set_msg_timeout(struct vduse_exp *x)
{
	char path[VDUSE_NAME_MAX + 64], v[32];
	int fd, n;

	snprintf(path, sizeof(path), "/sys/class/vduse/%s/msg_timeout", x->name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	n = snprintf(v, sizeof(v), "%u\n", x->o->msg_timeout);
	if (fd < 0 || write(fd, v, (size_t)n) != n)
		gw_warn("%s: cannot set msg_timeout to %u s (%s): the kernel's default applies",
			x->log, x->o->msg_timeout, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static int ctl_open(struct vduse_exp *x, char *err, size_t errlen)
{
	uint64_t version = 0;
	int rc;

	x->ctl_fd = open(VDUSE_CONTROL, O_RDWR | O_CLOEXEC);
	if (x->ctl_fd < 0) {
		rc = -errno;
		if (rc == -ENOENT)
			gw_seterr(
				err, errlen,
				"%s is missing: the vduse kernel module is not loaded (modprobe vduse)",
				VDUSE_CONTROL);
		else if (rc == -EACCES || rc == -EPERM)
			gw_seterr(err, errlen, "%s: permission denied (run as root)",
				  VDUSE_CONTROL);
		else
			gw_seterr(err, errlen, "%s: %s", VDUSE_CONTROL, strerror(-rc));
		return rc;
	}
	if (ioctl(x->ctl_fd, VDUSE_SET_API_VERSION, &version) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "VDUSE_SET_API_VERSION 0: %s", strerror(-rc));
		return rc;
	}
	return 0;
}

/* Open /dev/vduse/NAME: one opener at a time, and a killed blkgw's fd may take a moment to go. */
static int dev_open(struct vduse_exp *x, char *err, size_t errlen)
{
	char path[VDUSE_NAME_MAX + 16];
	int rc;

	snprintf(path, sizeof(path), "/dev/vduse/%s", x->name);
	for (int i = 0; i < 250; i++) {
		x->dev_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
		if (x->dev_fd >= 0 || errno != EBUSY)
			break;
		usleep(20000);
	}
	if (x->dev_fd < 0) {
		rc = -errno;
		if (rc == -EBUSY)
			gw_seterr(err, errlen, "%s: %s (another process holds it open)", path,
				  strerror(-rc));
		else
			gw_seterr(err, errlen, "%s: %s", path, strerror(-rc));
		return rc;
	}
	x->iotlb.fd = x->dev_fd;
	return 0;
}

int vduse_dev_create(struct vduse_exp *x, char *err, size_t errlen)
{
	struct vduse_dev_config *cfg;
	int rc;

	rc = ctl_open(x, err, errlen);
	if (rc < 0)
		return rc;
	cfg = calloc(1, sizeof(*cfg) + VBLK_CONFIG_SIZE);
	if (!cfg)
		return -ENOMEM;
	snprintf(cfg->name, sizeof(cfg->name), "%s", x->name);
	cfg->device_id = VIRTIO_ID_BLOCK;
	cfg->vendor_id = 0;
	cfg->features = x->features;
	cfg->vq_num = x->o->queues;
	cfg->vq_align = VDUSE_VQ_ALIGN;
	cfg->config_size = VBLK_CONFIG_SIZE;
	vblk_config(&x->dev, cfg->config);
	rc = ioctl(x->ctl_fd, VDUSE_CREATE_DEV, cfg) < 0 ? -errno : 0;
	free(cfg);
	if (rc == -EEXIST && x->infl_existed) {
		/* Ours, from before a restart: serve it again (protocols.md §3.5). */
		x->reopened = true;
		x->created = true;
		rc = 0;
		gw_info("%s: the device survived the last blkgw; taking it over", x->log);
	} else if (rc == 0 && x->infl) {
		/* A new device: old progress means nothing. */
		memset(x->infl, 0, vduse_regions_len(x->o));
	}
	if (rc == -EEXIST) {
		gw_seterr(
			err, errlen,
			"a VDUSE device named '%s' already exists (another process's?): choose another "
			"vduse.name, or remove it (vdpa dev del %s, then destroy it)",
			x->name, x->name);
		return rc;
	}
	if (rc < 0) {
		gw_seterr(err, errlen, "VDUSE_CREATE_DEV %s: %s", x->name, strerror(-rc));
		return rc;
	}
	x->created = true;
	set_msg_timeout(x);
	rc = dev_open(x, err, errlen);
	if (rc < 0)
		return rc;
	for (unsigned i = 0; i < x->o->queues; i++) {
		struct vduse_vq_config vc = { .index = i, .max_size = (uint16_t)x->o->queue_size };

		if (vduse_ioctl(&x->iotlb, x->dev_fd, VDUSE_VQ_SETUP, &vc) < 0 && !x->reopened) {
			rc = -errno;
			gw_seterr(err, errlen, "VDUSE_VQ_SETUP %u: %s", i, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

int vduse_dev_reopen(struct vduse_exp *x, char *err, size_t errlen)
{
	int rc = ctl_open(x, err, errlen);

	if (rc < 0)
		return rc;
	x->reopened = true;
	x->created = true; /* DESTROY_DEV at the end */
	return dev_open(x, err, errlen);
}

/* ---- replies ---- */

static void reply(struct vduse_exp *x, const struct vduse_dev_request *req, bool ok,
		  uint16_t avail_index)
{
	struct vduse_dev_response r;

	memset(&r, 0, sizeof(r));
	r.request_id = req->request_id;
	r.result = ok ? VDUSE_REQ_RESULT_OK : VDUSE_REQ_RESULT_FAILED;
	if (req->type == VDUSE_GET_VQ_STATE) {
		r.vq_state.index = req->vq_state.index;
		r.vq_state.split.avail_index = avail_index;
	}
	if (write(x->dev_fd, &r, sizeof(r)) != sizeof(r))
		gw_warn("%s: cannot answer message %u: %s", x->log, req->type, strerror(errno));
}

static void msg_cb(struct ev_loop *loop, ev_io *w, int revents);

/* The message waiting for the queues is done: answer it, read the next. */
static void pending_done(struct vduse_exp *x)
{
	struct vduse_dev_request *req = &x->req;
	bool ok = x->pending_rc == 0;

	x->req_pending = false;
	switch (req->type) {
	case VDUSE_SET_STATUS:
		if (req->s.status == 0) {
			vduse_iotlb_drop(&x->iotlb, 1, 0);
			virtio_mem_put(x->mem);
			x->mem = NULL;
			for (unsigned i = 0; i < x->o->queues; i++)
				x->vq[i].base = 0;
			if (x->infl)
				memset(x->infl, 0, vduse_regions_len(x->o));
			ok = true; /* a reset always succeeds */
			gw_info("%s: reset by the driver", x->log);
		}
		if (ok)
			x->status = req->s.status;
		reply(x, req, ok, 0);
		if (req->s.status == 0)
			vduse_reset_seen(x);
		break;
	case VDUSE_GET_VQ_STATE:
		reply(x, req, ok, x->vq[req->vq_state.index].base);
		break;
	default:
		reply(x, req, ok, 0);
		break;
	}
	if (x->dev_fd < 0)
		return;
	ev_io_start(EV_DEFAULT, &x->dev_w);
	ev_feed_event(EV_DEFAULT, &x->dev_w, EV_READ); /* one may be queued already */
}

static void pending_dec(struct vduse_exp *x)
{
	if (--x->pending > 0)
		return;
	if (x->req_pending)
		pending_done(x); /* may start queue calls again */
	if (x->pending == 0 && x->queues_stopped)
		x->queues_stopped(x);
}

static void queue_cb(void *arg, int rc, unsigned value)
{
	struct vduse_vq *vq = arg;
	struct vduse_exp *x = vq->x;

	if (rc < 0 && x->pending_rc == 0)
		x->pending_rc = rc;
	if (!vq->running)
		vq->base = (uint16_t)value; /* a stop: where the ring ended */
	else if (rc < 0)
		vq->running = false; /* a start that failed */
	pending_dec(x);
}

/* GET_VQ_STATE of a running queue answered: value is where it is. */
static void base_cb(void *arg, int rc, unsigned value)
{
	struct vduse_vq *vq = arg;
	struct vduse_exp *x = vq->x;

	if (rc < 0 && x->pending_rc == 0)
		x->pending_rc = rc;
	vq->base = (uint16_t)value;
	pending_dec(x);
}

/* ---- queues ---- */

static void queue_broken(struct vblk_queue *q, void *arg)
{
	struct vduse_vq *vq = arg;

	gw_err("%s: queue %u stopped: %s; the disk's I/O on it stalls until the device is reset",
	       vq->x->log, vblk_queue_index(q),
	       vblk_queue_broken_why(q) ? vblk_queue_broken_why(q) : "malformed virtqueue");
}

static void queue_notify(struct vblk_queue *q, void *arg)
{
	struct vduse_vq *vq = arg;
	uint32_t idx = vblk_queue_index(q);

	if (vduse_ioctl(&vq->x->iotlb, vq->x->dev_fd, VDUSE_VQ_INJECT_IRQ, &idx) < 0)
		gw_debug("%s: VQ_INJECT_IRQ %u: %s", vq->x->log, idx, strerror(errno));
}

static const struct vblk_queue_ops queue_ops = {
	.broken = queue_broken,
	.notify = queue_notify,
};

/* Map one queue's rings into the cache; fill s's ring pointers later. */
static int queue_info(struct vduse_exp *x, unsigned i, struct vduse_vq_info *info)
{
	char err[256];
	int rc;

	memset(info, 0, sizeof(*info));
	info->index = i;
	if (vduse_ioctl(&x->iotlb, x->dev_fd, VDUSE_VQ_GET_INFO, info) < 0) {
		gw_err("%s: VQ_GET_INFO %u: %s", x->log, i, strerror(errno));
		return -errno;
	}
	if (!info->ready)
		return 0;
	if (info->num == 0 || info->num > x->o->queue_size || !gw_is_pow2(info->num)) {
		gw_err("%s: queue %u: the driver set %u entries (a power of two up to %u)", x->log,
		       i, info->num, x->o->queue_size);
		return -EPROTO;
	}
	if ((rc = vduse_iotlb_need(&x->iotlb, info->desc_addr, vring_desc_bytes(info->num), err,
				   sizeof(err))) < 0 ||
	    (rc = vduse_iotlb_need(&x->iotlb, info->driver_addr, vring_avail_bytes(info->num), err,
				   sizeof(err))) < 0 ||
	    (rc = vduse_iotlb_need(&x->iotlb, info->device_addr, vring_used_bytes(info->num), err,
				   sizeof(err))) < 0) {
		gw_err("%s: queue %u rings: %s", x->log, i, err);
		return rc;
	}
	return 1;
}

static int rings(const struct virtio_memmap *m, const struct vduse_vq_info *info,
		 struct vring_desc **d, uint16_t **a, uint8_t **u)
{
	*d = virtio_mem_ptr(m, info->desc_addr, vring_desc_bytes(info->num));
	*a = virtio_mem_ptr(m, info->driver_addr, vring_avail_bytes(info->num));
	*u = virtio_mem_ptr(m, info->device_addr, vring_used_bytes(info->num));
	return *d && *a && *u ? 0 : -EFAULT;
}

/* The size of the bounce region (sysfs bounce_size; the kernel's 64 MiB default). */
static uint64_t bounce_size(struct vduse_exp *x)
{
	char path[VDUSE_NAME_MAX + 64], buf[32];
	unsigned long long v = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/sys/class/vduse/%s/bounce_size", x->name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 64ull << 20;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 64ull << 20;
	buf[n] = '\0';
	if (sscanf(buf, "%llu", &v) != 1 || v == 0)
		return 64ull << 20;
	return v;
}

/* DRIVER_OK: start every ready queue. Returns how many calls are pending, or -errno. */
static int start_queues(struct vduse_exp *x)
{
	struct vduse_vq_info info[VDUSE_MAX_QUEUES];
	bool ready[VDUSE_MAX_QUEUES] = { false }, any = false;
	uint64_t features = 0;
	char err[256];
	int rc;

	if (vduse_ioctl(&x->iotlb, x->dev_fd, VDUSE_DEV_GET_FEATURES, &features) < 0) {
		gw_err("%s: DEV_GET_FEATURES: %s", x->log, strerror(errno));
		return -errno;
	}
	for (unsigned i = 0; i < x->o->queues; i++) {
		rc = queue_info(x, i, &info[i]);
		if (rc < 0)
			return rc;
		ready[i] = rc > 0;
		any |= ready[i];
	}
	if (!any)
		return 0;
	/* The bounce region at IOVA 0 holds every buffer the driver maps. */
	rc = vduse_iotlb_bounce(&x->iotlb, bounce_size(x), err, sizeof(err));
	if (rc < 0) {
		gw_err("%s: bounce region: %s", x->log, err);
		return rc;
	}
	virtio_mem_put(x->mem);
	x->mem = vduse_iotlb_snapshot(&x->iotlb);
	if (!x->mem)
		return -ENOMEM;
	for (unsigned i = 0; i < x->o->queues; i++) {
		struct vduse_vq *vq = &x->vq[i];
		struct vduse_vq_eventfd kick;
		struct vblk_queue_start s;
		char name[VDUSE_NAME_MAX + 32];
		int fd;

		if (!ready[i] || vq->running)
			continue;
		memset(&s, 0, sizeof(s));
		if (rings(x->mem, &info[i], &s.desc, &s.avail, &s.used) < 0) {
			gw_err("%s: queue %u: rings not mapped", x->log, i);
			return -EFAULT;
		}
		if (!vq->q) {
			snprintf(name, sizeof(name), "%s q%u", x->log, i);
			vq->w = gw_worker_pick();
			vq->q = vblk_queue_new(&x->dev, vq->w, i, name, &queue_ops, vq);
			if (!vq->q)
				return -ENOMEM;
		}
		fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fd < 0)
			return -errno;
		kick.index = i;
		kick.fd = fd;
		if (vduse_ioctl(&x->iotlb, x->dev_fd, VDUSE_VQ_SETUP_KICKFD, &kick) < 0) {
			rc = -errno;
			gw_err("%s: VQ_SETUP_KICKFD %u: %s", x->log, i, strerror(-rc));
			close(fd);
			return rc;
		}
		s.num = info[i].num;
		s.last_avail = info[i].split.avail_index;
		s.features = features;
		s.mem = x->mem;
		s.kick_fd = fd;
		s.call_fd = -1;
		s.enabled = true;
		if (x->infl)
			s.infl = (struct vq_inflight *)(x->infl +
							vq_inflight_size(x->o->queue_size) * i);
		s.poll_max_ns = x->o->poll_us * 1000u;
		s.hold_ns = x->o->notify_hold_us * 1000u;
		vq->running = true;
		rc = vblk_queue_start(vq->q, &s, queue_cb, vq);
		if (rc < 0) {
			vq->running = false;
			return rc;
		}
		x->pending++;
		gw_debug("%s: queue %u: %u entries on %s", x->log, i, info[i].num, vq->w->name);
	}
	return (int)x->pending;
}

int vduse_dev_resume(struct vduse_exp *x)
{
	int rc = start_queues(x);

	if (rc > 0)
		x->status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
			    VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
	return rc;
}

void vduse_dev_stop_queues(struct vduse_exp *x)
{
	for (unsigned i = 0; i < x->o->queues; i++) {
		struct vduse_vq *vq = &x->vq[i];

		if (!vq->running)
			continue;
		vq->running = false;
		if (vblk_queue_stop(vq->q, queue_cb, vq) == 0)
			x->pending++;
	}
}

/* UPDATE_IOTLB: mappings in the range go; running queues get a new snapshot. */
static void update_iotlb(struct vduse_exp *x, uint64_t start, uint64_t last)
{
	struct vduse_vq_info info[VDUSE_MAX_QUEUES];
	bool any = false;

	vduse_iotlb_drop(&x->iotlb, start, last);
	/* Re-map the rings of running queues (they may have been in the range), then switch. */
	for (unsigned i = 0; i < x->o->queues; i++) {
		if (x->vq[i].running && queue_info(x, i, &info[i]) > 0)
			any = true;
		else
			info[i].ready = 0;
	}
	if (!any)
		return;
	virtio_mem_put(x->mem);
	x->mem = vduse_iotlb_snapshot(&x->iotlb);
	if (!x->mem)
		return;
	for (unsigned i = 0; i < x->o->queues; i++) {
		struct vring_desc *d;
		uint16_t *a;
		uint8_t *u;

		if (!info[i].ready || rings(x->mem, &info[i], &d, &a, &u) < 0)
			continue;
		if (vblk_queue_set_mem(x->vq[i].q, x->mem, d, a, u, queue_cb, &x->vq[i]) == 0)
			x->pending++;
	}
}

/* ---- the message loop ---- */

static const char *status_bits(uint8_t st, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s%s", st & VIRTIO_CONFIG_S_ACKNOWLEDGE ? " ACK" : "",
		 st & VIRTIO_CONFIG_S_DRIVER ? " DRIVER" : "",
		 st & VIRTIO_CONFIG_S_FEATURES_OK ? " FEATURES_OK" : "",
		 st & VIRTIO_CONFIG_S_DRIVER_OK ? " DRIVER_OK" : "",
		 st & VIRTIO_CONFIG_S_FAILED ? " FAILED" : "");
	return buf;
}

/* Handle one message; false when it waits for the queues. */
static bool handle(struct vduse_exp *x, struct vduse_dev_request *req)
{
	char bits[64];
	int rc;

	x->pending_rc = 0;
	switch (req->type) {
	case VDUSE_GET_VQ_STATE: {
		unsigned i = req->vq_state.index;

		if (i >= x->o->queues) {
			reply(x, req, false, 0);
			return true;
		}
		if (!x->vq[i].running) {
			reply(x, req, true, x->vq[i].base);
			return true;
		}
		/*
		 * A running queue (vhost_vdpa's VHOST_GET_VRING_BASE; virtio_vdpa
		 * never asks): where it is now. It keeps running: VDUSE has no
		 * suspend, so nothing says the driver is done with it; a reset stops it.
		 */
		if (vblk_queue_base(x->vq[i].q, base_cb, &x->vq[i]) < 0) {
			reply(x, req, false, 0);
			return true;
		}
		x->pending++;
		return false;
	}
	case VDUSE_SET_STATUS: {
		uint8_t st = req->s.status;

		gw_debug("%s: status%s", x->log,
			 st ? status_bits(st, bits, sizeof(bits)) : " 0 (reset)");
		if (st == 0) {
			vduse_dev_stop_queues(x);
			if (x->pending)
				return false;
			x->pending_rc = 0;
			x->req = *req;
			pending_done(x);
			return true;
		}
		if ((st & VIRTIO_CONFIG_S_DRIVER_OK) && !(x->status & VIRTIO_CONFIG_S_DRIVER_OK)) {
			rc = start_queues(x);
			if (rc < 0) {
				gw_err("%s: cannot start the queues: %s", x->log, strerror(-rc));
				vduse_dev_stop_queues(x);
				x->pending_rc = rc;
				if (x->pending)
					return false;
				reply(x, req, false, 0);
				return true;
			}
			if (rc > 0)
				return false;
		}
		x->status = st;
		reply(x, req, true, 0);
		return true;
	}
	case VDUSE_UPDATE_IOTLB:
		gw_debug("%s: UPDATE_IOTLB [0x%llx, 0x%llx]", x->log,
			 (unsigned long long)req->iova.start, (unsigned long long)req->iova.last);
		update_iotlb(x, req->iova.start, req->iova.last);
		if (x->pending)
			return false;
		reply(x, req, true, 0);
		return true;
	default:
		gw_warn("%s: unknown message type %u: refused", x->log, req->type);
		reply(x, req, false, 0);
		return true;
	}
}

static void msg_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vduse_exp *x = w->data;

	(void)revents;
	while (!x->req_pending) {
		struct vduse_dev_request req;
		ssize_t n = read(x->dev_fd, &req, sizeof(req));

		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR) {
				gw_err("%s: reading device messages: %s", x->log, strerror(errno));
				ev_io_stop(loop, w);
			}
			return;
		}
		if (n != sizeof(req)) {
			gw_err("%s: a device message of %zd bytes (expected %zu)", x->log, n,
			       sizeof(req));
			continue;
		}
		x->req = req;
		x->req_pending = true;
		if (handle(x, &x->req)) {
			x->req_pending = false;
		} else {
			ev_io_stop(loop, w); /* answered from queue_cb */
			if (x->pending == 0)
				pending_done(x);
		}
	}
}

void vduse_dev_serve(struct vduse_exp *x)
{
	ev_io_init(&x->dev_w, msg_cb, x->dev_fd, EV_READ);
	x->dev_w.data = x;
	ev_io_start(EV_DEFAULT, &x->dev_w);
}

void vduse_dev_destroy(struct vduse_exp *x)
{
	ev_io_stop(EV_DEFAULT, &x->dev_w);
	vduse_iotlb_drop(&x->iotlb, 1, 0);
	virtio_mem_put(x->mem);
	x->mem = NULL;
	for (unsigned i = 0; i < VDUSE_MAX_QUEUES; i++) {
		if (x->vq[i].q) {
			vblk_queue_free(x->vq[i].q);
			gw_worker_unload(x->vq[i].w);
			x->vq[i].q = NULL;
		}
	}
	if (x->dev_fd >= 0)
		close(x->dev_fd);
	x->dev_fd = -1;
	if (x->created) {
		char name[VDUSE_NAME_MAX];

		snprintf(name, sizeof(name), "%s", x->name);
		if (ioctl(x->ctl_fd, VDUSE_DESTROY_DEV, name) < 0 && errno != ENOENT) {
			gw_warn("%s: VDUSE_DESTROY_DEV: %s", x->log, strerror(errno));
			x->destroy_failed = true;
		}
		x->created = false;
	}
	if (x->ctl_fd >= 0)
		close(x->ctl_fd);
	x->ctl_fd = -1;
}
