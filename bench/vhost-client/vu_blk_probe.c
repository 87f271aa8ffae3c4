/* SPDX-License-Identifier: MIT */
/*
 * vu-blk-probe: connect to a vhost-user-blk backend, print what it offers,
 * and (unless --info) run a small data round trip on queue 0:
 * write a pattern, read it back and compare, flush, discard, write-zeroes
 * and read back zeroes, GET_ID. Exit status 0 when everything passed,
 * 1 on a failed check, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vu_client.h"

struct probe {
	struct vu_client *c;
	struct vu_queue *q;
	const struct vu_client_info *in;
	int failures;
	int timeout_ms;
	bool verbose;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: vu-blk-probe [options] SOCKET\n"
		   "  -i, --info            print features and config only, no I/O\n"
		   "  -o, --offset BYTES    where the round trip writes (default 0)\n"
		   "  -l, --length BYTES    bytes per write/read (default 65536)\n"
		   "  -q, --queue N         virtqueue to use (default 0)\n"
		   "  -n, --no-discard      skip the discard and write-zeroes steps\n"
		   "  -S, --shrink-memory   misbehave: after one good write, truncate the\n"
		   "                        shared memory under the next write's buffer;\n"
		   "                        passes when the backend never acknowledges that\n"
		   "                        write (it closes the connection or says IOERR)\n"
		   "  -w, --wait SECONDS    retry connecting this long (default 0)\n"
		   "  -T, --timeout MS      give up on a request after MS (default 30000)\n"
		   "  -t, --trace           log every vhost-user message\n"
		   "  -v, --verbose         say what each step does\n");
}

static void print_bits(const char *label, uint64_t bits, const char *(*name)(unsigned int))
{
	unsigned int b;

	printf("%-22s 0x%016" PRIx64 " ", label, bits);
	for (b = 0; b < 64; b++) {
		if (!(bits & (1ULL << b)))
			continue;
		if (name(b))
			printf(" %s", name(b));
		else
			printf(" bit%u", b);
	}
	printf("\n");
}

static void print_info(const struct vu_client_info *in)
{
	const struct vu_blk_config *g = &in->cfg;

	print_bits("features offered:", in->offered_features, vu_blk_feature_name);
	print_bits("features negotiated:", in->features, vu_blk_feature_name);
	print_bits("protocol offered:", in->offered_protocol, vu_protocol_feature_name);
	print_bits("protocol negotiated:", in->protocol, vu_protocol_feature_name);
	printf("%-22s %u\n", "queues (GET_QUEUE_NUM):", in->max_queues);
	printf("%-22s %u bytes\n", "config read:", in->config_len);
	printf("capacity               %" PRIu64 " sectors (%" PRIu64 " bytes)\n", g->capacity,
	       g->capacity * 512);
	printf("blk_size               %u\n", g->blk_size);
	printf("size_max / seg_max     %u / %u\n", g->size_max, g->seg_max);
	printf("geometry               c%u h%u s%u\n", g->cylinders, g->heads, g->sectors);
	printf("topology               phys_exp %u align_off %u min_io %u opt_io %u\n",
	       g->physical_block_exp, g->alignment_offset, g->min_io_size, g->opt_io_size);
	printf("writeback              %u\n", g->writeback);
	printf("num_queues (config)    %u\n", g->num_queues);
	printf("discard                max_sectors %u max_seg %u alignment %u\n",
	       g->max_discard_sectors, g->max_discard_seg, g->discard_sector_alignment);
	printf("write_zeroes           max_sectors %u max_seg %u may_unmap %u\n",
	       g->max_write_zeroes_sectors, g->max_write_zeroes_seg, g->write_zeroes_may_unmap);
}

/* Submit one request and wait for it. Returns the completion's result. */
static int run1(struct probe *p, struct vu_blk_req *rq, struct vu_blk_cpl *out)
{
	struct vu_blk_cpl cpl;
	int r;

	rq->cookie = rq;
	r = vu_queue_submit(p->q, rq);
	if (r < 0) {
		fprintf(stderr, "vu-blk-probe: submit: %s\n", vu_queue_errmsg(p->q));
		return r;
	}
	r = vu_queue_kick(p->q);
	if (r < 0) {
		fprintf(stderr, "vu-blk-probe: kick: %s\n", vu_queue_errmsg(p->q));
		return r;
	}
	for (;;) {
		r = vu_queue_reap(p->q, &cpl, 1);
		if (r < 0) {
			fprintf(stderr, "vu-blk-probe: %s\n", vu_queue_errmsg(p->q));
			return r;
		}
		if (r == 1)
			break;
		r = vu_queue_wait(p->q, p->timeout_ms);
		if (r < 0) {
			fprintf(stderr, "vu-blk-probe: %s\n", vu_queue_errmsg(p->q));
			return r;
		}
	}
	if (cpl.cookie != rq) {
		fprintf(stderr, "vu-blk-probe: completion for an unknown request\n");
		return -EPROTO;
	}
	if (out)
		*out = cpl;
	if (cpl.result == -EPROTO)
		fprintf(stderr, "vu-blk-probe: %s\n", vu_queue_errmsg(p->q));
	return cpl.result;
}

