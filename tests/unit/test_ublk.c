/*
 * The ublk transport's host-side parts: command numbers and struct sizes
 * against the 6.12 kernel's, device parameters from an export, request
 * descriptors to backend requests and results back, the id option, the
 * run dir's state line, the feature check's message and CPU lists.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "transports/ublk/ublk_internal.h"

static int failures;

#define CHECK(c)                                                                        \
	do {                                                                            \
		if (!(c)) {                                                             \
			fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #c); \
			failures++;                                                     \
		}                                                                       \
	} while (0)

static void test_abi(void)
{
	/* protocols.md §0, checked against the 6.12 headers */
	CHECK(UBLK_U_CMD_ADD_DEV == 0xc0207504u);
	CHECK(UBLK_U_CMD_START_DEV == 0xc0207506u);
	CHECK(UBLK_U_CMD_GET_FEATURES == 0x80207513u);
	CHECK(UBLK_U_CMD_GET_QUEUE_AFFINITY == 0x80207501u);
	CHECK(UBLK_U_IO_FETCH_REQ == 0xc0107520u);
	CHECK(UBLK_U_IO_COMMIT_AND_FETCH_REQ == 0xc0107521u);
	CHECK(sizeof(struct ublksrv_ctrl_cmd) == 32);
	CHECK(sizeof(struct ublksrv_ctrl_dev_info) == 64);
	CHECK(sizeof(struct ublksrv_io_desc) == 24);
	CHECK(sizeof(struct ublksrv_io_cmd) == 16);
	/* the I/O command fits a plain 64-byte SQE, the control command needs SQE128 */
	CHECK(sizeof(struct io_uring_sqe) - offsetof(struct io_uring_sqe, cmd) >=
	      sizeof(struct ublksrv_io_cmd));
}

static void test_prep(void)
{
	unsigned char raw[128];
	struct io_uring_sqe *sqe = (struct io_uring_sqe *)raw;
	struct ublksrv_io_cmd c = { .q_id = 1, .tag = 7, .result = 4096, .addr = 0x1000 };

	memset(raw, 0, sizeof(raw));
	ublk_prep_cmd(sqe, 9, UBLK_U_IO_COMMIT_AND_FETCH_REQ, &c, sizeof(c));
	CHECK(sqe->opcode == IORING_OP_URING_CMD);
	CHECK(sqe->fd == 9);
	CHECK(sqe->cmd_op == UBLK_U_IO_COMMIT_AND_FETCH_REQ);
	CHECK(sqe->__pad1 == 0);
	CHECK(sqe->uring_cmd_flags == 0);
	CHECK(memcmp(sqe->cmd, &c, sizeof(c)) == 0);
}

static struct gw_export export(uint64_t size, uint32_t caps, uint32_t min_block, bool ro)
{
	struct gw_export e;

	memset(&e, 0, sizeof(e));
	e.size = size;
	e.caps = caps;
	e.min_block = min_block;
	e.pref_block = 4096;
	e.max_xfer = 32 << 20;
	e.read_only = ro;
	return e;
}

static void test_params(void)
{
	struct ublk_params p;
	char err[256];
	struct gw_export e = export(256 << 20, GW_CAP_FLUSH | GW_CAP_TRIM | GW_CAP_ZERO, 1, false);

	CHECK(ublk_build_params(&e, 512 << 10, &p, err, sizeof(err)) == 0);
	CHECK(p.len == sizeof(p));
	CHECK(p.types == (UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD));
	CHECK(p.basic.logical_bs_shift == 9);
	CHECK(p.basic.physical_bs_shift == 12);
	CHECK(p.basic.io_min_shift == 9 && p.basic.io_opt_shift == 12);
	CHECK(p.basic.max_sectors == 1024);
	CHECK(p.basic.dev_sectors == 524288);
	CHECK(p.basic.attrs == (UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA));
	CHECK(p.discard.discard_granularity == 4096);
	CHECK(p.discard.max_discard_sectors > 0 && p.discard.max_discard_segments == 1);
	CHECK(p.discard.max_write_zeroes_sectors > 0);

	/* no cache, no trim: no FLUSH/FUA; write-zeroes still, discard not */
	e = export(1 << 20, 0, 4096, false);
	CHECK(ublk_build_params(&e, 512 << 10, &p, err, sizeof(err)) == 0);
	CHECK(p.basic.attrs == 0);
	CHECK(p.basic.logical_bs_shift == 12);
	CHECK(p.discard.max_discard_sectors == 0 && p.discard.max_write_zeroes_sectors > 0);
	CHECK(p.discard.discard_granularity != 0);

	/* read-only: the attribute, no discard parameters */
	e = export(1 << 20, GW_CAP_FLUSH | GW_CAP_TRIM, 512, true);
	CHECK(ublk_build_params(&e, 512 << 10, &p, err, sizeof(err)) == 0);
	CHECK(p.basic.attrs & UBLK_ATTR_READ_ONLY);
	CHECK(p.types == UBLK_PARAM_TYPE_BASIC);

	/* the export's own limit wins over max-io; a size that is not whole blocks rounds down */
	e = export((1 << 20) + 1000, 0, 512, false);
	e.max_xfer = 64 << 10;
	CHECK(ublk_build_params(&e, 1 << 20, &p, err, sizeof(err)) == 0);
	CHECK(p.basic.max_sectors == 128);
	CHECK(p.basic.dev_sectors == 2049);

	/* block sizes a ublk device cannot take */
	e = export(1 << 20, 0, 8192, false);
	CHECK(ublk_build_params(&e, 512 << 10, &p, err, sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "512 to 4096") != NULL);
	e = export(100, 0, 512, false);
	CHECK(ublk_build_params(&e, 512 << 10, &p, err, sizeof(err)) == -EINVAL);
}

