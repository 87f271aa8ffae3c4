/*
 * genl.h - generic netlink on top of libmnl.
 *
 * libmnl (the minimal netlink library of nftables and iproute2) does the
 * wire format: message headers, attribute encoding and nesting, walking and
 * validating attributes, the socket. It has no generic-netlink layer, so
 * this file adds the little that every family's user needs:
 *
 *   - open a socket for a family by name (CTRL_CMD_GETFAMILY: id, version,
 *     multicast groups) and join one of its multicast groups by name;
 *   - build a request whose attribute puts fail once and stickily, so the
 *     caller checks one error at the end instead of every put;
 *   - send it and wait for the kernel's ACK or -errno (with the text of the
 *     kernel's extended ACK), handing each reply message to a callback;
 *   - index a run of attributes by type against a policy, so that reading
 *     them afterwards with libmnl's getters (mnl_attr_get_u32 ...) is safe.
 *
 * The family-specific parts (command and attribute numbers, what they mean)
 * stay with their users: transports/nbd/nbd_netlink.c for "nbd", the VDUSE
 * transport for "vdpa". Callers read attributes with libmnl directly
 * (mnl_attr_get_*, mnl_attr_for_each_nested), so this header includes it.
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure; nothing is printed. One gw_genl_sock is used by one thread at a
 * time (any thread). Use a separate socket for multicast events: a request
 * ignores messages that are not its replies.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libmnl/libmnl.h>
#include <linux/genetlink.h>

#define GW_GENL_NAMSIZ     16   /* GENL_NAMSIZ: family and group names */
#define GW_GENL_MAX_GROUPS 8    /* multicast groups kept per family */
#define GW_GENL_MSG_SIZE   4096 /* largest request a gw_genl_msg holds */
#define GW_GENL_EXTACK_LEN 160  /* room for the kernel's extended-ack text */

struct gw_genl_group {
	char name[GW_GENL_NAMSIZ];
	uint32_t id;
};

/* A family as the kernel's controller ("nlctrl") describes it. */
struct gw_genl_family {
	char name[GW_GENL_NAMSIZ];
	uint16_t id;      /* nlmsg_type of its messages */
	uint8_t version;  /* put into the genl header of requests */
	uint32_t maxattr; /* highest attribute type the kernel accepts */
	unsigned int n_groups;
	struct gw_genl_group groups[GW_GENL_MAX_GROUPS];
};

struct gw_genl_sock {
	struct mnl_socket *nl;
	uint32_t portid;
	uint32_t seq;                 /* sequence number of the last request */
	struct gw_genl_family family; /* resolved by gw_genl_open() */
	void *rx;                     /* receive buffer, grown to fit a datagram */
	size_t rx_cap;
	/* Text the kernel attached to the last failed request (extended ACK,
	 * NLMSGERR_ATTR_MSG), or "" when it gave none. */
	char ext_msg[GW_GENL_EXTACK_LEN];
};

/*
 * A request under construction: a libmnl message in buf. The put functions
 * append attributes; the first failure (no room) is kept in err and makes
 * every later put and gw_genl_request() fail with it.
 */
struct gw_genl_msg {
	struct nlmsghdr *nlh;
	int err;
	unsigned int open_nests; /* nest_start without nest_end yet */
	uint8_t buf[GW_GENL_MSG_SIZE] __attribute__((aligned(8)));
};

/*
 * Called for each reply (or event) message of the family; 'cmd' is its
 * generic-netlink command. Read its attributes with gw_genl_parse(). Return 0
 * to go on, or -errno: gw_genl_request() then reads the remaining replies
 * without calling back and returns that error.
 */
typedef int (*gw_genl_reply_fn)(const struct nlmsghdr *nlh, uint8_t cmd, void *arg);

/* --- socket ------------------------------------------------------------------ */

/*
 * Open a generic netlink socket and resolve 'family' into s->family.
 * -ENOENT when the kernel has no such family (its module is not loaded),
 * -ENAMETOOLONG for a name longer than GENL_NAMSIZ - 1.
 */
