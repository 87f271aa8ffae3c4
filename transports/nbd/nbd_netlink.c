/*
 * nbd_netlink.c - kernel NBD client configuration over generic netlink
 * (see nbd_netlink.h).
 */
#include "transports/nbd/nbd_netlink.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

__attribute__((format(printf, 3, 4))) static void set_msg(char *msg, size_t msglen, const char *fmt,
							  ...)
{
	va_list ap;

	if (!msg || msglen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, msglen, fmt, ap);
	va_end(ap);
}

/* ", kernel says: ..." when the kernel attached an extended-ack text. */
static const char *kernel_text(const struct nbd_nl *nl, char *buf, size_t len)
{
	if (nl->sock.ext_msg[0] == '\0')
		return "";
	snprintf(buf, len, " (kernel: %s)", nl->sock.ext_msg);
	return buf;
}

/* Turn a kernel -errno from an NBD command into a sentence for the user. */
static int explain(const struct nbd_nl *nl, int err, const char *what, int index, char *msg,
		   size_t msglen)
{
	char dev[32], kt[GW_GENL_EXTACK_LEN + 16];

	if (index >= 0)
		snprintf(dev, sizeof(dev), "/dev/nbd%d", index);
	else
		snprintf(dev, sizeof(dev), "an NBD device");
	kernel_text(nl, kt, sizeof(kt));
	switch (err) {
	case -EPERM:
	case -EACCES:
		set_msg(msg, msglen, "permission denied: %s needs CAP_SYS_ADMIN (run as root)%s",
			what, kt);
		break;
	case -EBUSY:
		set_msg(msg, msglen, "%s is already in use%s", dev, kt);
		break;
	case -ENOSPC:
	case -EEXIST:
		set_msg(msg, msglen,
			"no free NBD device: all /dev/nbd* are in use and the kernel cannot add one%s",
			kt);
		break;
	case -ENOMEM:
		set_msg(msg, msglen, "the kernel ran out of memory for %s%s", what, kt);
		break;
	case -EBADF:
	case -ENOTSOCK:
		set_msg(msg, msglen, "%s: a socket fd handed to the kernel is not a valid socket%s",
			what, kt);
		break;
	case -EINVAL:
		if (index >= 0 && strcmp(what, "connect") != 0)
			set_msg(msg, msglen,
				"%s of %s failed: no such device, it is going away, or it is not connected over netlink%s",
				what, dev, kt);
		else
			set_msg(msg, msglen,
				"the kernel rejected the NBD %s (invalid argument: check size, block size, socket type, and that several sockets come with CAN_MULTI_CONN; dmesg tells which)%s",
				what, kt);
		break;
	case -ENOENT:
		set_msg(msg, msglen, "the kernel NBD driver is not loaded (modprobe nbd)%s", kt);
		break;
	default:
		set_msg(msg, msglen, "NBD %s of %s failed: %s%s", what, dev, strerror(-err), kt);
		break;
	}
	return err;
}

static int open_common(struct nbd_nl *nl, char *msg, size_t msglen)
{
	int ret;

	memset(nl, 0, sizeof(*nl));
	ret = gw_genl_open(&nl->sock, NBD_GENL_FAMILY_NAME);
	if (ret == -ENOENT) {
		set_msg(msg, msglen,
			"the kernel NBD driver is not loaded: no \"%s\" netlink family (modprobe nbd; CONFIG_BLK_DEV_NBD)",
			NBD_GENL_FAMILY_NAME);
		return ret;
	}
	if (ret < 0) {
		set_msg(msg, msglen, "cannot open the \"%s\" generic netlink family: %s",
			NBD_GENL_FAMILY_NAME, strerror(-ret));
		return ret;
	}
	if (gw_genl_group_id(&nl->sock.family, NBD_GENL_MCAST_GROUP_NAME, &nl->mcast_group) < 0)
		nl->mcast_group = 0;
	return 0;
}

int nbd_nl_open(struct nbd_nl *nl, char *msg, size_t msglen)
{
	return open_common(nl, msg, msglen);
}

void nbd_nl_close(struct nbd_nl *nl)
{
	gw_genl_close(&nl->sock);
}

static void msg_init(struct nbd_nl *nl, struct gw_genl_msg *m, uint8_t cmd)
{
	gw_genl_msg_init(m, &nl->sock.family, cmd, 0);
}

static void put_sockets(struct gw_genl_msg *m, const int *fds, unsigned int n)
{
	struct nlattr *socks = gw_genl_nest_start(m, NBD_ATTR_SOCKETS);

	for (unsigned int i = 0; i < n; i++) {
		struct nlattr *item = gw_genl_nest_start(m, NBD_SOCK_ITEM);

		gw_genl_put_u32(m, NBD_SOCK_FD, (uint32_t)fds[i]);
		gw_genl_nest_end(m, item);
	}
	gw_genl_nest_end(m, socks);
}

