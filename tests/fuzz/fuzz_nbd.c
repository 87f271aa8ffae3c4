/*
 * libFuzzer target: the NBD server (transports/nbd) from the first byte a
 * client sends through transmission, over a socketpair, against a 1 MiB
 * memory image, on a real worker thread with its own loop and io_uring.
 * The export carries a backup export's change map (since checkpoint c1,
 * only-changed), so qemu:dirty-bitmap:c1, qemu:allocation-depth and the
 * layer's base:allocation are fuzzed too.
 *
 * The first input byte picks where the input starts:
 *   0  raw: the client's handshake flags, options, then requests;
 *   1  after a canned fixed-newstyle handshake ending in NBD_OPT_GO:
 *      requests, simple replies;
 *   2  the same after NBD_OPT_STRUCTURED_REPLY and base:allocation:
 *      requests, structured replies (and block status).
 * The rest is written to the server while its output is drained; then the
 * client half-closes and reads until the server closes. A server that
 * never closes is reported as a hang (abort).
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/backend.h"
#include "fuzz.h"
#include "gateway/export.h"
#include "lib/log.h"
#include "lib/worker.h"
#include "transports/nbd/nbd_internal.h"
#include "transports/nbd/nbd_proto.h"

#define DISK (1u << 20)

static struct nbd_listener lis;
static struct nbd_exp xp;
static struct nbd_opts opts;

static void setup(void)
{
	static int done;
	struct gw_export *e;
	static struct nbd_exp *exps[1];

	if (done)
		return;
	done = 1;
	e = fuzz_memory_export("fuzz_nbd", DISK, true);
	/* A backup export's change map: every third 64K chunk changed since c1, a layer. */
	e->changes = calloc(1, sizeof(*e->changes));
	if (e->changes) {
		e->changes->granularity = 65536;
		e->changes->nchunks = (DISK + 65535) / 65536;
		e->changes->bits = calloc((e->changes->nchunks + 63) / 64, sizeof(uint64_t));
		e->changes->since = strdup("c1");
		e->changes->only_changed = true;
		for (uint64_t i = 0; e->changes->bits && i < e->changes->nchunks; i += 3)
			e->changes->bits[i / 64] |= 1ull << (i % 64);
	}
	opts.name = "mem0";
	opts.description = "fuzzed";
	xp.exp = e;
	xp.o = &opts;
	xp.name = "mem0";
	xp.dev_index = -1;
	e->tpriv = &xp;
	lis.key = "unix:fuzz";
	lis.is_unix = true;
	pthread_mutex_init(&lis.lock, NULL);
	atomic_init(&lis.refs, 1); /* ours: never freed */
	exps[0] = &xp;
	lis.exps = exps;
	lis.nexps = lis.cap = 1;
}

/* poll() that restarts after signals (libFuzzer's timer interrupts it every second). */
static int poll1(struct pollfd *p, int ms)
{
	int rc;

	while ((rc = poll(p, 1, ms)) < 0 && errno == EINTR)
		;
	return rc;
}

static int wait_fd(int fd, short ev)
{
	struct pollfd p = { .fd = fd, .events = ev };

	return poll1(&p, FUZZ_HANG_MS) > 0 ? 0 : -1;
}

static int read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, MSG_DONTWAIT);

		if (n == 0)
			return -1;
		if (n < 0) {
			if (errno != EAGAIN || wait_fd(fd, POLLIN) < 0)
				return -1;
			continue;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
	uint8_t h[NBD_OPT_HDR_SIZE];
	uint64_t magic = htobe64(NBD_IHAVEOPT);
	uint32_t o = htobe32(opt), l = htobe32(len);

	memcpy(h, &magic, 8);
	memcpy(h + 8, &o, 4);
	memcpy(h + 12, &l, 4);
	if (send(fd, h, sizeof(h), MSG_NOSIGNAL) != sizeof(h))
		return -1;
	if (len && send(fd, data, len, MSG_NOSIGNAL) != (ssize_t)len)
		return -1;
	return 0;
}

