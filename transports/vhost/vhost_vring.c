/*
 * vring and memory-table messages: ring geometry and addresses, kick, call
 * and err eventfds, enable/disable, the GET_VRING_BASE stop, and memory
 * table changes while queues run. A ring starts on SET_VRING_KICK (with
 * ENABLE deciding whether it takes requests) and stops on GET_VRING_BASE,
 * after its requests in flight have completed.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/efd.h"
#include "lib/log.h"
#include "lib/util.h"
#include "transports/vhost/vhost_internal.h"

/* The vring a message names, or NULL (bad index: the message is malformed). */
static struct vhost_vring *vring_of(struct vhost_conn *c, uint32_t index)
{
	if (index >= c->x->o->queues) {
		vhost_refuse(c, -EPROTO, "queue %u does not exist (%u queues)", index,
			     c->x->o->queues);
		return NULL;
	}
	return &c->vr[index];
}

static void broken_cb(struct vblk_queue *q, void *arg)
{
	struct vhost_conn *c = arg;
	struct vhost_vring *vr = &c->vr[vblk_queue_index(q)];
	const char *why = vblk_queue_broken_why(q);
	int rc;

	c->broken = true;
	if (vr->err_fd >= 0 && (rc = gw_efd_signal(vr->err_fd)) < 0) {
		gw_debug("%s: err eventfd: %s", c->name,
			 rc == -ETIMEDOUT ? "blocked (full and unread)" : strerror(-rc));
		if (rc == -ETIMEDOUT) {
			close(vr->err_fd); /* not twice */
			vr->err_fd = -1;
		}
	}
	vhost_conn_close(c, why ? why : "malformed virtqueue");
}

static const struct vblk_queue_ops queue_ops = {
	.broken = broken_cb,
};

int vhost_h_vring_num(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_vring_state st;
	struct vhost_vring *vr;

	memcpy(&st, m->payload, sizeof(st));
	if (!(vr = vring_of(c, st.index)))
		return -EPROTO;
	if (vr->running)
		return vhost_refuse(c, -EPROTO, "queue %u is running", st.index);
	if (st.num == 0 || st.num > c->x->o->queue_size || !gw_is_pow2(st.num))
		return vhost_refuse(c, -EINVAL,
				    "queue %u: %u entries (a power of two up to queue-size %u)",
				    st.index, st.num, c->x->o->queue_size);
	vr->num = (uint16_t)st.num;
	return 0;
}

int vhost_h_vring_addr(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_vring_addr a;
	struct vhost_vring *vr;

	memcpy(&a, m->payload, sizeof(a));
	if (!(vr = vring_of(c, a.index)))
		return -EPROTO;
	if (vr->running)
		return vhost_refuse(c, -EPROTO, "queue %u is running", a.index);
	if (a.flags & VHOST_VRING_F_LOG)
		return vhost_refuse(c, -EINVAL, "queue %u: dirty logging is not supported",
				    a.index);
	vr->desc_ua = a.desc;
	vr->avail_ua = a.avail;
	vr->used_ua = a.used;
	vr->addr_set = true;
	return 0;
}

int vhost_h_vring_base(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_vring_state st;
	struct vhost_vring *vr;

	memcpy(&st, m->payload, sizeof(st));
	if (!(vr = vring_of(c, st.index)))
		return -EPROTO;
	if (vr->running)
		return vhost_refuse(c, -EPROTO, "queue %u is running", st.index);
	if (st.num > 0xffff)
		return vhost_refuse(c, -EINVAL, "queue %u: base %u (split rings count to 65535)",
				    st.index, st.num);
	vr->base = (uint16_t)st.num;
	return 0;
}

static void stopped_cb(void *arg, int rc, unsigned value)
{
	struct vhost_conn *c = arg;

	c->vr[c->pending_index].base = (uint16_t)value;
	c->pending_value = value;
	vhost_op_cb(c, rc, value);
}

