/*
 * libFuzzer target: the vhost-user-blk message stream (transports/vhost:
 * vhost_msg.c's reader, vhost_dev.c's dispatch and handlers, vhost_vring.c,
 * vhost_mem.c's memory tables and inflight region) with its file
 * descriptors, over a socketpair, as the transport's connection on the main
 * loop; started queues run the real virtio-blk core on a worker against a
 * 1 MiB memory image, over rings and requests in hand-built guest memory.
 *
 * Guest memory is one memfd of 256 KiB sealed against shrinking and growing
 * (as QEMU's memory-backend-memfd), zeroed per input. The input is
 * operations, each a byte (low 2 bits the op) and its arguments,
 * little-endian:
 *   0 a message: request byte, flags byte (bit 0 NEED_REPLY, bit 1 a wrong
 *     version), payload size (2 bytes, at most 4 KiB and what is left),
 *     the payload; (op >> 3) & 3 file descriptors go with it: the guest
 *     memfd first unless bit 5 is set, then fresh eventfds (kept, for
 *     kicks). The loop runs until the message is handled and every queue
 *     operation it waits for has called back; replies are drained.
 *   1 raw bytes: a length byte, then that many bytes sent as they are
 *     (split or lying headers).
 *   2 kick eventfd (op >> 3) & 7 of those sent, and let the worker run.
 *   3 poke guest memory: offset (4 bytes, modulo its size), a length byte,
 *     that many bytes.
 * At the end the frontend hangs up; the connection must go away (else: a
 * hang, abort) and every descriptor it received must be closed (else: a
 * leak, abort).
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/backend.h"
#include "fuzz.h"
#include "gateway/export.h"
#include "lib/efd.h"
#include "lib/guard.h"
#include "lib/log.h"
#include "lib/worker.h"
#include "transports/vhost/vhost_internal.h"

#define DISK   (1u << 20)
#define MEM    (256u << 10)
#define NEVFDS 8u

static struct vhost_exp xp;
static struct vhost_opts opts;
static int memfd = -1;
static uint8_t *mem;
static int evfd[NEVFDS];
static unsigned nev;

static void setup(void)
{
	static int done;
	struct gw_export *e;

	if (done)
		return;
	done = 1;
	/* As the gateway does: unsealed regions are guarded, frontend eventfds written safely. */
	if (gw_guard_init(EV_DEFAULT) < 0 || gw_efd_init() < 0)
		abort();
	e = fuzz_memory_export("fuzz_vhost", DISK, true);
	opts.queues = 2;
	opts.queue_size = 256;
	xp.exp = e;
	xp.o = &opts;
	xp.path = "fuzz";
	xp.lfd = -1;
	xp.waiting_fd = -1;
	if (vblk_dev_init(&xp.dev, e, NULL, (uint16_t)opts.queues, (uint16_t)opts.queue_size) < 0)
		abort();
	e->tpriv = &xp;
	memfd = memfd_create("fuzz-vhost-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (memfd < 0 || ftruncate(memfd, MEM) < 0 ||
	    fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		abort();
	mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (mem == MAP_FAILED)
		abort();
	for (unsigned i = 0; i < NEVFDS; i++)
		evfd[i] = -1;
}

static unsigned open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;

	while (d && readdir(d))
		n++;
	if (d)
		closedir(d);
	return n;
}

/* Read whatever the backend sent (replies, with any fd: closed). */
static void drain(int fd)
{
	for (;;) {
		union {
			char c[CMSG_SPACE(sizeof(int) * 8)];
			struct cmsghdr a;
		} ctl;
		uint8_t buf[4096];
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = ctl.c,
				     .msg_controllen = sizeof(ctl.c) };
		ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (n <= 0)
			return;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
				for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				     i++) {
					int rfd;

					memcpy(&rfd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
					close(rfd);
				}
	}
}

/* Run the loop until the connection has read what was sent and nothing waits on queues. */
static void settle(int fd)
{
	for (int t = 0; t < FUZZ_HANG_MS * 10; t++) {
		struct vhost_conn *c = xp.conn;
		int unread = 0;

		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		drain(fd);
		c = xp.conn;
		if (!c || c->closing)
			return;
		if (ioctl(c->fd, FIONREAD, &unread) < 0)
			unread = 0;
		if (!c->pending && (unread == 0 || !c->reading))
			return;
		usleep(100);
	}
	fprintf(stderr, "fuzz_vhost: a message is never handled\n");
	abort();
}

