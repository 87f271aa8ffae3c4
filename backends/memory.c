/*
 * memory: a sparse RAM disk.
 *
 * The image is one anonymous MAP_NORESERVE mapping of its full size: the
 * kernel gives it memory only for pages that are written, and untouched
 * pages read as zeros. Reads and writes are plain copies at base + offset,
 * with no lookup and no lock. A bitmap (one bit per 4 KiB page, itself a
 * lazily-backed mapping) records which pages hold data, for extents and for
 * answering "hole" to reads of never-written ranges. Trimming or zeroing
 * whole pages gives them back to the kernel (MADV_DONTNEED).
 *
 * Concurrent requests on overlapping ranges behave as on a real disk: the
 * outcome is one of the orders, never a crash.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backends/backend.h"
#include "lib/util.h"

#define MEM_PAGE_SHIFT 12
#define MEM_PAGE       ((uint64_t)1 << MEM_PAGE_SHIFT)
#define MEM_MAX_SIZE   ((uint64_t)1 << 46) /* 64 TiB: the mapping must fit the address space */

struct mem_opts {
	uint64_t size;
};

static const struct gw_opt_desc mem_opts[] = {
	{ .key = "size",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct mem_opts, size),
	  .flags = GW_OPT_REQUIRED,
	  .min = 1,
	  .max = MEM_MAX_SIZE,
	  .help = "size of the RAM disk, e.g. 1G (at most 64T); memory is used only for written data" },
};

struct mem_backend {
	struct gw_backend b;
	uint8_t *base;
	size_t map_len;
	uint64_t *bits; /* one bit per page: written since last freed */
	size_t bits_len;
	uint64_t npages;
	uint64_t written; /* pages with their bit set (atomic) */
};

