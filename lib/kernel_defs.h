/*
 * Kernel UAPI definitions the project needs that Debian 12's linux-libc-dev
 * (6.1) lacks. Include the kernel's own header first, then this one: every
 * definition is guarded (#ifndef), so a newer linux-libc-dev wins, and each
 * names the kernel version it comes from. Only what is missing goes here;
 * everything else comes from <linux/...> (one source per wire format).
 */
#pragma once

/* ---- <linux/virtio_blk.h> ---- */

/* Linux 6.2: the eMMC-style device lifetime request (virtio 1.2, 5.2.6). */
#ifndef VIRTIO_BLK_T_GET_LIFETIME
#define VIRTIO_BLK_T_GET_LIFETIME 10
#endif

/* ---- ublk (<linux/ublk_cmd.h>); include <sys/ioctl.h> and it first ---- */
#ifdef USER_BLK_DRV_CMD_INC_H
/* Linux 6.5: feature query. */
#ifndef UBLK_CMD_GET_FEATURES
#define UBLK_CMD_GET_FEATURES 0x13
#endif
/* Linux 6.3: GET_DEV_INFO with the char device path (unprivileged devices). */
#ifndef UBLK_CMD_GET_DEV_INFO2
#define UBLK_CMD_GET_DEV_INFO2 0x12
#endif
/* Linux 6.3 (UNPRIVILEGED_DEV), 6.4 (CMD_IOCTL_ENCODE), 6.5 (USER_COPY). */
#ifndef UBLK_F_UNPRIVILEGED_DEV
#define UBLK_F_UNPRIVILEGED_DEV (1ULL << 5)
#endif
#ifndef UBLK_F_CMD_IOCTL_ENCODE
#define UBLK_F_CMD_IOCTL_ENCODE (1ULL << 6)
#endif
#ifndef UBLK_F_USER_COPY
#define UBLK_F_USER_COPY (1ULL << 7)
#endif
/* Linux 6.4: ioctl-encoded command numbers (what the kernel prefers). */
#ifndef UBLK_U_CMD_GET_DEV_INFO
#define UBLK_U_CMD_GET_DEV_INFO _IOR('u', UBLK_CMD_GET_DEV_INFO, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_ADD_DEV      _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_DEL_DEV      _IOWR('u', UBLK_CMD_DEL_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_START_DEV    _IOWR('u', UBLK_CMD_START_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_STOP_DEV     _IOWR('u', UBLK_CMD_STOP_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_SET_PARAMS   _IOWR('u', UBLK_CMD_SET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_PARAMS   _IOR('u', UBLK_CMD_GET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_START_USER_RECOVERY \
	_IOWR('u', UBLK_CMD_START_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_END_USER_RECOVERY _IOWR('u', UBLK_CMD_END_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_IO_FETCH_REQ          _IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ \
	_IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd)
#endif
/* Linux 6.9: DEL_DEV that does not wait for the last close. */
#ifndef UBLK_U_CMD_DEL_DEV_ASYNC
#define UBLK_U_CMD_DEL_DEV_ASYNC _IOR('u', 0x14, struct ublksrv_ctrl_cmd)
#endif
/* Linux 6.4 (its ioctl-encoded number): which CPUs a queue's requests come from. */
#ifndef UBLK_U_CMD_GET_QUEUE_AFFINITY
#define UBLK_U_CMD_GET_QUEUE_AFFINITY \
	_IOR('u', UBLK_CMD_GET_QUEUE_AFFINITY, struct ublksrv_ctrl_cmd)
#endif
/* Linux 6.5. */
#ifndef UBLK_U_CMD_GET_FEATURES
#define UBLK_U_CMD_GET_FEATURES _IOR('u', UBLK_CMD_GET_FEATURES, struct ublksrv_ctrl_cmd)
#endif
#endif /* USER_BLK_DRV_CMD_INC_H */

/* ---- FUSE (<linux/fuse.h>); include it first ---- */
#ifdef _LINUX_FUSE_H
/*
 * Linux 6.14 (FUSE protocol 7.42): FUSE over io_uring.
 * INIT flag, the per-entry header buffer and the SQE128 command.
 */
#ifndef FUSE_OVER_IO_URING
#define FUSE_OVER_IO_URING (1ULL << 41)
#endif
#ifndef FUSE_URING_IN_OUT_HEADER_SZ
#define FUSE_URING_IN_OUT_HEADER_SZ 128
#define FUSE_URING_OP_IN_OUT_SZ     128

struct fuse_uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id; /* echoed in fuse_uring_cmd_req.commit_id */
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct fuse_uring_req_header {
	char in_out[FUSE_URING_IN_OUT_HEADER_SZ]; /* fuse_in_header / fuse_out_header */
	char op_in[FUSE_URING_OP_IN_OUT_SZ];      /* the op's first argument */
	struct fuse_uring_ent_in_out ring_ent_in_out;
};

enum fuse_uring_cmd {
	FUSE_IO_URING_CMD_INVALID = 0,
	FUSE_IO_URING_CMD_REGISTER = 1,
	FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2,
};

struct fuse_uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};
#endif
#endif /* _LINUX_FUSE_H */