static int new_eventfd(void)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	if (fd < 0)
		abort();
	if (evfd[nev % NEVFDS] >= 0)
		close(evfd[nev % NEVFDS]);
	evfd[nev++ % NEVFDS] = fd;
	return fd;
}

static void send_msg(int sock, unsigned op, const uint8_t **p, size_t *left)
{
	uint32_t req = (uint32_t)fuzz_get(p, left, 1), fl = (uint32_t)fuzz_get(p, left, 1);
	uint32_t size = (uint32_t)fuzz_get(p, left, 2) % 4097;
	uint8_t buf[12 + 4096];
	unsigned nfds = (op >> 3) & 3;
	int fds[3];
	union {
		char c[CMSG_SPACE(sizeof(int) * 3)];
		struct cmsghdr a;
	} ctl;
	struct iovec iov = { buf, 0 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	uint32_t flags = ((fl & 2) ? 2 : VHOST_USER_VERSION) |
			 ((fl & 1) ? VHOST_USER_NEED_REPLY : 0);

	if (size > *left)
		size = (uint32_t)*left;
	memcpy(buf, &req, 4);
	memcpy(buf + 4, &flags, 4);
	memcpy(buf + 8, &size, 4);
	memcpy(buf + 12, *p, size);
	*p += size;
	*left -= size;
	iov.iov_len = 12 + size;
	for (unsigned i = 0; i < nfds; i++)
		fds[i] = i == 0 && !(op & 0x20) ? memfd : new_eventfd();
	if (nfds) {
		struct cmsghdr *cm;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.c;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	if (sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EPIPE &&
	    errno != ECONNRESET && errno != EAGAIN)
		abort();
	settle(sock);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data;
	size_t left = size;
	unsigned fds0;
	int sv[2];

	setup();
	fds0 = open_fds();
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	fuzz_set_nonblock(sv[1]);
	xp.conn = vhost_conn_new(&xp, sv[1]);
	if (!xp.conn)
		abort();
	while (left && xp.conn && !xp.conn->closing) {
		unsigned op = (unsigned)fuzz_get(&p, &left, 1);

		switch (op & 3) {
		case 0:
			send_msg(sv[0], op, &p, &left);
			break;
		case 1: {
			size_t n = (size_t)fuzz_get(&p, &left, 1);

			if (n > left)
				n = left;
			if (send(sv[0], p, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EPIPE &&
			    errno != ECONNRESET && errno != EAGAIN)
				abort();
			p += n;
			left -= n;
			settle(sv[0]);
			break;
		}
		case 2: {
			uint64_t one = 1;
			int fd = evfd[(op >> 3) % NEVFDS];

			if (fd >= 0 && write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
				abort();
			for (int i = 0; i < 4; i++) {
				ev_run(EV_DEFAULT, EVRUN_NOWAIT);
				usleep(50);
			}
			drain(sv[0]);
			break;
		}
		case 3: {
			uint64_t off = fuzz_get(&p, &left, 4) % (MEM - 255);
			size_t n = (size_t)fuzz_get(&p, &left, 1);

			if (n > left)
				n = left;
			memcpy(mem + off, p, n);
			p += n;
			left -= n;
			break;
		}
		}
	}
	if (getenv("FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_vhost: used index at 0x12002: %u\n",
			*(uint16_t *)(mem + 0x12002));
	/* The frontend hangs up: the connection must stop its queues and go. */
	close(sv[0]);
	for (int t = 0; xp.conn && t < FUZZ_HANG_MS * 10; t++) {
		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		usleep(100);
	}
	if (xp.conn) {
		fprintf(stderr, "fuzz_vhost: the connection never closes\n");
		abort();
	}
	/* Mappings still held by a queue are given back through the main loop. */
	for (int i = 0; i < 3; i++)
		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
	for (unsigned i = 0; i < NEVFDS; i++) {
		if (evfd[i] >= 0)
			close(evfd[i]);
		evfd[i] = -1;
	}
	nev = 0;
	memset(mem, 0, MEM);
	if (open_fds() != fds0) {
		fprintf(stderr, "fuzz_vhost: %u file descriptors before, %u after\n", fds0,
			open_fds());
		abort();
	}
	return 0;
}
