/* SPDX-License-Identifier: MIT */
/*
 * nbd-floor: the simplest NBD server that real clients accept, used by
 * bench/nbd/run.sh as the client's ceiling. It stores nothing: READ answers
 * zeros, WRITE reads and drops the payload, FLUSH succeeds. Whatever a
 * benchmark client reaches against it is the most the client itself can do
 * on this machine, and the CPU it burns is about the least a server can.
 *
 * Model: blocking sockets, one thread per connection, one read() fills an
 * input buffer that may hold several requests, one writev() per reply.
 * Fixed newstyle only; options: EXPORT_NAME, INFO, GO (INFO_EXPORT only),
 * LIST, ABORT; everything else (STRUCTURED_REPLY included) gets ERR_UNSUP,
 * so clients fall back to simple replies. Unix sockets only.
 *
 * Not a product: no TLS, no structured replies, no metadata contexts.
 *
 * usage: nbd-floor [-s SIZE] [-p PIDFILE] SOCKET
 */
#include <endian.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

/* The wire format comes from the server's own header: one definition. */
#include "transports/nbd/nbd_proto.h"

#define FLOOR_TX_FLAGS \
	(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN)

#define FLOOR_MAX_OPTION  4096u       /* option data we accept */
#define FLOOR_MAX_PAYLOAD (32u << 20) /* the spec's portable maximum */
#define FLOOR_ZERO_CHUNK  (1u << 20)  /* READ data comes from here */
#define FLOOR_INBUF       (64u << 10) /* input buffer per connection */

static uint64_t floor_size = 16ULL << 30;
static const char *floor_socket;
static const char *floor_pidfile;
static uint8_t floor_zeros[FLOOR_ZERO_CHUNK]; /* never written: .bss */

