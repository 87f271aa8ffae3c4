/*
 * libFuzzer target: what the ublk kernel driver hands the daemon
 * (transports/ublk), with this program playing the kernel.
 *
 * Byte 0 picks the part:
 *   even: a queue (ublk_queue.c) against a 1 MiB memory image. Its tags are
 *     armed (ublk_tag_arm) on a real io_uring whose SQEs this program takes
 *     back as the kernel would (checking each: a FETCH or COMMIT_AND_FETCH
 *     for a tag not already with the kernel, its buffer, a result that
 *     fits the request), never submitting them. Byte 1: depth - 1 (& 15),
 *     byte 2: max-io in 4 KiB (& 15, + 1). Then events of 25 bytes: a tag
 *     byte, a result byte (0 OK, 1 NEED_GET_DATA, 2 ABORT, else -that),
 *     then the tag's ublksrv_io_desc (op_flags, nr_sectors, start_sector,
 *     addr, little-endian) written to the shared descriptor area before
 *     the tag's command completes with that result (tags without a command
 *     with the kernel are skipped).
 *   odd: control replies and run-dir state: GET_FEATURES' answer
 *     (ublk_check_features), GET_DEV_INFO's (ublk_info_unfit) and the
 *     parameters built from its max-io and compared with GET_PARAMS'
 *     (ublk_build_params, ublk_params_match), GET_QUEUE_AFFINITY's CPU set
 *     (ublk_cpus_format), and the rest as a state line (ublk_state_parse)
 *     and an id option (ublk_parse_id).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "fuzz.h"
#include "gateway/export.h"
#include "lib/log.h"
#include "transports/ublk/ublk_internal.h"

#define DISK     (1u << 20)
#define MAXDEPTH 16u

static struct gw_export *exp_;
static struct ublk_dev dev;
static struct ublk_queue *q;
static struct ublksrv_io_desc iods[MAXDEPTH];
static bool with_kernel[MAXDEPTH]; /* a command of the daemon's is pending for the tag */
static uint32_t expect[MAXDEPTH];  /* what the tag's COMMIT must report, if >= 0 */
static int expect_set[MAXDEPTH];

static void setup(void)
{
	static int done;

	if (done)
		return;
	done = 1;
	exp_ = fuzz_memory_export("fuzz_ublk", DISK, false);
	dev.exp = exp_;
	dev.nr_queues = 1;
	dev.cdev_fd = -1;
	q = &dev.q[0];
	q->d = &dev;
	if (gw_ioq_init(&q->ioq, 2 * MAXDEPTH, 0, false) < 0) {
		fprintf(stderr, "fuzz_ublk: no io_uring\n");
		abort();
	}
	q->ring_ok = true;
}

/* Take the commands the queue prepared, as the kernel would, and check them. */
static void take_commands(void)
{
	struct io_uring_sq *sq = &q->ioq.ring.sq;

	for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++) {
		const struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];
		struct ublksrv_io_cmd c;

		memcpy(&c, sqe->cmd, sizeof(c));
		if (sqe->opcode != IORING_OP_URING_CMD || sqe->fd != dev.cdev_fd || c.q_id != 0 ||
		    c.tag >= dev.depth || with_kernel[c.tag] ||
		    (sqe->cmd_op != UBLK_U_IO_FETCH_REQ &&
		     sqe->cmd_op != UBLK_U_IO_COMMIT_AND_FETCH_REQ) ||
		    c.addr != (uint64_t)(uintptr_t)(q->bufs + (size_t)c.tag * dev.max_io)) {
			fprintf(stderr, "fuzz_ublk: a bad command: op 0x%x tag %u addr 0x%llx\n",
				sqe->cmd_op, c.tag, (unsigned long long)c.addr);
			abort();
		}
		if (sqe->cmd_op == UBLK_U_IO_COMMIT_AND_FETCH_REQ && expect_set[c.tag] &&
		    c.result >= 0 && (uint32_t)c.result != expect[c.tag]) {
			fprintf(stderr,
				"fuzz_ublk: tag %u committed %d, the request was %u bytes\n", c.tag,
				c.result, expect[c.tag]);
			abort();
		}
		if (sqe->cmd_op == UBLK_U_IO_COMMIT_AND_FETCH_REQ && c.result > (int)dev.max_io) {
			fprintf(stderr, "fuzz_ublk: tag %u committed %d bytes (max-io %u)\n", c.tag,
				c.result, dev.max_io);
			abort();
		}
		with_kernel[c.tag] = true;
	}
	sq->sqe_tail = sq->sqe_head;
	q->ioq.queued = 0;
}

