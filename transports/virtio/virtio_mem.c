#include "transports/virtio/virtio_mem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/guard.h"

struct virtio_memmap *virtio_mem_new(unsigned cap, void (*release)(struct virtio_memmap *m),
				     void *owner)
{
	struct virtio_memmap *m = calloc(1, sizeof(*m) + (size_t)cap * sizeof(m->r[0]));

	if (!m)
		return NULL;
	atomic_init(&m->refs, 1);
	m->release = release;
	m->owner = owner;
	return m;
}

int virtio_mem_add(struct virtio_memmap *m, unsigned cap, uint64_t addr, uint64_t len, void *host)
{
	uint64_t last;
	unsigned i;

	if (len == 0 || __builtin_add_overflow(addr, len - 1, &last))
		return -EINVAL;
	if (m->n >= cap)
		return -ENOSPC;
	for (i = 0; i < m->n; i++) {
		const struct virtio_region *r = &m->r[i];

		if (addr <= r->addr + (r->len - 1) && r->addr <= last)
			return -EEXIST;
		if (r->addr > addr)
			break;
	}
	memmove(&m->r[i + 1], &m->r[i], (m->n - i) * sizeof(m->r[0]));
	m->r[i].addr = addr;
	m->r[i].len = len;
	m->r[i].host = host;
	m->n++;
	return 0;
}

void virtio_mem_put(struct virtio_memmap *m)
{
	if (!m || atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (m->release)
		m->release(m);
	else
		free(m);
}

const struct virtio_region *virtio_mem_find(const struct virtio_memmap *m, uint64_t addr)
{
	unsigned lo = 0, hi = m->n;

	/* Few regions in practice (1 to 8); a binary search keeps many slots cheap too. */
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		const struct virtio_region *r = &m->r[mid];

		if (addr < r->addr)
			hi = mid;
		else if (addr - r->addr >= r->len)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

void *virtio_mem_ptr(const struct virtio_memmap *m, uint64_t addr, uint64_t len)
{
	const struct virtio_region *r;
	uint64_t off;

	if (len == 0)
		return NULL;
	r = virtio_mem_find(m, addr);
	if (!r)
		return NULL;
	off = addr - r->addr;
	if (len > r->len - off)
		return NULL;
	return r->host + off;
}

int virtio_mem_iov(const struct virtio_memmap *m, uint64_t addr, uint64_t len, struct iovec *iov,
		   unsigned *n, unsigned max)
{
	uint64_t last;

	if (len == 0 || __builtin_add_overflow(addr, len - 1, &last))
		return -EFAULT;
	while (len) {
		const struct virtio_region *r = virtio_mem_find(m, addr);
		uint64_t off, chunk;

		if (!r)
			return -EFAULT;
		if (*n >= max)
			return -ENOBUFS;
		off = addr - r->addr;
		chunk = r->len - off;
		if (chunk > len)
			chunk = len;
		iov[*n].iov_base = r->host + off;
		iov[*n].iov_len = (size_t)chunk;
		(*n)++;
		addr += chunk; /* cannot wrap: the range was checked above */
		len -= chunk;
	}
	return 0;
}

bool virtio_mem_poisoned(const struct virtio_memmap *m)
{
	for (unsigned i = 0; m && i < m->n; i++)
		if (gw_guard_poisoned(m->r[i].host, (size_t)m->r[i].len))
			return true;
	return false;
}
