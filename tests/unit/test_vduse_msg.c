/*
 * The VDUSE device's message loop (transports/vduse/vduse_dev.c) without a
 * kernel: the device fd is one end of a socketpair, this test plays the
 * kernel on the other (struct vduse_dev_request in, struct
 * vduse_dev_response out), and a queue of the virtio-blk core runs on a
 * worker over a hand-built ring. Covers GET_VQ_STATE of a running queue
 * (answered with where the queue is; the queue keeps serving), of a stopped
 * one and of a queue that does not exist, SET_STATUS 0 (every queue stops),
 * unknown messages, and a device whose data is gone (vblk_dev_init_dead:
 * every request fails, nothing reaches an export).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/backend.h"
#include "check.h"
#include "gateway/export.h"
#include "lib/log.h"
#include "lib/worker.h"
#include "transports/vduse/vduse_internal.h"
#include "vring_build.h"

#define NUM  64
#define DISK (1u << 20)

static struct gbuild g;
static int kernel_fd; /* the test's end: the "kernel" */
static int kick_fd;
static int started;

/* Run the main loop until cond() or about 30 s (a loaded machine is slow, never this slow). */
static bool run_until(bool (*cond)(void))
{
	for (int i = 0; i < 30000 && !cond(); i++) {
		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		usleep(1000);
	}
	return cond();
}

