/*
 * genl.c - a small generic-netlink client without libnl (see genl.h).
 *
 * Wire format: struct nlmsghdr, struct genlmsghdr, then attributes, each a
 * 4-byte struct nlattr (whose length counts itself) followed by the payload
 * and padding to 4 bytes.
 */
#include "lib/genl.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/genetlink.h>

#define ALIGN4(x)    (((x) + 3u) & ~(size_t)3u)
#define ATTR_HDRLEN  ALIGN4(sizeof(struct nlattr))
#define GENL_HDRLEN_ ALIGN4(sizeof(struct genlmsghdr))
#define RX_INITIAL   (32u * 1024u)
#define RX_MAX       (1024u * 1024u)

/* --- socket --------------------------------------------------------------- */

int gw_genl_open(struct gw_genl_sock *s)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	socklen_t salen = sizeof(sa);
	int one = 1, err;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->rx = malloc(RX_INITIAL);
	if (!s->rx)
		return -ENOMEM;
	s->rx_cap = RX_INITIAL;

	s->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	if (s->fd < 0)
		goto fail;
	if (bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	if (getsockname(s->fd, (struct sockaddr *)&sa, &salen) < 0)
		goto fail;
	s->portid = sa.nl_pid;
	/* Optional: error text from the kernel, and errors without a copy of
	 * the request. Older kernels lack them; that is fine. */
	(void)setsockopt(s->fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	(void)setsockopt(s->fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	return 0;

fail:
	err = -errno;
	gw_genl_close(s);
	return err;
}

void gw_genl_close(struct gw_genl_sock *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	free(s->rx);
	s->rx = NULL;
	s->rx_cap = 0;
}

int gw_genl_join_group(struct gw_genl_sock *s, uint32_t group)
{
	if (setsockopt(s->fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof(group)) < 0)
		return -errno;
	return 0;
}

/* --- building requests ---------------------------------------------------- */

void gw_genl_msg_init(struct gw_genl_msg *m, uint16_t family, uint8_t cmd, uint8_t version,
		      uint16_t flags)
{
	struct nlmsghdr *nh = (struct nlmsghdr *)m->buf;
	struct genlmsghdr *gh;

	m->err = 0;
	m->depth = 0;
	m->len = NLMSG_HDRLEN + GENL_HDRLEN_;
	memset(m->buf, 0, m->len);
	nh->nlmsg_type = family;
	nh->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
	gh = (struct genlmsghdr *)(m->buf + NLMSG_HDRLEN);
	gh->cmd = cmd;
	gh->version = version;
}

int gw_genl_put(struct gw_genl_msg *m, uint16_t type, const void *data, size_t len)
{
	struct nlattr *a;
	size_t total;

	if (m->err)
		return m->err;
	if (len > UINT16_MAX - ATTR_HDRLEN) {
		m->err = -E2BIG;
		return m->err;
	}
	total = ATTR_HDRLEN + ALIGN4(len);
	if (total > sizeof(m->buf) - m->len) {
		m->err = -EMSGSIZE;
		return m->err;
	}
	a = (struct nlattr *)(m->buf + m->len);
	a->nla_type = type;
	a->nla_len = (uint16_t)(ATTR_HDRLEN + len);
	if (len)
		memcpy(m->buf + m->len + ATTR_HDRLEN, data, len);
	memset(m->buf + m->len + ATTR_HDRLEN + len, 0, ALIGN4(len) - len);
	m->len += total;
	return 0;
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
	return gw_genl_put(m, type, v, strlen(v) + 1);
}

int gw_genl_nest_start(struct gw_genl_msg *m, uint16_t type)
{
	size_t at = m->len;
	int ret;

	if (m->err)
		return m->err;
	if (m->depth >= GW_GENL_MAX_NEST) {
		m->err = -E2BIG;
		return m->err;
	}
	ret = gw_genl_put(m, (uint16_t)(type | NLA_F_NESTED), NULL, 0);
	if (ret)
		return ret;
	m->nest[m->depth++] = at;
	return 0;
}

int gw_genl_nest_end(struct gw_genl_msg *m)
{
	struct nlattr *a;
	size_t len;

	if (m->err)
		return m->err;
	if (m->depth == 0) {
		m->err = -EINVAL;
		return m->err;
	}
	m->depth--;
	a = (struct nlattr *)(m->buf + m->nest[m->depth]);
	len = m->len - m->nest[m->depth];
	if (len > UINT16_MAX) {
		m->err = -E2BIG;
		return m->err;
	}
	a->nla_len = (uint16_t)len;
	return 0;
}

/* --- parsing -------------------------------------------------------------- */

void gw_genl_iter_init(struct gw_genl_iter *it, const void *attrs, size_t len)
{
	it->p = attrs;
	it->left = attrs ? len : 0;
}

void gw_genl_iter_nested(struct gw_genl_iter *it, const struct nlattr *nest)
{
	gw_genl_iter_init(it, gw_genl_attr_data(nest), gw_genl_attr_len(nest));
}

int gw_genl_iter_next(struct gw_genl_iter *it, const struct nlattr **a)
{
	const struct nlattr *cur;
	size_t step;

	if (it->left < ATTR_HDRLEN) {
		/* trailing bytes shorter than a header are padding at most */
		return it->left == 0 ? 0 : -EINVAL;
	}
	cur = (const struct nlattr *)it->p;
	if (cur->nla_len < ATTR_HDRLEN || cur->nla_len > it->left)
		return -EINVAL;
	step = ALIGN4(cur->nla_len);
	if (step > it->left)
		step = it->left;
	it->p += step;
	it->left -= step;
	*a = cur;
	return 1;
}

int gw_genl_parse(const void *attrs, size_t len, const struct nlattr **tb, unsigned int maxtype)
{
	struct gw_genl_iter it;
	const struct nlattr *a;
	int ret;

	memset(tb, 0, sizeof(*tb) * ((size_t)maxtype + 1));
	gw_genl_iter_init(&it, attrs, len);
	while ((ret = gw_genl_iter_next(&it, &a)) > 0) {
		uint16_t type = gw_genl_attr_type(a);

		if (type <= maxtype)
			tb[type] = a;
	}
	return ret;
}

int gw_genl_parse_nested(const struct nlattr *nest, const struct nlattr **tb, unsigned int maxtype)
{
	return gw_genl_parse(gw_genl_attr_data(nest), gw_genl_attr_len(nest), tb, maxtype);
}

uint16_t gw_genl_attr_type(const struct nlattr *a)
{
	return a->nla_type & NLA_TYPE_MASK;
}

const void *gw_genl_attr_data(const struct nlattr *a)
{
	return (const uint8_t *)a + ATTR_HDRLEN;
}

size_t gw_genl_attr_len(const struct nlattr *a)
{
	return a->nla_len - ATTR_HDRLEN;
}

static int attr_fixed(const struct nlattr *a, void *v, size_t size)
{
	if (gw_genl_attr_len(a) != size)
		return -EINVAL;
	memcpy(v, gw_genl_attr_data(a), size);
	return 0;
}

int gw_genl_attr_u8(const struct nlattr *a, uint8_t *v)
{
	return attr_fixed(a, v, sizeof(*v));
}

int gw_genl_attr_u16(const struct nlattr *a, uint16_t *v)
{
	return attr_fixed(a, v, sizeof(*v));
}

int gw_genl_attr_u32(const struct nlattr *a, uint32_t *v)
{
	return attr_fixed(a, v, sizeof(*v));
}

int gw_genl_attr_u64(const struct nlattr *a, uint64_t *v)
{
	return attr_fixed(a, v, sizeof(*v));
}

int gw_genl_attr_str(const struct nlattr *a, const char **v)
{
	size_t len = gw_genl_attr_len(a);
	const char *s = gw_genl_attr_data(a);

	if (len == 0 || s[len - 1] != '\0')
		return -EINVAL;
	*v = s;
	return 0;
}

/* --- receiving ------------------------------------------------------------ */

/* Receive one datagram into s->rx (growing it to fit). Returns its length. */
static ssize_t genl_recv(struct gw_genl_sock *s, bool nonblock)
{
	int flags = nonblock ? MSG_DONTWAIT : 0;
	ssize_t n;

	for (;;) {
		n = recv(s->fd, NULL, 0, MSG_PEEK | MSG_TRUNC | flags);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if ((size_t)n > s->rx_cap) {
			uint8_t *bigger;

			if ((size_t)n > RX_MAX)
				return -EMSGSIZE;
			bigger = realloc(s->rx, (size_t)n);
			if (!bigger)
				return -ENOMEM;
			s->rx = bigger;
			s->rx_cap = (size_t)n;
		}
		n = recv(s->fd, s->rx, s->rx_cap, flags);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		return n;
	}
}

/* Copy the extended-ack message text (if any) of an NLMSG_ERROR. */
static void parse_ext_ack(struct gw_genl_sock *s, const struct nlmsghdr *nh)
{
	const struct nlmsgerr *e = NLMSG_DATA(nh);
	const struct nlattr *tb[NLMSGERR_ATTR_MAX + 1];
	const uint8_t *end = (const uint8_t *)nh + nh->nlmsg_len;
	const uint8_t *p;
	const char *text;

	if (!(nh->nlmsg_flags & NLM_F_ACK_TLVS))
		return;
	p = (const uint8_t *)&e->msg;
	if (nh->nlmsg_flags & NLM_F_CAPPED)
		p += sizeof(e->msg);
	else
		p += NLMSG_ALIGN(e->msg.nlmsg_len);
	if (p >= end)
		return;
	if (gw_genl_parse(p, (size_t)(end - p), tb, NLMSGERR_ATTR_MAX) < 0)
		return;
	if (tb[NLMSGERR_ATTR_MSG] && gw_genl_attr_str(tb[NLMSGERR_ATTR_MSG], &text) == 0) {
		size_t n = strlen(text);

		if (n >= sizeof(s->ext_msg))
			n = sizeof(s->ext_msg) - 1;
		memcpy(s->ext_msg, text, n);
		s->ext_msg[n] = '\0';
	}
}

/* Hand one family message to fn. */
static int deliver(const struct nlmsghdr *nh, gw_genl_reply_fn fn, void *arg)
{
	const struct genlmsghdr *gh = NLMSG_DATA(nh);
	struct gw_genl_reply r;

	if (nh->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN_)
		return -EBADMSG;
	r.type = nh->nlmsg_type;
	r.cmd = gh->cmd;
	r.version = gh->version;
	r.attrs = (const uint8_t *)gh + GENL_HDRLEN_;
	r.len = nh->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN_;
	return fn ? fn(&r, arg) : 0;
}

int gw_genl_request(struct gw_genl_sock *s, struct gw_genl_msg *m, gw_genl_reply_fn fn, void *arg)
{
	struct nlmsghdr *req = (struct nlmsghdr *)m->buf;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	bool dump;
	int cb_err = 0;
	ssize_t n;

	s->ext_msg[0] = '\0';
	if (m->err)
		return m->err;
	if (m->depth)
		return -EINVAL; /* unclosed nest */
	req->nlmsg_len = (uint32_t)m->len;
	req->nlmsg_seq = ++s->seq;
	req->nlmsg_pid = 0;
	dump = (req->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;

	do {
		n = sendto(s->fd, m->buf, m->len, 0, (struct sockaddr *)&kernel, sizeof(kernel));
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if ((size_t)n != m->len)
		return -EIO;

	for (;;) {
		const struct nlmsghdr *nh;
		size_t left;

		n = genl_recv(s, false);
		if (n < 0)
			return (int)n;
		left = (size_t)n;
		for (nh = (const struct nlmsghdr *)s->rx; NLMSG_OK(nh, left);
		     nh = NLMSG_NEXT(nh, left)) {
			if (nh->nlmsg_seq != req->nlmsg_seq || nh->nlmsg_pid != s->portid)
				continue; /* not ours: stale reply or event */
			if (nh->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(nh);

				if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(int)))
					return -EBADMSG;
				if (e->error) {
					parse_ext_ack(s, nh);
					return e->error < 0 ? e->error : -EPROTO;
				}
				return cb_err; /* ACK */
			}
			if (nh->nlmsg_type == NLMSG_DONE) {
				int err = 0;

				if (nh->nlmsg_len >= NLMSG_LENGTH(sizeof(int)))
					memcpy(&err, NLMSG_DATA(nh), sizeof(err));
				if (err < 0)
					return err;
				if (dump)
					return cb_err;
				continue;
			}
			if (nh->nlmsg_type == NLMSG_NOOP || nh->nlmsg_type == NLMSG_OVERRUN)
				continue;
			if (nh->nlmsg_type != req->nlmsg_type)
				continue;
			if (!cb_err)
				cb_err = deliver(nh, fn, arg);
		}
	}
}

int gw_genl_recv_event(struct gw_genl_sock *s, uint16_t family, bool nonblock, gw_genl_reply_fn fn,
		       void *arg)
{
	const struct nlmsghdr *nh;
	int count = 0;
	size_t left;
	ssize_t n;

	n = genl_recv(s, nonblock);
	if (n < 0)
		return (int)n;
	left = (size_t)n;
	for (nh = (const struct nlmsghdr *)s->rx; NLMSG_OK(nh, left); nh = NLMSG_NEXT(nh, left)) {
		int ret;

		if (nh->nlmsg_type != family)
			continue;
		ret = deliver(nh, fn, arg);
		if (ret < 0)
			return ret;
		count++;
	}
	return count;
}

/* --- family resolution ---------------------------------------------------- */

static void copy_name(char *dst, const char *src)
{
	size_t n = strlen(src);

	if (n >= GW_GENL_NAMSIZ)
		n = GW_GENL_NAMSIZ - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int parse_groups(const struct nlattr *groups, struct gw_genl_family *fam)
{
	struct gw_genl_iter it;
	const struct nlattr *g;
	int ret;

	gw_genl_iter_nested(&it, groups);
	while ((ret = gw_genl_iter_next(&it, &g)) > 0) {
		const struct nlattr *tb[CTRL_ATTR_MCAST_GRP_MAX + 1];
		const char *name;
		uint32_t id;

		if (gw_genl_parse_nested(g, tb, CTRL_ATTR_MCAST_GRP_MAX) < 0)
			return -EBADMSG;
		if (!tb[CTRL_ATTR_MCAST_GRP_NAME] || !tb[CTRL_ATTR_MCAST_GRP_ID] ||
		    gw_genl_attr_str(tb[CTRL_ATTR_MCAST_GRP_NAME], &name) < 0 ||
		    gw_genl_attr_u32(tb[CTRL_ATTR_MCAST_GRP_ID], &id) < 0)
			return -EBADMSG;
		if (fam->n_groups == GW_GENL_MAX_GROUPS)
			continue;
		copy_name(fam->groups[fam->n_groups].name, name);
		fam->groups[fam->n_groups].id = id;
		fam->n_groups++;
	}
	return ret < 0 ? -EBADMSG : 0;
}

static int family_reply(const struct gw_genl_reply *r, void *arg)
{
	struct gw_genl_family *fam = arg;
	const struct nlattr *tb[CTRL_ATTR_MAX + 1];
	const char *name;

	if (r->cmd != CTRL_CMD_NEWFAMILY)
		return 0;
	if (gw_genl_parse(r->attrs, r->len, tb, CTRL_ATTR_MAX) < 0)
		return -EBADMSG;
	if (!tb[CTRL_ATTR_FAMILY_ID] || gw_genl_attr_u16(tb[CTRL_ATTR_FAMILY_ID], &fam->id) < 0)
		return -EBADMSG;
	if (tb[CTRL_ATTR_FAMILY_NAME] && gw_genl_attr_str(tb[CTRL_ATTR_FAMILY_NAME], &name) == 0)
		copy_name(fam->name, name);
	if (tb[CTRL_ATTR_VERSION])
		(void)gw_genl_attr_u32(tb[CTRL_ATTR_VERSION], &fam->version);
	if (tb[CTRL_ATTR_HDRSIZE])
		(void)gw_genl_attr_u32(tb[CTRL_ATTR_HDRSIZE], &fam->hdrsize);
	if (tb[CTRL_ATTR_MAXATTR])
		(void)gw_genl_attr_u32(tb[CTRL_ATTR_MAXATTR], &fam->maxattr);
	if (tb[CTRL_ATTR_MCAST_GROUPS])
		return parse_groups(tb[CTRL_ATTR_MCAST_GROUPS], fam);
	return 0;
}

int gw_genl_family_resolve(struct gw_genl_sock *s, const char *name, struct gw_genl_family *fam)
{
	struct gw_genl_msg m;
	int ret;

	if (strlen(name) >= GW_GENL_NAMSIZ)
		return -ENAMETOOLONG;
	memset(fam, 0, sizeof(*fam));
	gw_genl_msg_init(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, 0);
	gw_genl_put_str(&m, CTRL_ATTR_FAMILY_NAME, name);
	ret = gw_genl_request(s, &m, family_reply, fam);
	if (ret < 0)
		return ret;
	if (fam->id == 0)
		return -ENOENT;
	if (fam->name[0] == '\0')
		copy_name(fam->name, name);
	return 0;
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