static void test_decode(void)
{
	static char buf[65536];
	struct ublksrv_io_desc iod;
	struct gw_io io;
	struct iovec iov;

	iod = (struct ublksrv_io_desc){ .op_flags = UBLK_IO_OP_READ,
					.nr_sectors = 8,
					.start_sector = 16 };
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == 0);
	CHECK(io.op == GW_OP_READ && io.offset == 8192 && io.len == 4096 && io.flags == 0);
	CHECK(io.iovcnt == 1 && io.iov == &iov && iov.iov_base == buf && iov.iov_len == 4096);
	io.result = 0;
	CHECK(ublk_result(&io) == 4096);
	io.result = -EIO;
	CHECK(ublk_result(&io) == -EIO);

	iod = (struct ublksrv_io_desc){ .op_flags = UBLK_IO_OP_WRITE | UBLK_IO_F_FUA,
					.nr_sectors = 128 };
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == 0);
	CHECK(io.op == GW_OP_WRITE && io.flags == GW_IO_FUA && io.len == 65536);

	iod.nr_sectors = 129; /* longer than the tag's buffer */
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == -EINVAL);

	iod = (struct ublksrv_io_desc){ .op_flags = UBLK_IO_OP_FLUSH };
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == 0);
	CHECK(io.op == GW_OP_FLUSH && io.len == 0);
	io.result = 0;
	CHECK(ublk_result(&io) == 0);

	iod = (struct ublksrv_io_desc){ .op_flags = UBLK_IO_OP_DISCARD,
					.nr_sectors = 1u << 20,
					.start_sector = 8 };
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == 0);
	CHECK(io.op == GW_OP_TRIM && io.offset == 4096 && io.len == (1ull << 29));
	CHECK(io.iov == NULL);
	io.result = 0;
	CHECK(ublk_result(&io) == 0);

	iod = (struct ublksrv_io_desc){ .op_flags = UBLK_IO_OP_WRITE_ZEROES | UBLK_IO_F_NOUNMAP,
					.nr_sectors = 8 };
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == 0);
	CHECK(io.op == GW_OP_WRITE_ZEROES && io.flags == GW_IO_NO_UNMAP);
	iod.op_flags = UBLK_IO_OP_WRITE_ZEROES;
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == 0);
	CHECK(io.flags == 0);

	iod = (struct ublksrv_io_desc){ .op_flags = UBLK_IO_OP_WRITE_SAME, .nr_sectors = 8 };
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == -EOPNOTSUPP);
	iod.op_flags = 10; /* a zone op */
	CHECK(ublk_decode(&iod, buf, sizeof(buf), &io, &iov) == -EOPNOTSUPP);
}

static void test_id(void)
{
	uint32_t id;

	CHECK(ublk_parse_id(NULL, &id) == 0 && id == UBLK_ID_AUTO);
	CHECK(ublk_parse_id("-1", &id) == 0 && id == UBLK_ID_AUTO);
	CHECK(ublk_parse_id("auto", &id) == 0 && id == UBLK_ID_AUTO);
	CHECK(ublk_parse_id("0", &id) == 0 && id == 0);
	CHECK(ublk_parse_id("17", &id) == 0 && id == 17);
	CHECK(ublk_parse_id("-2", &id) == -EINVAL);
	CHECK(ublk_parse_id("x", &id) == -EINVAL);
	CHECK(ublk_parse_id("3x", &id) == -EINVAL);
	CHECK(ublk_parse_id("", &id) == -EINVAL);
	CHECK(ublk_parse_id("99999999999", &id) == -EINVAL);
}

