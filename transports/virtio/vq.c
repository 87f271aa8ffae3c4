#include "transports/virtio/vq.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

/* Driver-written memory is read exactly once per field, into locals. */
#define LOAD16(p) le16toh(__atomic_load_n((p), __ATOMIC_RELAXED))
#define LOAD32(p) le32toh(__atomic_load_n((p), __ATOMIC_RELAXED))
#define LOAD64(p) le64toh(__atomic_load_n((p), __ATOMIC_RELAXED))

static inline uint16_t *used_idx_ptr(struct vq *q)
{
	return (uint16_t *)(q->used + 2);
}

static inline struct vring_used_elem *used_elem(struct vq *q, uint16_t i)
{
	return (struct vring_used_elem *)(q->used + 4) + (i & (q->num - 1));
}

static inline uint16_t *avail_event_ptr(struct vq *q)
{
	return (uint16_t *)(q->used + 4 + 8 * (size_t)q->num);
}

static inline uint16_t avail_idx_acquire(struct vq *q)
{
	return le16toh(__atomic_load_n(&q->avail[1], __ATOMIC_ACQUIRE));
}

int vq_fail(struct vq *q, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (!q->broken) {
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		gw_warn("%s: malformed virtqueue: %s; the queue stops",
			q->name ? q->name : "virtqueue", msg);
	}
	q->broken = true;
	return -EPROTO;
}

int vq_init(struct vq *q, uint16_t last_avail)
{
	q->busy = calloc(q->num, 1);
	if (!q->busy)
		return -ENOMEM;
	q->ind_buf = NULL;
	q->last_avail = last_avail;
	q->used_idx = LOAD16(used_idx_ptr(q));
	q->signalled_used = q->used_idx;
	q->signalled_valid = false;
	q->broken = false;
	q->inuse = 0;
	q->counter = 0;
	return 0;
}

void vq_fini(struct vq *q)
{
	free(q->busy);
	free(q->ind_buf);
	q->busy = NULL;
	q->ind_buf = NULL;
}

/*
 * An indirect table as one readable pointer: in place, or gathered into a
 * buffer of ours when it is split across regions or not aligned for
 * struct vring_desc (the driver chooses its address).
 */
