/*
 * ublk control commands: /dev/ublk-control driven through an io_uring
 * created with SQE128 (the 32-byte ublksrv_ctrl_cmd does not fit a plain
 * SQE). liburing 2.3 has no uring_cmd helper, so ublk_prep_cmd() is the one
 * place that fills such an SQE by hand.
 *
 * Thread: a ublk_ctrl is used by one thread at a time. Commands that block
 * (START_DEV, END_USER_RECOVERY, DEL_DEV) run only on a device's control
 * thread (ublk.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "transports/ublk/ublk_internal.h"

void ublk_prep_cmd(struct io_uring_sqe *sqe, int fd, uint32_t op, const void *cmd, size_t len)
{
	/*
	 * The caller zeroed the whole SQE (128 bytes on an SQE128 ring): the
	 * kernel refuses a uring_cmd whose __pad1 or uring_cmd_flags are set.
	 */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->cmd_op = op;
	memcpy(sqe->cmd, cmd, len);
}

int ublk_ctrl_open(struct ublk_ctrl *c)
{
	int rc;

	memset(c, 0, sizeof(*c));
	c->fd = open(UBLK_CONTROL_PATH, O_RDWR | O_CLOEXEC);
	if (c->fd < 0)
		return -errno;
	rc = io_uring_queue_init(4, &c->ring, IORING_SETUP_SQE128);
	if (rc < 0) {
		close(c->fd);
		c->fd = -1;
		return rc;
	}
	c->ring_ok = true;
	return 0;
}

void ublk_ctrl_close(struct ublk_ctrl *c)
{
	if (c->ring_ok)
		io_uring_queue_exit(&c->ring);
	c->ring_ok = false;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

int ublk_ctrl_cmd(struct ublk_ctrl *c, uint32_t op, uint32_t dev_id, void *buf, uint16_t len,
		  uint64_t data0)
{
	struct ublksrv_ctrl_cmd cmd;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	int rc;

	memset(&cmd, 0, sizeof(cmd));
	cmd.dev_id = dev_id;
	cmd.queue_id = (uint16_t)-1;
	cmd.addr = (uint64_t)(uintptr_t)buf;
	cmd.len = len;
	cmd.data[0] = data0;
	sqe = io_uring_get_sqe(&c->ring);
	if (!sqe)
		return -EBUSY;
	memset(sqe, 0, 128);
	ublk_prep_cmd(sqe, c->fd, op, &cmd, sizeof(cmd));
	do {
		rc = io_uring_submit_and_wait(&c->ring, 1);
	} while (rc == -EINTR);
	if (rc < 0)
		return rc;
	do {
		rc = io_uring_wait_cqe(&c->ring, &cqe);
	} while (rc == -EINTR);
	if (rc < 0)
		return rc;
	rc = cqe->res;
	io_uring_cqe_seen(&c->ring, cqe);
	return rc;
}

int ublk_ctrl_features(struct ublk_ctrl *c, uint64_t *features)
{
	*features = 0;
	return ublk_ctrl_cmd(c, UBLK_U_CMD_GET_FEATURES, 0, features, sizeof(*features), 0);
}

int ublk_ctrl_dev_info(struct ublk_ctrl *c, uint32_t dev_id, struct ublksrv_ctrl_dev_info *info)
{
	memset(info, 0, sizeof(*info));
	return ublk_ctrl_cmd(c, UBLK_U_CMD_GET_DEV_INFO, dev_id, info, sizeof(*info), 0);
}

int ublk_ctrl_queue_affinity(struct ublk_ctrl *c, uint32_t dev_id, uint16_t qid, cpu_set_t *cpus)
{
	/* The queue id goes in data[0]; the mask is nr_cpu_ids bits, rounded up to 8 bytes. */
	CPU_ZERO(cpus);
	return ublk_ctrl_cmd(c, UBLK_U_CMD_GET_QUEUE_AFFINITY, dev_id, cpus, sizeof(*cpus), qid);
}
