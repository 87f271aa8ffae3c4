/* SPDX-License-Identifier: MIT */
/*
 * vu_client: userspace vhost-user-blk frontend. See vu_client.h.
 *
 * Layout of the shared memory (one memfd, one vhost-user region):
 *
 *   mem[0 .. mem_size)   mapped here at `mem`, told to the backend as
 *                        userspace_addr = mem, guest_phys_addr = VU_GPA_BASE.
 *   Each queue takes     desc table | avail ring | used ring | request slots
 *   and the rest is handed out by vu_client_alloc() for I/O buffers.
 *
 * Ring addresses go to the backend as our virtual addresses (SET_VRING_ADDR
 * speaks "QEMU virtual addresses"); descriptor addresses are "guest physical"
 * (VU_GPA_BASE + offset). The two differ on purpose, so a backend that mixes
 * the two address spaces fails loudly instead of working by accident.
 */
#include "vu_client.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- vhost-user wire format --------------------------------------------- */

enum vu_req {
	VU_GET_FEATURES = 1,
	VU_SET_FEATURES = 2,
	VU_SET_OWNER = 3,
	VU_SET_MEM_TABLE = 5,
	VU_SET_VRING_NUM = 8,
	VU_SET_VRING_ADDR = 9,
	VU_SET_VRING_BASE = 10,
	VU_GET_VRING_BASE = 11,
	VU_SET_VRING_KICK = 12,
	VU_SET_VRING_CALL = 13,
	VU_GET_PROTOCOL_FEATURES = 15,
	VU_SET_PROTOCOL_FEATURES = 16,
	VU_GET_QUEUE_NUM = 17,
	VU_SET_VRING_ENABLE = 18,
	VU_GET_CONFIG = 24,
	VU_REQ_MAX_NAMED = 25,
};

#define VU_FLAG_VERSION    0x1u
#define VU_FLAG_VERSION_MASK 0x3u
#define VU_FLAG_REPLY      0x4u
#define VU_FLAG_NEED_REPLY 0x8u

#define VU_CONFIG_MAX 256
#define VU_HDR_SIZE 12u

struct vu_vring_state {
	uint32_t index;
	uint32_t num;
};

struct vu_vring_addr {
	uint32_t index;
	uint32_t flags;
	uint64_t desc;
	uint64_t used;
	uint64_t avail;
	uint64_t log;
};

struct vu_mem_region {
	uint64_t guest_phys_addr;
	uint64_t size;
	uint64_t userspace_addr;
	uint64_t mmap_offset;
};

struct vu_mem_table {
	uint32_t nregions;
	uint32_t padding;
	struct vu_mem_region regions[8];
};

struct vu_config_msg {
	uint32_t offset;
	uint32_t size;
	uint32_t flags;
	uint8_t data[VU_CONFIG_MAX];
};

struct vu_msg {
	uint32_t request;
	uint32_t flags;
	uint32_t size;
	union {
		uint64_t u64;
		struct vu_vring_state state;
		struct vu_vring_addr addr;
		struct vu_mem_table mem;
		struct vu_config_msg config;
	} p;
} __attribute__((packed));

_Static_assert(sizeof(struct vu_vring_addr) == 40, "vring_addr layout");
_Static_assert(sizeof(struct vu_mem_region) == 32, "mem region layout");
_Static_assert(offsetof(struct vu_msg, p) == VU_HDR_SIZE, "header layout");

/* ---- virtio split ring and virtio-blk ----------------------------------- */

#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_ID_BYTES 20
#define VU_STATUS_SENTINEL 0xa5 /* not a valid status: "never written" */

struct blk_outhdr {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
};

struct blk_seg {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

/* Per-descriptor-head data the backend reads or writes, in shared memory. */
struct vu_slot {
	struct blk_outhdr hdr;
	struct blk_seg seg;
	uint8_t id[VIRTIO_BLK_ID_BYTES];
	uint8_t status;
	uint8_t pad[64 - 16 - 16 - VIRTIO_BLK_ID_BYTES - 1];
};
_Static_assert(sizeof(struct vu_slot) == 64, "slot size");

#define VU_GPA_BASE 0x100000000ULL /* 4 GiB: "guest physical" of mem[0] */
#define VU_SECTOR 512ULL
#define VU_MAX_QUEUE_SIZE 32768u
#define VU_DEFAULT_REPLY_TIMEOUT_MS 15000

/* ---- objects ------------------------------------------------------------ */

struct vu_client {
	int sock;
	pthread_mutex_t lock;     /* control messages, allocator, queue table */
	char *path;
	struct vu_client_opts opts;
	struct vu_client_info info;
	bool started;
	bool dead;                /* the connection failed; refuse more */
	int memfd;
	uint8_t *mem;
	uint64_t mem_size;
	uint64_t mem_used;
	uint8_t *queue_busy;      /* [max_queues] */
	unsigned int open_queues;
};

struct vu_track {
	void *cookie;
	void *id_dst;             /* GET_ID: copy the id here on completion */
	uint32_t in_bytes;        /* device-writable bytes, status included */
	uint16_t ndesc;
	uint8_t op;
	uint8_t inflight;
};

struct vu_queue {
	struct vu_client *c;
	unsigned int index;
	unsigned int num;
	unsigned int flags;
	bool event_idx;
	bool broken;
	int kickfd;
	int callfd;
	struct vring_desc *desc;
	uint16_t *avail;          /* flags, idx, ring[num], used_event */
	uint8_t *used;            /* flags, idx, elem[num], avail_event */
	struct vu_slot *slots;    /* [num], indexed by head descriptor */
	struct vu_track *track;   /* [num], private */
	uint16_t *next_free;      /* [num], private free list / chain links */
	uint16_t free_head;
	unsigned int nfree;
	uint16_t avail_shadow;    /* next avail idx we will publish */
	uint16_t avail_published;
	uint16_t last_used;
	unsigned int inflight;
	uint64_t seg_limit;       /* bytes per data descriptor */
	unsigned int max_data_segs;
	struct vu_queue_stats st;
	char err[256];
};

static __thread char vu_tls_err[256];

__attribute__((format(printf, 1, 2)))
static void cerr(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vu_tls_err, sizeof(vu_tls_err), fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 2, 3)))
static void qerr(struct vu_queue *q, const char *fmt, ...)
{
	va_list ap;
	int n;

	n = snprintf(q->err, sizeof(q->err), "queue %u: ", q->index);
	if (n < 0 || (size_t)n >= sizeof(q->err))
		n = 0;
	va_start(ap, fmt);
	vsnprintf(q->err + n, sizeof(q->err) - (size_t)n, fmt, ap);
	va_end(ap);
	snprintf(vu_tls_err, sizeof(vu_tls_err), "%s", q->err);
}

const char *vu_client_errmsg(const struct vu_client *c)
{
	(void)c;
	return vu_tls_err;
}

const char *vu_queue_errmsg(const struct vu_queue *q)
{
	return q->err;
}