static const struct vring_desc *indirect_table(struct vq *q, uint64_t addr, uint32_t len)
{
	struct iovec iov[16];
	unsigned n = 0;
	size_t off = 0;
	void *p = virtio_mem_ptr(q->mem, addr, len);

	if (p && !((uintptr_t)p % _Alignof(struct vring_desc)))
		return p;
	if (virtio_mem_iov(q->mem, addr, len, iov, &n, 16) < 0)
		return NULL;
	if (!q->ind_buf && !(q->ind_buf = malloc(VQ_MAX_INDIRECT * sizeof(struct vring_desc))))
		return NULL;
	for (unsigned i = 0; i < n; i++) {
		memcpy((uint8_t *)q->ind_buf + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	return q->ind_buf;
}

/* Whether [addr, addr + len) is mapped, without producing iovecs. */
static bool range_mapped(const struct virtio_memmap *m, uint64_t addr, uint64_t len)
{
	uint64_t last;

	if (__builtin_add_overflow(addr, len - 1, &last))
		return false;
	while (len) {
		const struct virtio_region *r = virtio_mem_find(m, addr);
		uint64_t chunk;

		if (!r)
			return false;
		chunk = r->len - (addr - r->addr);
		if (chunk >= len)
			return true;
		addr += chunk;
		len -= chunk;
	}
	return true;
}

static int walk(struct vq *q, uint16_t head, struct vq_elem *e, struct iovec *iov, unsigned max)
{
	const struct vring_desc *table = q->desc;
	unsigned tmax = q->num, count = 0, n = 0, i = head;
	bool indirect = false, writing = false;

	memset(e, 0, sizeof(*e));
	e->head = head;
	if (head >= q->num)
		return vq_fail(q, "head %u out of range (ring of %u)", head, q->num);
	for (;;) {
		const struct vring_desc *dp = &table[i];
		uint64_t addr = LOAD64(&dp->addr);
		uint32_t len = LOAD32(&dp->len);
		uint16_t flags = LOAD16(&dp->flags), next = LOAD16(&dp->next);
		int rc;

		if (flags & VRING_DESC_F_INDIRECT) {
			if (!q->indirect)
				return vq_fail(
					q,
					"head %u: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC",
					head);
			if (indirect)
				return vq_fail(
					q, "head %u: indirect descriptor inside an indirect table",
					head);
			if (count)
				return vq_fail(
					q, "head %u: indirect descriptor in the middle of a chain",
					head);
			if (flags & VRING_DESC_F_NEXT)
				return vq_fail(q, "head %u: indirect descriptor with NEXT set",
					       head);
			if (len == 0 || len % sizeof(struct vring_desc) ||
			    len > VQ_MAX_INDIRECT * sizeof(struct vring_desc))
				return vq_fail(
					q,
					"head %u: indirect table of %u bytes (a multiple of 16, at most %u)",
					head, len,
					VQ_MAX_INDIRECT * (unsigned)sizeof(struct vring_desc));
			table = indirect_table(q, addr, len);
			if (!table)
				return vq_fail(
					q,
					"head %u: indirect table 0x%llx+%u is outside driver memory",
					head, (unsigned long long)addr, len);
			tmax = len / sizeof(struct vring_desc);
			indirect = true;
			i = 0;
			continue;
		}
		if (++count > tmax)
			return vq_fail(q, "head %u: chain longer than %u descriptors (a loop?)",
				       head, tmax);
		if (len == 0)
			return vq_fail(q, "head %u: zero-length buffer", head);
		if (flags & VRING_DESC_F_WRITE) {
			writing = true;
			e->in_len += len;
		} else {
			if (writing)
				return vq_fail(q, "head %u: readable buffer after a writable one",
					       head);
			e->out_len += len;
		}
		if (!e->truncated) {
			rc = virtio_mem_iov(q->mem, addr, len, iov, &n, max);
			if (rc == -ENOBUFS)
				e->truncated = true;
			else if (rc < 0)
				goto bad_addr;
		}
		if (e->truncated && !range_mapped(q->mem, addr, len))
			goto bad_addr;
		if (writing) {
			e->last_in = virtio_mem_ptr(q->mem, addr + len - 1, 1);
			if (!e->truncated)
				e->nin = n - e->nout;
		} else if (!e->truncated) {
			e->nout = n;
		}
		if (!(flags & VRING_DESC_F_NEXT))
			break;
		if (next >= tmax)
			return vq_fail(q, "head %u: next %u out of range (%u descriptors)", head,
				       next, tmax);
		i = next;
		continue;
bad_addr:
		return vq_fail(q, "head %u: buffer 0x%llx+%u is outside driver memory", head,
			       (unsigned long long)addr, len);
	}
	return 0;
}

int vq_pop(struct vq *q, struct vq_elem *e, struct iovec *iov, unsigned max)
{
	uint16_t avail, pending, head;
	int rc;

	if (gw_unlikely(q->broken))
		return -EPROTO;
	avail = avail_idx_acquire(q);
	pending = (uint16_t)(avail - q->last_avail);
	if (pending == 0)
		return 0;
	if (gw_unlikely(pending > q->num))
		return vq_fail(q, "avail index %u is %u ahead of %u (ring of %u)", avail, pending,
			       q->last_avail, q->num);
	head = LOAD16(&q->avail[2 + (q->last_avail & (q->num - 1))]);
	if (gw_unlikely(head >= q->num))
		return vq_fail(q, "head %u out of range (ring of %u)", head, q->num);
	if (gw_unlikely(q->busy[head]))
		return vq_fail(q, "head %u handed to the device again while still in use", head);
	rc = walk(q, head, e, iov, max);
	if (rc < 0)
		return rc;
	if (q->infl) {
		q->infl->desc[head].counter = ++q->counter;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		q->infl->desc[head].inflight = 1;
	}
	q->busy[head] = 1;
	q->last_avail++;
	q->inuse++;
	return 1;
}

int vq_map_head(struct vq *q, uint16_t head, struct vq_elem *e, struct iovec *iov, unsigned max)
{
	if (q->broken)
		return -EPROTO;
	return walk(q, head, e, iov, max);
}

void vq_push(struct vq *q, uint16_t head, uint32_t len)
{
	uint16_t idx = q->used_idx;
	struct vring_used_elem *u = used_elem(q, idx);

	if (q->infl) {
		q->infl->last_batch_head = head;
		__atomic_thread_fence(__ATOMIC_RELEASE);
	}
	__atomic_store_n(&u->id, htole32(head), __ATOMIC_RELAXED);
	__atomic_store_n(&u->len, htole32(len), __ATOMIC_RELAXED);
	/* The element must be visible before the index that publishes it. */
	__atomic_store_n(used_idx_ptr(q), htole16((uint16_t)(idx + 1)), __ATOMIC_RELEASE);
	q->used_idx = (uint16_t)(idx + 1);
	q->inuse--;
	q->busy[head] = 0;
	if (q->infl) {
		q->infl->desc[head].inflight = 0;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		q->infl->used_idx = q->used_idx;
	}
}

uint16_t vq_pending(struct vq *q)
{
	uint16_t n;

	if (q->broken)
		return 0;
	n = (uint16_t)(avail_idx_acquire(q) - q->last_avail);
	return n > q->num ? 0 : n;
}

bool vq_should_notify(struct vq *q)
{
	uint16_t old, new, ev;
	bool valid;

	/* Our used->idx store must be visible before we read the driver's wishes. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->notify_on_empty && q->inuse == 0 && avail_idx_acquire(q) == q->last_avail)
		return true;
	if (!q->event_idx)
		return !(LOAD16(&q->avail[0]) & VRING_AVAIL_F_NO_INTERRUPT);
	old = q->signalled_used;
	valid = q->signalled_valid;
	new = q->signalled_used = q->used_idx;
	q->signalled_valid = true;
	if (!valid)
		return true;
	ev = LOAD16(&q->avail[2 + q->num]);
	return (uint16_t)(new - ev - 1) < (uint16_t)(new - old);
}

bool vq_arm_kick(struct vq *q)
{
	if (q->broken)
		return false;
	if (q->event_idx)
		__atomic_store_n(avail_event_ptr(q), htole16(q->last_avail), __ATOMIC_RELAXED);
	else
		__atomic_store_n((uint16_t *)q->used, 0, __ATOMIC_RELAXED);
	/* Publish before looking at avail->idx again, or a kick could be lost. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return avail_idx_acquire(q) != q->last_avail;
}

void vq_suppress_kicks(struct vq *q)
{
	if (!q->event_idx)
		__atomic_store_n((uint16_t *)q->used, htole16(VRING_USED_F_NO_NOTIFY),
				 __ATOMIC_RELAXED);
}

/* ---- inflight recovery ---- */

struct head_ord {
	uint64_t counter;
	uint16_t head;
};

static int cmp_counter(const void *a, const void *b)
{
	const struct head_ord *x = a, *y = b;

	return x->counter < y->counter ? -1 : x->counter > y->counter;
}

int vq_inflight_recover(struct vq *q, uint64_t features, uint16_t *heads)
{
	struct vq_inflight *r = q->infl;
	uint16_t version = __atomic_load_n(&r->version, __ATOMIC_RELAXED);
	uint16_t desc_num = __atomic_load_n(&r->desc_num, __ATOMIC_RELAXED);
	uint16_t region_used, batch;
	struct head_ord *ord;
	unsigned n = 0;

	if (version == 0 || desc_num != q->num) {
		if (version != 0)
			gw_warn("%s: inflight region was set up for %u entries, the ring has %u: starting afresh",
				q->name, desc_num, q->num);
		memset(r->desc, 0, sizeof(r->desc[0]) * q->num);
		r->features = features;
		r->desc_num = q->num;
		r->last_batch_head = 0;
		r->used_idx = q->used_idx;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		r->version = 1;
		return 0;
	}
	region_used = __atomic_load_n(&r->used_idx, __ATOMIC_RELAXED);
	if (region_used != q->used_idx) {
		/* The last push published used->idx but died before its bookkeeping. */
		batch = __atomic_load_n(&r->last_batch_head, __ATOMIC_RELAXED);
		if (batch < q->num && r->desc[batch].inflight) {
			gw_info("%s: head %u was completed just before the restart; not resubmitted",
				q->name, batch);
			r->desc[batch].inflight = 0;
		}
		r->used_idx = q->used_idx;
	}
	ord = malloc(sizeof(*ord) * q->num);
	if (!ord)
		return -ENOMEM;
	for (unsigned i = 0; i < q->num; i++) {
		if (!__atomic_load_n(&r->desc[i].inflight, __ATOMIC_RELAXED))
			continue;
		ord[n].counter = __atomic_load_n(&r->desc[i].counter, __ATOMIC_RELAXED);
		ord[n].head = (uint16_t)i;
		n++;
	}
	qsort(ord, n, sizeof(*ord), cmp_counter);
	for (unsigned i = 0; i < n; i++) {
		heads[i] = ord[i].head;
		q->busy[ord[i].head] = 1;
		if (ord[i].counter > q->counter)
			q->counter = ord[i].counter;
	}
	free(ord);
	r->features = features;
	q->inuse = (uint16_t)n;
	q->last_avail = (uint16_t)(q->used_idx + n);
	return (int)n;
}
