/* Backends and the checked layer, driven directly through a private io_uring. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/backend.h"
#include "check.h"
#include "lib/bufpool.h"
#include "gateway/export.h"

static struct gw_ioq q;
static int done_count;

static void on_done(struct gw_io *io)
{
	done_count++;
}

/* Submit through the checked layer and wait; returns io->result. */
static int run(struct gw_export *e, uint8_t op, uint32_t flags, uint64_t off, void *buf,
	       uint64_t len)
{
	struct iovec iov = { buf, len };
	struct gw_io io;
	int before = done_count;

	memset(&io, 0, sizeof(io));
	io.op = op;
	io.flags = flags;
	io.offset = off;
	io.len = len;
	io.iov = buf ? &iov : NULL;
	io.iovcnt = buf ? 1 : 0;
	io.done = on_done;
	if (gw_export_submit(e, &q, &io))
		return io.result;
	while (done_count == before)
		gw_ioq_wait(&q);
	return io.result;
}

static struct gw_backend *open_backend(const char *name, void *opts)
{
	char err[256] = "";
	struct gw_backend *b = gw_backend_open(gw_backend_find(name), name, opts, err, sizeof(err));

	if (!b)
		fprintf(stderr, "open %s: %s\n", name, err);
	return b;
}

/*
 * A backend's options decoded through its own schema, as the manifest does,
 * from KEY, VALUE pairs ending in NULL: defaults for the rest, so the test
 * never mirrors the options struct (which grows).
 */