int vhost_h_get_vring_base(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_vring_state st;
	struct vhost_vring *vr;
	int rc;

	memcpy(&st, m->payload, sizeof(st));
	if (!(vr = vring_of(c, st.index)))
		return -EPROTO;
	if (!vr->running) {
		st.num = vr->base;
		return vhost_msg_reply(c, m->request, &st, sizeof(st), -1);
	}
	/* Answered once the requests in flight have completed. */
	vr->running = false;
	c->pending_index = st.index;
	rc = vblk_queue_stop(vr->q, stopped_cb, c);
	if (rc < 0)
		return vhost_refuse(c, rc, "cannot stop queue %u", st.index);
	c->pending++;
	return VHOST_ASYNC;
}

static void started_cb(void *arg, int rc, unsigned value)
{
	struct vhost_conn *c = arg;

	if (rc < 0)
		c->vr[c->pending_index].running = false;
	vhost_op_cb(c, rc, value);
}

/* SET_VRING_KICK on a stopped ring: start it. */
static int start_vring(struct vhost_conn *c, unsigned i)
{
	struct vhost_vring *vr = &c->vr[i];
	struct vblk_queue_start s;
	char err[256], name[192];
	int rc;

	if (!vr->num || !vr->addr_set || !c->mem || !c->features_set)
		return vhost_refuse(c, -EINVAL, "queue %u kicked before its %s was set", i,
				    !vr->num        ? "size"
				    : !vr->addr_set ? "address"
				    : !c->mem       ? "memory table"
						    : "features");
	memset(&s, 0, sizeof(s));
	rc = vhost_rings(c->mem, vr, &s.desc, &s.avail, &s.used, err, sizeof(err));
	if (rc < 0)
		return vhost_refuse(c, rc, "queue %u: %s", i, err);
	if (!vr->q) {
		snprintf(name, sizeof(name), "%s q%u", c->name, i);
		vr->w = gw_worker_pick();
		vr->q = vblk_queue_new(&c->x->dev, vr->w, i, name, &queue_ops, c);
		if (!vr->q)
			return vhost_refuse(c, -ENOMEM, "out of memory");
	}
	s.num = vr->num;
	s.last_avail = vr->base;
	s.features = c->features;
	s.mem = c->mem->gpa;
	s.kick_fd = vr->kick_fd;
	s.call_fd = vr->call_fd >= 0 ? dup(vr->call_fd) : -1;
	s.enabled = vr->enable != VR_ENABLE_OFF ||
		    !(c->features & VIRTIO_BIT(VHOST_USER_F_PROTOCOL_FEATURES));
	s.infl = vhost_inflight_queue(c, i, vr->num);
	s.poll_max_ns = c->x->o->poll_us * 1000u;
	s.hold_ns = c->x->o->notify_hold_us * 1000u;
	vr->kick_fd = -1;
	c->pending_index = i;
	rc = vblk_queue_start(vr->q, &s, started_cb, c);
	if (rc < 0)
		return vhost_refuse(c, rc, "cannot start queue %u", i);
	vr->running = true;
	c->pending++;
	gw_debug("%s: queue %u: %u entries on %s%s", c->name, i, vr->num, vr->w->name,
		 s.infl ? ", inflight tracked" : "");
	return VHOST_ASYNC;
}

