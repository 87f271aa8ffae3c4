/* SPDX-License-Identifier: MIT */
/*
 * vu_client data path: virtio-blk requests on a split virtqueue. A queue is
 * used by one thread; nothing here takes the connection lock.
 */
#include "vu_client_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

unsigned int vu_queue_inflight(const struct vu_queue *q)
{
	return q->inflight;
}
unsigned int vu_queue_index(const struct vu_queue *q)
{
	return q->index;
}
unsigned int vu_queue_room(const struct vu_queue *q)
{
	return q->nfree / 3;
}

void vu_queue_get_stats(const struct vu_queue *q, struct vu_queue_stats *st)
{
	*st = q->st;
}

/* ---- data path ---------------------------------------------------------- */

static uint16_t desc_alloc(struct vu_queue *q)
{
	uint16_t d = q->free_head;

	q->free_head = q->next_free[d];
	q->nfree--;
	return d;
}

static void desc_set(struct vu_queue *q, uint16_t d, uint64_t gpa, uint32_t len, uint16_t flags)
{
	q->desc[d].addr = htole64(gpa);
	q->desc[d].len = htole32(len);
	q->desc[d].flags = htole16(flags);
	q->desc[d].next = 0;
}

static int check_req(struct vu_queue *q, const struct vu_blk_req *rq)
{
	const struct vu_client_info *in = &q->c->info;
	uint64_t cap = in->cfg.capacity * VU_SECTOR;
	uint64_t f = in->features;

	switch (rq->op) {
	case VU_BLK_READ:
	case VU_BLK_WRITE:
		if (rq->op == VU_BLK_WRITE && (f & VU_BIT(VU_BLK_F_RO))) {
			vu_queue_set_err(q, "write to a read-only device");
			return -EROFS;
		}
		if (!vu_client_mem_contains(q->c, rq->buf, rq->len)) {
			vu_queue_set_err(q,
					 "I/O buffer %p+%" PRIu64 " is not inside the shared "
					 "memory",
					 rq->buf, rq->len);
			return -EINVAL;
		}
		break;
	case VU_BLK_FLUSH:
		if (!(f & VU_BIT(VU_BLK_F_FLUSH))) {
			vu_queue_set_err(q, "FLUSH was not negotiated");
			return -EOPNOTSUPP;
		}
		return 0;
	case VU_BLK_GET_ID:
		return 0;
	case VU_BLK_DISCARD:
		if (!(f & VU_BIT(VU_BLK_F_DISCARD))) {
			vu_queue_set_err(q, "DISCARD was not negotiated");
			return -EOPNOTSUPP;
		}
		if (in->cfg.max_discard_sectors &&
		    rq->len / VU_SECTOR > in->cfg.max_discard_sectors) {
			vu_queue_set_err(q,
					 "discard of %" PRIu64 " sectors exceeds "
					 "max_discard_sectors %u",
					 (uint64_t)(rq->len / VU_SECTOR),
					 in->cfg.max_discard_sectors);
			return -EINVAL;
		}
		break;
	case VU_BLK_WRITE_ZEROES:
		if (!(f & VU_BIT(VU_BLK_F_WRITE_ZEROES))) {
			vu_queue_set_err(q, "WRITE_ZEROES was not negotiated");
			return -EOPNOTSUPP;
		}
		if (in->cfg.max_write_zeroes_sectors &&
		    rq->len / VU_SECTOR > in->cfg.max_write_zeroes_sectors) {
			vu_queue_set_err(q,
					 "write-zeroes of %" PRIu64 " sectors exceeds "
					 "max_write_zeroes_sectors %u",
					 (uint64_t)(rq->len / VU_SECTOR),
					 in->cfg.max_write_zeroes_sectors);
			return -EINVAL;
		}
		break;
	default:
		vu_queue_set_err(q, "unknown request op %d", (int)rq->op);
		return -EINVAL;
	}
	if (rq->len == 0 || rq->len % VU_SECTOR || rq->offset % VU_SECTOR) {
		vu_queue_set_err(q,
				 "offset %" PRIu64 " / length %" PRIu64 " not multiples of "
				 "512 bytes (or length 0)",
				 rq->offset, rq->len);
		return -EINVAL;
	}
	if (rq->offset > cap || rq->len > cap - rq->offset) {
		vu_queue_set_err(q,
				 "range %" PRIu64 "+%" PRIu64 " is beyond the capacity "
				 "(%" PRIu64 " bytes)",
				 rq->offset, rq->len, cap);
		return -EINVAL;
	}
	if ((rq->op == VU_BLK_DISCARD || rq->op == VU_BLK_WRITE_ZEROES) &&
	    rq->len / VU_SECTOR > UINT32_MAX) {
		vu_queue_set_err(q, "a segment holds at most 2^32-1 sectors");
		return -EINVAL;
	}
	return 0;
}