static void *decode_opts(const char *name, const char *const *kv)
{
	const struct gw_backend_ops *ops = gw_backend_find(name);
	void *o = ops ? calloc(1, ops->schema.size) : NULL;
	char err[256];

	if (!o)
		return NULL;
	gw_opt_defaults(&ops->schema, o);
	for (; kv[0]; kv += 2) {
		const struct gw_opt_desc *d = gw_opt_find(&ops->schema, kv[0]);

		if (!d || gw_opt_set(d, kv[1], NULL, o, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s: option %s: %s\n", name, kv[0], d ? err : "unknown");
			gw_opt_free(&ops->schema, o);
			free(o);
			return NULL;
		}
	}
	return o;
}

static void free_opts(const char *name, void *o)
{
	if (o)
		gw_opt_free(&gw_backend_find(name)->schema, o);
	free(o);
}

static int extents(struct gw_export *e, uint64_t off, uint64_t len, struct gw_extent *v, size_t cap)
{
	struct gw_extents x = { .v = v, .cap = cap };
	int rc = gw_export_extents(e, &q, off, len, &x);

	return rc < 0 ? rc : (int)x.n;
}

static void test_memory(void)
{
	struct {
		uint64_t size;
	} mo = { (1ull << 30) + 1000 };
	struct gw_backend *b = open_backend("memory", &mo);
	struct gw_export *e = gw_export_new("m", b, false, 0);
	uint8_t *buf = malloc(1 << 20), *rd = malloc(1 << 20);
	struct gw_extent v[16];
	struct gw_stats_total t;
	struct iovec iov = { rd, 8192 };
	struct gw_io io;

	CHECK(e && e->size == (1ull << 30) + 1000);
	memset(buf, 0x5a, 1 << 20);
	CHECK(run(e, GW_OP_WRITE, 0, 4096 * 10 + 100, buf, 5000) == 0);
	memset(rd, 1, 1 << 20);
	CHECK(run(e, GW_OP_READ, 0, 4096 * 10, rd, 8192) == 0);
	CHECK(rd[99] == 0 && rd[100] == 0x5a && rd[5099] == 0x5a && rd[5100] == 0);
	/* A read of never-written space, hole allowed: reported, buffer untouched. */
	memset(&io, 0, sizeof(io));
	memset(rd, 7, 8192);
	io.op = GW_OP_READ;
	io.flags = GW_IO_HOLE_OK;
	io.offset = 1 << 29;
	io.len = 8192;
	io.iov = &iov;
	io.iovcnt = 1;
	io.done = on_done;
	CHECK(gw_export_submit(e, &q, &io) == 1 && io.result == 0 && (io.rflags & GW_IO_R_HOLE) &&
	      rd[0] == 7);
	/* Without HOLE_OK the same range is zero-filled. */
	CHECK(run(e, GW_OP_READ, 0, 1 << 29, rd, 8192) == 0 && rd[0] == 0 && rd[8191] == 0);
	/* The tail past the last whole page. */
	CHECK(run(e, GW_OP_WRITE, 0, (1ull << 30), buf, 1000) == 0);
	CHECK(run(e, GW_OP_READ, 0, (1ull << 30) + 500, rd, 500) == 0 && rd[0] == 0x5a);
	/* Extents: data exactly where pages were written. */
	CHECK(extents(e, 0, 1 << 20, v, 16) == 3);
	CHECK(v[0].len == 40960 && v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO));
	CHECK(v[1].len == 8192 && v[1].flags == 0);
	CHECK(v[2].len == (1 << 20) - 49152);
	CHECK(extents(e, 4096 * 10 + 1, 10, v, 16) == 1 && v[0].flags == 0 && v[0].len == 10);
	CHECK(extents(e, (1ull << 30) - 4096, 4096 + 1000, v, 16) == 2 && v[1].flags == 0 &&
	      v[1].len == 1000);
	/* Trim frees whole pages and zeroes partial ones. */
	CHECK(run(e, GW_OP_TRIM, 0, 4096 * 10 + 200, NULL, 4096 * 2) == 0);
	CHECK(run(e, GW_OP_READ, 0, 4096 * 10, rd, 12288) == 0);
	CHECK(rd[100] == 0x5a && rd[199] == 0x5a && rd[200] == 0 && rd[8391] == 0 && rd[8392] == 0);
	/* page 10 partly kept, page 11 trimmed whole (freed), page 12 never written */
	CHECK(extents(e, 40960, 12288, v, 16) == 2 && v[0].flags == 0 && v[0].len == 4096);
	CHECK(run(e, GW_OP_TRIM, 0, 40960, NULL, 8192) == 0);
	CHECK(extents(e, 40960, 8192, v, 16) == 1 && v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO));
	/* Write-zeroes without unmap allocates; with it, frees. */
	CHECK(run(e, GW_OP_WRITE_ZEROES, GW_IO_NO_UNMAP, 1 << 20, NULL, 8192) == 0);
	CHECK(extents(e, 1 << 20, 8192, v, 16) == 1 && v[0].flags == 0);
	CHECK(run(e, GW_OP_WRITE_ZEROES, 0, 1 << 20, NULL, 8192) == 0);
	CHECK(extents(e, 1 << 20, 8192, v, 16) == 1 && v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO));
	/* The extent list stops when full. */
	for (int i = 0; i < 8; i++)
		run(e, GW_OP_WRITE, 0, (uint64_t)(100 + 2 * i) << 12, buf, 4096);
	CHECK(extents(e, 100 << 12, 16 << 12, v, 4) == 4);
	/* Borrowed reads: no copy, the data where the image keeps it. */
	memset(&io, 0, sizeof(io));
	io.op = GW_OP_READ;
	io.flags = GW_IO_BORROW;
	io.offset = 100 << 12;
	io.len = 4096;
	io.done = on_done;
	CHECK(gw_export_submit(e, &q, &io) == 1 && io.result == 0 && (io.rflags & GW_IO_R_REF) &&
	      io.ref && ((const uint8_t *)io.ref)[0] == 0x5a &&
	      ((const uint8_t *)io.ref)[4095] == 0x5a);
	io.flags = GW_IO_BORROW | GW_IO_HOLE_OK;
	io.offset = 1 << 29;
	io.len = 8192;
	CHECK(gw_export_submit(e, &q, &io) == 1 && io.result == 0 && (io.rflags & GW_IO_R_HOLE) &&
	      !(io.rflags & GW_IO_R_REF));
	gw_export_stats(e, &t);
	CHECK(t.errors == 0 && t.writes >= 10 && t.bytes_written >= 5000 + 1000 + 8 * 4096);
	gw_export_free(e);
	gw_backend_close(b);
	free(buf);
	free(rd);
}