static bool reply_ready(void)
{
	struct pollfd p = { .fd = kernel_fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1;
}

static uint16_t want_used;
static bool used_reached(void)
{
	return gb_used_idx(&g) == want_used;
}

static bool queue_started(void)
{
	return started > 0;
}

static struct vduse_exp *cur;
static bool queues_idle(void)
{
	return cur->pending == 0;
}

/* Send one message as the kernel does and wait for its answer. */
static bool ask(struct vduse_dev_request *req, struct vduse_dev_response *resp)
{
	static uint32_t id = 100;

	req->request_id = ++id;
	if (write(kernel_fd, req, sizeof(*req)) != sizeof(*req))
		return false;
	if (!run_until(reply_ready)) {
		fprintf(stderr, "no answer to message type %u\n", req->type);
		return false;
	}
	if (read(kernel_fd, resp, sizeof(*resp)) != sizeof(*resp))
		return false;
	return resp->request_id == id;
}

static void started_cb(void *arg, int rc, unsigned value)
{
	struct vduse_vq *vq = arg;

	(void)value;
	CHECK_EQ_U64(rc, 0);
	vq->x->pending--;
	started++;
}

static void notify(struct vblk_queue *q, void *arg)
{
	(void)q;
	(void)arg;
}

static const struct vblk_queue_ops ops = { .notify = notify };

/* Post a 4 KiB read of sector 0 (header, data, status) and kick; returns the status address. */
static uint64_t post_read(void)
{
	uint16_t head = (uint16_t)((g.avail_idx * 3) % NUM);
	uint64_t hdr = gb_blk_hdr(&g, VIRTIO_BLK_T_IN, 0);
	uint64_t data = gb_alloc(&g, 4096), st = gb_alloc(&g, 1);
	uint64_t one = 1;

	*gb_ptr(&g, st) = 0xee;
	gb_desc(&g, head, hdr, VIRTIO_BLK_HDR_SIZE, VRING_DESC_F_NEXT, (uint16_t)(head + 1));
	gb_desc(&g, (uint16_t)(head + 1), data, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
		(uint16_t)(head + 2));
	gb_desc(&g, (uint16_t)(head + 2), st, 1, VRING_DESC_F_WRITE, 0);
	gb_publish(&g, head);
	CHECK(write(kick_fd, &one, sizeof(one)) == sizeof(one));
	return st;
}

/* A device with one queue started on worker 0 over g's ring. */
static struct vduse_exp *device(struct gw_export *e, bool dead)
{
	struct vduse_exp *x = calloc(1, sizeof(*x));
	struct vblk_queue_start s;
	int sv[2];

	CHECK(x != NULL);
	x->exp = e;
	x->oc.queues = 1;
	x->oc.queue_size = NUM;
	x->o = &x->oc;
	x->ctl_fd = -1;
	snprintf(x->name, sizeof(x->name), "t");
	snprintf(x->log, sizeof(x->log), "vduse t");
	for (unsigned i = 0; i < VDUSE_MAX_QUEUES; i++) {
		x->vq[i].x = x;
		x->vq[i].index = i;
	}
	if (dead)
		CHECK_EQ_U64(vblk_dev_init_dead(&x->dev, 1, NUM), 0);
	else
		CHECK_EQ_U64(vblk_dev_init(&x->dev, e, NULL, 1, NUM), 0);
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	x->dev_fd = sv[0];
	kernel_fd = sv[1];
	vduse_dev_serve(x);

	gb_init(&g, NUM);
	memset(&s, 0, sizeof(s));
	s.num = NUM;
	s.features = VIRTIO_BIT(VIRTIO_F_VERSION_1);
	s.desc = (struct vring_desc *)(g.mem + GB_DESC);
	s.avail = (uint16_t *)(g.mem + GB_AVAIL);
	s.used = g.mem + GB_USED;
	s.mem = g.map;
	kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s.kick_fd = dup(kick_fd);
	s.call_fd = -1;
	s.enabled = true;
	x->vq[0].w = gw_worker_pick();
	x->vq[0].q = vblk_queue_new(&x->dev, x->vq[0].w, 0, "t q0", &ops, &x->vq[0]);
	CHECK(x->vq[0].q != NULL);
	started = 0;
	x->pending++;
	CHECK_EQ_U64(vblk_queue_start(x->vq[0].q, &s, started_cb, &x->vq[0]), 0);
	x->vq[0].running = true;
	CHECK(run_until(queue_started));
	cur = x;
	return x;
}

static void device_free(struct vduse_exp *x)
{
	vduse_dev_destroy(x); /* stopped queues freed, the socket closed; no DESTROY_DEV */
	close(kernel_fd);
	close(kick_fd);
	gb_fini(&g);
	free(x);
}

static void test_get_vq_state_running(struct gw_export *e)
{
	struct vduse_exp *x = device(e, false);
	struct vduse_dev_request req;
	struct vduse_dev_response resp;
	uint64_t st;

	st = post_read();
	want_used = 1;
	CHECK(run_until(used_reached));
	CHECK_EQ_U64(*gb_ptr(&g, st), VIRTIO_BLK_S_OK);

	/* vhost_vdpa's GET_VRING_BASE on the running queue: where it is, and it keeps running. */
	memset(&req, 0, sizeof(req));
	req.type = VDUSE_GET_VQ_STATE;
	req.vq_state.index = 0;
	CHECK(ask(&req, &resp));
	CHECK_EQ_U64(resp.result, VDUSE_REQ_RESULT_OK);
	CHECK_EQ_U64(resp.vq_state.split.avail_index, 1);
	CHECK(x->vq[0].running);
	st = post_read();
	want_used = 2;
	CHECK(run_until(used_reached)); /* the queue still serves */
	CHECK_EQ_U64(*gb_ptr(&g, st), VIRTIO_BLK_S_OK);
	req.vq_state.index = 0;
	CHECK(ask(&req, &resp));
	CHECK_EQ_U64(resp.vq_state.split.avail_index, 2);

	/* A queue that does not exist. */
	req.vq_state.index = 1;
	CHECK(ask(&req, &resp));
	CHECK_EQ_U64(resp.result, VDUSE_REQ_RESULT_FAILED);

	/* An unknown message is refused, and the loop goes on. */
	memset(&req, 0, sizeof(req));
	req.type = 77;
	CHECK(ask(&req, &resp));
	CHECK_EQ_U64(resp.result, VDUSE_REQ_RESULT_FAILED);

	/* Reset: the queue stops (after what is in flight); its state is then 0. */
	memset(&req, 0, sizeof(req));
	req.type = VDUSE_SET_STATUS;
	req.s.status = 0;
	CHECK(ask(&req, &resp));
	CHECK_EQ_U64(resp.result, VDUSE_REQ_RESULT_OK);
	CHECK(!x->vq[0].running);
	memset(&req, 0, sizeof(req));
	req.type = VDUSE_GET_VQ_STATE;
	req.vq_state.index = 0;
	CHECK(ask(&req, &resp));
	CHECK_EQ_U64(resp.result, VDUSE_REQ_RESULT_OK);
	CHECK_EQ_U64(resp.vq_state.split.avail_index, 0);
	device_free(x);
}

/* A device torn down after its data died (no export at all): every request fails. */
static void test_dead_device(void)
{
	struct vduse_exp *x = device(NULL, true);
	uint64_t st;

	st = post_read();
	want_used = 1;
	CHECK(run_until(used_reached));
	CHECK_EQ_U64(*gb_ptr(&g, st), VIRTIO_BLK_S_IOERR);
	st = post_read();
	want_used = 2;
	CHECK(run_until(used_reached));
	CHECK_EQ_U64(*gb_ptr(&g, st), VIRTIO_BLK_S_IOERR);
	vduse_dev_stop_queues(x);
	CHECK(run_until(queues_idle));
	CHECK(!x->vq[0].running);
	device_free(x);
}

int main(void)
{
	struct {
		uint64_t size;
	} mo = { DISK };
	char err[256] = "";
	struct gw_backend *b;
	struct gw_export *e;

	gw_log_set_level(getenv("TEST_VERBOSE") ? GW_LOG_DEBUG : GW_LOG_ERR);
	gw_main_init(EV_DEFAULT);
	if (gw_workers_start(1, err, sizeof(err)) < 0) {
		fprintf(stderr, "workers: %s\n", err);
		return 77;
	}
	b = gw_backend_open(gw_backend_find("memory"), "mem0", &mo, err, sizeof(err));
	CHECK(b != NULL);
	e = gw_export_new("mem0", b, false, 0);
	CHECK(e != NULL);
	test_get_vq_state_running(e);
	test_dead_device();
	gw_workers_stop();
	gw_backend_close(e->backend);
	gw_export_free(e);
	return check_report();
}
