/*
 * nbd_netlink.h - attach the kernel NBD client (/dev/nbdN) over the "nbd"
 * generic-netlink family.
 *
 * The sockets handed to the kernel must already be through the NBD handshake
 * (fixed newstyle, no structured replies, no extended headers): the kernel
 * only speaks the transmission phase with simple replies. It needs
 * CAP_SYS_ADMIN. The kernel takes its own reference on each socket, so the
 * caller may close its fds after nbd_nl_connect() returns.
 *
 * Functions return 0 (or a count) or a negative errno. Where they take
 * (msg, msglen), a failure also writes a sentence for the user into msg
 * (msg may be NULL). Nothing is printed.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/nbd-netlink.h>

#include "lib/genl.h"

/*
 * NBD_ATTR_CLIENT_FLAGS bits. The kernel defines them in <linux/nbd.h>, which
 * cannot be included next to nbd_proto.h (its NBD_FLAG_*, NBD_CMD_* and
 * magic numbers are defined again there, some differently), so the two are
 * repeated here under the kernel's names.
 */
#ifndef NBD_CFLAG_DESTROY_ON_DISCONNECT
#define NBD_CFLAG_DESTROY_ON_DISCONNECT (1 << 0)
#endif
#ifndef NBD_CFLAG_DISCONNECT_ON_CLOSE
#define NBD_CFLAG_DISCONNECT_ON_CLOSE (1 << 1)
#endif

#define NBD_NL_MAX_SOCKS 64 /* sockets per connect/reconfigure request */

/* Transmission flags (NBD_FLAG_*) the kernel client acts on. */
#define NBD_NL_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_NL_FLAG_READ_ONLY         (1u << 1)
#define NBD_NL_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_NL_FLAG_SEND_FUA          (1u << 3)
#define NBD_NL_FLAG_ROTATIONAL        (1u << 4)
#define NBD_NL_FLAG_SEND_TRIM         (1u << 5)
#define NBD_NL_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_NL_FLAG_CAN_MULTI_CONN    (1u << 8)

struct nbd_nl {
	struct gw_genl_sock sock; /* sock.family: the resolved "nbd" family */
	uint32_t mcast_group;     /* "nbd_mc_group", 0 if the kernel has none */
};

struct nbd_nl_connect_params {
	uint64_t size_bytes;          /* export size; required (> 0) */
	uint64_t block_size;          /* 512..4096, power of two; 0 = 512 */
	uint64_t server_flags;        /* transmission flags from the handshake */
	uint64_t timeout_s;           /* per-request timeout; 0 = kernel default */
	uint64_t dead_conn_timeout_s; /* wait for RECONFIGURE; 0 = fail at once */
	uint64_t client_flags;        /* NBD_CFLAG_* */
	int index;                    /* /dev/nbdN to use, or -1: kernel picks */
	const int *fds;               /* handshaken sockets (TCP or unix stream) */
	unsigned int n_fds;           /* >1 needs NBD_NL_FLAG_CAN_MULTI_CONN */
	const char *backend_id;       /* optional; RECONFIGURE must repeat it */
};

struct nbd_nl_dev_status {
	uint32_t index;
	bool connected;
};

/* Open a netlink socket and resolve the "nbd" family. -ENOENT: the nbd
 * module is not loaded. */
int nbd_nl_open(struct nbd_nl *nl, char *msg, size_t msglen);
void nbd_nl_close(struct nbd_nl *nl);

/* NBD_CMD_CONNECT; on success *index is the device number (/dev/nbd<index>). */
int nbd_nl_connect(struct nbd_nl *nl, const struct nbd_nl_connect_params *p, uint32_t *index,
		   char *msg, size_t msglen);

/* NBD_CMD_DISCONNECT: the kernel sends NBD_CMD_DISC and shuts the sockets. */
int nbd_nl_disconnect(struct nbd_nl *nl, uint32_t index, char *msg, size_t msglen);

struct nbd_nl_reconfigure_params {
	uint32_t index;               /* the connected device */
	const int *fds;               /* fresh handshaken sockets */
	unsigned int n_fds;           /* at least 1 */
	const char *backend_id;       /* must match the one given to connect, if any */
	bool set_timeouts;            /* also set the two timeouts below */
	uint64_t timeout_s;           /* per-request timeout; 0 = never */
	uint64_t dead_conn_timeout_s; /* wait for a reconnect; 0 = fail at once */
};

/*
 * NBD_CMD_RECONFIGURE with fresh handshaken sockets: each replaces one dead
 * connection of the device (the kernel silently ignores sockets beyond the
 * number of dead ones). Works after the process that connected the device
 * died, as long as nobody sent NBD_CMD_DISCONNECT.
 */
int nbd_nl_reconfigure(struct nbd_nl *nl, const struct nbd_nl_reconfigure_params *p, char *msg,
		       size_t msglen);

/*
 * NBD_CMD_STATUS for one device (index >= 0) or all (index -1). Fills up to
 * max entries and returns the number of devices the kernel reported (which
 * may exceed max).
 */
int nbd_nl_status(struct nbd_nl *nl, int index, struct nbd_nl_dev_status *devs, size_t max,
		  char *msg, size_t msglen);

/*
 * Link-dead events. nbd_nl_monitor_open() opens a second handle subscribed to
 * "nbd_mc_group"; poll gw_genl_fd(&nl->sock) for input, or call
 * nbd_nl_monitor_next(): waits up to timeout_ms (-1: forever, 0: poll) and
 * returns 1 with *index set for an NBD_CMD_LINK_DEAD, 0 when the wait ended
 * without one, or -errno (-ENOBUFS: events were lost; check the devices).
 */
int nbd_nl_monitor_open(struct nbd_nl *nl, char *msg, size_t msglen);
int nbd_nl_monitor_next(struct nbd_nl *nl, int timeout_ms, uint32_t *index);