int gw_genl_open(struct gw_genl_sock *s, const char *family);
/* Safe on a zeroed or already closed socket. */
void gw_genl_close(struct gw_genl_sock *s);
/* The descriptor to poll for events. */
int gw_genl_fd(const struct gw_genl_sock *s);

/* The id of multicast group 'name' of 'fam', or -ENOENT. */
int gw_genl_group_id(const struct gw_genl_family *fam, const char *name, uint32_t *id);
/* Subscribe the socket to the family's multicast group 'name' (-ENOENT). */
int gw_genl_join_group(struct gw_genl_sock *s, const char *name);

/* --- building requests ------------------------------------------------------- */

/* Start a request of command 'cmd' to 'fam'. 'flags' are added to
 * NLM_F_REQUEST | NLM_F_ACK, e.g. NLM_F_DUMP. */
void gw_genl_msg_init(struct gw_genl_msg *m, const struct gw_genl_family *fam, uint8_t cmd,
		      uint16_t flags);

int gw_genl_put(struct gw_genl_msg *m, uint16_t type, const void *data, size_t len);
int gw_genl_put_flag(struct gw_genl_msg *m, uint16_t type);
int gw_genl_put_u8(struct gw_genl_msg *m, uint16_t type, uint8_t v);
int gw_genl_put_u16(struct gw_genl_msg *m, uint16_t type, uint16_t v);
int gw_genl_put_u32(struct gw_genl_msg *m, uint16_t type, uint32_t v);
int gw_genl_put_u64(struct gw_genl_msg *m, uint16_t type, uint64_t v);
/* A NUL-terminated string attribute (the NUL is included: NLA_NUL_STRING). */
int gw_genl_put_str(struct gw_genl_msg *m, uint16_t type, const char *v);

/* Open a nested attribute (type | NLA_F_NESTED); returns NULL once m->err is
 * set. Close it with gw_genl_nest_end(), which accepts that NULL. */
struct nlattr *gw_genl_nest_start(struct gw_genl_msg *m, uint16_t type);
void gw_genl_nest_end(struct gw_genl_msg *m, struct nlattr *nest);

/* --- transactions ------------------------------------------------------------ */

/*
 * Send 'm' and read until the kernel's ACK (or NLMSG_DONE for NLM_F_DUMP),
 * calling 'fn' (may be NULL) for each reply message of the family. Returns 0
 * on ACK, the kernel's -errno (see s->ext_msg for its text), the first error
 * 'fn' returned, m->err, -EINVAL for an unclosed nest, or a local -errno.
 */
int gw_genl_request(struct gw_genl_sock *s, struct gw_genl_msg *m, gw_genl_reply_fn fn, void *arg);

/*
 * Read one queued datagram of unsolicited messages (multicast events) without
 * blocking and call 'fn' for each message of s->family. Returns the number
 * of messages passed to 'fn', -EAGAIN when nothing is queued, or -errno
 * (-ENOBUFS: the socket overflowed and events were lost).
 */
int gw_genl_recv_event(struct gw_genl_sock *s, gw_genl_reply_fn fn, void *arg);

/* --- reading replies --------------------------------------------------------- */

/*
 * Index the attributes of a reply message (after its genl header) by type:
 * tb[0..maxtype] is zeroed, then tb[type] points at the last attribute of
 * each type. Types above maxtype are skipped. policy (may be NULL) gives the
 * expected libmnl type of each attribute type (MNL_TYPE_UNSPEC: any); an
 * attribute that does not match it, or a run of attributes that does not
 * parse, is -EINVAL. After that, libmnl's getters on tb[] are safe.
 */
int gw_genl_parse(const struct nlmsghdr *nlh, const enum mnl_attr_data_type *policy,
		  unsigned int maxtype, const struct nlattr **tb);
/* The same for the attributes inside a nested attribute. */
int gw_genl_parse_nested(const struct nlattr *nest, const enum mnl_attr_data_type *policy,
			 unsigned int maxtype, const struct nlattr **tb);
/* The same for a bare run of attributes. */
int gw_genl_parse_payload(const void *attrs, size_t len, const enum mnl_attr_data_type *policy,
			  unsigned int maxtype, const struct nlattr **tb);