/* A 64 TiB RAM disk costs nothing until written, and its extents stay exact. */
static void test_memory_huge(void)
{
	struct {
		uint64_t size;
	} mo = { 64ull << 40 };
	struct gw_backend *b = open_backend("memory", &mo);
	struct gw_export *e = b ? gw_export_new("h", b, false, 0) : NULL;
	uint8_t buf[8192];
	struct gw_extent v[8];
	char desc[128];

	CHECK(e != NULL);
	if (!e)
		return;
	CHECK(extents(e, 0, 64ull << 40, v, 8) == 1 && v[0].len == 64ull << 40 &&
	      v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO));
	memset(buf, 0xee, sizeof(buf));
	CHECK(run(e, GW_OP_WRITE, 0, (64ull << 40) - 8192, buf, 8192) == 0);
	CHECK(run(e, GW_OP_WRITE, 0, 1ull << 40, buf, 4096) == 0);
	CHECK(extents(e, 0, 64ull << 40, v, 8) == 4);
	CHECK(v[0].len == 1ull << 40 && v[1].len == 4096 && v[1].flags == 0 && v[3].len == 8192 &&
	      v[3].flags == 0);
	b->ops->describe(b, desc, sizeof(desc));
	CHECK(strstr(desc, "(12 KiB written)") != NULL);
	CHECK(run(e, GW_OP_TRIM, 0, (64ull << 40) - 8192, NULL, 8192) == 0);
	b->ops->describe(b, desc, sizeof(desc));
	CHECK(strstr(desc, "(4 KiB written)") != NULL);
	memset(buf, 1, sizeof(buf));
	CHECK(run(e, GW_OP_READ, 0, (64ull << 40) - 8192, buf, 8192) == 0 && buf[0] == 0 &&
	      buf[8191] == 0);
	gw_export_free(e);
	gw_backend_close(b);
}

static void test_checked_layer(void)
{
	struct {
		uint64_t size;
	} mo = { 16 << 20 };
	struct gw_backend *b = open_backend("memory", &mo);
	struct gw_export *e = gw_export_new("c", b, false, 4096),
			 *ro = gw_export_new("r", b, true, 0);
	struct gw_backend *n = open_backend("null", &mo);
	struct gw_export *ne = gw_export_new("n", n, false, 0);
	uint8_t *buf = calloc(1, 33 << 20);
	struct gw_stats_total t;
	struct gw_extent v[4];

	CHECK(e->min_block == 4096 && e->max_xfer == 32u << 20);
	CHECK(run(e, GW_OP_READ, 0, 512, buf, 4096) == -EINVAL); /* misaligned offset */
	CHECK(run(e, GW_OP_READ, 0, 0, buf, 512) == -EINVAL);    /* misaligned length */
	CHECK(run(e, GW_OP_WRITE, 0, 4096, buf, 100) == -EINVAL);
	CHECK(run(e, GW_OP_TRIM, 0, 100, NULL, 4096) == -EINVAL);
	CHECK(run(e, GW_OP_READ, 0, 16 << 20, buf, 4096) == -EINVAL); /* past the end */
	CHECK(run(e, GW_OP_WRITE, 0, 16 << 20, buf, 4096) == -ENOSPC);
	CHECK(run(e, GW_OP_WRITE_ZEROES, 0, (16 << 20) - 4096, NULL, 8192) == -ENOSPC);
	CHECK(run(e, GW_OP_TRIM, 0, 16 << 20, NULL, 4096) == -EINVAL);
	CHECK(run(e, GW_OP_READ, 0, UINT64_MAX - 4095, buf, 4096) == -EINVAL); /* wraps */
	CHECK(run(e, GW_OP_READ, 0, 0, buf, 33 << 20) == -EINVAL);             /* > max_xfer */
	CHECK(run(e, GW_OP_READ, GW_IO_FUA, 0, buf, 4096) == -EINVAL); /* flag not for reads */
	CHECK(run(e, GW_OP_WRITE, GW_IO_NO_UNMAP, 0, buf, 4096) == -EINVAL);
	CHECK(run(e, GW_OP__COUNT, 0, 0, NULL, 0) == -EINVAL);
	CHECK(run(e, GW_OP_READ, 0, 0, buf, 0) == 0); /* zero length: nothing to do */
	CHECK(run(e, GW_OP_WRITE, GW_IO_FUA, 4096, buf, 4096) == 0);
	CHECK(run(e, GW_OP_FLUSH, 0, 0, NULL, 0) == 0);
	CHECK(run(ro, GW_OP_WRITE, 0, 0, buf, 4096) == -EPERM);
	CHECK(run(ro, GW_OP_TRIM, 0, 0, NULL, 4096) == -EPERM);
	CHECK(run(ro, GW_OP_WRITE_ZEROES, 0, 0, NULL, 4096) == -EPERM);
	CHECK(run(ro, GW_OP_READ, 0, 0, buf, 4096) == 0);
	CHECK(extents(e, 100, 4096, v, 4) == -EINVAL);
	CHECK(extents(e, 0, 0, v, 4) == -EINVAL);
	CHECK(extents(e, 0, (16 << 20) + 4096, v, 4) == -EINVAL);
	gw_export_stats(e, &t);
	CHECK_EQ_U64(t.errors, 16);
	gw_export_stats(ro, &t);
	CHECK_EQ_U64(t.errors, 3);
	/* Only backends that can lend their memory take GW_IO_BORROW. */
	{
		struct gw_io io;

		memset(&io, 0, sizeof(io));
		io.op = GW_OP_READ;
		io.flags = GW_IO_BORROW;
		io.len = 4096;
		io.done = on_done;
		CHECK(gw_export_submit(ne, &q, &io) == 1 && io.result == -EINVAL);
		CHECK(gw_export_submit(e, &q, &io) == 1 && io.result == 0 &&
		      (io.rflags & GW_IO_R_REF));
	}
	/* null: zeros, holes everywhere, writes vanish. */
	memset(buf, 9, 8192);
	CHECK(run(ne, GW_OP_WRITE, 0, 0, buf, 8192) == 0);
	CHECK(run(ne, GW_OP_READ, 0, 0, buf, 8192) == 0 && buf[0] == 0 && buf[8191] == 0);
	CHECK(extents(ne, 0, 16 << 20, v, 4) == 1 && v[0].len == 16 << 20 &&
	      v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO));
	gw_export_free(e);
	gw_export_free(ro);
	gw_export_free(ne);
	gw_backend_close(b);
	gw_backend_close(n);
	free(buf);
}

