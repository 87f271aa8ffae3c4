/*
 * The split virtqueue against hand-built rings: every malformed input a
 * hostile driver can produce marks the queue broken (and never crashes or
 * reads outside its memory); notification rules; inflight recovery.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lib/log.h"
#include "vring_build.h"

#define NUM  16
#define ALLF (VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_RING_F_EVENT_IDX))

static struct gbuild g;
static struct vq q;
static struct iovec iov[64];
static struct vq_elem e;

static void setup(uint64_t features)
{
	if (g.mem)
		gb_fini(&g);
	if (q.busy)
		vq_fini(&q);
	gb_init(&g, NUM);
	gb_vq(&g, &q, features);
	vq_init(&q, 0);
}

/* A well-formed header(R) + data(R) + status(W) chain at descriptors d, d+1, d+2. */
static void good_chain(uint16_t d, uint32_t datalen)
{
	gb_desc(&g, d, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, d + 1);
	gb_desc(&g, d + 1, gb_alloc(&g, datalen), datalen, VRING_DESC_F_NEXT, d + 2);
	gb_desc(&g, d + 2, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE, 0);
}

/* Publish head and pop: the result. */
static int pop_head(uint16_t head)
{
	gb_publish(&g, head);
	return vq_pop(&q, &e, iov, 64);
}

static void test_good(void)
{
	setup(ALLF);
	CHECK(vq_pop(&q, &e, iov, 64) == 0); /* empty */
	good_chain(0, 4096);
	CHECK(pop_head(0) == 1);
	CHECK_EQ_U64(e.head, 0);
	CHECK_EQ_U64(e.nout, 2);
	CHECK_EQ_U64(e.nin, 1);
	CHECK_EQ_U64(e.out_len, 16 + 4096);
	CHECK_EQ_U64(e.in_len, 1);
	CHECK(!e.truncated);
	CHECK(e.last_in == (uint8_t *)iov[2].iov_base);
	CHECK(iov[0].iov_base == gb_ptr(&g, GB_GPA + GB_BUF));
	CHECK(!q.broken);
	/* A chain of exactly num descriptors is fine. */
	for (uint16_t i = 0; i < NUM; i++)
		gb_desc(&g, i, gb_alloc(&g, 8), 8,
			i == NUM - 1 ? VRING_DESC_F_WRITE : VRING_DESC_F_NEXT, i + 1);
	vq_push(&q, 0, 1);
	CHECK(pop_head(0) == 1);
	CHECK_EQ_U64(e.nout + e.nin, NUM);
}

/* Each case: one malformed thing; the queue must break and stay broken. */
static void expect_broken(const char *what, int rc)
{
	if (rc != -EPROTO || !q.broken)
		fprintf(stderr, "case '%s': rc %d broken %d\n", what, rc, q.broken);
	CHECK(rc == -EPROTO);
	CHECK(q.broken);
	CHECK(vq_pop(&q, &e, iov, 64) == -EPROTO);
}

static void test_ring_indices(void)
{
	setup(ALLF);
	good_chain(0, 512);
	gb_set_avail_idx(&g, NUM + 1); /* more than num pending */
	expect_broken("avail index jump", vq_pop(&q, &e, iov, 64));

	setup(ALLF);
	expect_broken("head >= num", pop_head(NUM));

	setup(ALLF);
	good_chain(0, 512);
	CHECK(pop_head(0) == 1);
	expect_broken("head handed out twice", pop_head(0));
}

static void test_addresses(void)
{
	setup(ALLF);
	good_chain(0, 512);
	gb_desc(&g, 1, 0x1000, 512, VRING_DESC_F_NEXT, 2); /* below guest memory */
	expect_broken("address outside memory", pop_head(0));

	setup(ALLF);
	good_chain(0, 512);
	gb_desc(&g, 1, GB_GPA + GB_SIZE - 256, 512, VRING_DESC_F_NEXT, 2); /* runs off the end */
	expect_broken("buffer crossing the end of memory", pop_head(0));

	setup(ALLF);
	good_chain(0, 512);
	gb_desc(&g, 1, UINT64_MAX - 100, 512, VRING_DESC_F_NEXT, 2); /* wraps */
	expect_broken("address + length overflows", pop_head(0));

	setup(ALLF);
	good_chain(0, 512);
	gb_desc(&g, 2, GB_GPA + GB_SIZE, 1, VRING_DESC_F_WRITE, 0); /* status just past the end */
	expect_broken("status outside memory", pop_head(0));

	setup(ALLF);
	good_chain(0, 512);
	gb_desc(&g, 1, gb_alloc(&g, 16), 0, VRING_DESC_F_NEXT, 2);
	expect_broken("zero-length buffer", pop_head(0));
}

