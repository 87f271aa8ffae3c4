/*
 * genl.c - generic netlink on top of libmnl (see genl.h).
 *
 * libmnl encodes and walks the messages; what is left here is the
 * generic-netlink controller lookup (CTRL_CMD_GETFAMILY), the request/ACK
 * transaction with the kernel's extended-ack text, and policy-checked
 * attribute tables. Every function runs on the calling thread.
 */
#include "lib/genl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define RX_INITIAL (32u * 1024u) /* the kernel's largest dump datagram */
#define RX_MAX     (1024u * 1024u)

/* The controller itself: its id and name are fixed (GENL_ID_CTRL). */
static const struct gw_genl_family genl_ctrl = { .name = "nlctrl",
						 .id = GENL_ID_CTRL,
						 .version = 1 };

/* --- reading attributes ---------------------------------------------------- */

int gw_genl_parse_payload(const void *attrs, size_t len, const enum mnl_attr_data_type *policy,
			  unsigned int maxtype, const struct nlattr **tb)
{
	const struct nlattr *attr; /* the name mnl_attr_for_each_payload() walks with */

	memset(tb, 0, sizeof(*tb) * ((size_t)maxtype + 1));
	if (!attrs || len > INT32_MAX)
		return len ? -EINVAL : 0;
	mnl_attr_for_each_payload(attrs, len)
	{
		uint16_t type = mnl_attr_get_type(attr);

		if (type > maxtype)
			continue;
		if (policy && policy[type] != MNL_TYPE_UNSPEC &&
		    mnl_attr_validate(attr, policy[type]) < 0)
			return -EINVAL;
		tb[type] = attr;
	}
	/* The walk stops at the end (or inside the last attribute's padding),
	 * or at bytes that are no attribute. */
	if ((const char *)attr < (const char *)attrs + len)
		return -EINVAL;
	return 0;
}

int gw_genl_parse(const struct nlmsghdr *nlh, const enum mnl_attr_data_type *policy,
		  unsigned int maxtype, const struct nlattr **tb)
{
	size_t len = mnl_nlmsg_get_payload_len(nlh);

	if (len < GENL_HDRLEN) {
		memset(tb, 0, sizeof(*tb) * ((size_t)maxtype + 1));
		return -EINVAL;
	}
	return gw_genl_parse_payload(mnl_nlmsg_get_payload_offset(nlh, GENL_HDRLEN),
				     len - GENL_HDRLEN, policy, maxtype, tb);
}

int gw_genl_parse_nested(const struct nlattr *nest, const enum mnl_attr_data_type *policy,
			 unsigned int maxtype, const struct nlattr **tb)
{
	return gw_genl_parse_payload(mnl_attr_get_payload(nest), mnl_attr_get_payload_len(nest),
				     policy, maxtype, tb);
}

/* --- building requests ------------------------------------------------------ */

void gw_genl_msg_init(struct gw_genl_msg *m, const struct gw_genl_family *fam, uint8_t cmd,
		      uint16_t flags)
{
	struct genlmsghdr *gh;

	m->err = 0;
	m->open_nests = 0;
	m->nlh = mnl_nlmsg_put_header(m->buf);
	m->nlh->nlmsg_type = fam->id;
	m->nlh->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
	gh = mnl_nlmsg_put_extra_header(m->nlh, sizeof(*gh));
	gh->cmd = cmd;
	gh->version = fam->version;
}

/* Record the first put that did not fit. */
static int put_done(struct gw_genl_msg *m, bool fitted)
{
	if (!fitted && !m->err)
		m->err = -EMSGSIZE;
	return m->err;
}

int gw_genl_put(struct gw_genl_msg *m, uint16_t type, const void *data, size_t len)
{
	if (m->err)
		return m->err;
	return put_done(m, mnl_attr_put_check(m->nlh, sizeof(m->buf), type, len, data));
}

int gw_genl_put_flag(struct gw_genl_msg *m, uint16_t type)
{
	return gw_genl_put(m, type, NULL, 0);
}

int gw_genl_put_u8(struct gw_genl_msg *m, uint16_t type, uint8_t v)
{
	return gw_genl_put(m, type, &v, sizeof(v));
}

int gw_genl_put_u16(struct gw_genl_msg *m, uint16_t type, uint16_t v)
{
	return gw_genl_put(m, type, &v, sizeof(v));
}

int gw_genl_put_u32(struct gw_genl_msg *m, uint16_t type, uint32_t v)
{
	return gw_genl_put(m, type, &v, sizeof(v));
}

int gw_genl_put_u64(struct gw_genl_msg *m, uint16_t type, uint64_t v)
{
	return gw_genl_put(m, type, &v, sizeof(v));
}