static const char *const req_names[VU_REQ_MAX_NAMED] = {
	[VU_GET_FEATURES] = "GET_FEATURES",
	[VU_SET_FEATURES] = "SET_FEATURES",
	[VU_SET_OWNER] = "SET_OWNER",
	[VU_SET_MEM_TABLE] = "SET_MEM_TABLE",
	[VU_SET_VRING_NUM] = "SET_VRING_NUM",
	[VU_SET_VRING_ADDR] = "SET_VRING_ADDR",
	[VU_SET_VRING_BASE] = "SET_VRING_BASE",
	[VU_GET_VRING_BASE] = "GET_VRING_BASE",
	[VU_SET_VRING_KICK] = "SET_VRING_KICK",
	[VU_SET_VRING_CALL] = "SET_VRING_CALL",
	[VU_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
	[VU_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES",
	[VU_GET_QUEUE_NUM] = "GET_QUEUE_NUM",
	[VU_SET_VRING_ENABLE] = "SET_VRING_ENABLE",
	[VU_GET_CONFIG] = "GET_CONFIG",
};

static const char *req_name(uint32_t req)
{
	if (req < VU_REQ_MAX_NAMED && req_names[req])
		return req_names[req];
	return "UNKNOWN";
}

static const char *const blk_feature_names[64] = {
	[VU_BLK_F_SIZE_MAX] = "SIZE_MAX",
	[VU_BLK_F_SEG_MAX] = "SEG_MAX",
	[VU_BLK_F_GEOMETRY] = "GEOMETRY",
	[VU_BLK_F_RO] = "RO",
	[VU_BLK_F_BLK_SIZE] = "BLK_SIZE",
	[VU_BLK_F_FLUSH] = "FLUSH",
	[VU_BLK_F_TOPOLOGY] = "TOPOLOGY",
	[VU_BLK_F_CONFIG_WCE] = "CONFIG_WCE",
	[VU_BLK_F_MQ] = "MQ",
	[VU_BLK_F_DISCARD] = "DISCARD",
	[VU_BLK_F_WRITE_ZEROES] = "WRITE_ZEROES",
	[15] = "LIFETIME",
	[16] = "SECURE_ERASE",
	[17] = "ZONED",
	[VU_F_NOTIFY_ON_EMPTY] = "NOTIFY_ON_EMPTY",
	[27] = "ANY_LAYOUT",
	[VU_F_INDIRECT_DESC] = "INDIRECT_DESC",
	[VU_F_EVENT_IDX] = "EVENT_IDX",
	[VU_F_PROTOCOL_FEATURES] = "PROTOCOL_FEATURES",
	[VU_F_VERSION_1] = "VERSION_1",
	[VU_F_ACCESS_PLATFORM] = "ACCESS_PLATFORM",
	[VU_F_RING_PACKED] = "RING_PACKED",
	[35] = "IN_ORDER",
	[36] = "ORDER_PLATFORM",
	[37] = "SR_IOV",
	[38] = "NOTIFICATION_DATA",
	[40] = "RING_RESET",
};

static const char *const proto_feature_names[64] = {
	[0] = "MQ", [1] = "LOG_SHMFD", [2] = "RARP", [3] = "REPLY_ACK",
	[4] = "MTU", [5] = "BACKEND_REQ", [6] = "CROSS_ENDIAN",
	[7] = "CRYPTO_SESSION", [8] = "PAGEFAULT", [9] = "CONFIG",
	[10] = "BACKEND_SEND_FD", [11] = "HOST_NOTIFIER",
	[12] = "INFLIGHT_SHMFD", [13] = "RESET_DEVICE",
	[14] = "INBAND_NOTIFICATIONS", [15] = "CONFIGURE_MEM_SLOTS",
	[16] = "STATUS",
};

const char *vu_blk_feature_name(unsigned int bit)
{
	return bit < 64 && blk_feature_names[bit] ? blk_feature_names[bit] : NULL;
}

const char *vu_protocol_feature_name(unsigned int bit)
{
	return bit < 64 && proto_feature_names[bit] ? proto_feature_names[bit] : NULL;
}

/* ---- time --------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Remaining ms until deadline (-1: none), never negative. */
static int remaining_ms(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - now_ms();
	if (left < 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* ---- message I/O (call with c->lock held) ------------------------------- */

static void trace_msg(const struct vu_client *c, const char *dir,
		      const struct vu_msg *m, int nfds)
{
	if (!c->opts.trace)
		return;
	fprintf(stderr, "vu_client: %s %s(%u) flags=0x%x size=%u", dir,
		req_name(m->request), m->request, m->flags, m->size);
	switch (m->request) {
	case VU_SET_VRING_NUM:
	case VU_SET_VRING_BASE:
	case VU_GET_VRING_BASE:
	case VU_SET_VRING_ENABLE:
		if (m->size == sizeof(struct vu_vring_state) && !(m->flags & VU_FLAG_REPLY &&
								 m->request != VU_GET_VRING_BASE)) {
			fprintf(stderr, " index=%u num=%u", m->p.state.index,
				m->p.state.num);
			break;
		}
		/* fall through */
	default:
		if (m->size == 8)
			fprintf(stderr, " u64=0x%" PRIx64, m->p.u64);
		break;
	}
	if (nfds)
		fprintf(stderr, " fds=%d", nfds);
	fputc('\n', stderr);
}

static int wait_fd(struct vu_client *c, short events, int64_t deadline,
		   const char *what, uint32_t req)
{
	struct pollfd pfd = { .fd = c->sock, .events = events };
	int r;

	for (;;) {
		r = poll(&pfd, 1, remaining_ms(deadline));
		if (r > 0)
			return 0;
		if (r == 0) {
			cerr("vhost-user %s: no %s from the backend within %d ms",
			     req_name(req), what, VU_DEFAULT_REPLY_TIMEOUT_MS);
			return -ETIMEDOUT;
		}
		if (errno != EINTR) {
			r = -errno;
			cerr("poll on vhost-user socket: %s", strerror(errno));
			return r;
		}
	}
}

static int send_msg(struct vu_client *c, struct vu_msg *m, const int *fds, int nfds)
{
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = m, .iov_len = VU_HDR_SIZE + m->size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	size_t done = 0;
	ssize_t n;

	if (c->dead) {
		cerr("vhost-user connection is down");
		return -EPIPE;
	}
	if (nfds > 0) {
		struct cmsghdr *cm;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, (size_t)nfds * sizeof(int));
	}
	trace_msg(c, "->", m, nfds);
	while (done < iov.iov_len) {
		n = sendmsg(c->sock, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			n = -errno;
			cerr("sending vhost-user %s: %s", req_name(m->request),
			     strerror(errno));
			c->dead = true;
			return (int)n;
		}
		done += (size_t)n;
		iov.iov_base = (char *)m + done;
		iov.iov_len = VU_HDR_SIZE + m->size - done;
		mh.msg_control = NULL; /* fds go with the first byte only */
		mh.msg_controllen = 0;
		if (iov.iov_len == 0)
			break;
	}
	return 0;
}

/* Read exactly len bytes; fds that arrive are closed (we expect none). */
static int recv_all(struct vu_client *c, void *buf, size_t len, int64_t deadline,
		    uint32_t req)
{
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} u;
	size_t done = 0;

	while (done < len) {
		struct iovec iov = { .iov_base = (char *)buf + done,
				     .iov_len = len - done };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		struct cmsghdr *cm;
		ssize_t n;
		int r;

		r = wait_fd(c, POLLIN, deadline, "reply", req);
		if (r < 0)
			return r;
		n = recvmsg(c->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			r = -errno;
			cerr("receiving reply to vhost-user %s: %s", req_name(req),
			     strerror(errno));
			c->dead = true;
			return r;
		}
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
				size_t k, nf = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

				for (k = 0; k < nf; k++) {
					int fd;

					memcpy(&fd, CMSG_DATA(cm) + k * sizeof(int), sizeof(fd));
					close(fd);
				}
			}
		}
		if (n == 0) {
			cerr("backend closed the connection while we waited for the "
			     "reply to %s", req_name(req));
			c->dead = true;
			return -EPIPE;
		}
		done += (size_t)n;
	}
	return 0;
}

