/*
 * NBD wire format: constants and byte-order helpers. Everything on the wire
 * is big-endian. Defined here rather than taken from <linux/nbd.h>, which
 * covers only the kernel client's subset (and Debian 12's lacks several).
 */
#pragma once

#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#define NBD_MAGIC            0x4e42444d41474943ULL /* "NBDMAGIC" */
#define NBD_IHAVEOPT         0x49484156454F5054ULL /* "IHAVEOPT" */
#define NBD_REP_MAGIC        0x0003e889045565a9ULL
#define NBD_REQUEST_MAGIC    0x25609513u
#define NBD_SIMPLE_MAGIC     0x67446698u
#define NBD_STRUCTURED_MAGIC 0x668e33efu

/* Handshake flags (server) and client flags. */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* Options. */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* Option replies. */
#define NBD_REP_ACK          1
#define NBD_REP_SERVER       2
#define NBD_REP_INFO         3
#define NBD_REP_META_CONTEXT 4
#define NBD_REP_ERR(n)       (0x80000000u + (n))
#define NBD_REP_ERR_UNSUP    NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY   NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID  NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN  NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_TOO_BIG  NBD_REP_ERR(9)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Commands. */
#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

/* Command flags. */
#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Structured reply chunks. */
#define NBD_REPLY_FLAG_DONE         (1u << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        32769
#define NBD_REPLY_TYPE_ERROR_OFFSET 32770

/* base:allocation flags. */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* Errors on the wire. */
#define NBD_EPERM     1
#define NBD_EIO       5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP   95
#define NBD_ESHUTDOWN 108

/* Sizes. */
#define NBD_REQUEST_SIZE       28
#define NBD_SIMPLE_SIZE        16
#define NBD_CHUNK_HDR_SIZE     20
#define NBD_OPT_HDR_SIZE       16
#define NBD_REP_HDR_SIZE       20
#define NBD_MAX_STRING         4096
#define NBD_META_ALLOCATION    "base:allocation"
#define NBD_META_ALLOCATION_ID 1
/* QEMU's contexts (docs/interop/nbd.rst): a backup export's changed chunks, and layers. */
#define NBD_META_DIRTY_PREFIX  "qemu:dirty-bitmap:"
#define NBD_META_DIRTY_ID      2
#define NBD_META_DEPTH         "qemu:allocation-depth"
#define NBD_META_DEPTH_ID      3
#define NBD_STATE_DIRTY        1 /* qemu:dirty-bitmap: the block changed */

/*
 * Fixed-layout messages, as they are on the wire (fields big-endian: fill
 * them with htobe16/32/64). Packed: no padding, any alignment.
 */
struct nbd_request {
	uint32_t magic; /* NBD_REQUEST_MAGIC */
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t length;
} __attribute__((packed));

struct nbd_simple_reply {
	uint32_t magic; /* NBD_SIMPLE_MAGIC */
	uint32_t error;
	uint64_t cookie;
} __attribute__((packed));

struct nbd_chunk {
	uint32_t magic; /* NBD_STRUCTURED_MAGIC */
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint32_t length; /* of what follows this header */
} __attribute__((packed));

/* NBD_REPLY_TYPE_OFFSET_DATA: header, then the data. */
struct nbd_chunk_offset_data {
	struct nbd_chunk h;
	uint64_t offset;
} __attribute__((packed));

/* NBD_REPLY_TYPE_OFFSET_HOLE */
struct nbd_chunk_offset_hole {
	struct nbd_chunk h;
	uint64_t offset;
	uint32_t length;
} __attribute__((packed));

/* NBD_REPLY_TYPE_ERROR with an empty message. */
struct nbd_chunk_error {
	struct nbd_chunk h;
	uint32_t error;
	uint16_t msglen;
} __attribute__((packed));

/* NBD_REPLY_TYPE_BLOCK_STATUS: header, then descriptors. */
struct nbd_chunk_block_status {
	struct nbd_chunk h;
	uint32_t context_id;
} __attribute__((packed));

struct nbd_block_descriptor {
	uint32_t length;
	uint32_t status;
} __attribute__((packed));

struct nbd_option {
	uint64_t magic; /* NBD_IHAVEOPT */
	uint32_t option;
	uint32_t length;
} __attribute__((packed));

struct nbd_option_reply {
	uint64_t magic; /* NBD_REP_MAGIC */
	uint32_t option;
	uint32_t reply;
	uint32_t length;
} __attribute__((packed));

_Static_assert(sizeof(struct nbd_request) == NBD_REQUEST_SIZE, "request");
_Static_assert(sizeof(struct nbd_simple_reply) == NBD_SIMPLE_SIZE, "simple reply");
_Static_assert(sizeof(struct nbd_chunk) == NBD_CHUNK_HDR_SIZE, "chunk header");
_Static_assert(sizeof(struct nbd_chunk_offset_data) == 28, "offset data chunk");
_Static_assert(sizeof(struct nbd_chunk_offset_hole) == 32, "offset hole chunk");
_Static_assert(sizeof(struct nbd_chunk_error) == 26, "error chunk");
_Static_assert(sizeof(struct nbd_chunk_block_status) == 24, "block status chunk");
_Static_assert(sizeof(struct nbd_block_descriptor) == 8, "block descriptor");
_Static_assert(sizeof(struct nbd_option) == NBD_OPT_HDR_SIZE, "option header");
_Static_assert(sizeof(struct nbd_option_reply) == NBD_REP_HDR_SIZE, "option reply header");

static inline void nbd_put16(uint8_t *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, 2);
}
static inline void nbd_put32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}
static inline void nbd_put64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}
static inline uint16_t nbd_get16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return be16toh(v);
}
static inline uint32_t nbd_get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return be32toh(v);
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return be64toh(v);
}

/* The NBD error for a -errno from the checked layer or a backend. */
static inline uint32_t nbd_errno(int err)
{
	switch (-err) {
	case 0:
		return 0;
	case EPERM:
	case EROFS:
		return NBD_EPERM;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}