static void test_chains(void)
{
	setup(ALLF);
	gb_desc(&g, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 1);
	gb_desc(&g, 1, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 0); /* 0 -> 1 -> 0 ... */
	expect_broken("chain loop", pop_head(0));

	setup(ALLF);
	gb_desc(&g, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 0); /* points at itself */
	expect_broken("self loop", pop_head(0));

	setup(ALLF);
	for (uint16_t i = 0; i < NUM; i++) /* every descriptor chained, the last back to 3 */
		gb_desc(&g, i, gb_alloc(&g, 8), 8, VRING_DESC_F_NEXT, i == NUM - 1 ? 3 : i + 1);
	expect_broken("over-long chain", pop_head(0));

	setup(ALLF);
	gb_desc(&g, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, NUM);
	gb_desc(&g, NUM, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE, 0); /* past the table: never read
								      */
	expect_broken("next out of range", pop_head(0));

	setup(ALLF);
	gb_desc(&g, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 1);
	gb_desc(&g, 1, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
	gb_desc(&g, 2, gb_alloc(&g, 16), 16, 0, 0);
	expect_broken("readable after writable", pop_head(0));
}

/* An indirect table of n entries at a fresh address; entries written by the caller. */
static struct vring_desc *itable(uint64_t *gpa, unsigned n)
{
	*gpa = gb_alloc(&g, n * 16);
	return (struct vring_desc *)gb_ptr(&g, *gpa);
}

static void good_itable(struct vring_desc *t)
{
	gb_desc_in(t, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 1);
	gb_desc_in(t, 1, gb_alloc(&g, 4096), 4096, VRING_DESC_F_NEXT, 2);
	gb_desc_in(t, 2, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE, 0);
}

static void test_indirect(void)
{
	struct vring_desc *t;
	uint64_t tg;

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc(&g, 0, tg, 48, VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE /* ignored */, 0);
	CHECK(pop_head(0) == 1);
	CHECK_EQ_U64(e.nout, 2);
	CHECK_EQ_U64(e.nin, 1);
	CHECK_EQ_U64(e.out_len, 4112);

	setup(0);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc(&g, 0, tg, 48, VRING_DESC_F_INDIRECT, 0);
	expect_broken("indirect without the feature", pop_head(0));

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc(&g, 0, tg, 0, VRING_DESC_F_INDIRECT, 0);
	expect_broken("empty indirect table", pop_head(0));

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc(&g, 0, tg, 56, VRING_DESC_F_INDIRECT, 0); /* 3 good entries + 8 bytes */
	expect_broken("indirect length not a multiple of 16", pop_head(0));

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc(&g, 0, tg, (VQ_MAX_INDIRECT + 1) * 16, VRING_DESC_F_INDIRECT, 0);
	expect_broken("indirect table too long", pop_head(0));

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc(&g, 0, tg, 48, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
	expect_broken("INDIRECT with NEXT", pop_head(0));

	setup(ALLF);
	{
		struct vring_desc *inner;
		uint64_t ig;

		inner = itable(&ig, 3);
		good_itable(inner);
		t = itable(&tg, 1); /* a table whose only entry points at another table */
		gb_desc_in(t, 0, ig, 48, VRING_DESC_F_INDIRECT, 0);
		gb_desc(&g, 0, tg, 16, VRING_DESC_F_INDIRECT, 0);
		expect_broken("nested indirect table", pop_head(0));
	}

	setup(ALLF);
	t = itable(&tg, 16);
	good_itable(t);
	gb_desc(&g, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 1);
	gb_desc(&g, 1, tg, 16 * 16, VRING_DESC_F_INDIRECT, 0);
	expect_broken("indirect in the middle of a chain", pop_head(0));

	setup(ALLF);
	gb_desc(&g, 0, GB_GPA + GB_SIZE - 16, 48, VRING_DESC_F_INDIRECT, 0);
	expect_broken("indirect table outside memory", pop_head(0));

	/* A table at an odd address (the driver picks it) is read correctly and
	 * without misaligned access: test_vq_sanitized stops on one. */
	setup(ALLF);
	{
		struct vring_desc tmp[3];

		t = itable(&tg, 4);
		tg += 1;
		gb_desc_in(tmp, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 1);
		gb_desc_in(tmp, 1, gb_alloc(&g, 4096), 4096, VRING_DESC_F_NEXT, 2);
		gb_desc_in(tmp, 2, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE, 0);
		memcpy((uint8_t *)t + 1, tmp, sizeof(tmp));
		gb_desc(&g, 0, tg, 48, VRING_DESC_F_INDIRECT, 0);
		CHECK(pop_head(0) == 1);
		CHECK_EQ_U64(e.nout, 2);
		CHECK_EQ_U64(e.nin, 1);
		CHECK_EQ_U64(e.out_len, 4112);
	}

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	gb_desc_in(t, 2, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0); /* back to
											    0 */
	gb_desc(&g, 0, tg, 48, VRING_DESC_F_INDIRECT, 0);
	expect_broken("loop inside an indirect table", pop_head(0));

	setup(ALLF);
	t = itable(&tg, 3);
	good_itable(t);
	t = itable(&tg, 4); /* a 4th entry that looks fine, past the 3 the table claims */
	good_itable(t);
	gb_desc_in(t, 1, gb_alloc(&g, 512), 512, VRING_DESC_F_NEXT, 3);
	gb_desc_in(t, 3, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE, 0);
	gb_desc(&g, 0, tg, 48, VRING_DESC_F_INDIRECT, 0);
	expect_broken("indirect next beyond the table", pop_head(0));
}

/* Two regions adjacent in guest-physical space but apart in host memory. */
static void test_split_regions(void)
{
	uint8_t *lo = calloc(1, 8192), *hi = calloc(1, 8192);
	struct virtio_memmap *m = virtio_mem_new(4, NULL, NULL);
	struct vring_desc *t = (struct vring_desc *)(hi + 4096 - 16); /* a table across the border
								       */
	const struct virtio_memmap *saved;

	CHECK(virtio_mem_add(m, 4, 0x10000000, 8192, lo) == 0);
	CHECK(virtio_mem_add(m, 4, 0x10000000 + 8192, 8192, hi) == 0);
	CHECK(virtio_mem_add(m, 4, 0x10000000 + 4096, 4096, lo) == -EEXIST); /* overlap refused */
	CHECK(virtio_mem_add(m, 4, UINT64_MAX - 10, 100, lo) == -EINVAL);    /* wraps */
	setup(ALLF);
	saved = q.mem;
	q.mem = m;
	/* A 4 KiB buffer straddling the two regions becomes two iovecs. */
	gb_desc(&g, 0, 0x10000000 + 8192 - 1024, 4096, VRING_DESC_F_WRITE, 0);
	CHECK(pop_head(0) == 1);
	CHECK_EQ_U64(e.nin, 2);
	CHECK(iov[0].iov_base == lo + 8192 - 1024 && iov[0].iov_len == 1024);
	CHECK(iov[1].iov_base == hi && iov[1].iov_len == 3072);
	vq_push(&q, 0, 1);
	/* An indirect table split across the regions is gathered whole. */
	(void)t;
	{
		struct vring_desc tmp[3];
		uint8_t *p = (uint8_t *)tmp;

		gb_desc_in(tmp, 0, 0x10000000, 16, VRING_DESC_F_NEXT, 1);
		gb_desc_in(tmp, 1, 0x10000000 + 16, 512, VRING_DESC_F_NEXT, 2);
		gb_desc_in(tmp, 2, 0x10000000 + 600, 1, VRING_DESC_F_WRITE, 0);
		memcpy(lo + 8192 - 24, p, 24);
		memcpy(hi, p + 24, 24);
		gb_desc(&g, 1, 0x10000000 + 8192 - 24, 48, VRING_DESC_F_INDIRECT, 0);
		CHECK(pop_head(1) == 1);
		CHECK_EQ_U64(e.nout, 2);
		CHECK_EQ_U64(e.out_len, 528);
		CHECK(e.last_in == lo + 600);
	}
	/* A buffer running into a hole after the second region breaks the queue. */
	gb_desc(&g, 2, 0x10000000 + 16384 - 8, 16, VRING_DESC_F_WRITE, 0);
	expect_broken("buffer running into unmapped space", pop_head(2));
	q.mem = saved;
	virtio_mem_put(m);
	free(lo);
	free(hi);
}

/*
 * A buffer that runs off the top of the 64-bit space must not wrap into a
 * region at address 0, however the regions are laid out.
 */
static void test_wrap(void)
{
	uint8_t *top = calloc(1, 8192), *low = calloc(1, 8192);
	struct virtio_memmap *m = virtio_mem_new(4, NULL, NULL);
	const struct virtio_memmap *saved;

	CHECK(virtio_mem_add(m, 4, UINT64_MAX - 8191, 8192, top) == 0);
	CHECK(virtio_mem_add(m, 4, 0, 8192, low) == 0);
	setup(ALLF);
	saved = q.mem;
	q.mem = m;
	gb_desc(&g, 0, UINT64_MAX - 99, 512, VRING_DESC_F_WRITE, 0); /* 100 bytes at the top, 412
									"after" */
	expect_broken("buffer wrapping from the top of the address space to 0", pop_head(0));
	q.mem = saved;
	virtio_mem_put(m);
	free(top);
	free(low);
}

static void test_truncated(void)
{
	setup(ALLF);
	good_chain(0, 512);
	gb_publish(&g, 0);
	CHECK(vq_pop(&q, &e, iov, 2) == 1); /* room for 2 of the 3 buffers */
	CHECK(e.truncated);
	CHECK(e.last_in != NULL);
	CHECK_EQ_U64(e.in_len, 1);
	CHECK(!q.broken);
}

static void test_push_and_notify(void)
{
	uint32_t id, len;

	/* Without EVENT_IDX: NO_INTERRUPT decides. */
	setup(VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC));
	good_chain(0, 512);
	CHECK(pop_head(0) == 1);
	vq_push(&q, 0, 513);
	CHECK_EQ_U64(gb_used_idx(&g), 1);
	gb_used_elem(&g, 0, &id, &len);
	CHECK_EQ_U64(id, 0);
	CHECK_EQ_U64(len, 513);
	CHECK(vq_should_notify(&q));
	gb_set_avail_flags(&g, VRING_AVAIL_F_NO_INTERRUPT);
	CHECK(!vq_should_notify(&q));

	/* NOTIFY_ON_EMPTY overrides NO_INTERRUPT once the queue drained. */
	setup(VIRTIO_BIT(VIRTIO_F_NOTIFY_ON_EMPTY));
	gb_set_avail_flags(&g, VRING_AVAIL_F_NO_INTERRUPT);
	good_chain(0, 512);
	good_chain(3, 512);
	gb_publish(&g, 0);
	gb_publish(&g, 3);
	CHECK(vq_pop(&q, &e, iov, 64) == 1);
	vq_push(&q, 0, 1);
	CHECK(!vq_should_notify(&q)); /* one still waiting on the avail ring */
	CHECK(vq_pop(&q, &e, iov, 64) == 1);
	vq_push(&q, 3, 1);
	CHECK(vq_should_notify(&q)); /* empty now */

	/* EVENT_IDX: signal only when used crosses used_event. */
	setup(ALLF);
	for (uint16_t i = 0; i < 4; i++) {
		good_chain((uint16_t)(i * 3), 512);
		gb_publish(&g, (uint16_t)(i * 3));
	}
	gb_set_used_event(&g, 1); /* the driver wants an interrupt once used->idx passes 1 */
	CHECK(vq_pop(&q, &e, iov, 64) == 1);
	vq_push(&q, 0, 1);           /* used 0 -> 1 */
	CHECK(vq_should_notify(&q)); /* first one always signals */
	CHECK(vq_pop(&q, &e, iov, 64) == 1);
	vq_push(&q, 3, 1); /* 1 -> 2: crosses used_event 1 */
	CHECK(vq_should_notify(&q));
	CHECK(vq_pop(&q, &e, iov, 64) == 1);
	vq_push(&q, 6, 1); /* 2 -> 3: used_event still 1, already signalled */
	CHECK(!vq_should_notify(&q));
	gb_set_used_event(&g, 3);
	CHECK(vq_pop(&q, &e, iov, 64) == 1);
	vq_push(&q, 9, 1); /* 3 -> 4 crosses 3 */
	CHECK(vq_should_notify(&q));
	/* avail_event follows what we consumed, and a late arrival is seen. */
	CHECK(!vq_arm_kick(&q));
	CHECK_EQ_U64(gb_avail_event(&g), 4);
	good_chain(0, 512);
	gb_publish(&g, 0);
	CHECK(vq_arm_kick(&q));
}

static struct vq_inflight *infl_new(void)
{
	struct vq_inflight *r = calloc(1, vq_inflight_size(NUM));

	return r;
}

static void test_inflight(void)
{
	struct vq_inflight *r = infl_new();
	uint16_t heads[NUM];
	int n;

	/* Pops and pushes are recorded. */
	setup(ALLF);
	q.infl = r;
	CHECK(vq_inflight_recover(&q, 7, heads) == 0); /* fresh: initialised */
	CHECK_EQ_U64(r->version, 1);
	CHECK_EQ_U64(r->desc_num, NUM);
	good_chain(0, 512);
	good_chain(3, 512);
	CHECK(pop_head(0) == 1);
	CHECK(pop_head(3) == 1);
	CHECK(r->desc[0].inflight == 1 && r->desc[3].inflight == 1);
	CHECK(r->desc[0].counter < r->desc[3].counter);
	vq_push(&q, 0, 1);
	CHECK(r->desc[0].inflight == 0);
	CHECK_EQ_U64(r->used_idx, 1);
	CHECK_EQ_U64(r->last_batch_head, 0);

	/* "Restart": a new queue over the same rings and region. Head 3 is resubmitted. */
	vq_fini(&q);
	gb_vq(&g, &q, ALLF);
	vq_init(&q, 0 /* QEMU's SET_VRING_BASE after a crash: used->idx */);
	q.infl = r;
	n = vq_inflight_recover(&q, 7, heads);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_U64(heads[0], 3);
	CHECK_EQ_U64(q.last_avail, 2);       /* used 1 + 1 in flight */
	CHECK(vq_pop(&q, &e, iov, 64) == 0); /* nothing new */
	CHECK(vq_map_head(&q, 3, &e, iov, 64) == 0);
	vq_push(&q, 3, 1);
	CHECK(r->desc[3].inflight == 0);

	/* Several in flight: resubmitted in pop order, not head order. */
	setup(ALLF);
	q.infl = r;
	memset(r, 0, vq_inflight_size(NUM));
	vq_inflight_recover(&q, 7, heads);
	r->desc[9].inflight = 1;
	r->desc[9].counter = 50;
	r->desc[2].inflight = 1;
	r->desc[2].counter = 70;
	r->desc[5].inflight = 1;
	r->desc[5].counter = 60;
	vq_fini(&q);
	gb_vq(&g, &q, ALLF);
	vq_init(&q, 0);
	q.infl = r;
	n = vq_inflight_recover(&q, 7, heads);
	CHECK_EQ_U64(n, 3);
	CHECK(heads[0] == 9 && heads[1] == 5 && heads[2] == 2);
	CHECK_EQ_U64(q.counter, 70);
	CHECK(q.busy[9] && q.busy[5] && q.busy[2]);

	/* A torn push: used->idx moved but the region was not updated; not resubmitted. */
	setup(ALLF);
	q.infl = r;
	memset(r, 0, vq_inflight_size(NUM));
	vq_inflight_recover(&q, 7, heads);
	good_chain(0, 512);
	CHECK(pop_head(0) == 1);
	*(uint16_t *)(g.mem + GB_USED + 2) = htole16(1); /* the push reached used->idx ... */
	r->last_batch_head = 0;                          /* ... and died before inflight = 0 */
	vq_fini(&q);
	gb_vq(&g, &q, ALLF);
	vq_init(&q, 1);
	q.infl = r;
	n = vq_inflight_recover(&q, 7, heads);
	CHECK_EQ_U64(n, 0);
	CHECK_EQ_U64(r->used_idx, 1);
	CHECK_EQ_U64(q.last_avail, 1);

	/* A region made for another ring size starts afresh. */
	r->desc_num = NUM / 2;
	r->desc[1].inflight = 1;
	vq_fini(&q);
	gb_vq(&g, &q, ALLF);
	vq_init(&q, 1);
	q.infl = r;
	CHECK(vq_inflight_recover(&q, 7, heads) == 0);
	CHECK(r->desc[1].inflight == 0);
	CHECK_EQ_U64(r->desc_num, NUM);
	free(r);
}

int main(void)
{
	gw_log_set_level(GW_LOG_ERR); /* the broken-ring warnings are expected */
	test_good();
	test_ring_indices();
	test_addresses();
	test_chains();
	test_indirect();
	test_split_regions();
	test_wrap();
	test_truncated();
	test_push_and_notify();
	test_inflight();
	vq_fini(&q);
	gb_fini(&g);
	return check_report();
}