static int check_fds(const int *fds, unsigned int n, char *msg, size_t msglen)
{
	if (n == 0 || !fds) {
		set_msg(msg, msglen, "at least one connected socket is needed");
		return -EINVAL;
	}
	if (n > NBD_NL_MAX_SOCKS) {
		set_msg(msg, msglen, "too many sockets (%u, at most %d)", n, NBD_NL_MAX_SOCKS);
		return -EINVAL;
	}
	for (unsigned int i = 0; i < n; i++) {
		if (fds[i] < 0) {
			set_msg(msg, msglen, "socket %u is not an open fd", i);
			return -EBADF;
		}
	}
	return 0;
}

/* The attributes read from the kernel's replies and events, and their types. */
static const enum mnl_attr_data_type nbd_attr_policy[NBD_ATTR_MAX + 1] = {
	[NBD_ATTR_INDEX] = MNL_TYPE_U32,
	[NBD_ATTR_DEVICE_LIST] = MNL_TYPE_NESTED,
};

static const enum mnl_attr_data_type nbd_device_policy[NBD_DEVICE_ATTR_MAX + 1] = {
	[NBD_DEVICE_INDEX] = MNL_TYPE_U32,
	[NBD_DEVICE_CONNECTED] = MNL_TYPE_U8,
};

/* NBD_ATTR_INDEX of a reply or event into *(int64_t *)arg, if present. */
static int index_reply(const struct nlmsghdr *nlh, uint8_t cmd, void *arg)
{
	const struct nlattr *tb[NBD_ATTR_MAX + 1];
	int64_t *index = arg;

	if (gw_genl_parse(nlh, nbd_attr_policy, NBD_ATTR_MAX, tb) < 0)
		return -EBADMSG;
	if (tb[NBD_ATTR_INDEX])
		*index = mnl_attr_get_u32(tb[NBD_ATTR_INDEX]);
	return 0;
}

int nbd_nl_connect(struct nbd_nl *nl, const struct nbd_nl_connect_params *p, uint32_t *index,
		   char *msg, size_t msglen)
{
	struct gw_genl_msg m;
	uint64_t bs = p->block_size ? p->block_size : 512;
	int64_t got = -1;
	int ret;

	ret = check_fds(p->fds, p->n_fds, msg, msglen);
	if (ret < 0)
		return ret;
	if (p->size_bytes == 0) {
		set_msg(msg, msglen, "the export size must not be 0");
		return -EINVAL;
	}
	if (bs < 512 || bs > 4096 || (bs & (bs - 1))) {
		set_msg(msg, msglen, "block size %llu is not a power of two between 512 and 4096",
			(unsigned long long)bs);
		return -EINVAL;
	}
	if (p->n_fds > 1 && !(p->server_flags & NBD_NL_FLAG_CAN_MULTI_CONN)) {
		set_msg(msg, msglen, "%u sockets need a server that offers CAN_MULTI_CONN",
			p->n_fds);
		return -EINVAL;
	}

	msg_init(nl, &m, NBD_CMD_CONNECT);
	if (p->index >= 0)
		gw_genl_put_u32(&m, NBD_ATTR_INDEX, (uint32_t)p->index);
	gw_genl_put_u64(&m, NBD_ATTR_SIZE_BYTES, p->size_bytes);
	gw_genl_put_u64(&m, NBD_ATTR_BLOCK_SIZE_BYTES, bs);
	gw_genl_put_u64(&m, NBD_ATTR_SERVER_FLAGS, p->server_flags);
	if (p->timeout_s)
		gw_genl_put_u64(&m, NBD_ATTR_TIMEOUT, p->timeout_s);
	if (p->dead_conn_timeout_s)
		gw_genl_put_u64(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, p->dead_conn_timeout_s);
	if (p->client_flags)
		gw_genl_put_u64(&m, NBD_ATTR_CLIENT_FLAGS, p->client_flags);
	if (p->backend_id)
		gw_genl_put_str(&m, NBD_ATTR_BACKEND_IDENTIFIER, p->backend_id);
	put_sockets(&m, p->fds, p->n_fds);
	if (m.err) {
		set_msg(msg, msglen, "NBD connect request too large: %s", strerror(-m.err));
		return m.err;
	}

	ret = gw_genl_request(&nl->sock, &m, index_reply, &got);
	if (ret < 0)
		return explain(nl, ret, "connect", p->index, msg, msglen);
	if (got < 0) {
		set_msg(msg, msglen,
			"the kernel accepted the NBD connect but sent no device index");
		return -EPROTO;
	}
	*index = (uint32_t)got;
	return 0;
}

int nbd_nl_disconnect(struct nbd_nl *nl, uint32_t index, char *msg, size_t msglen)
{
	struct gw_genl_msg m;
	int ret;

	msg_init(nl, &m, NBD_CMD_DISCONNECT);
	gw_genl_put_u32(&m, NBD_ATTR_INDEX, index);
	ret = gw_genl_request(&nl->sock, &m, NULL, NULL);
	if (ret < 0)
		return explain(nl, ret, "disconnect", (int)index, msg, msglen);
	return 0;
}