/*
 * Receive the reply to `req`. The payload must be exactly `want` bytes
 * (or, if want is 0, anything up to the payload union's size).
 */
static int recv_reply(struct vu_client *c, uint32_t req, struct vu_msg *m,
		      uint32_t want)
{
	int64_t deadline = now_ms() + VU_DEFAULT_REPLY_TIMEOUT_MS;
	int r;

	r = recv_all(c, m, VU_HDR_SIZE, deadline, req);
	if (r < 0)
		return r;
	if (m->request != req) {
		cerr("backend replied with request %u (%s) to %s", m->request,
		     req_name(m->request), req_name(req));
		c->dead = true;
		return -EPROTO;
	}
	if ((m->flags & VU_FLAG_VERSION_MASK) != VU_FLAG_VERSION ||
	    !(m->flags & VU_FLAG_REPLY)) {
		cerr("reply to %s has bad flags 0x%x (want version 1 and REPLY)",
		     req_name(req), m->flags);
		c->dead = true;
		return -EPROTO;
	}
	if (m->size > sizeof(m->p) || (want && m->size != want)) {
		cerr("reply to %s has payload size %u, expected %u", req_name(req),
		     m->size, want);
		c->dead = true;
		return -EPROTO;
	}
	r = recv_all(c, &m->p, m->size, deadline, req);
	if (r < 0)
		return r;
	trace_msg(c, "<-", m, 0);
	return 0;
}

static bool has_proto(const struct vu_client *c, unsigned int bit)
{
	return c->info.protocol & VU_BIT(bit);
}

/*
 * Send a message that has no reply of its own. With REPLY_ACK we ask for an
 * acknowledgement and check it, so a backend that rejects the message is
 * reported at the message that caused it.
 */
static int send_set(struct vu_client *c, uint32_t req, const void *payload,
		    uint32_t size, const int *fds, int nfds)
{
	struct vu_msg m = { .request = req, .flags = VU_FLAG_VERSION, .size = size };
	bool ack = has_proto(c, VU_PROTO_F_REPLY_ACK);
	int r;

	if (size > sizeof(m.p))
		return -EINVAL;
	memcpy(&m.p, payload, size);
	if (ack)
		m.flags |= VU_FLAG_NEED_REPLY;
	r = send_msg(c, &m, fds, nfds);
	if (r < 0 || !ack)
		return r;
	r = recv_reply(c, req, &m, sizeof(uint64_t));
	if (r < 0)
		return r;
	if (m.p.u64 != 0) {
		cerr("backend rejected %s (REPLY_ACK status %" PRIu64 ")",
		     req_name(req), m.p.u64);
		return -EREMOTEIO;
	}
	return 0;
}

static int send_u64(struct vu_client *c, uint32_t req, uint64_t v)
{
	return send_set(c, req, &v, sizeof(v), NULL, 0);
}

static int send_state(struct vu_client *c, uint32_t req, uint32_t index, uint32_t num)
{
	struct vu_vring_state s = { .index = index, .num = num };

	return send_set(c, req, &s, sizeof(s), NULL, 0);
}

/* Request with a reply: send header (+payload), get `want` bytes back. */
static int call(struct vu_client *c, struct vu_msg *m, uint32_t want)
{
	uint32_t req = m->request;
	int r;

	m->flags = VU_FLAG_VERSION;
	r = send_msg(c, m, NULL, 0);
	if (r < 0)
		return r;
	return recv_reply(c, req, m, want);
}

static int get_u64(struct vu_client *c, uint32_t req, uint64_t *out)
{
	struct vu_msg m = { .request = req, .size = 0 };
	int r;

	r = call(c, &m, sizeof(uint64_t));
	if (r == 0)
		*out = m.p.u64;
	return r;
}

/* ---- connect and handshake ---------------------------------------------- */

static int open_socket(const char *path, unsigned int timeout_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int64_t deadline = now_ms() + timeout_ms;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		cerr("socket path too long (max %zu bytes): %s",
		     sizeof(sa.sun_path) - 1, path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	for (;;) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			r = -errno;
			cerr("socket: %s", strerror(errno));
			return r;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		r = -errno;
		close(fd);
		if ((r != -ENOENT && r != -ECONNREFUSED && r != -EAGAIN) ||
		    now_ms() >= deadline) {
			cerr("connect to vhost-user socket %s: %s", path, strerror(-r));
			return r;
		}
		usleep(20 * 1000);
	}
}

static uint32_t rd_le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint16_t rd_le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static uint64_t rd_le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

static void parse_config(struct vu_blk_config *cfg, const uint8_t *b, unsigned int len)
{
	uint8_t raw[96] = { 0 };

	memcpy(raw, b, len < sizeof(raw) ? len : sizeof(raw));
	memset(cfg, 0, sizeof(*cfg));
	cfg->capacity = rd_le64(raw + 0);
	cfg->size_max = rd_le32(raw + 8);
	cfg->seg_max = rd_le32(raw + 12);
	cfg->cylinders = rd_le16(raw + 16);
	cfg->heads = raw[18];
	cfg->sectors = raw[19];
	cfg->blk_size = rd_le32(raw + 20);
	cfg->physical_block_exp = raw[24];
	cfg->alignment_offset = raw[25];
	cfg->min_io_size = rd_le16(raw + 26);
	cfg->opt_io_size = rd_le32(raw + 28);
	cfg->writeback = raw[32];
	cfg->num_queues = rd_le16(raw + 34);
	cfg->max_discard_sectors = rd_le32(raw + 36);
	cfg->max_discard_seg = rd_le32(raw + 40);
	cfg->discard_sector_alignment = rd_le32(raw + 44);
	cfg->max_write_zeroes_sectors = rd_le32(raw + 48);
	cfg->max_write_zeroes_seg = rd_le32(raw + 52);
	cfg->write_zeroes_may_unmap = raw[56];
}

