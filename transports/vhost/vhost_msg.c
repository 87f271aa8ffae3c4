/*
 * vhost-user messages on the wire: read a header and its payload from the
 * non-blocking socket (with any file descriptors sent alongside), send
 * replies. Sizes and fd counts are checked per request in vhost_dev.c;
 * here only what keeps the reader safe: the version, a payload that fits,
 * no more than 8 fds, no truncated control data.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/vhost/vhost_internal.h"

static const char *const req_names[VHOST_USER_REQ_MAX] = {
	[VHOST_USER_GET_FEATURES] = "GET_FEATURES",
	[VHOST_USER_SET_FEATURES] = "SET_FEATURES",
	[VHOST_USER_SET_OWNER] = "SET_OWNER",
	[VHOST_USER_RESET_OWNER] = "RESET_OWNER",
	[VHOST_USER_SET_MEM_TABLE] = "SET_MEM_TABLE",
	[VHOST_USER_SET_LOG_BASE] = "SET_LOG_BASE",
	[VHOST_USER_SET_LOG_FD] = "SET_LOG_FD",
	[VHOST_USER_SET_VRING_NUM] = "SET_VRING_NUM",
	[VHOST_USER_SET_VRING_ADDR] = "SET_VRING_ADDR",
	[VHOST_USER_SET_VRING_BASE] = "SET_VRING_BASE",
	[VHOST_USER_GET_VRING_BASE] = "GET_VRING_BASE",
	[VHOST_USER_SET_VRING_KICK] = "SET_VRING_KICK",
	[VHOST_USER_SET_VRING_CALL] = "SET_VRING_CALL",
	[VHOST_USER_SET_VRING_ERR] = "SET_VRING_ERR",
	[VHOST_USER_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
	[VHOST_USER_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES",
	[VHOST_USER_GET_QUEUE_NUM] = "GET_QUEUE_NUM",
	[VHOST_USER_SET_VRING_ENABLE] = "SET_VRING_ENABLE",
	[VHOST_USER_SEND_RARP] = "SEND_RARP",
	[VHOST_USER_NET_SET_MTU] = "NET_SET_MTU",
	[VHOST_USER_SET_BACKEND_REQ_FD] = "SET_BACKEND_REQ_FD",
	[VHOST_USER_IOTLB_MSG] = "IOTLB_MSG",
	[VHOST_USER_SET_VRING_ENDIAN] = "SET_VRING_ENDIAN",
	[VHOST_USER_GET_CONFIG] = "GET_CONFIG",
	[VHOST_USER_SET_CONFIG] = "SET_CONFIG",
	[VHOST_USER_GET_INFLIGHT_FD] = "GET_INFLIGHT_FD",
	[VHOST_USER_SET_INFLIGHT_FD] = "SET_INFLIGHT_FD",
	[VHOST_USER_RESET_DEVICE] = "RESET_DEVICE",
	[VHOST_USER_VRING_KICK] = "VRING_KICK",
	[VHOST_USER_GET_MAX_MEM_SLOTS] = "GET_MAX_MEM_SLOTS",
	[VHOST_USER_ADD_MEM_REG] = "ADD_MEM_REG",
	[VHOST_USER_REM_MEM_REG] = "REM_MEM_REG",
	[VHOST_USER_SET_STATUS] = "SET_STATUS",
	[VHOST_USER_GET_STATUS] = "GET_STATUS",
};

const char *vhost_req_name(uint32_t req)
{
	return req < VHOST_USER_REQ_MAX && req_names[req] ? req_names[req] : "unknown request";
}

void vhost_msg_close_fds(struct vhost_msg *m)
{
	for (unsigned i = 0; i < m->nfds; i++)
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	m->nfds = 0;
}

/* Take the fds of one recvmsg. -EPROTO when there were too many or some were lost. */
static int take_fds(struct vhost_msg *m, struct msghdr *mh)
{
	int rc = 0;

	if (mh->msg_flags & MSG_CTRUNC)
		rc = -EPROTO; /* the kernel dropped descriptors: cannot know what was meant */
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		size_t n;
		int fds[VHOST_USER_MAX_FDS + 1];

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if (n > GW_ARRAY_SIZE(fds))
			n = GW_ARRAY_SIZE(fds);
		memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
		for (size_t i = 0; i < n; i++) {
			if (m->nfds < VHOST_USER_MAX_FDS) {
				m->fds[m->nfds++] = fds[i];
			} else {
				close(fds[i]);
				rc = -EPROTO;
			}
		}
	}
	return rc;
}

int vhost_msg_read(struct vhost_conn *c)
{
	struct vhost_msg *m = &c->msg;
	union {
		char buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS)];
		struct cmsghdr align;
	} ctl;

	for (;;) {
		size_t want;
		struct iovec iov;
		struct msghdr mh;
		ssize_t n;
		int rc;

		if (c->have < VHOST_USER_HDR_SIZE) {
			want = VHOST_USER_HDR_SIZE - c->have;
			iov.iov_base = (uint8_t *)m + c->have;
		} else {
			size_t got = c->have - VHOST_USER_HDR_SIZE;

			if (got == m->size)
				return 1;
			want = m->size - got;
			iov.iov_base = m->payload + got;
		}
		iov.iov_len = want;
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return -errno;
		}
		rc = take_fds(m, &mh);
		if (rc < 0)
			return rc;
		if (n == 0)
			return -EPIPE;
		c->have += (size_t)n;
		if (c->have == VHOST_USER_HDR_SIZE) {
			if ((m->flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION) {
				gw_warn("%s: %s with protocol version %u (only 1 exists)", c->name,
					vhost_req_name(m->request),
					m->flags & VHOST_USER_VERSION_MASK);
				return -EPROTO;
			}
			if (m->size > VHOST_USER_MAX_PAYLOAD) {
				gw_warn("%s: %s with a %u-byte payload (at most %u)", c->name,
					vhost_req_name(m->request), m->size,
					VHOST_USER_MAX_PAYLOAD);
				return -EPROTO;
			}
		}
	}
}

int vhost_msg_reply(struct vhost_conn *c, uint32_t req, const void *payload, uint32_t size, int fd)
{
	struct {
		uint32_t request, flags, size;
		uint8_t payload[VHOST_USER_HDR_SIZE + VHOST_USER_MAX_CONFIG];
	} __attribute__((packed)) out;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov;
	struct msghdr mh;
	ssize_t n;

	if (size > sizeof(out.payload))
		return -EINVAL;
	out.request = req;
	out.flags = VHOST_USER_VERSION | VHOST_USER_REPLY;
	out.size = size;
	memcpy(out.payload, payload, size);
	iov.iov_base = &out;
	iov.iov_len = VHOST_USER_HDR_SIZE + size;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (fd >= 0) {
		struct cmsghdr *cm;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	do {
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* Replies are tiny: a frontend that does not read them has broken the protocol. */
	if ((size_t)n != iov.iov_len)
		return -EPROTO;
	return 0;
}
