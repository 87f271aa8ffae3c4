/*
 * One vhost-user frontend connection: message dispatch with per-request
 * size and fd checks, replies and REPLY_ACK, the handlers that need no
 * queue (features, protocol features, config, inflight), and the teardown
 * that stops every queue before anything is unmapped.
 *
 * A bad message (wrong size, wrong fd count, index out of range, a feature
 * never offered) closes the connection; a valid request that fails is
 * answered with a non-zero REPLY_ACK when the frontend asked for one, and
 * otherwise also closes the connection. The export keeps listening.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/efd.h"
#include "lib/log.h"
#include "lib/util.h"
#include "transports/vhost/vhost_internal.h"

/* Lines a frontend can cause, rate-limited (docs/reliability.md). */
static struct gw_ratelimit refused_rl = GW_RATELIMIT_DEFAULT;
static struct gw_ratelimit conn_rl = GW_RATELIMIT_INIT(5, 20);

enum {
	VAR = 0xffff
};

/* What each request may carry. */
static const struct {
	uint8_t known;
	uint8_t own_reply; /* answered with its own payload, never with an ack */
	uint8_t min_fds, max_fds;
	uint16_t size; /* payload bytes; VAR: checked by the handler */
} rules[VHOST_USER_REQ_MAX] = {
	[VHOST_USER_GET_FEATURES] = { 1, 1, 0, 0, 0 },
	[VHOST_USER_SET_FEATURES] = { 1, 0, 0, 0, 8 },
	[VHOST_USER_SET_OWNER] = { 1, 0, 0, 0, 0 },
	[VHOST_USER_RESET_OWNER] = { 1, 0, 0, 0, 0 },
	[VHOST_USER_SET_MEM_TABLE] = { 1, 0, 1, VHOST_USER_MEM_REGIONS, VAR },
	[VHOST_USER_SET_VRING_NUM] = { 1, 0, 0, 0, 8 },
	[VHOST_USER_SET_VRING_ADDR] = { 1, 0, 0, 0, 40 },
	[VHOST_USER_SET_VRING_BASE] = { 1, 0, 0, 0, 8 },
	[VHOST_USER_GET_VRING_BASE] = { 1, 1, 0, 0, 8 },
	[VHOST_USER_SET_VRING_KICK] = { 1, 0, 0, 1, 8 },
	[VHOST_USER_SET_VRING_CALL] = { 1, 0, 0, 1, 8 },
	[VHOST_USER_SET_VRING_ERR] = { 1, 0, 0, 1, 8 },
	[VHOST_USER_GET_PROTOCOL_FEATURES] = { 1, 1, 0, 0, 0 },
	[VHOST_USER_SET_PROTOCOL_FEATURES] = { 1, 0, 0, 0, 8 },
	[VHOST_USER_GET_QUEUE_NUM] = { 1, 1, 0, 0, 0 },
	[VHOST_USER_SET_VRING_ENABLE] = { 1, 0, 0, 0, 8 },
	[VHOST_USER_GET_CONFIG] = { 1, 1, 0, 0, VAR },
	[VHOST_USER_SET_CONFIG] = { 1, 0, 0, 0, VAR },
	[VHOST_USER_GET_INFLIGHT_FD] = { 1, 1, 0, 0, 24 },
	[VHOST_USER_SET_INFLIGHT_FD] = { 1, 0, 1, 1, 24 },
	[VHOST_USER_RESET_DEVICE] = { 1, 0, 0, 0, 0 },
	[VHOST_USER_GET_MAX_MEM_SLOTS] = { 1, 1, 0, 0, 0 },
	[VHOST_USER_ADD_MEM_REG] = { 1, 0, 1, 1, 40 },
	[VHOST_USER_REM_MEM_REG] = { 1, 0, 0, 1, 40 },
};

static void conn_readable(struct ev_loop *loop, ev_io *w, int revents);
static void teardown(struct vhost_conn *c);

uint64_t vhost_features(const struct vhost_exp *x)
{
	return x->dev.features | VIRTIO_BIT(VIRTIO_F_NOTIFY_ON_EMPTY) |
	       VIRTIO_BIT(VHOST_USER_F_PROTOCOL_FEATURES);
}