static int get_config_locked(struct vu_client *c)
{
	struct vu_msg m = { .request = VU_GET_CONFIG };
	unsigned int len = c->opts.config_len;
	int r;

	m.size = (uint32_t)(offsetof(struct vu_config_msg, data) + len);
	m.p.config.offset = 0;
	m.p.config.size = len;
	m.p.config.flags = 0;
	r = call(c, &m, m.size);
	if (r < 0)
		return r;
	if (m.p.config.size != len || m.p.config.offset != 0) {
		cerr("GET_CONFIG reply covers offset %u size %u, asked for 0/%u",
		     m.p.config.offset, m.p.config.size, len);
		return -EPROTO;
	}
	parse_config(&c->info.cfg, m.p.config.data, len);
	c->info.config_len = len;
	return 0;
}

int vu_client_refresh_config(struct vu_client *c)
{
	int r;

	pthread_mutex_lock(&c->lock);
	r = get_config_locked(c);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int handshake(struct vu_client *c)
{
	struct vu_client_info *in = &c->info;
	uint64_t want, v;
	int r;

	r = get_u64(c, VU_GET_FEATURES, &in->offered_features);
	if (r < 0)
		return r;
	if (!(in->offered_features & VU_BIT(VU_F_PROTOCOL_FEATURES))) {
		cerr("backend does not offer VHOST_USER_F_PROTOCOL_FEATURES "
		     "(features 0x%" PRIx64 "); GET_CONFIG needs it",
		     in->offered_features);
		return -ENOTSUP;
	}
	if (!(in->offered_features & VU_BIT(VU_F_VERSION_1))) {
		cerr("backend does not offer VIRTIO_F_VERSION_1 (features 0x%" PRIx64
		     "); legacy devices are not supported", in->offered_features);
		return -ENOTSUP;
	}
	want = c->opts.want_features ? c->opts.want_features : VU_BLK_SUPPORTED_FEATURES;
	in->features = (in->offered_features & want & VU_BLK_SUPPORTED_FEATURES) |
		       VU_BIT(VU_F_VERSION_1) | VU_BIT(VU_F_PROTOCOL_FEATURES);

	r = get_u64(c, VU_GET_PROTOCOL_FEATURES, &in->offered_protocol);
	if (r < 0)
		return r;
	if (!(in->offered_protocol & VU_BIT(VU_PROTO_F_CONFIG))) {
		cerr("backend does not offer VHOST_USER_PROTOCOL_F_CONFIG "
		     "(protocol features 0x%" PRIx64 "); cannot read the disk size",
		     in->offered_protocol);
		return -ENOTSUP;
	}
	v = in->offered_protocol & VU_SUPPORTED_PROTOCOL_FEATURES;
	/* REPLY_ACK applies from the moment it is negotiated, so the
	 * SET_PROTOCOL_FEATURES message itself is sent without NEED_REPLY. */
	in->protocol = 0;
	r = send_u64(c, VU_SET_PROTOCOL_FEATURES, v);
	if (r < 0)
		return r;
	in->protocol = v;

	in->max_queues = 1;
	if (has_proto(c, VU_PROTO_F_MQ)) {
		r = get_u64(c, VU_GET_QUEUE_NUM, &v);
		if (r < 0)
			return r;
		if (v == 0 || v > 65535) {
			cerr("backend reports %" PRIu64 " queues (GET_QUEUE_NUM)", v);
			return -EPROTO;
		}
		in->max_queues = (unsigned int)v;
	}

	r = send_set(c, VU_SET_OWNER, NULL, 0, NULL, 0);
	if (r < 0)
		return r;

	r = get_config_locked(c);
	if (r < 0)
		return r;
	/* Without VIRTIO_BLK_F_BLK_SIZE etc. those fields are not valid. */
	if (!(in->features & VU_BIT(VU_BLK_F_BLK_SIZE)))
		in->cfg.blk_size = 512;
	if (!(in->features & VU_BIT(VU_BLK_F_SIZE_MAX)))
		in->cfg.size_max = 0;
	if (!(in->features & VU_BIT(VU_BLK_F_SEG_MAX)))
		in->cfg.seg_max = 0;
	if (!(in->features & VU_BIT(VU_BLK_F_MQ)))
		in->cfg.num_queues = 1;
	if (in->cfg.blk_size < 512 || (in->cfg.blk_size & (in->cfg.blk_size - 1))) {
		cerr("backend config has blk_size %u (not a power of two >= 512)",
		     in->cfg.blk_size);
		return -EPROTO;
	}
	return 0;
}

int vu_client_connect(const char *socket_path, const struct vu_client_opts *opts,
		      struct vu_client **out, char *errbuf, size_t errlen)
{
	struct vu_client *c;
	int r;

	*out = NULL;
	c = calloc(1, sizeof(*c));
	if (!c) {
		cerr("out of memory");
		r = -ENOMEM;
		goto fail;
	}
	c->sock = -1;
	c->memfd = -1;
	if (opts)
		c->opts = *opts;
	if (c->opts.config_len == 0)
		c->opts.config_len = 60;
	if (c->opts.config_len > 96) {
		cerr("config_len %u is larger than virtio_blk_config (96)",
		     c->opts.config_len);
		r = -EINVAL;
		goto fail_free;
	}
	pthread_mutex_init(&c->lock, NULL);
	c->path = strdup(socket_path);
	if (!c->path) {
		r = -ENOMEM;
		goto fail_free;
	}
	r = open_socket(socket_path, c->opts.connect_timeout_ms);
	if (r < 0)
		goto fail_free;
	c->sock = r;
	r = handshake(c);
	if (r < 0)
		goto fail_free;
	c->queue_busy = calloc(c->info.max_queues, 1);
	if (!c->queue_busy) {
		cerr("out of memory");
		r = -ENOMEM;
		goto fail_free;
	}
	*out = c;
	return 0;

fail_free:
	if (c->sock >= 0)
		close(c->sock);
	pthread_mutex_destroy(&c->lock);
	free(c->path);
	free(c);
fail:
	if (errbuf && errlen)
		snprintf(errbuf, errlen, "%s", vu_tls_err);
	return r;
}

const struct vu_client_info *vu_client_info(const struct vu_client *c)
{
	return &c->info;
}

bool vu_client_started(const struct vu_client *c)
{
	return c->started;
}

/* ---- shared memory ------------------------------------------------------ */

int vu_client_start(struct vu_client *c, uint64_t mem_size)
{
	struct vu_mem_table mt = { .nregions = 1 };
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	int r;

	pthread_mutex_lock(&c->lock);
	if (c->started) {
		cerr("vu_client_start called twice");
		r = -EALREADY;
		goto out;
	}
	mem_size = (mem_size + page - 1) & ~(page - 1);
	if (mem_size == 0) {
		cerr("shared memory size must not be 0");
		r = -EINVAL;
		goto out;
	}

	r = send_u64(c, VU_SET_FEATURES, c->info.features);
	if (r < 0)
		goto out;

	c->memfd = memfd_create("vu-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (c->memfd < 0) {
		r = -errno;
		cerr("memfd_create: %s", strerror(errno));
		goto out;
	}
	if (ftruncate(c->memfd, (off_t)mem_size) < 0) {
		r = -errno;
		cerr("ftruncate memfd to %" PRIu64 " bytes: %s", mem_size,
		     strerror(errno));
		goto out_close;
	}
	/* The size is part of what the backend maps: keep it fixed. */
	(void)fcntl(c->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	c->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      c->memfd, 0);
	if (c->mem == MAP_FAILED) {
		r = -errno;
		c->mem = NULL;
		cerr("mmap %" PRIu64 " bytes of shared memory: %s", mem_size,
		     strerror(errno));
		goto out_close;
	}
	c->mem_size = mem_size;
	c->mem_used = 0;

	mt.regions[0].guest_phys_addr = VU_GPA_BASE;
	mt.regions[0].size = mem_size;
	mt.regions[0].userspace_addr = (uint64_t)(uintptr_t)c->mem;
	mt.regions[0].mmap_offset = 0;
	r = send_set(c, VU_SET_MEM_TABLE, &mt,
		     (uint32_t)(offsetof(struct vu_mem_table, regions) +
				sizeof(mt.regions[0])),
		     &c->memfd, 1);
	if (r < 0)
		goto out_unmap;
	c->started = true;
	r = 0;
	goto out;

out_unmap:
	munmap(c->mem, mem_size);
	c->mem = NULL;
	c->mem_size = 0;
out_close:
	close(c->memfd);
	c->memfd = -1;
out:
	pthread_mutex_unlock(&c->lock);
	return r;
}

static void *alloc_locked(struct vu_client *c, size_t size, size_t align)
{
	uint64_t off;

	if (!c->mem || align == 0 || (align & (align - 1)))
		return NULL;
	off = (c->mem_used + align - 1) & ~((uint64_t)align - 1);
	if (off > c->mem_size || size > c->mem_size - off)
		return NULL;
	c->mem_used = off + size;
	return c->mem + off;
}

void *vu_client_alloc(struct vu_client *c, size_t size, size_t align)
{
	void *p;

	pthread_mutex_lock(&c->lock);
	p = alloc_locked(c, size, align);
	if (!p)
		cerr("shared memory exhausted: %zu bytes wanted, %" PRIu64
		     " of %" PRIu64 " free", size,
		     c->mem_size - (c->mem_used < c->mem_size ? c->mem_used : c->mem_size),
		     c->mem_size);
	pthread_mutex_unlock(&c->lock);
	return p;
}

uint64_t vu_client_mem_free(struct vu_client *c)
{
	uint64_t f;

	pthread_mutex_lock(&c->lock);
	f = c->mem_size - c->mem_used;
	pthread_mutex_unlock(&c->lock);
	return f;
}

bool vu_client_mem_contains(const struct vu_client *c, const void *p, size_t len)
{
	uintptr_t a = (uintptr_t)p, base = (uintptr_t)c->mem;

	if (!c->mem || a < base)
		return false;
	return a - base <= c->mem_size && len <= c->mem_size - (a - base);
}

static uint64_t to_gpa(const struct vu_client *c, const void *p)
{
	return VU_GPA_BASE + (uint64_t)((const uint8_t *)p - c->mem);
}

/* ---- queues ------------------------------------------------------------- */

static size_t align_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

struct ring_layout {
	size_t desc, avail, used, slots, total;
};

static void ring_layout(unsigned int num, struct ring_layout *l)
{
	l->desc = 0;
	l->avail = align_up(l->desc + 16u * num, 64);
	l->used = align_up(l->avail + 6u + 2u * num, 4096);
	l->slots = align_up(l->used + 6u + 8u * num, 64);
	l->total = align_up(l->slots + sizeof(struct vu_slot) * num, 4096);
}

size_t vu_queue_mem_size(unsigned int size)
{
	struct ring_layout l;

	ring_layout(size, &l);
	return l.total + 4096; /* alignment slack */
}

static volatile uint16_t *avail_flags(struct vu_queue *q) { return &q->avail[0]; }
static volatile uint16_t *avail_idx(struct vu_queue *q) { return &q->avail[1]; }
static volatile uint16_t *avail_ring(struct vu_queue *q, unsigned int i) { return &q->avail[2 + i]; }
static volatile uint16_t *used_event(struct vu_queue *q) { return &q->avail[2 + q->num]; }
static volatile uint16_t *used_flags(struct vu_queue *q) { return (uint16_t *)(q->used + 0); }
static volatile uint16_t *used_idx(struct vu_queue *q) { return (uint16_t *)(q->used + 2); }
static volatile struct vring_used_elem *used_elem(struct vu_queue *q, unsigned int i)
{
	return (struct vring_used_elem *)(q->used + 4 + 8u * i);
}
static volatile uint16_t *avail_event(struct vu_queue *q) { return (uint16_t *)(q->used + 4 + 8u * q->num); }

static void free_queue(struct vu_queue *q)
{
	if (q->kickfd >= 0)
		close(q->kickfd);
	if (q->callfd >= 0)
		close(q->callfd);
	free(q->track);
	free(q->next_free);
	free(q);
}

int vu_queue_open(struct vu_client *c, unsigned int index, unsigned int size,
		  unsigned int flags, struct vu_queue **out)
{
	struct ring_layout l;
	struct vu_vring_addr addr;
	struct vu_queue *q;
	uint8_t *base;
	uint64_t fdmsg;
	unsigned int i;
	int r;

	*out = NULL;
	if (size < 2 || size > VU_MAX_QUEUE_SIZE || (size & (size - 1))) {
		cerr("queue size %u is not a power of two in 2..%u", size,
		     VU_MAX_QUEUE_SIZE);
		return -EINVAL;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		cerr("out of memory");
		return -ENOMEM;
	}
	q->c = c;
	q->index = index;
	q->num = size;
	q->flags = flags;
	q->kickfd = q->callfd = -1;
	q->track = calloc(size, sizeof(*q->track));
	q->next_free = calloc(size, sizeof(*q->next_free));
	if (!q->track || !q->next_free) {
		cerr("out of memory");
		free_queue(q);
		return -ENOMEM;
	}
	q->kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	q->callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->kickfd < 0 || q->callfd < 0) {
		r = -errno;
		cerr("eventfd: %s", strerror(errno));
		free_queue(q);
		return r;
	}

	pthread_mutex_lock(&c->lock);
	if (!c->started) {
		cerr("vu_queue_open before vu_client_start");
		r = -EINVAL;
		goto fail;
	}
	if (index >= c->info.max_queues) {
		cerr("queue %u does not exist: the backend has %u queue%s", index,
		     c->info.max_queues, c->info.max_queues == 1 ? "" : "s");
		r = -ERANGE;
		goto fail;
	}
	if (c->queue_busy[index]) {
		cerr("queue %u is already in use on this connection", index);
		r = -EBUSY;
		goto fail;
	}
	ring_layout(size, &l);
	base = alloc_locked(c, l.total, 4096);
	if (!base) {
		cerr("shared memory exhausted: queue %u of size %u needs %zu bytes, "
		     "%" PRIu64 " free", index, size, l.total, c->mem_size - c->mem_used);
		r = -ENOMEM;
		goto fail;
	}
	memset(base, 0, l.total);
	q->desc = (struct vring_desc *)(base + l.desc);
	q->avail = (uint16_t *)(base + l.avail);
	q->used = base + l.used;
	q->slots = (struct vu_slot *)(base + l.slots);
	q->event_idx = (c->info.features & VU_BIT(VU_F_EVENT_IDX)) != 0;
	for (i = 0; i < size; i++)
		q->next_free[i] = (uint16_t)(i + 1);
	q->free_head = 0;
	q->nfree = size;

	q->seg_limit = 1ULL << 30;
	if (c->info.cfg.size_max >= 512)
		q->seg_limit = c->info.cfg.size_max & ~511ULL;
	q->max_data_segs = size - 2;
	if (c->info.cfg.seg_max && c->info.cfg.seg_max < q->max_data_segs)
		q->max_data_segs = c->info.cfg.seg_max;

	/* No interrupts until someone waits. */
	if (q->event_idx)
		*used_event(q) = htole16(0xffff);
	else
		*avail_flags(q) = htole16(VRING_AVAIL_F_NO_INTERRUPT);

	r = send_state(c, VU_SET_VRING_NUM, index, size);
	if (r < 0)
		goto fail;
	r = send_state(c, VU_SET_VRING_BASE, index, 0);
	if (r < 0)
		goto fail;
	memset(&addr, 0, sizeof(addr));
	addr.index = index;
	addr.desc = (uint64_t)(uintptr_t)q->desc;
	addr.avail = (uint64_t)(uintptr_t)q->avail;
	addr.used = (uint64_t)(uintptr_t)q->used;
	r = send_set(c, VU_SET_VRING_ADDR, &addr, sizeof(addr), NULL, 0);
	if (r < 0)
		goto fail;
	fdmsg = index;
	r = send_set(c, VU_SET_VRING_CALL, &fdmsg, sizeof(fdmsg), &q->callfd, 1);
	if (r < 0)
		goto fail;
	r = send_set(c, VU_SET_VRING_KICK, &fdmsg, sizeof(fdmsg), &q->kickfd, 1);
	if (r < 0)
		goto fail;
	r = send_state(c, VU_SET_VRING_ENABLE, index, 1);
	if (r < 0)
		goto fail;
	c->queue_busy[index] = 1;
	c->open_queues++;
	pthread_mutex_unlock(&c->lock);
	*out = q;
	return 0;

fail:
	pthread_mutex_unlock(&c->lock);
	free_queue(q);
	return r;
}