int vu_queue_submit(struct vu_queue *q, const struct vu_blk_req *rq)
{
	struct vu_slot *s;
	struct vu_track *t;
	uint64_t nseg = 0, left, done;
	uint16_t head, prev, d;
	uint32_t type, in_bytes = 1;
	bool data_write = false;
	int r;

	if (q->broken)
		return -EPROTO;
	if (!(rq->flags & VU_REQ_NOCHECK)) {
		r = check_req(q, rq);
		if (r < 0)
			return r;
	}
	switch (rq->op) {
	case VU_BLK_READ:
		type = VIRTIO_BLK_T_IN;
		data_write = true;
		nseg = (rq->len + q->seg_limit - 1) / q->seg_limit;
		break;
	case VU_BLK_WRITE:
		type = VIRTIO_BLK_T_OUT;
		nseg = (rq->len + q->seg_limit - 1) / q->seg_limit;
		break;
	case VU_BLK_FLUSH:
		type = VIRTIO_BLK_T_FLUSH;
		break;
	case VU_BLK_GET_ID:
		type = VIRTIO_BLK_T_GET_ID;
		nseg = 1;
		break;
	case VU_BLK_DISCARD:
		type = VIRTIO_BLK_T_DISCARD;
		nseg = 1;
		break;
	case VU_BLK_WRITE_ZEROES:
		type = VIRTIO_BLK_T_WRITE_ZEROES;
		nseg = 1;
		break;
	default:
		vu_queue_set_err(q, "unknown request op %d", (int)rq->op);
		return -EINVAL;
	}
	if (nseg > q->max_data_segs) {
		vu_queue_set_err(q,
				 "request of %" PRIu64 " bytes needs %" PRIu64 " data "
				 "descriptors of at most %" PRIu64 " bytes; the limit is %u "
				 "(seg_max / queue size)",
				 rq->len, nseg, q->seg_limit, q->max_data_segs);
		return -EINVAL;
	}
	if (q->nfree < nseg + 2)
		return -EAGAIN;

	head = desc_alloc(q);
	s = &q->slots[head];
	t = &q->track[head];
	s->hdr.type = htole32(type);
	s->hdr.ioprio = 0;
	s->hdr.sector = htole64(
		rq->op == VU_BLK_FLUSH || rq->op == VU_BLK_GET_ID ? 0 : rq->offset / VU_SECTOR);
	s->status = VU_STATUS_SENTINEL;
	desc_set(q, head, to_gpa(q->c, &s->hdr), sizeof(s->hdr), VRING_DESC_F_NEXT);
	prev = head;

	switch (rq->op) {
	case VU_BLK_READ:
	case VU_BLK_WRITE:
		for (done = 0; done < rq->len; done += left) {
			left = rq->len - done;
			if (left > q->seg_limit)
				left = q->seg_limit;
			d = desc_alloc(q);
			desc_set(q, d, to_gpa(q->c, (uint8_t *)rq->buf + done), (uint32_t)left,
				 VRING_DESC_F_NEXT | (data_write ? VRING_DESC_F_WRITE : 0));
			q->desc[prev].next = htole16(d);
			q->next_free[prev] = d;
			prev = d;
		}
		if (data_write)
			in_bytes += (uint32_t)rq->len;
		break;
	case VU_BLK_GET_ID:
		memset(s->id, 0, sizeof(s->id));
		d = desc_alloc(q);
		desc_set(q, d, to_gpa(q->c, s->id), VIRTIO_BLK_ID_BYTES,
			 VRING_DESC_F_NEXT | VRING_DESC_F_WRITE);
		q->desc[prev].next = htole16(d);
		q->next_free[prev] = d;
		prev = d;
		in_bytes += VIRTIO_BLK_ID_BYTES;
		break;
	case VU_BLK_DISCARD:
	case VU_BLK_WRITE_ZEROES:
		s->seg.sector = htole64(rq->offset / VU_SECTOR);
		s->seg.num_sectors = htole32((uint32_t)(rq->len / VU_SECTOR));
		s->seg.flags = htole32(
			rq->op == VU_BLK_WRITE_ZEROES && (rq->flags & VU_REQ_UNMAP) ? 1 : 0);
		d = desc_alloc(q);
		desc_set(q, d, to_gpa(q->c, &s->seg), sizeof(s->seg), VRING_DESC_F_NEXT);
		q->desc[prev].next = htole16(d);
		q->next_free[prev] = d;
		prev = d;
		break;
	default:
		break;
	}
	d = desc_alloc(q);
	desc_set(q, d, to_gpa(q->c, &s->status), 1, VRING_DESC_F_WRITE);
	q->desc[prev].next = htole16(d);
	q->next_free[prev] = d;

	t->cookie = rq->cookie;
	t->id_dst = rq->op == VU_BLK_GET_ID ? rq->buf : NULL;
	t->in_bytes = in_bytes;
	t->ndesc = (uint16_t)(nseg + 2);
	t->op = (uint8_t)rq->op;
	t->inflight = 1;

	*avail_ring(q, q->avail_shadow & (q->num - 1)) = htole16(head);
	q->avail_shadow++;
	q->inflight++;
	q->st.submitted++;
	return 0;
}