int vhost_h_vring_fd(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_vring *vr;
	uint64_t v;
	bool nofd;
	int fd = -1, rc;

	memcpy(&v, m->payload, 8);
	if (v & ~(uint64_t)(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD))
		return vhost_refuse(c, -EPROTO, "payload 0x%llx has unknown bits",
				    (unsigned long long)v);
	if (!(vr = vring_of(c, (uint32_t)(v & VHOST_USER_VRING_IDX_MASK))))
		return -EPROTO;
	nofd = v & VHOST_USER_VRING_NOFD;
	if (nofd != (m->nfds == 0))
		return vhost_refuse(c, -EPROTO, "%u file descriptors with the no-fd flag %s",
				    m->nfds, nofd ? "set" : "clear");
	if (!nofd) {
		char why[160];

		fd = m->fds[0];
		m->fds[0] = -1;
		if (gw_efd_check(fd, why, sizeof(why)) < 0) {
			close(fd);
			return vhost_refuse(c, -EPROTO, "%s: the fd is %s",
					    vhost_req_name(m->request), why);
		}
	}
	switch (m->request) {
	case VHOST_USER_SET_VRING_ERR:
		if (vr->err_fd >= 0)
			close(vr->err_fd);
		vr->err_fd = fd;
		return 0;
	case VHOST_USER_SET_VRING_CALL:
		if (vr->call_fd >= 0)
			close(vr->call_fd);
		vr->call_fd = fd;
		if (!vr->running)
			return 0;
		rc = vblk_queue_set_call(vr->q, fd >= 0 ? dup(fd) : -1, vhost_op_cb, c);
		if (rc < 0)
			return vhost_refuse(c, rc, "cannot reach queue %u", (unsigned)(v & 0xff));
		c->pending++;
		return VHOST_ASYNC;
	default: /* KICK */
		if (nofd)
			return vhost_refuse(c, -EINVAL,
					    "polling mode (no kick eventfd) is not supported");
		if (vr->running) {
			rc = vblk_queue_set_kick(vr->q, fd, vhost_op_cb, c);
			if (rc < 0)
				return vhost_refuse(c, rc, "cannot reach queue %u",
						    (unsigned)(v & 0xff));
			c->pending++;
			return VHOST_ASYNC;
		}
		if (vr->kick_fd >= 0)
			close(vr->kick_fd);
		vr->kick_fd = fd;
		return start_vring(c, (unsigned)(v & VHOST_USER_VRING_IDX_MASK));
	}
}

int vhost_h_vring_enable(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_vring_state st;
	struct vhost_vring *vr;
	int rc;

	memcpy(&st, m->payload, sizeof(st));
	if (!(vr = vring_of(c, st.index)))
		return -EPROTO;
	if (st.num > 1)
		return vhost_refuse(c, -EPROTO, "queue %u: enable %u (0 or 1)", st.index, st.num);
	vr->enable = st.num ? VR_ENABLE_ON : VR_ENABLE_OFF;
	if (!vr->running)
		return 0;
	rc = vblk_queue_enable(vr->q, st.num != 0, vhost_op_cb, c);
	if (rc < 0)
		return vhost_refuse(c, rc, "cannot reach queue %u", st.index);
	c->pending++;
	return VHOST_ASYNC;
}

int vhost_enable_all(struct vhost_conn *c)
{
	for (unsigned i = 0; i < c->x->o->queues; i++) {
		struct vhost_vring *vr = &c->vr[i];

		vr->enable = VR_ENABLE_ON;
		if (vr->running && vblk_queue_enable(vr->q, true, vhost_op_cb, c) == 0)
			c->pending++;
	}
	return c->pending ? VHOST_ASYNC : 0;
}

void vhost_stop_all(struct vhost_conn *c, vblk_queue_cb cb)
{
	for (unsigned i = 0; i < c->x->o->queues; i++) {
		struct vhost_vring *vr = &c->vr[i];

		if (!vr->running)
			continue;
		vr->running = false;
		if (vblk_queue_stop(vr->q, cb, c) == 0)
			c->pending++;
	}
}

void vhost_vrings_reset(struct vhost_conn *c)
{
	for (unsigned i = 0; i < VHOST_MAX_QUEUES; i++) {
		struct vhost_vring *vr = &c->vr[i];

		vr->num = 0;
		vr->base = 0;
		vr->addr_set = false;
		vr->enable = VR_ENABLE_UNSET;
		if (vr->kick_fd >= 0)
			close(vr->kick_fd);
		vr->kick_fd = -1;
	}
	c->features_set = false;
	c->features = 0;
}

/* ---- memory table ---- */