int vu_queue_close(struct vu_queue *q)
{
	struct vu_client *c = q->c;
	struct vu_msg m = { .request = VU_GET_VRING_BASE,
			    .size = sizeof(struct vu_vring_state) };
	int r, ret = 0;

	pthread_mutex_lock(&c->lock);
	r = send_state(c, VU_SET_VRING_ENABLE, q->index, 0);
	if (r < 0)
		ret = r;
	m.p.state.index = q->index;
	m.p.state.num = 0;
	r = call(c, &m, sizeof(struct vu_vring_state));
	if (r < 0) {
		if (!ret)
			ret = r;
	} else if (m.p.state.index != q->index) {
		cerr("GET_VRING_BASE reply names queue %u, asked for %u",
		     m.p.state.index, q->index);
		ret = -EPROTO;
	} else if (m.p.state.num != q->avail_published) {
		cerr("backend stopped queue %u at avail index %u, but %u were "
		     "published (%u requests still in flight)", q->index,
		     m.p.state.num, q->avail_published, q->inflight);
		ret = -EPROTO;
	} else if (q->inflight) {
		cerr("queue %u closed with %u requests in flight", q->index,
		     q->inflight);
		ret = -EBUSY;
	}
	c->queue_busy[q->index] = 0;
	c->open_queues--;
	pthread_mutex_unlock(&c->lock);
	free_queue(q);
	return ret;
}