int vu_queue_kick(struct vu_queue *q)
{
	uint16_t old = q->avail_published, new = q->avail_shadow;
	bool need;

	if (q->broken)
		return -EPROTO;
	if (old == new)
		return 0;
	__atomic_store_n(avail_idx(q), htole16(new), __ATOMIC_RELEASE);
	q->avail_published = new;
	/* The index store must be visible before we read the backend's
	 * notification state, or we can miss a needed kick. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->event_idx) {
		uint16_t ev = le16toh(*avail_event(q));

		need = (uint16_t)(new - ev - 1) < (uint16_t)(new - old);
	} else {
		need = !(le16toh(*used_flags(q)) & VRING_USED_F_NO_NOTIFY);
	}
	if (!need) {
		q->st.kicks_suppressed++;
		return 0;
	}
	q->st.kicks++;
	for (;;) {
		uint64_t one = 1;
		ssize_t n = write(q->kickfd, &one, sizeof(one));

		if (n == sizeof(one) || (n < 0 && errno == EAGAIN))
			return 0; /* EAGAIN: counter saturated, kick pending */
		if (n < 0 && errno == EINTR)
			continue;
		vu_queue_set_err(q, "kick eventfd write: %s", n < 0 ? strerror(errno) : "short");
		return -EIO;
	}
}

static void release_chain(struct vu_queue *q, uint16_t head, unsigned int ndesc)
{
	uint16_t d = head;
	unsigned int i;

	for (i = 1; i < ndesc; i++)
		d = q->next_free[d];
	/* d is the tail; splice the whole chain onto the free list. */
	q->next_free[d] = q->free_head;
	q->free_head = head;
	q->nfree += ndesc;
}

static int broken(struct vu_queue *q)
{
	q->broken = true;
	return -EPROTO;
}

int vu_queue_reap(struct vu_queue *q, struct vu_blk_cpl *cpl, unsigned int max)
{
	uint16_t idx, pending;
	unsigned int n = 0;

	if (q->broken)
		return -EPROTO;
	idx = le16toh(__atomic_load_n(used_idx(q), __ATOMIC_ACQUIRE));
	pending = (uint16_t)(idx - q->last_used);
	if (pending > q->inflight) {
		vu_queue_set_err(q,
				 "backend moved used->idx from %u to %u (%u entries), but "
				 "only %u requests are in flight",
				 q->last_used, idx, pending, q->inflight);
		return broken(q);
	}
	while (n < max && q->last_used != idx) {
		volatile struct vring_used_elem *e = used_elem(q, q->last_used & (q->num - 1));
		uint32_t id = le32toh(e->id), len = le32toh(e->len);
		struct vu_track *t;
		struct vu_blk_cpl *o = &cpl[n];
		uint8_t status;

		if (id >= q->num || !q->track[id].inflight) {
			vu_queue_set_err(q,
					 "backend completed descriptor id %u (used ring slot "
					 "%u), which is %s",
					 id, q->last_used,
					 id >= q->num ? "out of range" : "not in flight");
			return broken(q);
		}
		t = &q->track[id];
		if (len > t->in_bytes) {
			vu_queue_set_err(q,
					 "backend reports %u bytes written for request %u, "
					 "but it only had %u writable bytes",
					 len, id, t->in_bytes);
			return broken(q);
		}
		if (len != t->in_bytes)
			q->st.len_mismatch++;
		status = q->slots[id].status;
		o->cookie = t->cookie;
		o->status = status;
		o->used_len = len;
		switch (status) {
		case VIRTIO_BLK_S_OK:
			o->result = 0;
			if (t->op == VU_BLK_GET_ID && t->id_dst)
				memcpy(t->id_dst, q->slots[id].id, VIRTIO_BLK_ID_BYTES);
			break;
		case VIRTIO_BLK_S_IOERR:
			o->result = -EIO;
			break;
		case VIRTIO_BLK_S_UNSUPP:
			o->result = -EOPNOTSUPP;
			break;
		case VU_STATUS_SENTINEL:
			vu_queue_set_err(q,
					 "backend completed request %u without writing its "
					 "status byte",
					 id);
			o->result = -EPROTO;
			break;
		default:
			vu_queue_set_err(q, "backend returned invalid status %u for request %u",
					 status, id);
			o->result = -EPROTO;
			break;
		}
		t->inflight = 0;
		release_chain(q, (uint16_t)id, t->ndesc);
		q->inflight--;
		q->last_used++;
		q->st.completed++;
		n++;
	}
	return (int)n;
}

