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
#include "vu_client_internal.h"

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

__thread char vu_tls_err[256];

void vu_set_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vu_tls_err, sizeof(vu_tls_err), fmt, ap);
	va_end(ap);
}

void vu_queue_set_err(struct vu_queue *q, const char *fmt, ...)
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
	[26] = "LOG_ALL",
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
	[0] = "MQ",
	[1] = "LOG_SHMFD",
	[2] = "RARP",
	[3] = "REPLY_ACK",
	[4] = "MTU",
	[5] = "BACKEND_REQ",
	[6] = "CROSS_ENDIAN",
	[7] = "CRYPTO_SESSION",
	[8] = "PAGEFAULT",
	[9] = "CONFIG",
	[10] = "BACKEND_SEND_FD",
	[11] = "HOST_NOTIFIER",
	[12] = "INFLIGHT_SHMFD",
	[13] = "RESET_DEVICE",
	[14] = "INBAND_NOTIFICATIONS",
	[15] = "CONFIGURE_MEM_SLOTS",
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

/* ---- message I/O (call with c->lock held) ------------------------------- */

static void trace_msg(const struct vu_client *c, const char *dir, const struct vu_msg *m, int nfds)
{
	if (!c->opts.trace)
		return;
	fprintf(stderr, "vu_client: %s %s(%u) flags=0x%x size=%u", dir, req_name(m->request),
		m->request, m->flags, m->size);
	switch (m->request) {
	case VU_SET_VRING_NUM:
	case VU_SET_VRING_BASE:
	case VU_GET_VRING_BASE:
	case VU_SET_VRING_ENABLE:
		if (m->size == sizeof(struct vu_vring_state) &&
		    !(m->flags & VU_FLAG_REPLY && m->request != VU_GET_VRING_BASE)) {
			fprintf(stderr, " index=%u num=%u", m->p.state.index, m->p.state.num);
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

static int wait_fd(struct vu_client *c, short events, int64_t deadline, const char *what,
		   uint32_t req)
{
	struct pollfd pfd = { .fd = c->sock, .events = events };
	int r;

	for (;;) {
		r = poll(&pfd, 1, remaining_ms(deadline));
		if (r > 0)
			return 0;
		if (r == 0) {
			vu_set_err("vhost-user %s: no %s from the backend within %d ms%s",
				   req_name(req), what, VU_DEFAULT_REPLY_TIMEOUT_MS,
				   req == VU_GET_FEATURES
					   ? " (is another frontend connected? a backend "
					     "serves one connection at a time)"
					   : "");
			return -ETIMEDOUT;
		}
		if (errno != EINTR) {
			r = -errno;
			vu_set_err("poll on vhost-user socket: %s", strerror(errno));
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
		vu_set_err("vhost-user connection is down");
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
			vu_set_err("sending vhost-user %s: %s", req_name(m->request),
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
static int recv_all(struct vu_client *c, void *buf, size_t len, int64_t deadline, uint32_t req)
{
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} u;
	size_t done = 0;

	while (done < len) {
		struct iovec iov = { .iov_base = (char *)buf + done, .iov_len = len - done };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
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
			vu_set_err("receiving reply to vhost-user %s: %s", req_name(req),
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
			vu_set_err("backend closed the connection while we waited for the "
				   "reply to %s",
				   req_name(req));
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
static int recv_reply(struct vu_client *c, uint32_t req, struct vu_msg *m, uint32_t want)
{
	int64_t deadline = now_ms() + VU_DEFAULT_REPLY_TIMEOUT_MS;
	int r;

	r = recv_all(c, m, VU_HDR_SIZE, deadline, req);
	if (r < 0)
		return r;
	if (m->request != req) {
		vu_set_err("backend replied with request %u (%s) to %s", m->request,
			   req_name(m->request), req_name(req));
		c->dead = true;
		return -EPROTO;
	}
	if ((m->flags & VU_FLAG_VERSION_MASK) != VU_FLAG_VERSION || !(m->flags & VU_FLAG_REPLY)) {
		vu_set_err("reply to %s has bad flags 0x%x (want version 1 and REPLY)",
			   req_name(req), m->flags);
		c->dead = true;
		return -EPROTO;
	}
	if (m->size > sizeof(m->p) || (want && m->size != want)) {
		vu_set_err("reply to %s has payload size %u, expected %u", req_name(req), m->size,
			   want);
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
static int send_set(struct vu_client *c, uint32_t req, const void *payload, uint32_t size,
		    const int *fds, int nfds)
{
	struct vu_msg m = { .request = req, .flags = VU_FLAG_VERSION, .size = size };
	bool ack = has_proto(c, VU_PROTO_F_REPLY_ACK);
	int r;

	if (size > sizeof(m.p))
		return -EINVAL;
	if (size)
		memcpy(&m.p, payload, size); /* payload may be NULL when size is 0 */
	if (ack)
		m.flags |= VU_FLAG_NEED_REPLY;
	r = send_msg(c, &m, fds, nfds);
	if (r < 0 || !ack)
		return r;
	r = recv_reply(c, req, &m, sizeof(uint64_t));
	if (r < 0)
		return r;
	if (m.p.u64 != 0) {
		vu_set_err("backend rejected %s (REPLY_ACK status %" PRIu64 ")", req_name(req),
			   m.p.u64);
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
		vu_set_err("socket path too long (max %zu bytes): %s", sizeof(sa.sun_path) - 1,
			   path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	for (;;) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			r = -errno;
			vu_set_err("socket: %s", strerror(errno));
			return r;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		r = -errno;
		close(fd);
		if ((r != -ENOENT && r != -ECONNREFUSED && r != -EAGAIN) || now_ms() >= deadline) {
			vu_set_err("connect to vhost-user socket %s: %s", path, strerror(-r));
			return r;
		}
		usleep(20 * 1000);
	}
}

static uint32_t rd_le32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}
static uint16_t rd_le16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return le16toh(v);
}
static uint64_t rd_le64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

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
		vu_set_err("GET_CONFIG reply covers offset %u size %u, asked for 0/%u",
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
		vu_set_err("backend does not offer VHOST_USER_F_PROTOCOL_FEATURES "
			   "(features 0x%" PRIx64 "); GET_CONFIG needs it",
			   in->offered_features);
		return -ENOTSUP;
	}
	if (!(in->offered_features & VU_BIT(VU_F_VERSION_1))) {
		vu_set_err("backend does not offer VIRTIO_F_VERSION_1 (features 0x%" PRIx64
			   "); legacy devices are not supported",
			   in->offered_features);
		return -ENOTSUP;
	}
	want = c->opts.want_features ? c->opts.want_features : VU_BLK_SUPPORTED_FEATURES;
	in->features = (in->offered_features & want & VU_BLK_SUPPORTED_FEATURES) |
		       VU_BIT(VU_F_VERSION_1) | VU_BIT(VU_F_PROTOCOL_FEATURES);

	r = get_u64(c, VU_GET_PROTOCOL_FEATURES, &in->offered_protocol);
	if (r < 0)
		return r;
	if (!(in->offered_protocol & VU_BIT(VU_PROTO_F_CONFIG))) {
		vu_set_err("backend does not offer VHOST_USER_PROTOCOL_F_CONFIG "
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
			vu_set_err("backend reports %" PRIu64 " queues (GET_QUEUE_NUM)", v);
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
		vu_set_err("backend config has blk_size %u (not a power of two >= 512)",
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
		vu_set_err("out of memory");
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
		vu_set_err("config_len %u is larger than virtio_blk_config (96)",
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
		vu_set_err("out of memory");
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
		vu_set_err("vu_client_start called twice");
		r = -EALREADY;
		goto out;
	}
	mem_size = (mem_size + page - 1) & ~(page - 1);
	if (mem_size == 0) {
		vu_set_err("shared memory size must not be 0");
		r = -EINVAL;
		goto out;
	}

	r = send_u64(c, VU_SET_FEATURES, c->info.features);
	if (r < 0)
		goto out;

	c->memfd = memfd_create("vu-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (c->memfd < 0) {
		r = -errno;
		vu_set_err("memfd_create: %s", strerror(errno));
		goto out;
	}
	if (ftruncate(c->memfd, (off_t)mem_size) < 0) {
		r = -errno;
		vu_set_err("ftruncate memfd to %" PRIu64 " bytes: %s", mem_size, strerror(errno));
		goto out_close;
	}
	/* The size is part of what the backend maps: keep it fixed. */
	if (!c->opts.unsealed)
		(void)fcntl(c->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	c->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);
	if (c->mem == MAP_FAILED) {
		r = -errno;
		c->mem = NULL;
		vu_set_err("mmap %" PRIu64 " bytes of shared memory: %s", mem_size,
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
		     (uint32_t)(offsetof(struct vu_mem_table, regions) + sizeof(mt.regions[0])),
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

int vu_client_shrink_memory(struct vu_client *c, const void *from)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), off;
	int r = 0;

	pthread_mutex_lock(&c->lock);
	if (!c->mem || !c->opts.unsealed || (const uint8_t *)from < c->mem ||
	    (off = (uint64_t)((const uint8_t *)from - c->mem)) >= c->mem_size || off % page) {
		vu_set_err(
			"vu_client_shrink_memory: needs an unsealed region and a page inside it");
		r = -EINVAL;
	} else if (ftruncate(c->memfd, (off_t)off) < 0) {
		r = -errno;
		vu_set_err("ftruncate memfd to %" PRIu64 " bytes: %s", off, strerror(errno));
	}
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
		vu_set_err("shared memory exhausted: %zu bytes wanted, %" PRIu64 " of %" PRIu64
			   " free",
			   size,
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

int vu_queue_open(struct vu_client *c, unsigned int index, unsigned int size, unsigned int flags,
		  struct vu_queue **out)
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
		vu_set_err("queue size %u is not a power of two in 2..%u", size, VU_MAX_QUEUE_SIZE);
		return -EINVAL;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		vu_set_err("out of memory");
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
		vu_set_err("out of memory");
		free_queue(q);
		return -ENOMEM;
	}
	q->kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	q->callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->kickfd < 0 || q->callfd < 0) {
		r = -errno;
		vu_set_err("eventfd: %s", strerror(errno));
		free_queue(q);
		return r;
	}

	pthread_mutex_lock(&c->lock);
	if (!c->started) {
		vu_set_err("vu_queue_open before vu_client_start");
		r = -EINVAL;
		goto fail;
	}
	if (index >= c->info.max_queues) {
		vu_set_err("queue %u does not exist: the backend has %u queue%s", index,
			   c->info.max_queues, c->info.max_queues == 1 ? "" : "s");
		r = -ERANGE;
		goto fail;
	}
	if (c->queue_busy[index]) {
		vu_set_err("queue %u is already in use on this connection", index);
		r = -EBUSY;
		goto fail;
	}
	ring_layout(size, &l);
	base = alloc_locked(c, l.total, 4096);
	if (!base) {
		vu_set_err("shared memory exhausted: queue %u of size %u needs %zu bytes, "
			   "%" PRIu64 " free",
			   index, size, l.total, c->mem_size - c->mem_used);
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
	struct vu_msg m = { .request = VU_GET_VRING_BASE, .size = sizeof(struct vu_vring_state) };
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
		vu_set_err("GET_VRING_BASE reply names queue %u, asked for %u", m.p.state.index,
			   q->index);
		ret = -EPROTO;
	} else if (m.p.state.num != q->avail_published) {
		vu_set_err("backend stopped queue %u at avail index %u, but %u were "
			   "published (%u requests still in flight)",
			   q->index, m.p.state.num, q->avail_published, q->inflight);
		ret = -EPROTO;
	} else if (q->inflight) {
		vu_set_err("queue %u closed with %u requests in flight", q->index, q->inflight);
		ret = -EBUSY;
	}
	c->queue_busy[q->index] = 0;
	c->open_queues--;
	pthread_mutex_unlock(&c->lock);
	free_queue(q);
	return ret;
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