uint64_t vhost_protocol_features(void)
{
	return VIRTIO_BIT(VHOST_USER_PROTOCOL_F_MQ) | VIRTIO_BIT(VHOST_USER_PROTOCOL_F_REPLY_ACK) |
	       VIRTIO_BIT(VHOST_USER_PROTOCOL_F_CONFIG) |
	       VIRTIO_BIT(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
	       VIRTIO_BIT(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
}

int vhost_refuse(struct vhost_conn *c, int rc, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	gw_warn_rl(&refused_rl, "%s: %s refused: %s", c->name, vhost_req_name(c->msg.request), msg);
	return rc;
}

/* Every connection, for the SIGBUS guard's callback. Main thread only. */
static struct vhost_conn *live;

void vhost_mem_fault(void *base, size_t off)
{
	uint64_t gpa = 0, size = 0;

	for (struct vhost_conn *c = live; c; c = c->live_next) {
		char why[192];

		if (vhost_mem_owns(c->mem, base, &gpa, &size))
			snprintf(
				why, sizeof(why),
				"the frontend shrank the file behind memory region gpa 0x%llx (0x%llx bytes) "
				"while it was mapped (SIGBUS at offset 0x%zx)",
				(unsigned long long)gpa, (unsigned long long)size, off);
		else if (c->infl_base == base)
			snprintf(
				why, sizeof(why),
				"the frontend shrank the file behind its inflight region while it was mapped "
				"(SIGBUS at offset 0x%zx)",
				off);
		else
			continue;
		c->broken = true;
		vhost_conn_close(c, why);
		return;
	}
	/* The connection went away already; the mapping reads as zeros until it is unmapped. */
	gw_debug(
		"vhost-user-blk: a memory region of a closed connection shrank (SIGBUS at offset 0x%zx)",
		off);
}

struct vhost_conn *vhost_conn_new(struct vhost_exp *x, int fd)
{
	struct vhost_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->x = x;
	c->fd = fd;
	c->infl_guard = -1;
	gw_efd_watch(true);
	c->live_next = live;
	c->live_prev = &live;
	if (live)
		live->live_prev = &c->live_next;
	live = c;
	for (unsigned i = 0; i < VHOST_MAX_QUEUES; i++)
		c->vr[i].kick_fd = c->vr[i].call_fd = c->vr[i].err_fd = -1;
	snprintf(c->name, sizeof(c->name), "vhost-user-blk %s", x->exp->id);
	ev_io_init(&c->rio, conn_readable, fd, EV_READ);
	ev_io_start(EV_DEFAULT, &c->rio);
	c->reading = true;
	atomic_fetch_add(&x->exp->clients, 1);
	gw_info_rl(&conn_rl, "%s: frontend connected on %s", c->name, x->path);
	return c;
}

static void set_reading(struct vhost_conn *c, bool on)
{
	if (on == c->reading)
		return;
	c->reading = on;
	if (on)
		ev_io_start(EV_DEFAULT, &c->rio);
	else
		ev_io_stop(EV_DEFAULT, &c->rio);
}

static int reply_u64(struct vhost_conn *c, uint32_t req, uint64_t v)
{
	return vhost_msg_reply(c, req, &v, sizeof(v), -1);
}

/* ---- handlers without queues ---- */

static int h_set_features(struct vhost_conn *c, struct vhost_msg *m)
{
	uint64_t f, offered = vhost_features(c->x);

	memcpy(&f, m->payload, 8);
	if (f & ~offered)
		return vhost_refuse(c, -EPROTO,
				    "features 0x%llx include bits never offered (0x%llx)",
				    (unsigned long long)f, (unsigned long long)(f & ~offered));
	if (!(f & VIRTIO_BIT(VIRTIO_F_VERSION_1)))
		return vhost_refuse(
			c, -EINVAL,
			"VIRTIO_F_VERSION_1 not negotiated (legacy devices are not supported)");
	c->features = f;
	c->features_set = true;
	gw_debug("%s: features 0x%llx", c->name, (unsigned long long)f);
	if (!(f & VIRTIO_BIT(VHOST_USER_F_PROTOCOL_FEATURES)))
		return vhost_enable_all(c);
	return 0;
}

static int h_set_protocol_features(struct vhost_conn *c, struct vhost_msg *m)
{
	uint64_t f;

	memcpy(&f, m->payload, 8);
	if (f & ~vhost_protocol_features())
		return vhost_refuse(c, -EPROTO,
				    "protocol features 0x%llx include bits never offered",
				    (unsigned long long)f);
	c->proto = f;
	return 0;
}

static int h_get_config(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_config_hdr h;
	uint8_t cfg[VBLK_CONFIG_SIZE];
	uint8_t out[sizeof(h) + VHOST_USER_MAX_CONFIG];

	if (m->size < sizeof(h))
		return vhost_refuse(c, -EPROTO, "payload of %u bytes", m->size);
	memcpy(&h, m->payload, sizeof(h));
	if (h.size == 0 || h.size > VHOST_USER_MAX_CONFIG || m->size != sizeof(h) + h.size ||
	    h.offset > VHOST_USER_MAX_CONFIG - h.size)
		return vhost_refuse(c, -EPROTO, "offset %u size %u in a %u-byte message", h.offset,
				    h.size, m->size);
	vblk_config(&c->x->dev, cfg);
	memcpy(out, &h, sizeof(h));
	memset(out + sizeof(h), 0, h.size);
	if (h.offset < sizeof(cfg))
		memcpy(out + sizeof(h), cfg + h.offset,
		       GW_MIN((size_t)h.size, sizeof(cfg) - h.offset));
	return vhost_msg_reply(c, m->request, out, (uint32_t)(sizeof(h) + h.size), -1);
}

static int h_set_config(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_config_hdr h;

	if (m->size < sizeof(h))
		return vhost_refuse(c, -EPROTO, "payload of %u bytes", m->size);
	memcpy(&h, m->payload, sizeof(h));
	if (h.size > VHOST_USER_MAX_CONFIG || m->size != sizeof(h) + h.size)
		return vhost_refuse(c, -EPROTO, "size %u in a %u-byte message", h.size, m->size);
	/* Nothing in our config is writable (no CONFIG_WCE). */
	return vhost_refuse(c, -ENOTSUP, "config space is read-only (offset %u, %u bytes)",
			    h.offset, h.size);
}

static bool any_running(const struct vhost_conn *c)
{
	for (unsigned i = 0; i < c->x->o->queues; i++)
		if (c->vr[i].running)
			return true;
	return false;
}

static int h_get_inflight(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_inflight_msg in;
	uint64_t size;
	int fd, rc;

	memcpy(&in, m->payload, sizeof(in));
	if (any_running(c))
		return vhost_refuse(c, -EINVAL, "queues are running");
	rc = vhost_inflight_new(c, in.num_queues, in.queue_size, &fd, &size);
	if (rc < 0)
		return vhost_refuse(c, rc, "no inflight region for %u queues of %u entries: %s",
				    in.num_queues, in.queue_size, strerror(-rc));
	in.mmap_size = size;
	in.mmap_offset = 0;
	rc = vhost_msg_reply(c, m->request, &in, sizeof(in), fd);
	close(fd);
	gw_debug("%s: inflight region of %llu bytes for %u queues of %u", c->name,
		 (unsigned long long)size, in.num_queues, in.queue_size);
	return rc;
}

static int h_set_inflight(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_inflight_msg in;
	int fd = m->fds[0], rc;

	memcpy(&in, m->payload, sizeof(in));
	m->fds[0] = -1;
	if (any_running(c)) {
		close(fd);
		return vhost_refuse(c, -EINVAL, "queues are running");
	}
	rc = vhost_inflight_set(c, &in, fd);
	if (rc < 0)
		return vhost_refuse(
			c, rc,
			"inflight region of %llu bytes at offset %llu for %u queues of %u entries: %s",
			(unsigned long long)in.mmap_size, (unsigned long long)in.mmap_offset,
			in.num_queues, in.queue_size,
			rc == -EINVAL
				? "too small, misaligned (the offset must be a multiple of 8), or sizes "
				  "out of range"
				: strerror(-rc));
	gw_debug("%s: frontend's inflight region: %u queues of %u", c->name, in.num_queues,
		 in.queue_size);
	return 0;
}

static int h_reset(struct vhost_conn *c, struct vhost_msg *m)
{
	vhost_stop_all(c, vhost_op_cb);
	if (c->pending)
		return VHOST_ASYNC;
	vhost_vrings_reset(c);
	return 0;
}

static int handle(struct vhost_conn *c, struct vhost_msg *m)
{
	switch (m->request) {
	case VHOST_USER_GET_FEATURES:
		return reply_u64(c, m->request, vhost_features(c->x));
	case VHOST_USER_SET_FEATURES:
		return h_set_features(c, m);
	case VHOST_USER_SET_OWNER:
		return 0;
	case VHOST_USER_RESET_OWNER:
	case VHOST_USER_RESET_DEVICE:
		return h_reset(c, m);
	case VHOST_USER_GET_PROTOCOL_FEATURES:
		return reply_u64(c, m->request, vhost_protocol_features());
	case VHOST_USER_SET_PROTOCOL_FEATURES:
		return h_set_protocol_features(c, m);
	case VHOST_USER_GET_QUEUE_NUM:
		return reply_u64(c, m->request, c->x->o->queues);
	case VHOST_USER_GET_MAX_MEM_SLOTS:
		return reply_u64(c, m->request, VHOST_MAX_MEM_SLOTS);
	case VHOST_USER_GET_CONFIG:
		return h_get_config(c, m);
	case VHOST_USER_SET_CONFIG:
		return h_set_config(c, m);
	case VHOST_USER_GET_INFLIGHT_FD:
		return h_get_inflight(c, m);
	case VHOST_USER_SET_INFLIGHT_FD:
		return h_set_inflight(c, m);
	case VHOST_USER_SET_MEM_TABLE:
		return vhost_h_mem_table(c, m);
	case VHOST_USER_ADD_MEM_REG:
		return vhost_h_add_mem(c, m);
	case VHOST_USER_REM_MEM_REG:
		return vhost_h_rem_mem(c, m);
	case VHOST_USER_SET_VRING_NUM:
		return vhost_h_vring_num(c, m);
	case VHOST_USER_SET_VRING_ADDR:
		return vhost_h_vring_addr(c, m);
	case VHOST_USER_SET_VRING_BASE:
		return vhost_h_vring_base(c, m);
	case VHOST_USER_GET_VRING_BASE:
		return vhost_h_get_vring_base(c, m);
	case VHOST_USER_SET_VRING_KICK:
	case VHOST_USER_SET_VRING_CALL:
	case VHOST_USER_SET_VRING_ERR:
		return vhost_h_vring_fd(c, m);
	case VHOST_USER_SET_VRING_ENABLE:
		return vhost_h_vring_enable(c, m);
	default:
		return -EPROTO;
	}
}

/* Send the ack a finished request owes, and close on failure. */
static void conclude(struct vhost_conn *c, uint32_t req, bool ack, int rc)
{
	if (ack) {
		int src = reply_u64(c, req, rc < 0 ? 1 : 0);

		if (src < 0) {
			vhost_conn_close(c, "cannot send a reply");
			return;
		}
	}
	if (rc == -EPROTO || (rc < 0 && !ack))
		vhost_conn_close(c, rc == -EPROTO ? "malformed message" : "request failed");
}

static void dispatch(struct vhost_conn *c)
{
	struct vhost_msg *m = &c->msg;
	bool known = m->request < VHOST_USER_REQ_MAX && rules[m->request].known;
	bool own = known && rules[m->request].own_reply;
	bool ack = (m->flags & VHOST_USER_NEED_REPLY) && !own;
	int rc;

	c->have = 0;
	gw_debug("%s: <- %s (%u bytes, %u fds)", c->name, vhost_req_name(m->request), m->size,
		 m->nfds);
	if (!known) {
		rc = vhost_refuse(c, -EPROTO, "request %u is not supported", m->request);
	} else if (rules[m->request].size != VAR && m->size != rules[m->request].size) {
		rc = vhost_refuse(c, -EPROTO, "payload of %u bytes (expected %u)", m->size,
				  rules[m->request].size);
	} else if (m->nfds < rules[m->request].min_fds || m->nfds > rules[m->request].max_fds) {
		rc = vhost_refuse(c, -EPROTO, "%u file descriptors (expected %u to %u)", m->nfds,
				  rules[m->request].min_fds, rules[m->request].max_fds);
	} else {
		rc = handle(c, m);
	}
	vhost_msg_close_fds(m);
	if (rc == VHOST_ASYNC) {
		c->pending_req = m->request;
		c->pending_ack = ack;
		set_reading(c, false);
		return;
	}
	if (own && rc < 0) {
		vhost_conn_close(c, rc == -EPROTO ? "malformed message" : "request failed");
		return;
	}
	conclude(c, m->request, ack, rc);
}

/* Every queue operation the current message waited for has called back. */
static void finish_pending(struct vhost_conn *c)
{
	int rc = c->pending_rc;

	c->pending_rc = 0;
	if (c->closing) {
		teardown(c);
		return;
	}
	switch (c->pending_req) {
	case VHOST_USER_GET_VRING_BASE: {
		struct vhost_vring_state st = { .index = c->pending_index,
						.num = (uint32_t)c->pending_value };

		if (vhost_msg_reply(c, c->pending_req, &st, sizeof(st), -1) < 0) {
			vhost_conn_close(c, "cannot send a reply");
			return;
		}
		break;
	}
	case VHOST_USER_RESET_OWNER:
	case VHOST_USER_RESET_DEVICE:
		vhost_vrings_reset(c);
		conclude(c, c->pending_req, c->pending_ack, rc);
		break;
	default:
		conclude(c, c->pending_req, c->pending_ack, rc);
		break;
	}
	if (!c->closing) {
		set_reading(c, true);
		/* Messages may already sit in the socket buffer: level-triggered, the watcher
		 * fires. */
	}
}

void vhost_op_cb(void *arg, int rc, unsigned value)
{
	struct vhost_conn *c = arg;

	if (rc < 0 && !c->pending_rc)
		c->pending_rc = rc;
	if (--c->pending == 0)
		finish_pending(c);
}

static void conn_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vhost_conn *c = container_of(w, struct vhost_conn, rio);

	/* A few messages per wakeup; the rest on the next one. */
	for (int i = 0; i < 16 && !c->closing && !c->pending; i++) {
		int rc = vhost_msg_read(c);

		if (rc == 0)
			return;
		if (rc == 1)
			c->spoke = true;
		if (rc < 0) {
			vhost_msg_close_fds(&c->msg);
			if (rc == -EPIPE || rc == -ECONNRESET)
				vhost_conn_close(c, "frontend disconnected");
			else if (rc == -EPROTO)
				vhost_conn_close(c, "malformed message");
			else
				vhost_conn_close(c, strerror(-rc));
			return;
		}
		dispatch(c);
	}
}

/* ---- teardown ---- */

static void conn_free(struct vhost_conn *c)
{
	struct vhost_exp *x = c->x;

	for (unsigned i = 0; i < VHOST_MAX_QUEUES; i++) {
		struct vhost_vring *vr = &c->vr[i];

		if (vr->kick_fd >= 0)
			close(vr->kick_fd);
		if (vr->call_fd >= 0)
			close(vr->call_fd);
		if (vr->err_fd >= 0)
			close(vr->err_fd);
		if (vr->q)
			vblk_queue_free(vr->q);
		if (vr->w)
			gw_worker_unload(vr->w);
	}
	vhost_mem_put(c->mem);
	vhost_inflight_drop(c);
	vhost_msg_close_fds(&c->msg); /* a message cut short by the close */
	gw_efd_watch(false);
	*c->live_prev = c->live_next;
	if (c->live_next)
		c->live_next->live_prev = c->live_prev;
	close(c->fd);
	atomic_fetch_sub(&x->exp->clients, 1);
	free(c);
	vhost_conn_gone(x);
}

static void teardown_stopped(void *arg, int rc, unsigned value)
{
	struct vhost_conn *c = arg;

	if (--c->stopping == 0)
		conn_free(c);
}

static void free_later(void *arg)
{
	conn_free(arg);
}

static void teardown(struct vhost_conn *c)
{
	for (unsigned i = 0; i < c->x->o->queues; i++) {
		struct vhost_vring *vr = &c->vr[i];

		if (!vr->running)
			continue;
		vr->running = false;
		c->stopping++;
		if (vblk_queue_stop(vr->q, teardown_stopped, c) < 0) {
			/* Cannot reach the worker: leak rather than unmap under it. */
			gw_err("%s: cannot stop queue %u; its memory stays mapped", c->name, i);
			c->stopping--;
			vr->q = NULL;
			c->mem = NULL;
		}
	}
	if (!c->stopping && gw_main_call(free_later, c) < 0)
		conn_free(c);
}

void vhost_conn_close(struct vhost_conn *c, const char *why)
{
	if (c->closing)
		return;
	c->closing = true;
	set_reading(c, false);
	if (c->broken)
		gw_warn_rl(&conn_rl, "%s: closing the connection: %s", c->name, why);
	else
		gw_info_rl(&conn_rl, "%s: frontend gone (%s)", c->name, why);
	if (c->pending)
		return; /* finish_pending continues */
	teardown(c);
}