static bool has_used(struct vu_queue *q)
{
	return le16toh(__atomic_load_n(used_idx(q), __ATOMIC_ACQUIRE)) != q->last_used;
}

static void enable_cb(struct vu_queue *q)
{
	if (q->event_idx)
		*used_event(q) = htole16(q->last_used);
	else
		*avail_flags(q) = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void disable_cb(struct vu_queue *q)
{
	if (q->event_idx)
		*used_event(q) = htole16((uint16_t)(q->last_used - 1));
	else
		*avail_flags(q) = htole16(VRING_AVAIL_F_NO_INTERRUPT);
}

static int check_conn(struct vu_queue *q, short revents)
{
	if (revents & (POLLHUP | POLLERR | POLLNVAL)) {
		vu_queue_set_err(q, "backend closed the connection with %u requests in flight",
				 q->inflight);
		q->broken = true;
		return -EPIPE;
	}
	return 0;
}

void vu_queue_set_spin(struct vu_queue *q, unsigned int us)
{
	q->spin_us = us;
}

/* Look at the used ring for up to spin_us; true when something came. */
static bool spin_for_used(struct vu_queue *q)
{
	int64_t end;
	unsigned int n = 0;

	if (!q->spin_us)
		return false;
	q->st.spins++;
	end = now_ns() + (int64_t)q->spin_us * 1000;
	for (;;) {
		if (has_used(q)) {
			q->st.spin_hits++;
			return true;
		}
		if ((++n & 63) == 0 && now_ns() >= end)
			return false;
		cpu_relax();
	}
}

int vu_queue_wait(struct vu_queue *q, int timeout_ms)
{
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct pollfd pfd[2];
	uint64_t spins = 0;
	int r;

	if (q->broken)
		return -EPROTO;
	if (has_used(q))
		return 0;
	q->st.waits++;
	if (q->flags & VU_QUEUE_POLL) {
		for (;;) {
			if (has_used(q))
				return 0;
			if ((++spins & 0xffff) == 0) {
				pfd[0].fd = q->c->sock;
				pfd[0].events = 0;
				if (poll(pfd, 1, 0) > 0 && check_conn(q, pfd[0].revents))
					return -EPIPE;
				if (deadline >= 0 && now_ms() >= deadline)
					goto timeout;
			}
			cpu_relax();
		}
	}
	if (spin_for_used(q))
		return 0;
	for (;;) {
		enable_cb(q);
		if (has_used(q))
			break;
		pfd[0].fd = q->callfd;
		pfd[0].events = POLLIN;
		pfd[1].fd = q->c->sock;
		pfd[1].events = 0;
		r = poll(pfd, 2, remaining_ms(deadline));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			vu_queue_set_err(q, "poll: %s", strerror(errno));
			disable_cb(q);
			return r;
		}
		if (pfd[0].revents & POLLIN) {
			uint64_t v;

			q->st.wakeups++;
			if (read(q->callfd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
				r = -errno;
				vu_queue_set_err(q, "call eventfd read: %s", strerror(errno));
				disable_cb(q);
				return r;
			}
		}
		if (has_used(q))
			break;
		if (check_conn(q, pfd[1].revents))
			return -EPIPE;
		if (r == 0 && deadline >= 0 && now_ms() >= deadline) {
			disable_cb(q);
			goto timeout;
		}
	}
	disable_cb(q);
	return 0;

timeout:
	vu_queue_set_err(q,
			 "no completion from the backend within %d ms (%u requests in "
			 "flight)",
			 timeout_ms, q->inflight);
	return -ETIMEDOUT;
}
