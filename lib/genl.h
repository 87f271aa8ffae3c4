/*
 * genl.h - a small generic-netlink client without libnl.
 *
 * Resolve a family (and its multicast groups) by name, build a request with
 * attributes and nested attributes, send it and collect the reply messages
 * and the kernel's ACK or -errno. Used for the "nbd" family (kernel NBD
 * client) and the "vdpa" family (VDUSE).
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure; nothing is printed. One gw_genl_sock is for one thread at a time.
 * Use a separate socket for multicast events: a request skips messages that
 * are not its replies.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/netlink.h>

#define GW_GENL_NAMSIZ     16   /* GENL_NAMSIZ: family and group names */
#define GW_GENL_MAX_GROUPS 8    /* multicast groups kept per family */
#define GW_GENL_MAX_NEST   8    /* nesting depth of gw_genl_nest_start() */
#define GW_GENL_MSG_SIZE   4096 /* largest request gw_genl_msg can build */
#define GW_GENL_EXTACK_LEN 160  /* room for the kernel's extended-ack text */

struct gw_genl_sock {
	int fd;
	uint32_t portid; /* our netlink port id, set by the kernel */
	uint32_t seq;    /* sequence number of the last request */
	uint8_t *rx;     /* receive buffer, grown as needed */
	size_t rx_cap;
	/* Text the kernel attached to the last failed request (extended ACK,
	 * NLMSGERR_ATTR_MSG), or "" when it gave none. */
	char ext_msg[GW_GENL_EXTACK_LEN];
};

struct gw_genl_group {
	char name[GW_GENL_NAMSIZ];
	uint32_t id;
};

struct gw_genl_family {
	char name[GW_GENL_NAMSIZ];
	uint16_t id; /* nlmsg_type for requests to this family */
	uint32_t version;
	uint32_t hdrsize;
	uint32_t maxattr;
	unsigned int n_groups;
	struct gw_genl_group groups[GW_GENL_MAX_GROUPS];
};

/*
 * A request under construction. The put functions append attributes; the
 * first failure (buffer full, nesting too deep) is kept in err and makes every
 * later put and gw_genl_request() fail with it, so callers may check once.
 */
struct gw_genl_msg {
	size_t len;
	int err;
	unsigned int depth;
	size_t nest[GW_GENL_MAX_NEST];
	uint8_t buf[GW_GENL_MSG_SIZE] __attribute__((aligned(8)));
};

/* One reply message handed to a gw_genl_reply_fn. */
struct gw_genl_reply {
	uint16_t type; /* nlmsg_type: the family id */
	uint8_t cmd;
	uint8_t version;
	const void *attrs; /* attributes after the genl (and family) header */
	size_t len;
};

/* Called for each reply message; return 0 to go on, or -errno, which
 * gw_genl_request() then returns (after reading the rest of the replies). */
typedef int (*gw_genl_reply_fn)(const struct gw_genl_reply *r, void *arg);

/* Attribute iterator over a run of attributes (a payload or a nest). */
struct gw_genl_iter {
	const uint8_t *p;
	size_t left;
};

/* --- socket ---------------------------------------------------------------- */

int gw_genl_open(struct gw_genl_sock *s);
void gw_genl_close(struct gw_genl_sock *s);

/* Look up family 'name'. -ENOENT when the kernel has no such family (its
 * module is not loaded), -ENAMETOOLONG for an over-long name. */
int gw_genl_family_resolve(struct gw_genl_sock *s, const char *name, struct gw_genl_family *fam);

/* The id of multicast group 'name' of 'fam', or -ENOENT. */
int gw_genl_group_id(const struct gw_genl_family *fam, const char *name, uint32_t *id);

/* Subscribe the socket to a multicast group. */
int gw_genl_join_group(struct gw_genl_sock *s, uint32_t group);

/* --- building requests --------------------------------------------------------- */

/* Start a request for 'family' (an id, or GENL_ID_CTRL). 'flags' are added to
 * NLM_F_REQUEST | NLM_F_ACK, e.g. NLM_F_DUMP. */
void gw_genl_msg_init(struct gw_genl_msg *m, uint16_t family, uint8_t cmd, uint8_t version,
		      uint16_t flags);

int gw_genl_put(struct gw_genl_msg *m, uint16_t type, const void *data, size_t len);
int gw_genl_put_flag(struct gw_genl_msg *m, uint16_t type);
int gw_genl_put_u8(struct gw_genl_msg *m, uint16_t type, uint8_t v);
int gw_genl_put_u16(struct gw_genl_msg *m, uint16_t type, uint16_t v);
int gw_genl_put_u32(struct gw_genl_msg *m, uint16_t type, uint32_t v);
int gw_genl_put_u64(struct gw_genl_msg *m, uint16_t type, uint64_t v);
/* A NUL-terminated string attribute (the NUL is included). */
int gw_genl_put_str(struct gw_genl_msg *m, uint16_t type, const char *v);

/* Open a nested attribute (type | NLA_F_NESTED); close it with nest_end. */
int gw_genl_nest_start(struct gw_genl_msg *m, uint16_t type);
int gw_genl_nest_end(struct gw_genl_msg *m);

/* --- transactions ----------------------------------------------------------------- */

/*
 * Send 'm' and read until the kernel's ACK (or NLMSG_DONE for NLM_F_DUMP),
 * calling 'fn' (may be NULL) for each reply message. Returns 0 on ACK, the
 * kernel's -errno (see s->ext_msg for its text), the first error 'fn'
 * returned, or a local -errno.
 */
int gw_genl_request(struct gw_genl_sock *s, struct gw_genl_msg *m, gw_genl_reply_fn fn, void *arg);

/*
 * Read one datagram of unsolicited messages (multicast events) and call 'fn'
 * for each message of 'family'. With nonblock, returns -EAGAIN when nothing
 * is queued. Returns the number of messages passed to 'fn', or -errno
 * (-ENOBUFS: the socket overflowed and events were lost).
 */
int gw_genl_recv_event(struct gw_genl_sock *s, uint16_t family, bool nonblock, gw_genl_reply_fn fn,
		       void *arg);

/* --- parsing replies ---------------------------------------------------------------- */

/* Index attributes by type: tb[0..maxtype] (zeroed first); types above
 * maxtype are ignored, the last of a repeated type wins. -EINVAL when the
 * attributes are malformed. */
int gw_genl_parse(const void *attrs, size_t len, const struct nlattr **tb, unsigned int maxtype);
int gw_genl_parse_nested(const struct nlattr *nest, const struct nlattr **tb, unsigned int maxtype);

void gw_genl_iter_init(struct gw_genl_iter *it, const void *attrs, size_t len);
void gw_genl_iter_nested(struct gw_genl_iter *it, const struct nlattr *nest);
/* 1 and *a set: next attribute; 0: no more; -EINVAL: malformed. */
int gw_genl_iter_next(struct gw_genl_iter *it, const struct nlattr **a);

uint16_t gw_genl_attr_type(const struct nlattr *a);
const void *gw_genl_attr_data(const struct nlattr *a);
size_t gw_genl_attr_len(const struct nlattr *a);
/* -EINVAL when the payload does not have the expected size (the string
 * getter: when it is not NUL-terminated). */
int gw_genl_attr_u8(const struct nlattr *a, uint8_t *v);
int gw_genl_attr_u16(const struct nlattr *a, uint16_t *v);
int gw_genl_attr_u32(const struct nlattr *a, uint32_t *v);
int gw_genl_attr_u64(const struct nlattr *a, uint64_t *v);
int gw_genl_attr_str(const struct nlattr *a, const char **v);
