/*
 * The virtio-blk request handler over a memory export: every request type,
 * the header gathered from split buffers, the status byte, and every
 * guest-controlled length and range checked before the backend sees it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backends/backend.h"
#include "check.h"
#include "gateway/export.h"
#include "lib/log.h"
#include "transports/virtio/virtio_blk.h"
#include "vring_build.h"

#define NUM  64
#define DISK (1u << 20) /* 1 MiB: 2048 sectors */

static struct gbuild g;
static struct vq q;
static struct gw_ioq ioq;
static struct vblk_dev dev;
static struct vblk_req *r;
static int ndone;
static uint16_t next_desc;

static void on_done(struct vblk_req *req)
{
	ndone++;
	vq_push(&q, req->elem.head, req->used_len);
}

static struct gw_export *export_new(bool read_only)
{
	struct {
		uint64_t size;
	} mo = { DISK };
	char err[256] = "";
	struct gw_backend *b =
		gw_backend_open(gw_backend_find("memory"), "mem0", &mo, err, sizeof(err));

	if (!b) {
		fprintf(stderr, "memory backend: %s\n", err);
		exit(1);
	}
	return gw_export_new("mem0", b, read_only, 0);
}

/* Descriptors are used once each; a new chain starts after the last. */
static uint16_t d(void)
{
	return next_desc++ % NUM;
}

/*
 * Pop the published head into r and start it. Returns vblk_req_start's
 * result; *st gets the status byte (0xff when nothing was written).
 */
static int run(uint16_t head, uint8_t **status, uint8_t *st)
{
	uint8_t *status_byte = *status;
	int before = ndone, rc;

	*status_byte = 0xff;
	gb_publish(&g, head);
	if (vq_pop(&q, &r->elem, r->iov, r->iov_cap) != 1)
		return -100;
	r->done = on_done;
	r->ioq = &ioq;
	rc = vblk_req_start(&dev, r);
	if (rc == 0)
		CHECK(ndone == before + 1); /* memory completes inline */
	*st = *status_byte;
	return rc;
}

/* header(R) [+ data(R or W)] + status(W): returns head; *status points at the status byte. */
static uint16_t req(uint32_t type, uint64_t sector, uint64_t data, uint32_t dlen, bool dwrite,
		    uint8_t **status)
{
	uint16_t h = d(), s;
	uint64_t sg = gb_alloc(&g, 1);

	if (dlen) {
		uint16_t dd = d();

		s = d();
		gb_desc(&g, h, gb_blk_hdr(&g, type, sector), 16, VRING_DESC_F_NEXT, dd);
		gb_desc(&g, dd, data, dlen, VRING_DESC_F_NEXT | (dwrite ? VRING_DESC_F_WRITE : 0),
			s);
	} else {
		s = d();
		gb_desc(&g, h, gb_blk_hdr(&g, type, sector), 16, VRING_DESC_F_NEXT, s);
	}
	gb_desc(&g, s, sg, 1, VRING_DESC_F_WRITE, 0);
	*status = gb_ptr(&g, sg);
	return h;
}

static void reset_queue(void)
{
	if (q.busy)
		vq_fini(&q);
	if (g.mem)
		gb_fini(&g);
	gb_init(&g, NUM);
	gb_vq(&g, &q, VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC));
	vq_init(&q, 0);
	next_desc = 0;
}