unsigned int vu_queue_inflight(const struct vu_queue *q) { return q->inflight; }
unsigned int vu_queue_index(const struct vu_queue *q) { return q->index; }
unsigned int vu_queue_room(const struct vu_queue *q) { return q->nfree / 3; }

void vu_queue_get_stats(const struct vu_queue *q, struct vu_queue_stats *st)
{
	*st = q->st;
}

/* ---- data path ---------------------------------------------------------- */

static uint16_t desc_alloc(struct vu_queue *q)
{
	uint16_t d = q->free_head;

	q->free_head = q->next_free[d];
	q->nfree--;
	return d;
}

static void desc_set(struct vu_queue *q, uint16_t d, uint64_t gpa, uint32_t len,
		     uint16_t flags)
{
	q->desc[d].addr = htole64(gpa);
	q->desc[d].len = htole32(len);
	q->desc[d].flags = htole16(flags);
	q->desc[d].next = 0;
}

static int check_req(struct vu_queue *q, const struct vu_blk_req *rq)
{
	const struct vu_client_info *in = &q->c->info;
	uint64_t cap = in->cfg.capacity * VU_SECTOR;
	uint64_t f = in->features;

	switch (rq->op) {
	case VU_BLK_READ:
	case VU_BLK_WRITE:
		if (rq->op == VU_BLK_WRITE && (f & VU_BIT(VU_BLK_F_RO))) {
			qerr(q, "write to a read-only device");
			return -EROFS;
		}
		if (!vu_client_mem_contains(q->c, rq->buf, rq->len)) {
			qerr(q, "I/O buffer %p+%" PRIu64 " is not inside the shared "
			     "memory", rq->buf, rq->len);
			return -EINVAL;
		}
		break;
	case VU_BLK_FLUSH:
		if (!(f & VU_BIT(VU_BLK_F_FLUSH))) {
			qerr(q, "FLUSH was not negotiated");
			return -EOPNOTSUPP;
		}
		return 0;
	case VU_BLK_GET_ID:
		return 0;
	case VU_BLK_DISCARD:
		if (!(f & VU_BIT(VU_BLK_F_DISCARD))) {
			qerr(q, "DISCARD was not negotiated");
			return -EOPNOTSUPP;
		}
		if (in->cfg.max_discard_sectors &&
		    rq->len / VU_SECTOR > in->cfg.max_discard_sectors) {
			qerr(q, "discard of %" PRIu64 " sectors exceeds "
			     "max_discard_sectors %u", (uint64_t)(rq->len / VU_SECTOR),
			     in->cfg.max_discard_sectors);
			return -EINVAL;
		}
		break;
	case VU_BLK_WRITE_ZEROES:
		if (!(f & VU_BIT(VU_BLK_F_WRITE_ZEROES))) {
			qerr(q, "WRITE_ZEROES was not negotiated");
			return -EOPNOTSUPP;
		}
		if (in->cfg.max_write_zeroes_sectors &&
		    rq->len / VU_SECTOR > in->cfg.max_write_zeroes_sectors) {
			qerr(q, "write-zeroes of %" PRIu64 " sectors exceeds "
			     "max_write_zeroes_sectors %u", (uint64_t)(rq->len / VU_SECTOR),
			     in->cfg.max_write_zeroes_sectors);
			return -EINVAL;
		}
		break;
	default:
		qerr(q, "unknown request op %d", (int)rq->op);
		return -EINVAL;
	}
	if (rq->len == 0 || rq->len % VU_SECTOR || rq->offset % VU_SECTOR) {
		qerr(q, "offset %" PRIu64 " / length %" PRIu64 " not multiples of "
		     "512 bytes (or length 0)", rq->offset, rq->len);
		return -EINVAL;
	}
	if (rq->offset > cap || rq->len > cap - rq->offset) {
		qerr(q, "range %" PRIu64 "+%" PRIu64 " is beyond the capacity "
		     "(%" PRIu64 " bytes)", rq->offset, rq->len, cap);
		return -EINVAL;
	}
	if ((rq->op == VU_BLK_DISCARD || rq->op == VU_BLK_WRITE_ZEROES) &&
	    rq->len / VU_SECTOR > UINT32_MAX) {
		qerr(q, "a segment holds at most 2^32-1 sectors");
		return -EINVAL;
	}
	return 0;
}