/* GET_DEV_INFO of a device left behind: what may be taken over. */
static void test_info(void)
{
	struct ublksrv_ctrl_dev_info i;

	memset(&i, 0, sizeof(i));
	i.nr_hw_queues = 2;
	i.queue_depth = 128;
	i.state = UBLK_S_DEV_QUIESCED;
	i.max_io_buf_bytes = 512 << 10;
	i.dev_id = 7;
	i.flags = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
	CHECK(ublk_info_unfit(&i, 7) == NULL);
	CHECK(ublk_info_unfit(&i, 8) != NULL); /* another device answered */
	i.nr_hw_queues = UBLK_MAX_QUEUES + 1;  /* would overrun the queue array */
	CHECK(ublk_info_unfit(&i, 7) != NULL);
	i.nr_hw_queues = 0;
	CHECK(ublk_info_unfit(&i, 7) != NULL);
	i.nr_hw_queues = 2;
	i.max_io_buf_bytes = 4097;
	CHECK(ublk_info_unfit(&i, 7) != NULL);
	i.max_io_buf_bytes = 64 << 20;
	CHECK(ublk_info_unfit(&i, 7) != NULL);
	i.max_io_buf_bytes = 4096;
	i.queue_depth = UBLK_MAX_QUEUE_DEPTH + 1;
	CHECK(ublk_info_unfit(&i, 7) != NULL);
	i.queue_depth = 1;
	CHECK(ublk_info_unfit(&i, 7) == NULL);
	i.flags = 0;
	CHECK(strstr(ublk_info_unfit(&i, 7), "user recovery") != NULL);
	i.flags = UBLK_F_USER_RECOVERY;
	i.state = UBLK_S_DEV_DEAD;
	CHECK(strstr(ublk_info_unfit(&i, 7), "never started") != NULL);
}

static void test_state(void)
{
	struct ublk_state s = { .dev_id = 3,
				.pid = 1234,
				.queues = 2,
				.depth = 128,
				.max_io = 524288 },
			  t;
	char line[512];

	strcpy(s.export_id, "disk#2 with space");
	CHECK(ublk_state_format(&s, line, sizeof(line)) > 0);
	CHECK(ublk_state_parse(line, &t) == 0);
	CHECK(t.dev_id == 3 && t.pid == 1234 && t.queues == 2 && t.depth == 128 &&
	      t.max_io == 524288);
	CHECK(strcmp(t.export_id, "disk#2 with space") == 0);
	CHECK(ublk_state_parse("3 1234 2 128\n", &t) == -EINVAL);
	CHECK(ublk_state_parse("3 0 2 128 4096 x\n", &t) == -EINVAL);
	CHECK(ublk_state_parse("3 5 0 128 4096 x\n", &t) == -EINVAL);
	CHECK(ublk_state_parse("garbage", &t) == -EINVAL);
	CHECK(ublk_state_format(&s, line, 8) < 0);
}

/* The message for a kernel without the recovery features blkgw asks for. */
static void test_features(void)
{
	char err[512] = "";

	CHECK(ublk_check_features(UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE |
					  UBLK_F_CMD_IOCTL_ENCODE,
				  err, sizeof(err)) == 0);
	CHECK(ublk_check_features(UBLK_F_USER_RECOVERY | UBLK_F_CMD_IOCTL_ENCODE, err,
				  sizeof(err)) == -EOPNOTSUPP);
	CHECK(strstr(err, "lacks USER_RECOVERY_REISSUE (features 0x48)") != NULL);
	CHECK(strstr(err, "Linux 6.5 or later, or another transport") != NULL);
	CHECK(ublk_check_features(UBLK_F_CMD_IOCTL_ENCODE, err, sizeof(err)) == -EOPNOTSUPP);
	CHECK(strstr(err, "lacks USER_RECOVERY (") != NULL);
}

static void test_cpus(void)
{
	cpu_set_t s;
	char buf[64];

	CPU_ZERO(&s);
	ublk_cpus_format(&s, buf, sizeof(buf));
	CHECK(strcmp(buf, "") == 0);
	CPU_SET(0, &s);
	ublk_cpus_format(&s, buf, sizeof(buf));
	CHECK(strcmp(buf, "0") == 0);
	CPU_SET(1, &s);
	CPU_SET(2, &s);
	CPU_SET(5, &s);
	CPU_SET(CPU_SETSIZE - 1, &s);
	ublk_cpus_format(&s, buf, sizeof(buf));
	CHECK(strcmp(buf, "0-2,5,1023") == 0);
	ublk_cpus_format(&s, buf, 4); /* truncated, still a string */
	CHECK(strlen(buf) == 3);
}

int main(void)
{
	test_abi();
	test_prep();
	test_params();
	test_decode();
	test_id();
	test_state();
	test_info();
	test_features();
	test_cpus();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("test_ublk: all checks passed\n");
	return 0;
}