/* Buffered input: a read() may bring several requests at once. */
struct floor_conn {
	int fd;
	size_t start, end;
	uint8_t in[FLOOR_INBUF];
	uint8_t sink[FLOOR_ZERO_CHUNK]; /* WRITE payloads land here */
};

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* writev() until done, advancing through the vector. */
static int writev_all(int fd, struct iovec *iov, int cnt)
{
	while (cnt) {
		ssize_t n = writev(fd, iov, cnt);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		while (cnt && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/* Fill the input buffer until it holds at least @want bytes. */
static int conn_fill(struct floor_conn *c, size_t want)
{
	if (c->end - c->start >= want)
		return 0;
	if (c->start) {
		memmove(c->in, c->in + c->start, c->end - c->start);
		c->end -= c->start;
		c->start = 0;
	}
	while (c->end < want) {
		ssize_t n = read(c->fd, c->in + c->end, sizeof(c->in) - c->end);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		c->end += (size_t)n;
	}
	return 0;
}

/* Take @len bytes from the stream into @dst (NULL: drop them). */
static int conn_take(struct floor_conn *c, void *dst, size_t len)
{
	uint8_t *d = dst;

	while (len) {
		size_t have = c->end - c->start;
		size_t n;

		if (!have) {
			/* Large payloads bypass the input buffer. */
			ssize_t r;

			c->start = c->end = 0;
			if (len >= sizeof(c->in)) {
				n = len < sizeof(c->sink) ? len : sizeof(c->sink);
				r = read(c->fd, d ? d : c->sink, n);
				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0)
					return -1;
				if (d)
					d += r;
				len -= (size_t)r;
				continue;
			}
			if (conn_fill(c, 1) < 0)
				return -1;
			have = c->end - c->start;
		}
		n = have < len ? have : len;
		if (d) {
			memcpy(d, c->in + c->start, n);
			d += n;
		}
		c->start += n;
		len -= n;
	}
	return 0;
}

static int opt_reply(int fd, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[NBD_REP_HDR_SIZE];
	struct iovec iov[2] = {
		{ .iov_base = h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)data, .iov_len = len },
	};

	nbd_put64(h, NBD_REP_MAGIC);
	nbd_put32(h + 8, opt);
	nbd_put32(h + 12, type);
	nbd_put32(h + 16, len);
	return writev_all(fd, iov, len ? 2 : 1);
}

/*
 * Negotiation. Returns 1 when transmission starts, 0 when the client went
 * away cleanly (ABORT), -1 on error.
 */
static int handshake(struct floor_conn *c)
{
	uint8_t greet[18], buf[FLOOR_MAX_OPTION], info[12];
	bool no_zeroes;
	uint32_t cflags;

	nbd_put64(greet, NBD_MAGIC);
	nbd_put64(greet + 8, NBD_IHAVEOPT);
	nbd_put16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	if (write_all(c->fd, greet, sizeof(greet)) < 0)
		return -1;
	if (conn_take(c, buf, 4) < 0)
		return -1;
	cflags = nbd_get32(buf);
	if (cflags & ~(uint32_t)(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES))
		return -1;
	no_zeroes = cflags & NBD_FLAG_NO_ZEROES;

	nbd_put16(info, NBD_INFO_EXPORT);
	nbd_put64(info + 2, floor_size);
	nbd_put16(info + 10, FLOOR_TX_FLAGS);

	for (;;) {
		uint32_t opt, len;

		if (conn_take(c, buf, 16) < 0)
			return -1;
		if (nbd_get64(buf) != NBD_IHAVEOPT)
			return -1;
		opt = nbd_get32(buf + 8);
		len = nbd_get32(buf + 12);
		if (len > FLOOR_MAX_OPTION)
			return -1;
		if (conn_take(c, buf, len) < 0)
			return -1;

		switch (opt) {
		case NBD_OPT_EXPORT_NAME: {
			/* Any name is the one export. */
			static const uint8_t pad[124];
			struct iovec iov[2] = {
				{ .iov_base = info + 2, .iov_len = 10 },
				{ .iov_base = (void *)pad, .iov_len = sizeof(pad) },
			};

			if (writev_all(c->fd, iov, no_zeroes ? 1 : 2) < 0)
				return -1;
			return 1;
		}
		case NBD_OPT_ABORT:
			opt_reply(c->fd, opt, NBD_REP_ACK, NULL, 0);
			return 0;
		case NBD_OPT_LIST: {
			static const uint8_t empty_name[4];

			if (len) {
				if (opt_reply(c->fd, opt, NBD_REP_ERR_INVALID, NULL, 0) < 0)
					return -1;
				break;
			}
			if (opt_reply(c->fd, opt, NBD_REP_SERVER, empty_name, sizeof(empty_name)) <
				    0 ||
			    opt_reply(c->fd, opt, NBD_REP_ACK, NULL, 0) < 0)
				return -1;
			break;
		}
		case NBD_OPT_INFO:
		case NBD_OPT_GO: {
			uint32_t nlen;
			uint16_t nreq;

			/* u32 name length, name, u16 count, count x u16. */
			if (len < 6 || (nlen = nbd_get32(buf)) > len - 6) {
				if (opt_reply(c->fd, opt, NBD_REP_ERR_INVALID, NULL, 0) < 0)
					return -1;
				break;
			}
			nreq = (uint16_t)(buf[4 + nlen] << 8 | buf[5 + nlen]);
			if (6 + nlen + 2u * nreq != len) {
				if (opt_reply(c->fd, opt, NBD_REP_ERR_INVALID, NULL, 0) < 0)
					return -1;
				break;
			}
			if (opt_reply(c->fd, opt, NBD_REP_INFO, info, sizeof(info)) < 0 ||
			    opt_reply(c->fd, opt, NBD_REP_ACK, NULL, 0) < 0)
				return -1;
			if (opt == NBD_OPT_GO)
				return 1;
			break;
		}
		default:
			if (opt_reply(c->fd, opt, NBD_REP_ERR_UNSUP, NULL, 0) < 0)
				return -1;
			break;
		}
	}
}

/* Transmission: simple replies only. */
static void transmit(struct floor_conn *c)
{
	for (;;) {
		uint8_t rep[16];
		struct iovec iov[1 + FLOOR_MAX_PAYLOAD / FLOOR_ZERO_CHUNK];
		const uint8_t *r;
		uint16_t flags, type;
		uint64_t cookie, off;
		uint32_t len, err = 0;
		int cnt = 1;

		if (conn_fill(c, NBD_REQUEST_SIZE) < 0)
			return;
		r = c->in + c->start;
		if (nbd_get32(r) != NBD_REQUEST_MAGIC)
			return;
		flags = (uint16_t)(r[4] << 8 | r[5]);
		type = (uint16_t)(r[6] << 8 | r[7]);
		memcpy(&cookie, r + 8, sizeof(cookie)); /* opaque: echo as is */
		off = nbd_get64(r + 16);
		len = nbd_get32(r + 24);
		c->start += NBD_REQUEST_SIZE;

		if (flags & ~NBD_CMD_FLAG_FUA)
			err = NBD_EINVAL;
		switch (type) {
		case NBD_CMD_READ:
			if (len > FLOOR_MAX_PAYLOAD || off > floor_size || len > floor_size - off)
				err = NBD_EINVAL;
			if (err)
				break;
			for (uint32_t left = len; left; cnt++) {
				uint32_t n = left < FLOOR_ZERO_CHUNK ? left : FLOOR_ZERO_CHUNK;

				iov[cnt].iov_base = (void *)floor_zeros;
				iov[cnt].iov_len = n;
				left -= n;
			}
			break;
		case NBD_CMD_WRITE:
			/* An oversized payload cannot be skipped safely. */
			if (len > FLOOR_MAX_PAYLOAD)
				return;
			if (conn_take(c, NULL, len) < 0)
				return;
			if (!err && (off > floor_size || len > floor_size - off))
				err = NBD_ENOSPC;
			break;
		case NBD_CMD_FLUSH:
			break;
		case NBD_CMD_DISC:
			return;
		default:
			err = NBD_EINVAL;
			break;
		}

		nbd_put32(rep, NBD_SIMPLE_MAGIC);
		nbd_put32(rep + 4, err);
		memcpy(rep + 8, &cookie, sizeof(cookie));
		iov[0].iov_base = rep;
		iov[0].iov_len = sizeof(rep);
		if (writev_all(c->fd, iov, cnt) < 0)
			return;
	}
}

static void *conn_thread(void *arg)
{
	struct floor_conn *c = arg;

	if (handshake(c) > 0)
		transmit(c);
	close(c->fd);
	free(c);
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
	unlink(floor_socket);
	if (floor_pidfile)
		unlink(floor_pidfile);
	_exit(0);
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'K':
	case 'k':
		shift = 10;
		end++;
		break;
	case 'M':
	case 'm':
		shift = 20;
		end++;
		break;
	case 'G':
	case 'g':
		shift = 30;
		end++;
		break;
	case 'T':
	case 't':
		shift = 40;
		end++;
		break;
	default:
		break;
	}
	if (*end || v == 0 || v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nbd-floor [-s SIZE] [-p PIDFILE] SOCKET\n"
		   "A do-nothing NBD server on a unix socket: reads return zeros,\n"
		   "writes are dropped. The client's ceiling for bench/nbd/run.sh.\n"
		   "  -s, --size SIZE      export size, K/M/G/T suffixes (default 16G)\n"
		   "  -p, --pidfile FILE   write the pid to FILE once listening\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "pidfile", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct sigaction sa = { .sa_handler = on_signal };
	pthread_attr_t attr;
	int opt, lfd;

	while ((opt = getopt_long(argc, argv, "s:p:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			if (parse_size(optarg, &floor_size) < 0) {
				fprintf(stderr, "nbd-floor: bad size '%s'\n", optarg);
				return 2;
			}
			break;
		case 'p':
			floor_pidfile = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	floor_socket = argv[optind];
	if (strlen(floor_socket) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "nbd-floor: socket path too long\n");
		return 2;
	}
	memcpy(sun.sun_path, floor_socket, strlen(floor_socket) + 1);

	signal(SIGPIPE, SIG_IGN);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		perror("nbd-floor: socket");
		return 1;
	}
	unlink(floor_socket);
	if (bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(lfd, 64) < 0) {
		fprintf(stderr, "nbd-floor: %s: %s\n", floor_socket, strerror(errno));
		return 1;
	}
	if (floor_pidfile) {
		FILE *f = fopen(floor_pidfile, "w");

		if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f)) {
			fprintf(stderr, "nbd-floor: %s: %s\n", floor_pidfile, strerror(errno));
			unlink(floor_socket);
			return 1;
		}
	}

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	for (;;) {
		struct floor_conn *c;
		pthread_t tid;
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("nbd-floor: accept");
			sleep(1); /* EMFILE and friends: do not spin */
			continue;
		}
		c = malloc(sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->start = c->end = 0;
		if (pthread_create(&tid, &attr, conn_thread, c)) {
			close(fd);
			free(c);
		}
	}
}