int gw_genl_put_str(struct gw_genl_msg *m, uint16_t type, const char *v)
{
	if (m->err)
		return m->err;
	return put_done(m, mnl_attr_put_strz_check(m->nlh, sizeof(m->buf), type, v));
}

struct nlattr *gw_genl_nest_start(struct gw_genl_msg *m, uint16_t type)
{
	struct nlattr *nest;

	if (m->err)
		return NULL;
	nest = mnl_attr_nest_start_check(m->nlh, sizeof(m->buf), type);
	if (!nest) {
		put_done(m, false);
		return NULL;
	}
	m->open_nests++;
	return nest;
}

void gw_genl_nest_end(struct gw_genl_msg *m, struct nlattr *nest)
{
	if (m->err || !nest)
		return;
	if (m->open_nests == 0) {
		m->err = -EINVAL;
		return;
	}
	mnl_attr_nest_end(m->nlh, nest);
	m->open_nests--;
}

/* --- socket ------------------------------------------------------------------ */

void gw_genl_close(struct gw_genl_sock *s)
{
	if (s->nl)
		mnl_socket_close(s->nl);
	s->nl = NULL;
	free(s->rx);
	s->rx = NULL;
	s->rx_cap = 0;
}

int gw_genl_fd(const struct gw_genl_sock *s)
{
	return s->nl ? mnl_socket_get_fd(s->nl) : -1;
}

/*
 * Receive one datagram into s->rx, first growing it to the datagram's size
 * (libmnl would fail a datagram that does not fit with ENOSPC). Returns its
 * length, or -EAGAIN when nonblock and nothing is queued.
 */
static ssize_t genl_recv(struct gw_genl_sock *s, bool nonblock)
{
	int fd = mnl_socket_get_fd(s->nl);
	ssize_t n;

	do
		n = recv(fd, NULL, 0, MSG_PEEK | MSG_TRUNC | (nonblock ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if ((size_t)n > s->rx_cap) {
		void *bigger;

		if ((size_t)n > RX_MAX)
			return -EMSGSIZE;
		bigger = realloc(s->rx, (size_t)n);
		if (!bigger)
			return -ENOMEM;
		s->rx = bigger;
		s->rx_cap = (size_t)n;
	}
	do
		n = mnl_socket_recvfrom(s->nl, s->rx, s->rx_cap);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

/* What a transaction's callbacks share. */
struct txn {
	struct gw_genl_sock *s;
	gw_genl_reply_fn fn;
	void *arg;
	uint16_t type; /* family id of the messages for fn */
	bool dump;
	int fn_err;    /* first error fn returned; fn is not called after one */
	int delivered; /* messages handed to fn */
};

/* A family message: hand it to fn. Never stops the walk, so that a failed
 * callback still reads up to the ACK and leaves the socket clean. */
static int txn_data(const struct nlmsghdr *nlh, void *data)
{
	struct txn *t = data;
	const struct genlmsghdr *gh = mnl_nlmsg_get_payload(nlh);
	int ret;

	if (nlh->nlmsg_type != t->type || t->fn_err || !t->fn)
		return MNL_CB_OK;
	if (mnl_nlmsg_get_payload_len(nlh) < GENL_HDRLEN) {
		t->fn_err = -EBADMSG;
		return MNL_CB_OK;
	}
	ret = t->fn(nlh, gh->cmd, t->arg);
	if (ret < 0)
		t->fn_err = ret;
	t->delivered++;
	return MNL_CB_OK;
}

/* Keep the text of an extended ACK (NLMSGERR_ATTR_MSG), if there is one. */
static void keep_ext_ack(struct gw_genl_sock *s, const struct nlmsghdr *nlh)
{
	static const enum mnl_attr_data_type policy[NLMSGERR_ATTR_MAX + 1] = {
		[NLMSGERR_ATTR_MSG] = MNL_TYPE_NUL_STRING,
	};
	const struct nlattr *tb[NLMSGERR_ATTR_MAX + 1];
	const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
	size_t len = mnl_nlmsg_get_payload_len(nlh), off;

	if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS) || len < sizeof(*e))
		return;
	/* The TLVs follow the request's header (CAPPED) or the whole request. */
	if (nlh->nlmsg_flags & NLM_F_CAPPED)
		off = sizeof(*e);
	else
		off = sizeof(e->error) + NLMSG_ALIGN((size_t)e->msg.nlmsg_len);
	if (off >= len)
		return;
	if (gw_genl_parse_payload((const char *)e + off, len - off, policy, NLMSGERR_ATTR_MAX, tb) <
		    0 ||
	    !tb[NLMSGERR_ATTR_MSG])
		return;
	snprintf(s->ext_msg, sizeof(s->ext_msg), "%s", mnl_attr_get_str(tb[NLMSGERR_ATTR_MSG]));
}

/* NLMSG_ERROR: an ACK ends the transaction, an error fails it. */
static int txn_error(const struct nlmsghdr *nlh, void *data)
{
	struct txn *t = data;
	const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);

	if (mnl_nlmsg_get_payload_len(nlh) < sizeof(e->error)) {
		errno = EBADMSG;
		return MNL_CB_ERROR;
	}
	if (e->error == 0)
		return MNL_CB_STOP;
	keep_ext_ack(t->s, nlh);
	errno = e->error < 0 ? -e->error : e->error;
	return MNL_CB_ERROR;
}