/* Make nm the table (a reference moves in); running queues switch to it. */
static int mem_apply(struct vhost_conn *c, struct vhost_mem *nm)
{
	struct vhost_mem *old = c->mem;
	char err[256];

	for (unsigned i = 0; i < c->x->o->queues; i++) {
		struct vhost_vring *vr = &c->vr[i];
		struct vring_desc *d;
		uint16_t *a;
		uint8_t *u;

		if (vr->running && vhost_rings(nm, vr, &d, &a, &u, err, sizeof(err)) < 0) {
			vhost_mem_put(nm);
			return vhost_refuse(c, -EINVAL, "queue %u would lose its rings: %s", i,
					    err);
		}
	}
	c->mem = nm;
	for (unsigned i = 0; i < c->x->o->queues; i++) {
		struct vhost_vring *vr = &c->vr[i];
		struct vring_desc *d;
		uint16_t *a;
		uint8_t *u;

		if (!vr->running)
			continue;
		vhost_rings(nm, vr, &d, &a, &u, err, sizeof(err));
		if (vblk_queue_set_mem(vr->q, nm->gpa, d, a, u, vhost_op_cb, c) == 0)
			c->pending++;
		else
			vhost_refuse(c, -ENOMEM, "cannot reach queue %u", i);
	}
	vhost_mem_put(old);
	gw_debug("%s: memory table of %u region%s", c->name, nm->n, nm->n == 1 ? "" : "s");
	return c->pending ? VHOST_ASYNC : 0;
}

int vhost_h_mem_table(struct vhost_conn *c, struct vhost_msg *m)
{
	const struct vhost_mem_table *t = (const struct vhost_mem_table *)m->payload;
	struct vhost_mem_region r[VHOST_USER_MEM_REGIONS];
	struct vhost_mem *nm;
	char err[256] = "";
	uint32_t n;

	if (m->size < 8)
		return vhost_refuse(c, -EPROTO, "payload of %u bytes", m->size);
	n = t->nregions;
	if (n == 0 || n > VHOST_USER_MEM_REGIONS || m->size != 8 + n * sizeof(r[0]) || m->nfds != n)
		return vhost_refuse(c, -EPROTO, "%u regions in %u bytes with %u file descriptors",
				    n, m->size, m->nfds);
	memcpy(r, t->regions, n * sizeof(r[0]));
	nm = vhost_mem_build(NULL, NULL, r, m->fds, n, err, sizeof(err));
	m->nfds = 0; /* consumed */
	if (!nm)
		return vhost_refuse(c, -EINVAL, "%s", err);
	return mem_apply(c, nm);
}

int vhost_h_add_mem(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_mem_single s;
	struct vhost_mem *nm;
	char err[256] = "";

	memcpy(&s, m->payload, sizeof(s));
	nm = vhost_mem_build(c->mem, NULL, &s.region, m->fds, 1, err, sizeof(err));
	m->nfds = 0;
	if (!nm)
		return vhost_refuse(c, -EINVAL, "%s", err);
	return mem_apply(c, nm);
}

int vhost_h_rem_mem(struct vhost_conn *c, struct vhost_msg *m)
{
	struct vhost_mem_single s;
	const struct vhost_mapping *mp;
	struct vhost_mem *nm;
	char err[256] = "";

	memcpy(&s, m->payload, sizeof(s));
	mp = vhost_mem_match(c->mem, &s.region);
	if (!mp)
		return vhost_refuse(c, -EINVAL, "no region gpa 0x%llx size 0x%llx uva 0x%llx",
				    (unsigned long long)s.region.guest_phys_addr,
				    (unsigned long long)s.region.memory_size,
				    (unsigned long long)s.region.userspace_addr);
	nm = vhost_mem_build(c->mem, mp, NULL, NULL, 0, err, sizeof(err));
	if (!nm)
		return vhost_refuse(c, -ENOMEM, "%s", err);
	return mem_apply(c, nm);
}
