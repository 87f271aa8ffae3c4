/*
 * memory: sparse RAM. Pages (4 KiB) are allocated on first write and hang off
 * a radix tree of 512-way nodes, deep enough for the image size; unwritten
 * ranges read as zeros and report as holes. Trimming or zeroing whole pages
 * frees them.
 *
 * Concurrency: node and page pointers are installed with compare-and-swap,
 * so reads and writes from several workers run in parallel under a shared
 * lock; only operations that free pages take the lock exclusively.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "gateway/util.h"

#define MEM_PAGE_SHIFT 12
#define MEM_PAGE ((uint64_t)1 << MEM_PAGE_SHIFT)
#define MEM_FAN_SHIFT 9
#define MEM_FAN (1u << MEM_FAN_SHIFT)

struct mem_opts {
	uint64_t size;
};

static const struct gw_opt_desc mem_opts[] = {
	{ .key = "size", .type = GW_OPT_SIZE, .offset = offsetof(struct mem_opts, size),
	  .flags = GW_OPT_REQUIRED, .min = 1, .max = INT64_MAX,
	  .help = "size of the RAM disk, e.g. 1G; memory is used only for written data" },
};

struct mem_backend {
	struct gw_backend b;
	unsigned levels;      /* node levels above the pages (>= 1) */
	void **root;          /* MEM_FAN slots */
	pthread_rwlock_t lock;
	uint64_t pages;       /* allocated pages (atomic) */
};

static inline struct mem_backend *to_mem(struct gw_backend *b)
{
	return container_of(b, struct mem_backend, b);
}

static int mem_open(struct gw_backend *b, const void *opts, char *err, size_t errlen)
{
	const struct mem_opts *o = opts;
	struct mem_backend *m = to_mem(b);
	uint64_t npages = (o->size + MEM_PAGE - 1) >> MEM_PAGE_SHIFT;

	m->levels = 1;
	while (m->levels < 8 && (npages - 1) >> (MEM_FAN_SHIFT * m->levels))
		m->levels++;
	m->root = calloc(MEM_FAN, sizeof(void *));
	if (!m->root)
		return -ENOMEM;
	pthread_rwlock_init(&m->lock, NULL);
	b->size = o->size;
	b->caps = GW_CAP_TRIM | GW_CAP_ZERO | GW_CAP_FAST_ZERO | GW_CAP_EXTENTS | GW_CAP_MULTI_CONN |
		  GW_CAP_INLINE;
	return 0;
}

static inline unsigned slot_at(uint64_t page, unsigned level)
{
	return (unsigned)(page >> (MEM_FAN_SHIFT * level)) & (MEM_FAN - 1);
}

/* Install *fresh into *slot unless somebody beat us; returns what is there. */
static void *install(void **slot, void *fresh)
{
	void *expected = NULL;

	if (__atomic_compare_exchange_n(slot, &expected, fresh, false, __ATOMIC_ACQ_REL,
					__ATOMIC_ACQUIRE))
		return fresh;
	free(fresh);
	return expected;
}

/* The page's data, or NULL when never written (and !create). */
static uint8_t *page_get(struct mem_backend *m, uint64_t page, bool create)
{
	void **node = m->root;

	for (unsigned l = m->levels - 1; l > 0; l--) {
		void **slot = &node[slot_at(page, l)];
		void *child = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

		if (!child) {
			if (!create)
				return NULL;
			child = calloc(MEM_FAN, sizeof(void *));
			if (!child)
				return NULL;
			child = install(slot, child);
		}
		node = child;
	}
	void **slot = &node[slot_at(page, 0)];
	uint8_t *data = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

	if (!data && create) {
		data = calloc(1, MEM_PAGE);
		if (!data)
			return NULL;
		uint8_t *won = install(slot, data);
		if (won == data)
			__atomic_fetch_add(&m->pages, 1, __ATOMIC_RELAXED);
		data = won;
	}
	return data;
}

/* Free one page (exclusive lock held). */
static void page_free(struct mem_backend *m, uint64_t page)
{
	void **node = m->root;

	for (unsigned l = m->levels - 1; l > 0; l--) {
		node = node[slot_at(page, l)];
		if (!node)
			return;
	}
	void **slot = &node[slot_at(page, 0)];
	if (*slot) {
		free(*slot);
		*slot = NULL;
		m->pages--;
	}
}

/* Walk [off, off+len) page by page: fn(page data or NULL, offset in page, length, buffer position). */
static int mem_read(struct mem_backend *m, struct gw_io *io)
{
	uint64_t off = io->offset, done = 0;
	bool any = false;

	/* First pass only when a hole reply is acceptable: is anything allocated? */
	if (io->flags & GW_IO_HOLE_OK) {
		for (uint64_t p = off >> MEM_PAGE_SHIFT; p <= (off + io->len - 1) >> MEM_PAGE_SHIFT; p++) {
			if (page_get(m, p, false)) {
				any = true;
				break;
			}
		}
		if (!any) {
			io->rflags |= GW_IO_R_HOLE;
			return 0;
		}
	}
	while (done < io->len) {
		uint64_t pos = off + done;
		uint64_t in = pos & (MEM_PAGE - 1);
		uint64_t n = GW_MIN(MEM_PAGE - in, io->len - done);
		uint8_t *data = page_get(m, pos >> MEM_PAGE_SHIFT, false);

		if (data) {
			gw_iov_from_buf(io->iov, io->iovcnt, done, data + in, n);
		} else {
			static const uint8_t zeros[MEM_PAGE];

			gw_iov_from_buf(io->iov, io->iovcnt, done, zeros, n);
		}
		done += n;
	}
	return 0;
}