static void test_file(bool direct)
{
	char path[] = "/tmp/blkgw-unit-XXXXXX";
	int fd = mkstemp(path);
	const char *const kv[] = { "path", path, "direct", direct ? "true" : "false", NULL };
	void *fo;
	struct gw_backend *b;
	struct gw_export *e;
	uint8_t *buf = NULL, *rd = NULL;
	struct gw_extent v[8];
	struct stat st;

	CHECK(fd >= 0 && ftruncate(fd, 8 << 20) == 0);
	close(fd);
	fo = decode_opts("file", kv);
	CHECK(fo != NULL);
	b = fo ? open_backend("file", fo) : NULL;
	CHECK(b != NULL);
	if (!b) {
		free_opts("file", fo);
		unlink(path);
		return;
	}
	e = gw_export_new("f", b, false, 0);
	CHECK(b->size == 8 << 20 && (b->caps & GW_CAP_EXTENTS));
	CHECK(direct ? b->min_block >= 512 : b->min_block == 1);
	if (posix_memalign((void **)&buf, 4096, 1 << 20) ||
	    posix_memalign((void **)&rd, 4096, (1 << 20) + 4096))
		abort();
	memset(buf, 0xc3, 1 << 20);
	CHECK(run(e, GW_OP_WRITE, 0, 1 << 20, buf, 1 << 20) == 0);
	CHECK(run(e, GW_OP_WRITE, GW_IO_FUA, 3 << 20, buf, 65536) == 0);
	/* Misaligned memory on an O_DIRECT file goes through a bounce buffer. */
	CHECK(run(e, GW_OP_READ, 0, 1 << 20, rd + 1, 65536) == 0 && rd[1] == 0xc3 &&
	      rd[65536] == 0xc3);
	CHECK(run(e, GW_OP_WRITE, 0, 5 << 20, rd + 1, 4096) == 0);
	CHECK(run(e, GW_OP_FLUSH, 0, 0, NULL, 0) == 0);
	CHECK(extents(e, 0, 8 << 20, v, 8) >= 4);
	CHECK(v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO) && v[0].len == 1 << 20 && v[1].flags == 0);
	/* Zero with unmap punches; without, keeps it allocated; both read back zero. */
	CHECK(run(e, GW_OP_WRITE_ZEROES, 0, 1 << 20, NULL, 1 << 19) == 0);
	CHECK(run(e, GW_OP_WRITE_ZEROES, GW_IO_NO_UNMAP | GW_IO_FUA, (1 << 20) + (1 << 19), NULL,
		  1 << 19) == 0);
	CHECK(run(e, GW_OP_READ, 0, 1 << 20, rd, 1 << 20) == 0 && rd[0] == 0 &&
	      rd[(1 << 20) - 1] == 0);
	/* The punched half is a hole (ZERO_RANGE's unwritten extents may report as holes too). */
	CHECK(extents(e, 1 << 20, 1 << 20, v, 8) >= 1 &&
	      v[0].flags == (GW_EXT_HOLE | GW_EXT_ZERO) && v[0].len >= 1 << 19);
	CHECK(run(e, GW_OP_TRIM, 0, 3 << 20, NULL, 65536) == 0);
	CHECK(run(e, GW_OP_CACHE, 0, 0, NULL, 1 << 20) == 0);
	CHECK(run(e, GW_OP_WRITE_ZEROES, GW_IO_FAST_ZERO, 0, NULL, 4096) == 0);
	/*
	 * Inside a loop's pass (gw_ioq_tick) a request is timed from the pass's
	 * clock reading to that of the pass that sees it complete: here 3 ms
	 * apart, whatever the clock says.
	 */
	if (!direct) {
		struct gw_stats_total t0, t1;
		struct iovec iov = { rd, 4096 };
		struct gw_io io;
		int before = done_count;

		gw_export_stats(e, &t0);
		memset(&io, 0, sizeof(io));
		io.op = GW_OP_READ;
		io.len = 4096;
		io.iov = &iov;
		io.iovcnt = 1;
		io.done = on_done;
		q.now_ns = 1000000;
		CHECK(gw_export_submit(e, &q, &io) == 0); /* the file completes through io_uring */
		q.now_ns = 4000000;
		while (done_count == before)
			gw_ioq_wait(&q);
		gw_ioq_untick(&q);
		gw_export_stats(e, &t1);
		CHECK_EQ_U64(t1.time_ns[GW_OP_READ] - t0.time_ns[GW_OP_READ], 3000000);
		CHECK_EQ_U64(t1.lat[GW_OP_READ][12] - t0.lat[GW_OP_READ][12], 1); /* <= 4096 us */
	}
	CHECK(b->ops->sync(b) == 0);
	gw_export_free(e);
	gw_backend_close(b);
	CHECK(stat(path, &st) == 0 && st.st_size == 8 << 20);
	unlink(path);
	free_opts("file", fo);
	free(buf);
	free(rd);
}