static void test_rw(void)
{
	uint64_t wbuf = gb_alloc(&g, 4096), rbuf = gb_alloc(&g, 4096);
	uint8_t *sp, st;
	uint32_t id, len;

	for (int i = 0; i < 4096; i++)
		gb_ptr(&g, wbuf)[i] = (uint8_t)(i * 7 + 3);
	CHECK(run(req(VIRTIO_BLK_T_OUT, 8, wbuf, 4096, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	gb_used_elem(&g, 0, &id, &len);
	CHECK_EQ_U64(len, 1); /* only the status byte written */
	CHECK(run(req(VIRTIO_BLK_T_IN, 8, rbuf, 4096, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(memcmp(gb_ptr(&g, wbuf), gb_ptr(&g, rbuf), 4096) == 0);
	gb_used_elem(&g, 1, &id, &len);
	CHECK_EQ_U64(len, 4097);
	/* Legacy BARRIER bit is ignored: still a read. */
	CHECK(run(req(VIRTIO_BLK_T_IN | VIRTIO_BLK_T_BARRIER, 8, rbuf, 512, true, &sp), &sp, &st) ==
	      0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
}

static void test_header_split(void)
{
	uint64_t hdr = gb_blk_hdr(&g, VIRTIO_BLK_T_IN, 8), data = gb_alloc(&g, 512),
		 sg = gb_alloc(&g, 1);
	uint16_t a = d(), b = d(), c = d(), s = d();
	uint8_t st, *sp;

	/* 4 + 12 bytes of header in two buffers, the data and the status in the same one. */
	gb_desc(&g, a, hdr, 4, VRING_DESC_F_NEXT, b);
	gb_desc(&g, b, hdr + 4, 12, VRING_DESC_F_NEXT, c);
	gb_desc(&g, c, data, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, s);
	gb_desc(&g, s, sg, 1, VRING_DESC_F_WRITE, 0);
	sp = gb_ptr(&g, sg);
	CHECK(run(a, &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	/* Data and status sharing one writable buffer: the last byte is the status. */
	{
		uint64_t both = gb_alloc(&g, 513);
		uint16_t h = d(), x = d();

		gb_desc(&g, h, gb_blk_hdr(&g, VIRTIO_BLK_T_IN, 8), 16, VRING_DESC_F_NEXT, x);
		gb_desc(&g, x, both, 513, VRING_DESC_F_WRITE, 0);
		sp = gb_ptr(&g, both) + 512;
		CHECK(run(h, &sp, &st) == 0);
		CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	}
}

static void test_bad_requests(void)
{
	uint64_t buf = gb_alloc(&g, 8192), sg;
	uint8_t *sp, st;
	uint16_t h, x;

	/* Short header: 8 readable bytes (a GET_ID that would succeed). IOERR. */
	{
		uint16_t y = d();

		h = d();
		x = d();
		sg = gb_alloc(&g, 1);
		gb_desc(&g, h, gb_blk_hdr(&g, VIRTIO_BLK_T_GET_ID, 0), 8, VRING_DESC_F_NEXT, x);
		gb_desc(&g, x, gb_alloc(&g, 20), 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, y);
		gb_desc(&g, y, sg, 1, VRING_DESC_F_WRITE, 0);
		sp = gb_ptr(&g, sg);
		CHECK(run(h, &sp, &st) == 0);
		CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	}

	/* No writable byte at all: cannot be answered. */
	h = d();
	x = d();
	gb_desc(&g, h, gb_blk_hdr(&g, VIRTIO_BLK_T_FLUSH, 0), 16, VRING_DESC_F_NEXT, x);
	gb_desc(&g, x, gb_alloc(&g, 1), 1, 0, 0); /* the "status" is read-only */
	sp = gb_ptr(&g, GB_GPA);
	CHECK(run(h, &sp, &st) == -EPROTO);
	vq_push(&q, h, 0);

	/* Range checks: at the end, past the end, sector overflow, odd lengths. */
	CHECK(run(req(VIRTIO_BLK_T_IN, DISK / 512 - 1, buf, 512, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(run(req(VIRTIO_BLK_T_IN, DISK / 512 - 1, buf, 1024, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(req(VIRTIO_BLK_T_OUT, DISK / 512, buf, 512, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(req(VIRTIO_BLK_T_IN, UINT64_MAX / 256, buf, 512, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(req(VIRTIO_BLK_T_IN, UINT64_MAX, buf, 512, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(req(VIRTIO_BLK_T_OUT, 0, buf, 100, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	/* Unknown and unsupported types. */
	CHECK(run(req(99, 0, 0, 0, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
	CHECK(run(req(VIRTIO_BLK_T_GET_LIFETIME, 0, buf, 16, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
	CHECK(run(req(VIRTIO_BLK_T_SECURE_ERASE, 0, buf, 16, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
}

/* More data than max_xfer: refused before anything is read or written. */
static void test_data_cap(void)
{
	size_t big = (size_t)dev.max_data + 4096;
	uint8_t *host = mmap(NULL, big, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct virtio_memmap *m = virtio_mem_new(4, NULL, NULL);
	const struct virtio_memmap *saved = q.mem;
	uint64_t base = 0x40000000;
	uint8_t *sp, st;

	virtio_mem_add(m, 4, GB_GPA, GB_SIZE, g.mem);
	virtio_mem_add(m, 4, base, big, host);
	q.mem = m;
	CHECK(run(req(VIRTIO_BLK_T_OUT, 0, base, (uint32_t)big, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	q.mem = saved;
	virtio_mem_put(m);
	munmap(host, big);
}

static void test_flush_getid(void)
{
	uint64_t id = gb_alloc(&g, 32);
	uint8_t *sp, st;
	uint32_t hid, len;

	CHECK(run(req(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	memset(gb_ptr(&g, id), 'x', 32);
	CHECK(run(req(VIRTIO_BLK_T_GET_ID, 0, id, 20, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(memcmp(gb_ptr(&g, id), "serial-0\0\0\0\0\0\0\0\0\0\0\0\0", 20) == 0);
	gb_used_elem(&g, (uint16_t)(gb_used_idx(&g) - 1), &hid, &len);
	CHECK_EQ_U64(len, 21);
	/* A short buffer gets what fits. */
	memset(gb_ptr(&g, id), 'x', 32);
	CHECK(run(req(VIRTIO_BLK_T_GET_ID, 0, id, 4, true, &sp), &sp, &st) == 0);
	CHECK(memcmp(gb_ptr(&g, id), "serix", 5) == 0);
}

/* DISCARD / WRITE_ZEROES with n segments {sector, num, flags}. */
static uint16_t segs_req(uint32_t type, const uint64_t (*s)[3], unsigned n, uint32_t extra_bytes,
			 uint8_t **sp)
{
	uint32_t len = n * 16 + extra_bytes;
	uint64_t buf = gb_alloc(&g, len ? len : 16);

	for (unsigned i = 0; i < n; i++) {
		virtio_put64(gb_ptr(&g, buf) + 16 * i, s[i][0]);
		virtio_put32(gb_ptr(&g, buf) + 16 * i + 8, (uint32_t)s[i][1]);
		virtio_put32(gb_ptr(&g, buf) + 16 * i + 12, (uint32_t)s[i][2]);
	}
	return req(type, 0, buf, len, false, sp);
}

static bool zero_at(uint64_t sector, uint32_t bytes)
{
	uint64_t rb = gb_alloc(&g, bytes);
	uint8_t *sp, st;

	memset(gb_ptr(&g, rb), 0xaa, bytes);
	if (run(req(VIRTIO_BLK_T_IN, sector, rb, bytes, true, &sp), &sp, &st) || st)
		return false;
	for (uint32_t i = 0; i < bytes; i++)
		if (gb_ptr(&g, rb)[i])
			return false;
	return true;
}

static void fill(uint64_t sector, uint32_t bytes)
{
	uint64_t wb = gb_alloc(&g, bytes);
	uint8_t *sp, st;

	memset(gb_ptr(&g, wb), 0x5c, bytes);
	CHECK(run(req(VIRTIO_BLK_T_OUT, sector, wb, bytes, false, &sp), &sp, &st) == 0 && st == 0);
}

/* 1 when the memory backend has [off, off+len) allocated, 0 when it is a hole. */
static int allocated(uint64_t off, uint64_t len)
{
	struct gw_extent v[4];
	struct gw_extents x = { .v = v, .cap = 4 };

	if (gw_export_extents(dev.exp, &ioq, off, len, &x) < 0 || x.n != 1)
		return -1;
	return !(v[0].flags & GW_EXT_HOLE);
}

static void test_discard_zeroes(void)
{
	uint64_t two[2][3] = { { 16, 8, 0 }, { 64, 16, 0 } };
	uint64_t unmap[1][3] = { { 16, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP } };
	uint64_t badflag[1][3] = { { 16, 8, 2 } };
	uint64_t past[1][3] = { { DISK / 512 - 4, 8, 0 } };
	uint64_t wrap[1][3] = { { UINT64_MAX - 2, 8, 0 } };
	uint64_t many[VBLK_MAX_SEGS + 1][3];
	uint8_t *sp, st;

	for (unsigned i = 0; i <= VBLK_MAX_SEGS; i++) {
		many[i][0] = 8 * i;
		many[i][1] = 8;
		many[i][2] = 0;
	}
	fill(16, 4096);
	fill(64, 8192);
	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, two, 2, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(zero_at(16, 4096)); /* the memory backend frees discarded pages */
	CHECK(zero_at(64, 8192));
	fill(16, 4096);
	CHECK(run(segs_req(VIRTIO_BLK_T_WRITE_ZEROES, unmap, 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(zero_at(16, 4096));
	CHECK(allocated(16 * 512, 4096) == 0); /* UNMAP: the pages were freed */
	fill(64, 8192);
	CHECK(run(segs_req(VIRTIO_BLK_T_WRITE_ZEROES, two, 2, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(zero_at(64, 8192));
	CHECK(allocated(64 * 512, 8192) == 1); /* no UNMAP: still allocated, now zeros */

	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, unmap, 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP); /* UNMAP on DISCARD */
	CHECK(run(segs_req(VIRTIO_BLK_T_WRITE_ZEROES, badflag, 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, past, 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(segs_req(VIRTIO_BLK_T_WRITE_ZEROES, wrap, 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, many, VBLK_MAX_SEGS + 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, many, VBLK_MAX_SEGS, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, two, 1, 8, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP); /* 24 bytes: not whole segments */
	CHECK(run(segs_req(VIRTIO_BLK_T_DISCARD, two, 0, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP); /* no segment */
	/* A bad segment after a good one: nothing is done. */
	{
		uint64_t mixed[2][3] = { { 16, 8, 0 }, { 24, 8, 4 } };

		fill(16, 4096);
		CHECK(run(segs_req(VIRTIO_BLK_T_WRITE_ZEROES, mixed, 2, 0, &sp), &sp, &st) == 0);
		CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
		CHECK(!zero_at(16, 4096));
	}
}

static void test_config(void)
{
	uint8_t cfg[VBLK_CONFIG_SIZE];

	vblk_config(&dev, cfg);
	CHECK_EQ_U64(virtio_get64(cfg + VBLK_CFG_CAPACITY), DISK / 512);
	CHECK_EQ_U64(virtio_get32(cfg + VBLK_CFG_SEG_MAX), NUM - 2);
	CHECK_EQ_U64(virtio_get32(cfg + VBLK_CFG_BLK_SIZE), 512);
	CHECK_EQ_U64(virtio_get16(cfg + VBLK_CFG_NUM_QUEUES), 3);
	CHECK_EQ_U64(cfg[VBLK_CFG_PHYS_BLOCK_EXP], 3); /* 4 KiB preferred */
	CHECK_EQ_U64(virtio_get32(cfg + VBLK_CFG_MAX_DISCARD_SEG), VBLK_MAX_SEGS);
	CHECK_EQ_U64(virtio_get32(cfg + VBLK_CFG_MAX_WZ_SEG), VBLK_MAX_SEGS);
	CHECK_EQ_U64(cfg[VBLK_CFG_WZ_MAY_UNMAP], 1);
	CHECK_EQ_U64(cfg[57] | cfg[58] | cfg[59] | cfg[33], 0); /* padding */
	CHECK(dev.features & VIRTIO_BIT(VIRTIO_BLK_F_DISCARD));
	CHECK(!(dev.features & VIRTIO_BIT(VIRTIO_BLK_F_RO)));
	{
		struct gw_export *e = dev.exp;
		struct vblk_dev tmp;

		CHECK(vblk_dev_init(&tmp, e, "x", 1, 100) == -EINVAL); /* not a power of two */
		CHECK(vblk_dev_init(&tmp, e, "x", 0, NUM) == -EINVAL); /* no queue */
	}
}

static void test_read_only(void)
{
	struct gw_export *ro = export_new(true);
	struct vblk_dev rdev;
	uint64_t buf = gb_alloc(&g, 512);
	uint64_t one[1][3] = { { 0, 8, 0 } };
	uint8_t *sp, st, cfg[VBLK_CONFIG_SIZE];
	struct vblk_dev saved = dev;

	CHECK(vblk_dev_init(&rdev, ro, NULL, 1, NUM) == 0);
	CHECK(rdev.features & VIRTIO_BIT(VIRTIO_BLK_F_RO));
	CHECK(!(rdev.features & VIRTIO_BIT(VIRTIO_BLK_F_DISCARD)));
	CHECK(memcmp(rdev.serial, "mem0", 5) == 0); /* default: the image name */
	vblk_config(&rdev, cfg);
	CHECK_EQ_U64(virtio_get32(cfg + VBLK_CFG_MAX_DISCARD_SECTORS), 0);
	dev = rdev;
	CHECK(run(req(VIRTIO_BLK_T_OUT, 0, buf, 512, false, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_IOERR);
	CHECK(run(segs_req(VIRTIO_BLK_T_WRITE_ZEROES, one, 1, 0, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_UNSUPP);
	CHECK(run(req(VIRTIO_BLK_T_IN, 0, buf, 512, true, &sp), &sp, &st) == 0);
	CHECK_EQ_U64(st, VIRTIO_BLK_S_OK);
	dev = saved;
	gw_backend_close(ro->backend);
	gw_export_free(ro);
}

int main(void)
{
	struct gw_export *e;

	gw_log_set_level(GW_LOG_ERR);
	if (gw_ioq_init(&ioq, 64, 0, false) < 0) {
		fprintf(stderr, "io_uring unavailable\n");
		return 77;
	}
	e = export_new(false);
	CHECK(vblk_dev_init(&dev, e, "serial-0", 3, NUM) == 0);
	r = calloc(1, sizeof(*r) + dev.iov_max * sizeof(struct iovec));
	r->iov_cap = dev.iov_max;
	reset_queue();
	test_rw();
	test_header_split();
	test_bad_requests();
	reset_queue();
	test_data_cap();
	test_flush_getid();
	reset_queue();
	test_discard_zeroes();
	reset_queue();
	test_config();
	test_read_only();
	vq_fini(&q);
	gb_fini(&g);
	free(r);
	gw_backend_close(e->backend);
	gw_export_free(e);
	gw_ioq_exit(&ioq);
	return check_report();
}