/* NLMSG_DONE: the end of a dump, carrying the dump's error if it failed. */
static int txn_done(const struct nlmsghdr *nlh, void *data)
{
	struct txn *t = data;
	int err = 0;

	if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(err))
		memcpy(&err, mnl_nlmsg_get_payload(nlh), sizeof(err));
	if (err < 0) {
		errno = -err;
		return MNL_CB_ERROR;
	}
	return t->dump ? MNL_CB_STOP : MNL_CB_OK;
}

int gw_genl_request(struct gw_genl_sock *s, struct gw_genl_msg *m, gw_genl_reply_fn fn, void *arg)
{
	/* Control messages without an entry (NOOP, OVERRUN) are skipped. */
	mnl_cb_t ctl[NLMSG_MIN_TYPE] = { [NLMSG_ERROR] = txn_error, [NLMSG_DONE] = txn_done };
	struct txn t = { .s = s, .fn = fn, .arg = arg };
	ssize_t n;
	int ret;

	s->ext_msg[0] = '\0';
	if (m->err)
		return m->err;
	if (m->open_nests)
		return -EINVAL;
	if (++s->seq == 0)
		s->seq = 1; /* 0 would match any reply */
	m->nlh->nlmsg_seq = s->seq;
	t.type = m->nlh->nlmsg_type;
	t.dump = (m->nlh->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;

	do
		n = mnl_socket_sendto(s->nl, m->nlh, m->nlh->nlmsg_len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if ((size_t)n != m->nlh->nlmsg_len)
		return -EIO;

	/* libmnl checks each message's port id and sequence number. */
	for (;;) {
		n = genl_recv(s, false);
		if (n < 0)
			return (int)n;
		ret = mnl_cb_run2(s->rx, (size_t)n, s->seq, s->portid, txn_data, &t, ctl,
				  MNL_ARRAY_SIZE(ctl));
		if (ret < 0)
			return -errno;
		if (ret == MNL_CB_STOP)
			return t.fn_err;
	}
}

int gw_genl_recv_event(struct gw_genl_sock *s, gw_genl_reply_fn fn, void *arg)
{
	mnl_cb_t ctl[NLMSG_MIN_TYPE] = { 0 }; /* events carry no control messages */
	struct txn t = { .s = s, .fn = fn, .arg = arg, .type = s->family.id };
	ssize_t n;

	n = genl_recv(s, true);
	if (n < 0)
		return (int)n;
	/* Sequence and port 0: events are not replies to anything. */
	if (mnl_cb_run2(s->rx, (size_t)n, 0, 0, txn_data, &t, ctl, MNL_ARRAY_SIZE(ctl)) < 0)
		return -errno;
	return t.fn_err ? t.fn_err : t.delivered;
}

/* --- family resolution (the controller's CTRL_CMD_GETFAMILY) ----------------- */

static const enum mnl_attr_data_type ctrl_policy[CTRL_ATTR_MAX + 1] = {
	[CTRL_ATTR_FAMILY_ID] = MNL_TYPE_U16,       [CTRL_ATTR_FAMILY_NAME] = MNL_TYPE_NUL_STRING,
	[CTRL_ATTR_VERSION] = MNL_TYPE_U32,         [CTRL_ATTR_MAXATTR] = MNL_TYPE_U32,
	[CTRL_ATTR_MCAST_GROUPS] = MNL_TYPE_NESTED,
};

static const enum mnl_attr_data_type group_policy[CTRL_ATTR_MCAST_GRP_MAX + 1] = {
	[CTRL_ATTR_MCAST_GRP_NAME] = MNL_TYPE_NUL_STRING,
	[CTRL_ATTR_MCAST_GRP_ID] = MNL_TYPE_U32,
};

/* Keep up to GW_GENL_MAX_GROUPS groups; families have one or two. */
static int family_groups(const struct nlattr *groups, struct gw_genl_family *fam)
{
	const struct nlattr *g;

	mnl_attr_for_each_nested(g, groups)
	{
		const struct nlattr *tb[CTRL_ATTR_MCAST_GRP_MAX + 1];
		struct gw_genl_group *out;

		if (gw_genl_parse_nested(g, group_policy, CTRL_ATTR_MCAST_GRP_MAX, tb) < 0 ||
		    !tb[CTRL_ATTR_MCAST_GRP_NAME] || !tb[CTRL_ATTR_MCAST_GRP_ID])
			return -EBADMSG;
		if (fam->n_groups == GW_GENL_MAX_GROUPS)
			continue;
		out = &fam->groups[fam->n_groups++];
		snprintf(out->name, sizeof(out->name), "%s",
			 mnl_attr_get_str(tb[CTRL_ATTR_MCAST_GRP_NAME]));
		out->id = mnl_attr_get_u32(tb[CTRL_ATTR_MCAST_GRP_ID]);
	}
	return 0;
}

static int family_reply(const struct nlmsghdr *nlh, uint8_t cmd, void *arg)
{
	struct gw_genl_family *fam = arg;
	const struct nlattr *tb[CTRL_ATTR_MAX + 1];

	if (cmd != CTRL_CMD_NEWFAMILY)
		return 0;
	if (gw_genl_parse(nlh, ctrl_policy, CTRL_ATTR_MAX, tb) < 0 || !tb[CTRL_ATTR_FAMILY_ID])
		return -EBADMSG;
	fam->id = mnl_attr_get_u16(tb[CTRL_ATTR_FAMILY_ID]);
	if (tb[CTRL_ATTR_FAMILY_NAME])
		snprintf(fam->name, sizeof(fam->name), "%s",
			 mnl_attr_get_str(tb[CTRL_ATTR_FAMILY_NAME]));
	if (tb[CTRL_ATTR_VERSION])
		fam->version = (uint8_t)mnl_attr_get_u32(tb[CTRL_ATTR_VERSION]);
	if (tb[CTRL_ATTR_MAXATTR])
		fam->maxattr = mnl_attr_get_u32(tb[CTRL_ATTR_MAXATTR]);
	if (tb[CTRL_ATTR_MCAST_GROUPS])
		return family_groups(tb[CTRL_ATTR_MCAST_GROUPS], fam);
	return 0;
}

static int family_resolve(struct gw_genl_sock *s, const char *name)
{
	struct gw_genl_msg m;
	int ret;

	memset(&s->family, 0, sizeof(s->family));
	gw_genl_msg_init(&m, &genl_ctrl, CTRL_CMD_GETFAMILY, 0);
	gw_genl_put_str(&m, CTRL_ATTR_FAMILY_NAME, name);
	ret = gw_genl_request(s, &m, family_reply, &s->family);
	if (ret < 0)
		return ret; /* the kernel answers -ENOENT for an unknown family */
	if (s->family.id == 0)
		return -ENOENT;
	if (s->family.name[0] == '\0')
		snprintf(s->family.name, sizeof(s->family.name), "%s", name);
	return 0;
}

int gw_genl_open(struct gw_genl_sock *s, const char *family)
{
	int one = 1, ret;

	memset(s, 0, sizeof(*s));
	if (strlen(family) >= GW_GENL_NAMSIZ)
		return -ENAMETOOLONG;
	s->rx = malloc(RX_INITIAL);
	if (!s->rx)
		return -ENOMEM;
	s->rx_cap = RX_INITIAL;
	s->nl = mnl_socket_open2(NETLINK_GENERIC, SOCK_CLOEXEC);
	if (!s->nl || mnl_socket_bind(s->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		ret = -errno;
		goto fail;
	}
	s->portid = mnl_socket_get_portid(s->nl);
	/* Optional: error text from the kernel, and errors without a copy of
	 * the request. Older kernels lack them; that is fine. */
	(void)mnl_socket_setsockopt(s->nl, NETLINK_EXT_ACK, &one, sizeof(one));
	(void)mnl_socket_setsockopt(s->nl, NETLINK_CAP_ACK, &one, sizeof(one));
	ret = family_resolve(s, family);
	if (ret < 0)
		goto fail;
	return 0;

fail:
	gw_genl_close(s);
	return ret;
}

int gw_genl_group_id(const struct gw_genl_family *fam, const char *name, uint32_t *id)
{
	for (unsigned int i = 0; i < fam->n_groups; i++) {
		if (strcmp(fam->groups[i].name, name) == 0) {
			*id = fam->groups[i].id;
			return 0;
		}
	}
	return -ENOENT;
}

int gw_genl_join_group(struct gw_genl_sock *s, const char *name)
{
	uint32_t id;
	int ret = gw_genl_group_id(&s->family, name, &id);

	if (ret < 0)
		return ret;
	if (mnl_socket_setsockopt(s->nl, NETLINK_ADD_MEMBERSHIP, &id, sizeof(id)) < 0)
		return -errno;
	return 0;
}