static inline struct mem_backend *to_mem(struct gw_backend *b)
{
	return container_of(b, struct mem_backend, b);
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	/* Sparse writes must not pull in 2 MiB huge pages. */
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

static int mem_inspect(const void *opts, struct gw_source_info *info)
{
	info->size = ((const struct mem_opts *)opts)->size;
	return 0;
}

static int mem_open(struct gw_backend *b, const void *opts, char *err, size_t errlen)
{
	const struct mem_opts *o = opts;
	struct mem_backend *m = to_mem(b);

	m->npages = (o->size + MEM_PAGE - 1) >> MEM_PAGE_SHIFT;
	m->map_len = m->npages << MEM_PAGE_SHIFT;
	m->bits_len = ((m->npages + 63) / 64) * sizeof(uint64_t);
	m->base = map_anon(m->map_len);
	m->bits = m->base ? map_anon(m->bits_len) : NULL;
	if (!m->base || !m->bits) {
		gw_seterr(err, errlen, "cannot reserve %llu bytes of address space: %s",
			  (unsigned long long)m->map_len, strerror(errno));
		if (m->base)
			munmap(m->base, m->map_len);
		return -ENOMEM;
	}
	b->size = o->size;
	b->caps = GW_CAP_TRIM | GW_CAP_ZERO | GW_CAP_FAST_ZERO | GW_CAP_EXTENTS |
		  GW_CAP_MULTI_CONN | GW_CAP_INLINE | GW_CAP_BORROW | GW_CAP_EPHEMERAL;
	return 0;
}

static inline bool page_written(const struct mem_backend *m, uint64_t p)
{
	return __atomic_load_n(&m->bits[p / 64], __ATOMIC_RELAXED) & (1ull << (p % 64));
}

/* Set or clear the bits of pages [first, last]. */
static void mark(struct mem_backend *m, uint64_t first, uint64_t last, bool set)
{
	for (uint64_t p = first; p <= last;) {
		uint64_t word = p / 64, lo = p % 64;
		uint64_t hi = GW_MIN(63, lo + (last - p));
		uint64_t mask = (hi == 63 ? ~0ull : ((1ull << (hi + 1)) - 1)) & ~((1ull << lo) - 1);

		uint64_t cur = __atomic_load_n(&m->bits[word], __ATOMIC_RELAXED);

		if (set && (cur & mask) != mask) {
			uint64_t old = __atomic_fetch_or(&m->bits[word], mask, __ATOMIC_RELAXED);

			__atomic_fetch_add(&m->written, (uint64_t)__builtin_popcountll(mask & ~old),
					   __ATOMIC_RELAXED);
		} else if (!set && (cur & mask)) {
			uint64_t old = __atomic_fetch_and(&m->bits[word], ~mask, __ATOMIC_RELAXED);

			__atomic_fetch_sub(&m->written, (uint64_t)__builtin_popcountll(mask & old),
					   __ATOMIC_RELAXED);
		}
		p += hi - lo + 1;
	}
}

/* Is any page of [first, last] written? Whole words at a time. */
static bool any_written(const struct mem_backend *m, uint64_t first, uint64_t last)
{
	for (uint64_t p = first; p <= last;) {
		uint64_t word = p / 64, lo = p % 64;
		uint64_t hi = GW_MIN(63, lo + (last - p));
		uint64_t mask = (hi == 63 ? ~0ull : ((1ull << (hi + 1)) - 1)) & ~((1ull << lo) - 1);

		if (__atomic_load_n(&m->bits[word], __ATOMIC_RELAXED) & mask)
			return true;
		p += hi - lo + 1;
	}
	return false;
}

/* Zero [off, off+len): whole pages are given back unless keep (then allocated, zeroed). */
static int mem_zero(struct mem_backend *m, uint64_t off, uint64_t len, bool keep)
{
	uint64_t end = off + len;
	uint64_t first_full = (off + MEM_PAGE - 1) & ~(MEM_PAGE - 1);
	uint64_t last_full = end & ~(MEM_PAGE - 1);

	if (keep || first_full >= last_full) {
		memset(m->base + off, 0, len);
		if (keep)
			mark(m, off >> MEM_PAGE_SHIFT, (end - 1) >> MEM_PAGE_SHIFT, true);
		return 0;
	}
	memset(m->base + off, 0, first_full - off);
	memset(m->base + last_full, 0, end - last_full);
	if (madvise(m->base + first_full, last_full - first_full, MADV_DONTNEED) < 0)
		memset(m->base + first_full, 0, last_full - first_full);
	mark(m, first_full >> MEM_PAGE_SHIFT, (last_full >> MEM_PAGE_SHIFT) - 1, false);
	return 0;
}

static int mem_submit(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io)
{
	struct mem_backend *m = to_mem(b);
	uint64_t first = io->offset >> MEM_PAGE_SHIFT, last;

	io->result = 0;
	switch (io->op) {
	case GW_OP_READ:
		last = (io->offset + io->len - 1) >> MEM_PAGE_SHIFT;
		if ((io->flags & GW_IO_HOLE_OK) && !any_written(m, first, last)) {
			io->rflags |= GW_IO_R_HOLE;
		} else if (io->flags & GW_IO_BORROW) {
			io->ref = m->base + io->offset; /* no copy: the caller sends it from here */
			io->rflags |= GW_IO_R_REF;
		} else {
			gw_iov_from_buf(io->iov, io->iovcnt, 0, m->base + io->offset, io->len);
		}
		break;
	case GW_OP_WRITE:
		last = (io->offset + io->len - 1) >> MEM_PAGE_SHIFT;
		gw_iov_to_buf(m->base + io->offset, io->iov, io->iovcnt, 0, io->len);
		mark(m, first, last, true);
		break;
	case GW_OP_TRIM:
	case GW_OP_WRITE_ZEROES:
		io->result = mem_zero(m, io->offset, io->len,
				      io->op == GW_OP_WRITE_ZEROES && (io->flags & GW_IO_NO_UNMAP));
		break;
	default: /* FLUSH, CACHE: nothing to do in RAM */
		break;
	}
	return 1;
}

static int mem_extents(struct gw_backend *b, uint64_t offset, uint64_t len, struct gw_extents *out)
{
	struct mem_backend *m = to_mem(b);
	uint64_t pos = offset, end = offset + len;

	while (pos < end) {
		uint64_t p = pos >> MEM_PAGE_SHIFT;
		bool w = page_written(m, p);
		uint64_t run_end = (p + 1) << MEM_PAGE_SHIFT;

		/* Extend the run while pages agree; skip whole words of one kind. */
		while (run_end < end) {
			uint64_t q = run_end >> MEM_PAGE_SHIFT,
				 word = __atomic_load_n(&m->bits[q / 64], __ATOMIC_RELAXED);

			if (q % 64 == 0 && word == (w ? ~0ull : 0) &&
			    run_end + (64 << MEM_PAGE_SHIFT) <= end) {
				run_end += 64 << MEM_PAGE_SHIFT;
				continue;
			}
			if (page_written(m, q) != w)
				break;
			run_end += MEM_PAGE;
		}
		run_end = GW_MIN(run_end, end);
		if (gw_extents_add(out, run_end - pos, w ? 0 : GW_EXT_HOLE | GW_EXT_ZERO))
			return 0;
		pos = run_end;
	}
	return 0;
}

static void mem_close(struct gw_backend *b)
{
	struct mem_backend *m = to_mem(b);

	munmap(m->base, m->map_len);
	munmap(m->bits, m->bits_len);
}

static void mem_describe(struct gw_backend *b, char *buf, size_t len)
{
	struct mem_backend *m = to_mem(b);
	char s[32], u[32];

	snprintf(buf, len, "memory %s (%s written)", gw_fmt_size(b->size, s, sizeof(s)),
		 gw_fmt_size(__atomic_load_n(&m->written, __ATOMIC_RELAXED) << MEM_PAGE_SHIFT, u,
			     sizeof(u)));
}

const struct gw_backend_ops gw_memory_backend = {
	.abi_version = GW_BACKEND_ABI,
	.name = "memory",
	.summary = "sparse RAM disk; unwritten ranges read as zeros and report as holes",
	.instance_size = sizeof(struct mem_backend),
	.schema = GW_OPT_SCHEMA(mem_opts, struct mem_opts, NULL),
	.open = mem_open,
	.inspect = mem_inspect,
	.submit = mem_submit,
	.extents = mem_extents,
	.close = mem_close,
	.describe = mem_describe,
};