static void test_bufpool(void)
{
	struct gw_bufpool p;
	void *a, *b2, *c;

	gw_bufpool_init(&p, 1 << 20);
	a = gw_buf_get(&p, 100);
	CHECK(a && ((uintptr_t)a & 4095) == 0);
	gw_buf_put(&p, a, 100);
	b2 = gw_buf_get(&p, 4096);
	CHECK(b2 == a); /* same class: reused */
	c = gw_buf_get(&p, 4097);
	CHECK(c && c != a);
	CHECK(gw_buf_get(&p, (32u << 20) + 1) == NULL);
	gw_buf_put(&p, b2, 4096);
	gw_buf_put(&p, c, 4097);
	a = gw_buf_get(&p, 1 << 20);
	gw_buf_put(&p, a, 1 << 20); /* over the cache limit: freed, not kept */
	CHECK(p.cached_bytes <= 1 << 20);
	gw_bufpool_exit(&p);
	CHECK(p.cached_bytes == 0);
}

int main(void)
{
	if (gw_ioq_init(&q, 64, 0, false) < 0) {
		fprintf(stderr, "io_uring unavailable\n");
		return 77;
	}
	test_memory();
	test_memory_huge();
	test_checked_layer();
	test_file(false);
	test_file(true);
	test_bufpool();
	gw_ioq_exit(&q);
	return check_report();
}