int vu_queue_submit(struct vu_queue *q, const struct vu_blk_req *rq)
{
	struct vu_slot *s;
	struct vu_track *t;
	uint64_t nseg = 0, left, done;
	uint16_t head, prev, d;
	uint32_t type, in_bytes = 1;
	bool data_write = false;
	int r;

	if (q->broken)
		return -EPROTO;
	if (!(rq->flags & VU_REQ_NOCHECK)) {
		r = check_req(q, rq);
		if (r < 0)
			return r;
	}
	switch (rq->op) {
	case VU_BLK_READ:
		type = VIRTIO_BLK_T_IN;
		data_write = true;
		nseg = (rq->len + q->seg_limit - 1) / q->seg_limit;
		break;
	case VU_BLK_WRITE:
		type = VIRTIO_BLK_T_OUT;
		nseg = (rq->len + q->seg_limit - 1) / q->seg_limit;
		break;
	case VU_BLK_FLUSH:
		type = VIRTIO_BLK_T_FLUSH;
		break;
	case VU_BLK_GET_ID:
		type = VIRTIO_BLK_T_GET_ID;
		nseg = 1;
		break;
	case VU_BLK_DISCARD:
		type = VIRTIO_BLK_T_DISCARD;
		nseg = 1;
		break;
	case VU_BLK_WRITE_ZEROES:
		type = VIRTIO_BLK_T_WRITE_ZEROES;
		nseg = 1;
		break;
	default:
		qerr(q, "unknown request op %d", (int)rq->op);
		return -EINVAL;
	}
	if (nseg > q->max_data_segs) {
		qerr(q, "request of %" PRIu64 " bytes needs %" PRIu64 " data "
		     "descriptors of at most %" PRIu64 " bytes; the limit is %u "
		     "(seg_max / queue size)", rq->len, nseg, q->seg_limit,
		     q->max_data_segs);
		return -EINVAL;
	}
	if (q->nfree < nseg + 2)
		return -EAGAIN;

	head = desc_alloc(q);
	s = &q->slots[head];
	t = &q->track[head];
	s->hdr.type = htole32(type);
	s->hdr.ioprio = 0;
	s->hdr.sector = htole64(rq->op == VU_BLK_FLUSH || rq->op == VU_BLK_GET_ID
				? 0 : rq->offset / VU_SECTOR);
	s->status = VU_STATUS_SENTINEL;
	desc_set(q, head, to_gpa(q->c, &s->hdr), sizeof(s->hdr), VRING_DESC_F_NEXT);
	prev = head;

	switch (rq->op) {
	case VU_BLK_READ:
	case VU_BLK_WRITE:
		for (done = 0; done < rq->len; done += left) {
			left = rq->len - done;
			if (left > q->seg_limit)
				left = q->seg_limit;
			d = desc_alloc(q);
			desc_set(q, d, to_gpa(q->c, (uint8_t *)rq->buf + done),
				 (uint32_t)left,
				 VRING_DESC_F_NEXT | (data_write ? VRING_DESC_F_WRITE : 0));
			q->desc[prev].next = htole16(d);
			q->next_free[prev] = d;
			prev = d;
		}
		if (data_write)
			in_bytes += (uint32_t)rq->len;
		break;
	case VU_BLK_GET_ID:
		memset(s->id, 0, sizeof(s->id));
		d = desc_alloc(q);
		desc_set(q, d, to_gpa(q->c, s->id), VIRTIO_BLK_ID_BYTES,
			 VRING_DESC_F_NEXT | VRING_DESC_F_WRITE);
		q->desc[prev].next = htole16(d);
		q->next_free[prev] = d;
		prev = d;
		in_bytes += VIRTIO_BLK_ID_BYTES;
		break;
	case VU_BLK_DISCARD:
	case VU_BLK_WRITE_ZEROES:
		s->seg.sector = htole64(rq->offset / VU_SECTOR);
		s->seg.num_sectors = htole32((uint32_t)(rq->len / VU_SECTOR));
		s->seg.flags = htole32(rq->op == VU_BLK_WRITE_ZEROES &&
				       (rq->flags & VU_REQ_UNMAP) ? 1 : 0);
		d = desc_alloc(q);
		desc_set(q, d, to_gpa(q->c, &s->seg), sizeof(s->seg), VRING_DESC_F_NEXT);
		q->desc[prev].next = htole16(d);
		q->next_free[prev] = d;
		prev = d;
		break;
	default:
		break;
	}
	d = desc_alloc(q);
	desc_set(q, d, to_gpa(q->c, &s->status), 1, VRING_DESC_F_WRITE);
	q->desc[prev].next = htole16(d);
	q->next_free[prev] = d;

	t->cookie = rq->cookie;
	t->id_dst = rq->op == VU_BLK_GET_ID ? rq->buf : NULL;
	t->in_bytes = in_bytes;
	t->ndesc = (uint16_t)(nseg + 2);
	t->op = (uint8_t)rq->op;
	t->inflight = 1;

	*avail_ring(q, q->avail_shadow & (q->num - 1)) = htole16(head);
	q->avail_shadow++;
	q->inflight++;
	q->st.submitted++;
	return 0;
}