/* Read option replies until ACK (0) or an error reply (-1). */
static int wait_ack(int fd)
{
	for (;;) {
		uint8_t h[20], skip[4096];
		uint32_t type, len;

		if (read_full(fd, h, sizeof(h)) < 0) {
			fprintf(stderr, "fuzz_nbd: no option reply: %s\n", strerror(errno));
			return -1;
		}
		memcpy(&type, h + 12, 4);
		memcpy(&len, h + 16, 4);
		type = be32toh(type);
		len = be32toh(len);
		while (len) {
			uint32_t n = len < sizeof(skip) ? len : sizeof(skip);

			if (read_full(fd, skip, n) < 0)
				return -1;
			len -= n;
		}
		if (type == NBD_REP_ACK)
			return 0;
		if (type & (1u << 31)) {
			fprintf(stderr, "fuzz_nbd: option %u: error reply 0x%x\n",
				be32toh(*(uint32_t *)(h + 8)), type);
			return -1;
		}
	}
}

/* The canned handshake of modes 1 and 2: fixed newstyle, then GO. */
static int handshake(int fd, bool structured)
{
	uint8_t greet[18];
	uint32_t cflags = htobe32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	static const char ctx[] = "base:allocation";
	uint8_t meta[4 + 4 + 4 + 4 + sizeof(ctx) - 1];
	uint32_t v;
	uint8_t go[4 + 4 + 2];

	if (read_full(fd, greet, sizeof(greet)) < 0) {
		fprintf(stderr, "fuzz_nbd: no greeting: %s\n", strerror(errno));
		return -1;
	}
	if (send(fd, &cflags, 4, MSG_NOSIGNAL) != 4)
		return -1;
	if (structured) {
		if (send_opt(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0) < 0 || wait_ack(fd) < 0)
			return -1;
		v = htobe32(4);
		memcpy(meta, &v, 4);
		memcpy(meta + 4, "mem0", 4);
		v = htobe32(1);
		memcpy(meta + 8, &v, 4);
		v = htobe32(sizeof(ctx) - 1);
		memcpy(meta + 12, &v, 4);
		memcpy(meta + 16, ctx, sizeof(ctx) - 1);
		if (send_opt(fd, NBD_OPT_SET_META_CONTEXT, meta, sizeof(meta)) < 0 ||
		    wait_ack(fd) < 0)
			return -1;
	}
	v = htobe32(4);
	memcpy(go, &v, 4);
	memcpy(go + 4, "mem0", 4);
	memset(go + 8, 0, 2);
	if (send_opt(fd, NBD_OPT_GO, go, sizeof(go)) < 0 || wait_ack(fd) < 0)
		return -1;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2];
	unsigned mode;
	size_t off = 0;
	bool eof = false, shut = false;
	uint8_t buf[65536];

	setup();
	if (size < 1)
		return 0;
	mode = data[0] % 3;
	data++;
	size--;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	fuzz_set_nonblock(sv[1]);
	atomic_fetch_add(&lis.refs, 1);
	nbd_conn_accept(gw_worker_pick(), sv[1], &lis, "fuzz");
	if (mode && handshake(sv[0], mode == 2) < 0) {
		/* A canned handshake the server refuses is a bug in the server. */
		fprintf(stderr, "fuzz_nbd: canned handshake failed\n");
		abort();
	}
	/* Write the input while draining replies, then read until the server closes. */
	while (!eof) {
		struct pollfd p = { .fd = sv[0], .events = POLLIN };
		ssize_t n;

		if (off < size)
			p.events |= POLLOUT;
		else if (!shut) {
			shutdown(sv[0], SHUT_WR);
			shut = true;
		}
		if (poll1(&p, FUZZ_HANG_MS) <= 0) {
			fprintf(stderr, "fuzz_nbd: server hangs (%zu of %zu bytes sent)\n", off,
				size);
			abort();
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			n = recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN))
				eof = true;
		}
		if (!eof && (p.revents & POLLOUT) && off < size) {
			n = send(sv[0], data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN)
				off = size; /* the server closed: stop sending, read to EOF */
		}
	}
	close(sv[0]);
	return 0;
}