static void queue_input(const uint8_t *p, size_t left)
{
	dev.depth = (uint16_t)((fuzz_get(&p, &left, 1) & 15) + 1);
	dev.max_io = (uint32_t)((fuzz_get(&p, &left, 1) & 15) + 1) * 4096;
	q->iods = iods;
	q->live = q->busy = 0;
	memset(iods, 0, sizeof(iods));
	memset(with_kernel, 0, sizeof(with_kernel));
	memset(expect_set, 0, sizeof(expect_set));
	if (posix_memalign((void **)&q->bufs, 4096, (size_t)dev.depth * dev.max_io) != 0)
		abort();
	q->tags = calloc(dev.depth, sizeof(*q->tags));
	if (!q->tags)
		abort();
	for (unsigned i = 0; i < dev.depth; i++)
		ublk_tag_arm(q, (uint16_t)i);
	take_commands();
	while (left) {
		unsigned tag = (unsigned)fuzz_get(&p, &left, 1) % dev.depth;
		unsigned r = (unsigned)fuzz_get(&p, &left, 1);
		int res = r == 0   ? UBLK_IO_RES_OK
			  : r == 1 ? UBLK_IO_RES_NEED_GET_DATA
			  : r == 2 ? UBLK_IO_RES_ABORT
				   : -(int)r;
		struct ublksrv_io_desc d;
		struct ublk_tag *t = &q->tags[tag];

		d.op_flags = (uint32_t)fuzz_get(&p, &left, 4);
		d.nr_sectors = (uint32_t)fuzz_get(&p, &left, 4);
		d.start_sector = fuzz_get(&p, &left, 8);
		d.addr = fuzz_get(&p, &left, 8);
		if (!with_kernel[tag])
			continue;
		iods[tag] = d;
		with_kernel[tag] = false;
		/* A read or write the export takes must be committed with its length. */
		expect_set[tag] = ((d.op_flags & 0xff) == UBLK_IO_OP_READ ||
				   (d.op_flags & 0xff) == UBLK_IO_OP_WRITE);
		expect[tag] = (uint32_t)((uint64_t)d.nr_sectors << 9);
		t->cb.fn(&t->cb, res); /* what reaping the command's CQE runs */
		take_commands();
		if (q->busy) {
			fprintf(stderr,
				"fuzz_ublk: tag %u: the memory backend did not answer inline\n",
				tag);
			abort();
		}
	}
	free(q->bufs);
	free(q->tags);
	q->bufs = NULL;
	q->tags = NULL;
}

static void control_input(const uint8_t *p, size_t left)
{
	struct ublksrv_ctrl_dev_info info;
	struct ublk_params want, have;
	struct ublk_state st;
	cpu_set_t cpus;
	char buf[4096], line[1024], err[256];
	uint32_t id;
	size_t n;

	(void)ublk_check_features(fuzz_get(&p, &left, 8), err, sizeof(err));
	memset(&info, 0, sizeof(info));
	n = left < sizeof(info) ? left : sizeof(info);
	memcpy(&info, p, n);
	p += n;
	left -= n;
	if (!ublk_info_unfit(&info, info.dev_id) &&
	    ublk_build_params(exp_, info.max_io_buf_bytes, &want, err, sizeof(err)) == 0) {
		memset(&have, 0, sizeof(have));
		n = left < sizeof(have) ? left : sizeof(have);
		memcpy(&have, p, n);
		p += n;
		left -= n;
		(void)ublk_params_match(&have, &want);
	}
	CPU_ZERO(&cpus);
	n = left < 16 ? left : 16;
	memcpy(&cpus, p, n);
	p += n;
	left -= n;
	ublk_cpus_format(&cpus, buf, sizeof(buf));
	ublk_cpus_format(&cpus, buf, 8); /* too short a buffer */
	n = left < sizeof(buf) - 1 ? left : sizeof(buf) - 1;
	memcpy(buf, p, n);
	buf[n] = '\0';
	if (ublk_state_parse(buf, &st) == 0 && ublk_state_format(&st, line, sizeof(line)) < 0)
		abort(); /* a line that parses formats again */
	(void)ublk_parse_id(buf, &id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	setup();
	if (size < 1)
		return 0;
	if (data[0] & 1)
		control_input(data + 1, size - 1);
	else
		queue_input(data + 1, size - 1);
	return 0;
}
