/*
 * vhost-user wire format (docs/interop/vhost-user.rst): a 12-byte header in
 * host byte order, a payload of `size` bytes, file descriptors as
 * SCM_RIGHTS on the same message.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

enum vhost_req {
	VHOST_USER_GET_FEATURES = 1,
	VHOST_USER_SET_FEATURES = 2,
	VHOST_USER_SET_OWNER = 3,
	VHOST_USER_RESET_OWNER = 4,
	VHOST_USER_SET_MEM_TABLE = 5,
	VHOST_USER_SET_LOG_BASE = 6,
	VHOST_USER_SET_LOG_FD = 7,
	VHOST_USER_SET_VRING_NUM = 8,
	VHOST_USER_SET_VRING_ADDR = 9,
	VHOST_USER_SET_VRING_BASE = 10,
	VHOST_USER_GET_VRING_BASE = 11,
	VHOST_USER_SET_VRING_KICK = 12,
	VHOST_USER_SET_VRING_CALL = 13,
	VHOST_USER_SET_VRING_ERR = 14,
	VHOST_USER_GET_PROTOCOL_FEATURES = 15,
	VHOST_USER_SET_PROTOCOL_FEATURES = 16,
	VHOST_USER_GET_QUEUE_NUM = 17,
	VHOST_USER_SET_VRING_ENABLE = 18,
	VHOST_USER_SEND_RARP = 19,
	VHOST_USER_NET_SET_MTU = 20,
	VHOST_USER_SET_BACKEND_REQ_FD = 21,
	VHOST_USER_IOTLB_MSG = 22,
	VHOST_USER_SET_VRING_ENDIAN = 23,
	VHOST_USER_GET_CONFIG = 24,
	VHOST_USER_SET_CONFIG = 25,
	VHOST_USER_GET_INFLIGHT_FD = 31,
	VHOST_USER_SET_INFLIGHT_FD = 32,
	VHOST_USER_RESET_DEVICE = 34,
	VHOST_USER_VRING_KICK = 35,
	VHOST_USER_GET_MAX_MEM_SLOTS = 36,
	VHOST_USER_ADD_MEM_REG = 37,
	VHOST_USER_REM_MEM_REG = 38,
	VHOST_USER_SET_STATUS = 39,
	VHOST_USER_GET_STATUS = 40,
	VHOST_USER_REQ_MAX = 41,
};

#define VHOST_USER_VERSION      0x1u
#define VHOST_USER_VERSION_MASK 0x3u
#define VHOST_USER_REPLY        0x4u
#define VHOST_USER_NEED_REPLY   0x8u

#define VHOST_USER_HDR_SIZE    12u
#define VHOST_USER_MAX_FDS     8u
#define VHOST_USER_MAX_PAYLOAD 512u /* larger than any message we accept */
#define VHOST_USER_MEM_REGIONS 8u   /* SET_MEM_TABLE */
#define VHOST_USER_MAX_CONFIG  256u

/* virtio feature bit 30: the back-end speaks vhost-user protocol features. */
#define VHOST_USER_F_PROTOCOL_FEATURES 30

/* Protocol feature bits. */
#define VHOST_USER_PROTOCOL_F_MQ                  0
#define VHOST_USER_PROTOCOL_F_LOG_SHMFD           1
#define VHOST_USER_PROTOCOL_F_REPLY_ACK           3
#define VHOST_USER_PROTOCOL_F_BACKEND_REQ         5
#define VHOST_USER_PROTOCOL_F_CONFIG              9
#define VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD      12
#define VHOST_USER_PROTOCOL_F_RESET_DEVICE        13
#define VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS 15

/* SET_VRING_KICK/CALL/ERR payload. */
#define VHOST_USER_VRING_IDX_MASK 0xffu
#define VHOST_USER_VRING_NOFD     (1u << 8)

/* SET_VRING_ADDR flags. */
#define VHOST_VRING_F_LOG 1u

struct vhost_vring_state {
	uint32_t index;
	uint32_t num;
};

struct vhost_vring_addr {
	uint32_t index;
	uint32_t flags;
	uint64_t desc;
	uint64_t used;
	uint64_t avail;
	uint64_t log;
};

struct vhost_mem_region {
	uint64_t guest_phys_addr;
	uint64_t memory_size;
	uint64_t userspace_addr;
	uint64_t mmap_offset;
};

struct vhost_mem_table {
	uint32_t nregions;
	uint32_t padding;
	struct vhost_mem_region regions[];
};

struct vhost_mem_single {
	uint64_t padding;
	struct vhost_mem_region region;
};

struct vhost_config_hdr {
	uint32_t offset;
	uint32_t size;
	uint32_t flags;
};

struct vhost_inflight_msg {
	uint64_t mmap_size;
	uint64_t mmap_offset;
	uint16_t num_queues;
	uint16_t queue_size;
};

_Static_assert(sizeof(struct vhost_vring_addr) == 40, "vring addr layout");
_Static_assert(sizeof(struct vhost_mem_region) == 32, "mem region layout");
_Static_assert(sizeof(struct vhost_mem_single) == 40, "single region layout");
_Static_assert(sizeof(struct vhost_config_hdr) == 12, "config header layout");
_Static_assert(sizeof(struct vhost_inflight_msg) == 24, "inflight layout");