int nbd_nl_reconfigure(struct nbd_nl *nl, const struct nbd_nl_reconfigure_params *p, char *msg,
		       size_t msglen)
{
	struct gw_genl_msg m;
	int ret;

	ret = check_fds(p->fds, p->n_fds, msg, msglen);
	if (ret < 0)
		return ret;
	msg_init(nl, &m, NBD_CMD_RECONFIGURE);
	gw_genl_put_u32(&m, NBD_ATTR_INDEX, p->index);
	if (p->backend_id)
		gw_genl_put_str(&m, NBD_ATTR_BACKEND_IDENTIFIER, p->backend_id);
	if (p->set_timeouts) {
		gw_genl_put_u64(&m, NBD_ATTR_TIMEOUT, p->timeout_s);
		gw_genl_put_u64(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, p->dead_conn_timeout_s);
	}
	put_sockets(&m, p->fds, p->n_fds);
	if (m.err) {
		set_msg(msg, msglen, "NBD reconfigure request too large: %s", strerror(-m.err));
		return m.err;
	}
	ret = gw_genl_request(&nl->sock, &m, NULL, NULL);
	if (ret < 0)
		return explain(nl, ret, "reconfigure", (int)p->index, msg, msglen);
	return 0;
}

struct status_ctx {
	struct nbd_nl_dev_status *devs;
	size_t max;
	size_t n;
};

static int status_reply(const struct nlmsghdr *nlh, uint8_t cmd, void *arg)
{
	struct status_ctx *ctx = arg;
	const struct nlattr *tb[NBD_ATTR_MAX + 1];
	const struct nlattr *item;

	if (gw_genl_parse(nlh, nbd_attr_policy, NBD_ATTR_MAX, tb) < 0)
		return -EBADMSG;
	if (!tb[NBD_ATTR_DEVICE_LIST])
		return 0;
	mnl_attr_for_each_nested(item, tb[NBD_ATTR_DEVICE_LIST])
	{
		const struct nlattr *dtb[NBD_DEVICE_ATTR_MAX + 1];

		if (mnl_attr_get_type(item) != NBD_DEVICE_ITEM)
			continue;
		if (gw_genl_parse_nested(item, nbd_device_policy, NBD_DEVICE_ATTR_MAX, dtb) < 0 ||
		    !dtb[NBD_DEVICE_INDEX])
			return -EBADMSG;
		if (ctx->n < ctx->max) {
			ctx->devs[ctx->n].index = mnl_attr_get_u32(dtb[NBD_DEVICE_INDEX]);
			ctx->devs[ctx->n].connected = dtb[NBD_DEVICE_CONNECTED] &&
						      mnl_attr_get_u8(dtb[NBD_DEVICE_CONNECTED]);
		}
		ctx->n++;
	}
	return 0;
}

int nbd_nl_status(struct nbd_nl *nl, int index, struct nbd_nl_dev_status *devs, size_t max,
		  char *msg, size_t msglen)
{
	struct status_ctx ctx = { .devs = devs, .max = max };
	struct gw_genl_msg m;
	int ret;

	msg_init(nl, &m, NBD_CMD_STATUS);
	if (index >= 0)
		gw_genl_put_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
	ret = gw_genl_request(&nl->sock, &m, status_reply, &ctx);
	if (ret < 0)
		return explain(nl, ret, "status", index, msg, msglen);
	return ctx.n > INT32_MAX ? INT32_MAX : (int)ctx.n;
}

int nbd_nl_monitor_open(struct nbd_nl *nl, char *msg, size_t msglen)
{
	int ret = open_common(nl, msg, msglen);

	if (ret < 0)
		return ret;
	if (nl->mcast_group == 0) {
		set_msg(msg, msglen, "the kernel's nbd family has no \"%s\" multicast group",
			NBD_GENL_MCAST_GROUP_NAME);
		nbd_nl_close(nl);
		return -ENOENT;
	}
	ret = gw_genl_join_group(&nl->sock, NBD_GENL_MCAST_GROUP_NAME);
	if (ret < 0) {
		set_msg(msg, msglen, "cannot join the NBD multicast group: %s", strerror(-ret));
		nbd_nl_close(nl);
		return ret;
	}
	return 0;
}

static int link_dead_event(const struct nlmsghdr *nlh, uint8_t cmd, void *arg)
{
	if (cmd != NBD_CMD_LINK_DEAD)
		return 0;
	return index_reply(nlh, cmd, arg);
}

int nbd_nl_monitor_next(struct nbd_nl *nl, int timeout_ms, uint32_t *index)
{
	struct pollfd pfd = { .fd = gw_genl_fd(&nl->sock), .events = POLLIN };
	int64_t got = -1;
	int ret;

	ret = poll(&pfd, 1, timeout_ms);
	if (ret < 0)
		return errno == EINTR ? 0 : -errno;
	if (ret == 0)
		return 0;
	ret = gw_genl_recv_event(&nl->sock, link_dead_event, &got);
	if (ret == -EAGAIN)
		return 0;
	if (ret < 0)
		return ret;
	if (got < 0)
		return 0;
	*index = (uint32_t)got;
	return 1;
}