static int mem_write(struct mem_backend *m, struct gw_io *io)
{
	uint64_t off = io->offset, done = 0;

	while (done < io->len) {
		uint64_t pos = off + done;
		uint64_t in = pos & (MEM_PAGE - 1);
		uint64_t n = GW_MIN(MEM_PAGE - in, io->len - done);
		uint8_t *data = page_get(m, pos >> MEM_PAGE_SHIFT, true);

		if (!data)
			return -ENOMEM;
		gw_iov_to_buf(data + in, io->iov, io->iovcnt, done, n);
		done += n;
	}
	return 0;
}

/* Zero a range; whole pages are freed unless keep (then allocated and cleared). */
static int mem_zero(struct mem_backend *m, uint64_t off, uint64_t len, bool keep)
{
	uint64_t end = off + len;

	while (off < end) {
		uint64_t in = off & (MEM_PAGE - 1);
		uint64_t n = GW_MIN(MEM_PAGE - in, end - off);
		uint64_t page = off >> MEM_PAGE_SHIFT;

		if (n == MEM_PAGE && !keep) {
			page_free(m, page);
		} else {
			uint8_t *data = page_get(m, page, keep);

			if (keep && !data)
				return -ENOMEM;
			if (data)
				memset(data + in, 0, n);
		}
		off += n;
	}
	return 0;
}

static int mem_submit(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io)
{
	struct mem_backend *m = to_mem(b);
	int rc = 0;

	switch (io->op) {
	case GW_OP_READ:
		pthread_rwlock_rdlock(&m->lock);
		rc = mem_read(m, io);
		pthread_rwlock_unlock(&m->lock);
		break;
	case GW_OP_WRITE:
		pthread_rwlock_rdlock(&m->lock);
		rc = mem_write(m, io);
		pthread_rwlock_unlock(&m->lock);
		break;
	case GW_OP_TRIM:
	case GW_OP_WRITE_ZEROES: {
		bool keep = io->op == GW_OP_WRITE_ZEROES && (io->flags & GW_IO_NO_UNMAP);

		pthread_rwlock_wrlock(&m->lock);
		rc = mem_zero(m, io->offset, io->len, keep);
		pthread_rwlock_unlock(&m->lock);
		break;
	}
	default: /* FLUSH, CACHE: nothing to do in RAM */
		break;
	}
	io->result = rc;
	return 1;
}

/* Extents: skip whole unallocated subtrees. */
static int walk(struct mem_backend *m, void **node, unsigned level, uint64_t base,
		uint64_t start, uint64_t end, struct gw_extents *out)
{
	uint64_t span = (uint64_t)1 << (MEM_FAN_SHIFT * level + MEM_PAGE_SHIFT);

	for (unsigned i = slot_at(start >> MEM_PAGE_SHIFT, level); i < MEM_FAN; i++) {
		uint64_t lo = base + (uint64_t)i * span;
		uint64_t hi = lo + span;
		uint64_t a = GW_MAX(lo, start), z = GW_MIN(hi, end);
		void *child;

		if (a >= end)
			return 0;
		child = __atomic_load_n(&node[i], __ATOMIC_ACQUIRE);
		if (!child || level == 0) {
			if (gw_extents_add(out, z - a, child ? 0 : GW_EXT_HOLE | GW_EXT_ZERO))
				return 1;
		} else if (walk(m, child, level - 1, lo, a, z, out)) {
			return 1;
		}
	}
	return 0;
}

static int mem_extents(struct gw_backend *b, uint64_t offset, uint64_t len, struct gw_extents *out)
{
	struct mem_backend *m = to_mem(b);

	pthread_rwlock_rdlock(&m->lock);
	walk(m, m->root, m->levels - 1, 0, offset, offset + len, out);
	pthread_rwlock_unlock(&m->lock);
	return 0;
}

static void free_tree(void **node, unsigned level)
{
	for (unsigned i = 0; i < MEM_FAN; i++) {
		if (!node[i])
			continue;
		if (level > 0)
			free_tree(node[i], level - 1);
		else
			free(node[i]);
	}
	free(node);
}

static void mem_close(struct gw_backend *b)
{
	struct mem_backend *m = to_mem(b);

	free_tree(m->root, m->levels - 1);
	pthread_rwlock_destroy(&m->lock);
}

static void mem_describe(struct gw_backend *b, char *buf, size_t len)
{
	struct mem_backend *m = to_mem(b);
	char s[32], u[32];

	snprintf(buf, len, "memory %s (%s in use)", gw_fmt_size(b->size, s, sizeof(s)),
		 gw_fmt_size(__atomic_load_n(&m->pages, __ATOMIC_RELAXED) * MEM_PAGE, u, sizeof(u)));
}

const struct gw_backend_ops gw_memory_backend = {
	.abi_version = GW_BACKEND_ABI,
	.name = "memory",
	.summary = "sparse RAM disk; unwritten ranges read as zeros and report as holes",
	.instance_size = sizeof(struct mem_backend),
	.schema = GW_OPT_SCHEMA(mem_opts, struct mem_opts, NULL),
	.open = mem_open,
	.submit = mem_submit,
	.extents = mem_extents,
	.close = mem_close,
	.describe = mem_describe,
};
