#include "lib/bufpool.h"

#include <stdlib.h>
#include <string.h>

struct gw_buf_hdr {
	struct gw_buf_hdr *next;
};

/* Keep at most this many buffers of one class, whatever the byte limit. */
#define GW_BUF_PER_CLASS 256

static unsigned size_class(size_t len)
{
	unsigned c = 0;

	if (len <= ((size_t)1 << GW_BUF_MIN_SHIFT))
		return 0;
	c = (unsigned)(64 - __builtin_clzll((unsigned long long)(len - 1))) - GW_BUF_MIN_SHIFT;
	return c;
}

void gw_bufpool_init(struct gw_bufpool *p, size_t cache_limit)
{
	memset(p, 0, sizeof(*p));
	p->cache_limit = cache_limit;
}

void gw_bufpool_exit(struct gw_bufpool *p)
{
	for (unsigned c = 0; c < GW_BUF_CLASSES; c++) {
		while (p->free[c]) {
			struct gw_buf_hdr *h = p->free[c];

			p->free[c] = h->next;
			free(h);
		}
		p->nfree[c] = 0;
	}
	p->cached_bytes = 0;
}

void *gw_buf_get(struct gw_bufpool *p, size_t len)
{
	unsigned c = size_class(len);
	void *buf;

	if (c >= GW_BUF_CLASSES)
		return NULL;
	if (p->free[c]) {
		struct gw_buf_hdr *h = p->free[c];

		p->free[c] = h->next;
		p->nfree[c]--;
		p->cached_bytes -= (size_t)1 << (c + GW_BUF_MIN_SHIFT);
		return h;
	}
	if (posix_memalign(&buf, 4096, (size_t)1 << (c + GW_BUF_MIN_SHIFT)))
		return NULL;
	return buf;
}

void gw_buf_put(struct gw_bufpool *p, void *buf, size_t len)
{
	unsigned c = size_class(len);
	size_t sz = (size_t)1 << (c + GW_BUF_MIN_SHIFT);
	struct gw_buf_hdr *h = buf;

	if (!buf)
		return;
	if (p->nfree[c] >= GW_BUF_PER_CLASS || p->cached_bytes + sz > p->cache_limit) {
		free(buf);
		return;
	}
	h->next = p->free[c];
	p->free[c] = h;
	p->nfree[c]++;
	p->cached_bytes += sz;
}