int vu_queue_kick(struct vu_queue *q)
{
	uint16_t old = q->avail_published, new = q->avail_shadow;
	bool need;

	if (q->broken)
		return -EPROTO;
	if (old == new)
		return 0;
	__atomic_store_n(avail_idx(q), htole16(new), __ATOMIC_RELEASE);
	q->avail_published = new;
	/* The index store must be visible before we read the backend's
	 * notification state, or we can miss a needed kick. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->event_idx) {
		uint16_t ev = le16toh(*avail_event(q));

		need = (uint16_t)(new - ev - 1) < (uint16_t)(new - old);
	} else {
		need = !(le16toh(*used_flags(q)) & VRING_USED_F_NO_NOTIFY);
	}
	if (!need) {
		q->st.kicks_suppressed++;
		return 0;
	}
	q->st.kicks++;
	for (;;) {
		uint64_t one = 1;
		ssize_t n = write(q->kickfd, &one, sizeof(one));

		if (n == sizeof(one) || (n < 0 && errno == EAGAIN))
			return 0; /* EAGAIN: counter saturated, kick pending */
		if (n < 0 && errno == EINTR)
			continue;
		qerr(q, "kick eventfd write: %s", n < 0 ? strerror(errno) : "short");
		return -EIO;
	}
}

static void release_chain(struct vu_queue *q, uint16_t head, unsigned int ndesc)
{
	uint16_t d = head;
	unsigned int i;

	for (i = 1; i < ndesc; i++)
		d = q->next_free[d];
	/* d is the tail; splice the whole chain onto the free list. */
	q->next_free[d] = q->free_head;
	q->free_head = head;
	q->nfree += ndesc;
}

static int broken(struct vu_queue *q)
{
	q->broken = true;
	return -EPROTO;
}

int vu_queue_reap(struct vu_queue *q, struct vu_blk_cpl *cpl, unsigned int max)
{
	uint16_t idx, pending;
	unsigned int n = 0;

	if (q->broken)
		return -EPROTO;
	idx = le16toh(__atomic_load_n(used_idx(q), __ATOMIC_ACQUIRE));
	pending = (uint16_t)(idx - q->last_used);
	if (pending > q->inflight) {
		qerr(q, "backend moved used->idx from %u to %u (%u entries), but "
		     "only %u requests are in flight", q->last_used, idx, pending,
		     q->inflight);
		return broken(q);
	}
	while (n < max && q->last_used != idx) {
		volatile struct vring_used_elem *e =
			used_elem(q, q->last_used & (q->num - 1));
		uint32_t id = le32toh(e->id), len = le32toh(e->len);
		struct vu_track *t;
		struct vu_blk_cpl *o = &cpl[n];
		uint8_t status;

		if (id >= q->num || !q->track[id].inflight) {
			qerr(q, "backend completed descriptor id %u (used ring slot "
			     "%u), which is %s", id, q->last_used,
			     id >= q->num ? "out of range" : "not in flight");
			return broken(q);
		}
		t = &q->track[id];
		if (len > t->in_bytes) {
			qerr(q, "backend reports %u bytes written for request %u, "
			     "but it only had %u writable bytes", len, id, t->in_bytes);
			return broken(q);
		}
		if (len != t->in_bytes)
			q->st.len_mismatch++;
		status = q->slots[id].status;
		o->cookie = t->cookie;
		o->status = status;
		o->used_len = len;
		switch (status) {
		case VIRTIO_BLK_S_OK:
			o->result = 0;
			if (t->op == VU_BLK_GET_ID && t->id_dst)
				memcpy(t->id_dst, q->slots[id].id, VIRTIO_BLK_ID_BYTES);
			break;
		case VIRTIO_BLK_S_IOERR:
			o->result = -EIO;
			break;
		case VIRTIO_BLK_S_UNSUPP:
			o->result = -EOPNOTSUPP;
			break;
		case VU_STATUS_SENTINEL:
			qerr(q, "backend completed request %u without writing its "
			     "status byte", id);
			o->result = -EPROTO;
			break;
		default:
			qerr(q, "backend returned invalid status %u for request %u",
			     status, id);
			o->result = -EPROTO;
			break;
		}
		t->inflight = 0;
		release_chain(q, (uint16_t)id, t->ndesc);
		q->inflight--;
		q->last_used++;
		q->st.completed++;
		n++;
	}
	return (int)n;
}

static bool has_used(struct vu_queue *q)
{
	return le16toh(__atomic_load_n(used_idx(q), __ATOMIC_ACQUIRE)) != q->last_used;
}

static void enable_cb(struct vu_queue *q)
{
	if (q->event_idx)
		*used_event(q) = htole16(q->last_used);
	else
		*avail_flags(q) = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void disable_cb(struct vu_queue *q)
{
	if (q->event_idx)
		*used_event(q) = htole16((uint16_t)(q->last_used - 1));
	else
		*avail_flags(q) = htole16(VRING_AVAIL_F_NO_INTERRUPT);
}

static int check_conn(struct vu_queue *q, short revents)
{
	if (revents & (POLLHUP | POLLERR | POLLNVAL)) {
		qerr(q, "backend closed the connection with %u requests in flight",
		     q->inflight);
		q->broken = true;
		return -EPIPE;
	}
	return 0;
}

int vu_queue_wait(struct vu_queue *q, int timeout_ms)
{
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct pollfd pfd[2];
	uint64_t spins = 0;
	int r;

	if (q->broken)
		return -EPROTO;
	if (has_used(q))
		return 0;
	q->st.waits++;
	if (q->flags & VU_QUEUE_POLL) {
		for (;;) {
			if (has_used(q))
				return 0;
			if ((++spins & 0xffff) == 0) {
				pfd[0].fd = q->c->sock;
				pfd[0].events = 0;
				if (poll(pfd, 1, 0) > 0 && check_conn(q, pfd[0].revents))
					return -EPIPE;
				if (deadline >= 0 && now_ms() >= deadline)
					goto timeout;
			}
			__builtin_ia32_pause();
		}
	}
	for (;;) {
		enable_cb(q);
		if (has_used(q))
			break;
		pfd[0].fd = q->callfd;
		pfd[0].events = POLLIN;
		pfd[1].fd = q->c->sock;
		pfd[1].events = 0;
		r = poll(pfd, 2, remaining_ms(deadline));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			qerr(q, "poll: %s", strerror(errno));
			disable_cb(q);
			return r;
		}
		if (pfd[0].revents & POLLIN) {
			uint64_t v;

			q->st.wakeups++;
			if (read(q->callfd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
				r = -errno;
				qerr(q, "call eventfd read: %s", strerror(errno));
				disable_cb(q);
				return r;
			}
		}
		if (has_used(q))
			break;
		if (check_conn(q, pfd[1].revents))
			return -EPIPE;
		if (r == 0 && deadline >= 0 && now_ms() >= deadline) {
			disable_cb(q);
			goto timeout;
		}
	}
	disable_cb(q);
	return 0;

timeout:
	qerr(q, "no completion from the backend within %d ms (%u requests in "
	     "flight)", timeout_ms, q->inflight);
	return -ETIMEDOUT;
}

/* ---- teardown ----------------------------------------------------------- */

void vu_client_close(struct vu_client *c)
{
	if (!c)
		return;
	if (c->sock >= 0)
		close(c->sock);
	if (c->mem)
		munmap(c->mem, c->mem_size);
	if (c->memfd >= 0)
		close(c->memfd);
	pthread_mutex_destroy(&c->lock);
	free(c->queue_busy);
	free(c->path);
	free(c);
}