static void check(struct probe *p, bool ok, const char *fmt, const char *what)
{
	printf("%-40s %s\n", what, ok ? "ok" : "FAILED");
	if (!ok) {
		p->failures++;
		if (fmt)
			fprintf(stderr, "vu-blk-probe: %s: %s\n", what, fmt);
	}
}

static void fill_pattern(uint8_t *b, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
	size_t i;

	for (i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (uint8_t)x;
	}
}

static bool all_zero(const uint8_t *b, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

/* A fresh buffer of len bytes from the shared memory; NULL (counted as a failure) when it is full.
 */
static uint8_t *alloc_buf(struct probe *p, uint64_t len)
{
	uint8_t *b = vu_client_alloc(p->c, len, 4096);

	if (!b) {
		fprintf(stderr, "vu-blk-probe: %s\n", vu_client_errmsg(p->c));
		p->failures++;
	}
	return b;
}

/* Write the pattern for (off, len) from buf; checked as `what`. */
static void write_pattern(struct probe *p, uint8_t *buf, uint64_t off, uint64_t len,
			  const char *what)
{
	struct vu_blk_req rq = { .op = VU_BLK_WRITE, .offset = off, .len = len, .buf = buf };
	struct vu_blk_cpl cpl = { 0 };
	int r;

	fill_pattern(buf, len, off ^ len);
	r = run1(p, &rq, &cpl);
	check(p, r == 0, strerror(-r), what);
	if (p->verbose)
		printf("  used.len %u (expected 1)\n", cpl.used_len);
}

static void round_trip(struct probe *p, uint64_t off, uint64_t len, bool do_discard)
{
	struct vu_blk_req rq;
	struct vu_blk_cpl cpl;
	uint8_t *wbuf, *rbuf;
	char id[21] = { 0 };
	int r;

	wbuf = alloc_buf(p, len);
	rbuf = wbuf ? alloc_buf(p, len) : NULL;
	if (!rbuf)
		return;
	write_pattern(p, wbuf, off, len, "write pattern");

	memset(rbuf, 0xee, len);
	rq = (struct vu_blk_req){ .op = VU_BLK_READ, .offset = off, .len = len, .buf = rbuf };
	memset(&cpl, 0, sizeof(cpl));
	r = run1(p, &rq, &cpl);
	check(p, r == 0, strerror(-r), "read back");
	if (p->verbose)
		printf("  used.len %u (expected %" PRIu64 ")\n", cpl.used_len, len + 1);
	check(p, r == 0 && !memcmp(wbuf, rbuf, len), "data differs", "compare");

	if (p->in->features & VU_BIT(VU_BLK_F_FLUSH)) {
		rq = (struct vu_blk_req){ .op = VU_BLK_FLUSH };
		r = run1(p, &rq, NULL);
		check(p, r == 0, strerror(-r), "flush");
	} else {
		printf("%-40s %s\n", "flush", "skipped (not offered)");
	}

	memset(rbuf, 0, 20);
	rq = (struct vu_blk_req){ .op = VU_BLK_GET_ID, .len = 20, .buf = id };
	r = run1(p, &rq, NULL);
	if (r == 0)
		printf("%-40s ok \"%s\"\n", "get id", id);
	else
		printf("%-40s %s\n", "get id", strerror(-r));

	if (!do_discard)
		return;
	if (p->in->features & VU_BIT(VU_BLK_F_DISCARD)) {
		rq = (struct vu_blk_req){ .op = VU_BLK_DISCARD, .offset = off, .len = len };
		r = run1(p, &rq, NULL);
		check(p, r == 0, strerror(-r), "discard");
	} else {
		printf("%-40s %s\n", "discard", "skipped (not offered)");
	}
	if (p->in->features & VU_BIT(VU_BLK_F_WRITE_ZEROES)) {
		rq = (struct vu_blk_req){
			.op = VU_BLK_WRITE, .offset = off, .len = len, .buf = wbuf
		};
		r = run1(p, &rq, NULL);
		check(p, r == 0, strerror(-r), "rewrite pattern");
		rq = (struct vu_blk_req){ .op = VU_BLK_WRITE_ZEROES, .offset = off, .len = len };
		r = run1(p, &rq, NULL);
		check(p, r == 0, strerror(-r), "write zeroes");
		memset(rbuf, 0xee, len);
		rq = (struct vu_blk_req){
			.op = VU_BLK_READ, .offset = off, .len = len, .buf = rbuf
		};
		r = run1(p, &rq, NULL);
		check(p, r == 0 && all_zero(rbuf, len), "range not zero", "read back zeroes");
	} else {
		printf("%-40s %s\n", "write zeroes", "skipped (not offered)");
	}
	/* A request past the end must fail on the device, not on us. */
	rq = (struct vu_blk_req){ .op = VU_BLK_READ,
				  .flags = VU_REQ_NOCHECK,
				  .offset = p->in->cfg.capacity * 512,
				  .len = 512,
				  .buf = rbuf };
	r = run1(p, &rq, NULL);
	check(p, r == -EIO, r == 0 ? "read past the end succeeded" : strerror(-r),
	      "read past the end gets IOERR");
}

/*
 * A hostile frontend: write once from a buffer (must succeed), truncate the
 * memfd under that buffer, write from it again. The backend must not
 * acknowledge the second write (its data is gone): it fails it or drops
 * the connection. Whether the backend survives is for the caller to check.
 */
static void shrink_memory(struct probe *p, uint64_t off, uint64_t len)
{
	struct vu_blk_req rq;
	struct vu_blk_cpl cpl;
	uint8_t *buf;
	int r;

	buf = alloc_buf(p, len);
	if (!buf)
		return;
	write_pattern(p, buf, off, len, "write before shrinking");
	r = vu_client_shrink_memory(p->c, buf);
	check(p, r == 0, vu_client_errmsg(p->c), "truncate the shared memory");
	if (r < 0)
		return;
	rq = (struct vu_blk_req){ .op = VU_BLK_WRITE, .offset = off, .len = len, .buf = buf };
	r = run1(p, &rq, &cpl);
	if (r == 0)
		check(p, false, "the backend acknowledged data it could not have read",
		      "write from shrunk memory");
	else if (r == -EIO)
		check(p, true, NULL, "write from shrunk memory: IOERR");
	else
		check(p, r == -EPIPE, strerror(-r), "write from shrunk memory: connection closed");
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "info", no_argument, NULL, 'i' },
		{ "offset", required_argument, NULL, 'o' },
		{ "length", required_argument, NULL, 'l' },
		{ "queue", required_argument, NULL, 'q' },
		{ "no-discard", no_argument, NULL, 'n' },
		{ "shrink-memory", no_argument, NULL, 'S' },
		{ "wait", required_argument, NULL, 'w' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "trace", no_argument, NULL, 't' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vu_client_opts copts = { 0 };
	struct probe p = { .timeout_ms = 30000 };
	uint64_t off = 0, len = 65536;
	unsigned long qidx = 0;
	bool info_only = false, do_discard = true, shrink = false;
	char err[256], *end;
	int ch, r;

	while ((ch = getopt_long(argc, argv, "io:l:q:nSw:T:tvh", lopts, NULL)) != -1) {
		switch (ch) {
		case 'i':
			info_only = true;
			break;
		case 'o':
			off = strtoull(optarg, &end, 0);
			if (*end) {
				usage(stderr);
				return 2;
			}
			break;
		case 'l':
			len = strtoull(optarg, &end, 0);
			if (*end || len == 0 || len % 512) {
				fprintf(stderr, "vu-blk-probe: length must be a positive "
						"multiple of 512\n");
				return 2;
			}
			break;
		case 'q':
			qidx = strtoul(optarg, &end, 0);
			if (*end) {
				usage(stderr);
				return 2;
			}
			break;
		case 'n':
			do_discard = false;
			break;
		case 'S':
			shrink = true;
			copts.unsealed = true;
			break;
		case 'w':
			copts.connect_timeout_ms = (unsigned int)strtoul(optarg, NULL, 0) * 1000u;
			break;
		case 'T':
			p.timeout_ms = (int)strtol(optarg, NULL, 0);
			break;
		case 't':
			copts.trace = true;
			break;
		case 'v':
			p.verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}

	r = vu_client_connect(argv[optind], &copts, &p.c, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "vu-blk-probe: %s\n", err);
		return 1;
	}
	p.in = vu_client_info(p.c);
	print_info(p.in);
	if (info_only)
		goto out;

	r = vu_client_start(p.c, 2 * len + vu_queue_mem_size(64) + (1u << 20));
	if (r < 0) {
		fprintf(stderr, "vu-blk-probe: %s\n", vu_client_errmsg(p.c));
		p.failures++;
		goto out;
	}
	r = vu_queue_open(p.c, (unsigned int)qidx, 64, 0, &p.q);
	if (r < 0) {
		fprintf(stderr, "vu-blk-probe: %s\n", vu_client_errmsg(p.c));
		p.failures++;
		goto out;
	}
	if (off + len > p.in->cfg.capacity * 512) {
		fprintf(stderr,
			"vu-blk-probe: %" PRIu64 "+%" PRIu64 " is past the "
			"end of the disk\n",
			off, len);
		p.failures++;
	} else if (shrink) {
		shrink_memory(&p, off, len);
		/* The connection is gone (or the check above failed): no GET_VRING_BASE. */
		vu_queue_close(p.q);
		goto out;
	} else {
		round_trip(&p, off, len, do_discard);
	}
	r = vu_queue_close(p.q);
	check(&p, r == 0, vu_client_errmsg(p.c), "stop queue (GET_VRING_BASE)");
out:
	vu_client_close(p.c);
	if (!info_only)
		printf("%s\n", p.failures ? "FAILED" : "PASSED");
	return p.failures ? 1 : 0;
}
