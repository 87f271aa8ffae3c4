/*
 * The vhost-user-blk transport in this process (main loop + 2 workers, a
 * memory export), driven over its unix socket by a raw frontend written
 * here: the handshake and data path work; every malformed message (sizes,
 * fd counts, indices, unknown requests, bad memory tables and rings) ends
 * that connection or is refused with a REPLY_ACK, and a malformed ring
 * ends the connection; the daemon and the export carry on, and no file
 * descriptor leaks.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ev.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "backends/backend.h"
#include "check.h"
#include "gateway/export.h"
#include "lib/efd.h"
#include "lib/guard.h"
#include "lib/log.h"
#include "gateway/transport.h"
#include "lib/worker.h"
#include "transports/vhost/vhost_internal.h"
#include "vring_build.h"

#define NUM  16
#define DISK (4u << 20)
#define OK_FEATURES                                                                      \
	(VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VHOST_USER_F_PROTOCOL_FEATURES) |   \
	 VIRTIO_BIT(VIRTIO_RING_F_EVENT_IDX) | VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC) | \
	 VIRTIO_BIT(VIRTIO_BLK_F_FLUSH))
#define PROTO                                                                                 \
	(VIRTIO_BIT(VHOST_USER_PROTOCOL_F_MQ) | VIRTIO_BIT(VHOST_USER_PROTOCOL_F_REPLY_ACK) | \
	 VIRTIO_BIT(VHOST_USER_PROTOCOL_F_CONFIG) |                                           \
	 VIRTIO_BIT(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD))

extern const struct gw_transport_ops gw_vhost_transport;

static char sock_path[108];
static struct gw_export *exp_;
static int stopped;

static void on_stopped(struct gw_export *e)
{
	stopped = 1;
}

struct reply {
	uint32_t request, flags, size;
	uint8_t payload[512];
	int fd;
};

/* ---- a raw frontend ---- */

static void pump(void)
{
	ev_run(EV_DEFAULT, EVRUN_NOWAIT);
}

/* Run the daemon's main loop until fd is readable (1) or timeout (0). */
static int wait_readable(int fd, int ms)
{
	for (int t = 0; t < ms; t += 2) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		pump();
		if (poll(&p, 1, 2) > 0)
			return 1;
	}
	return 0;
}

static int cl_connect_nopump(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("connect");
		exit(1);
	}
	return fd;
}

static int cl_connect(void)
{
	int fd = cl_connect_nopump();

	pump();
	return fd;
}

static int cl_send_raw(int fd, uint32_t req, uint32_t flags, const void *payload, uint32_t size,
		       const int *fds, unsigned nfds)
{
	uint8_t buf[12 + 4096];
	union {
		char c[CMSG_SPACE(sizeof(int) * 8)];
		struct cmsghdr a;
	} ctl;
	struct iovec iov = { buf, 12 + (size > 4096 ? 0 : size) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memcpy(buf, &req, 4);
	memcpy(buf + 4, &flags, 4);
	memcpy(buf + 8, &size, 4);
	if (size <= 4096 && size)
		memcpy(buf + 12, payload, size);
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
	return sendmsg(fd, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

static void cl_send(int fd, uint32_t req, bool need_reply, const void *payload, uint32_t size,
		    const int *fds, unsigned nfds)
{
	cl_send_raw(fd, req, VHOST_USER_VERSION | (need_reply ? VHOST_USER_NEED_REPLY : 0), payload,
		    size, fds, nfds);
}

/* A reply (1), EOF (0) or nothing within the timeout (-1). */
static int cl_recv(int fd, struct reply *r)
{
	union {
		char c[CMSG_SPACE(sizeof(int))];
		struct cmsghdr a;
	} ctl;
	uint8_t buf[12 + 512];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.c,
			     .msg_controllen = sizeof(ctl.c) };
	ssize_t n;

	r->fd = -1;
	if (!wait_readable(fd, 5000))
		return -1;
	n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return 0;
	if (n < 12)
		return -1;
	memcpy(&r->request, buf, 4);
	memcpy(&r->flags, buf + 4, 4);
	memcpy(&r->size, buf + 8, 4);
	memcpy(r->payload, buf + 12, (size_t)n - 12);
	if (CMSG_FIRSTHDR(&mh))
		memcpy(&r->fd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
	return 1;
}

static uint64_t get_u64(int fd, uint32_t req)
{
	struct reply r;
	uint64_t v = ~0ull;

	cl_send(fd, req, false, NULL, 0, NULL, 0);
	if (cl_recv(fd, &r) == 1 && r.request == req && r.size == 8 &&
	    r.flags == (VHOST_USER_VERSION | VHOST_USER_REPLY))
		memcpy(&v, r.payload, 8);
	return v;
}

/* Send with NEED_REPLY; the ack's value (0 ok), or -1 for EOF / no answer. */
static long acked(int fd, uint32_t req, const void *p, uint32_t size, const int *fds, unsigned nfds)
{
	struct reply r;
	uint64_t v;

	cl_send(fd, req, true, p, size, fds, nfds);
	if (cl_recv(fd, &r) != 1 || r.request != req || r.size != 8)
		return -1;
	memcpy(&v, r.payload, 8);
	return (long)v;
}

/* The backend closed the connection (EOF) within the timeout. */
static bool closed(int fd)
{
	struct reply r;
	int rc;

	while ((rc = cl_recv(fd, &r)) == 1)
		;
	close(fd);
	return rc == 0;
}

static unsigned open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;

	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* Let connections that are closing finish (queues stop on workers). */
static void settle(void)
{
	for (int i = 0; i < 100; i++) {
		pump();
		usleep(1000);
	}
}

static void handshake(int fd, uint64_t features)
{
	uint64_t proto = PROTO;

	CHECK((get_u64(fd, VHOST_USER_GET_FEATURES) & VIRTIO_BIT(VIRTIO_F_VERSION_1)) != 0);
	CHECK((get_u64(fd, VHOST_USER_GET_PROTOCOL_FEATURES) & PROTO) == PROTO);
	cl_send(fd, VHOST_USER_SET_PROTOCOL_FEATURES, false, &proto, 8, NULL, 0);
	CHECK_EQ_U64(get_u64(fd, VHOST_USER_GET_QUEUE_NUM), 2);
	CHECK(acked(fd, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0) == 0);
	CHECK(acked(fd, VHOST_USER_SET_FEATURES, &features, 8, NULL, 0) == 0);
}

static void mem_table(int fd, struct gbuild *g)
{
	uint8_t buf[8 + 32];
	struct vhost_mem_region reg = { GB_GPA, GB_SIZE, (uint64_t)(uintptr_t)g->mem, 0 };
	uint32_t n = 1;

	memset(buf, 0, sizeof(buf));
	memcpy(buf, &n, 4);
	memcpy(buf + 8, &reg, sizeof(reg));
	CHECK(acked(fd, VHOST_USER_SET_MEM_TABLE, buf, sizeof(buf), &g->fd, 1) == 0);
}

struct vring_fds {
	int kick, call, err;
};

/* Set up and start vring 0 over g's rings; 0 or the failing ack. */
static long start_ring(int fd, struct gbuild *g, struct vring_fds *f, uint64_t desc_off)
{
	struct vhost_vring_state st = { 0, NUM };
	struct vhost_vring_addr a = { 0,
				      0,
				      (uint64_t)(uintptr_t)(g->mem + desc_off),
				      (uint64_t)(uintptr_t)(g->mem + GB_USED),
				      (uint64_t)(uintptr_t)(g->mem + GB_AVAIL),
				      0 };
	uint64_t idx = 0;
	long rc;

	f->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	f->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	f->err = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(acked(fd, VHOST_USER_SET_VRING_NUM, &st, 8, NULL, 0) == 0);
	st.num = 0;
	CHECK(acked(fd, VHOST_USER_SET_VRING_BASE, &st, 8, NULL, 0) == 0);
	CHECK(acked(fd, VHOST_USER_SET_VRING_ADDR, &a, sizeof(a), NULL, 0) == 0);
	CHECK(acked(fd, VHOST_USER_SET_VRING_CALL, &idx, 8, &f->call, 1) == 0);
	CHECK(acked(fd, VHOST_USER_SET_VRING_ERR, &idx, 8, &f->err, 1) == 0);
	rc = acked(fd, VHOST_USER_SET_VRING_KICK, &idx, 8, &f->kick, 1);
	if (rc)
		return rc;
	st.num = 1;
	return acked(fd, VHOST_USER_SET_VRING_ENABLE, &st, 8, NULL, 0);
}

static void close_fds(struct vring_fds *f)
{
	close(f->kick);
	close(f->call);
	close(f->err);
}

static void kick(struct vring_fds *f)
{
	uint64_t one = 1;

	if (write(f->kick, &one, 8) != 8)
		perror("kick");
}

/* Wait for used->idx to reach want (the worker threads complete requests). */
static bool wait_used(struct gbuild *g, uint16_t want)
{
	for (int i = 0; i < 5000; i++) {
		if (gb_used_idx(g) == want)
			return true;
		pump();
		usleep(200);
	}
	return false;
}

/* A read of 512 bytes at sector 0 on descriptors 0..2. */
static uint8_t *read_req(struct gbuild *g, uint16_t d0)
{
	uint64_t s = gb_alloc(g, 1);

	gb_desc(g, d0, gb_blk_hdr(g, VIRTIO_BLK_T_IN, 0), 16, VRING_DESC_F_NEXT, d0 + 1);
	gb_desc(g, d0 + 1, gb_alloc(g, 512), 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, d0 + 2);
	gb_desc(g, d0 + 2, s, 1, VRING_DESC_F_WRITE, 0);
	*gb_ptr(g, s) = 0xff;
	return gb_ptr(g, s);
}

/* ---- cases ---- */

static void test_data_path(void)
{
	struct gbuild g;
	struct vring_fds f;
	struct vhost_vring_state st = { 0, 0 };
	struct reply r;
	uint8_t *status;
	uint8_t cfg[12 + 60];
	int fd = cl_connect();

	gb_init_shared(&g, NUM);
	handshake(fd, OK_FEATURES);
	/* GET_CONFIG: the reply has exactly the size asked for. */
	memset(cfg, 0, sizeof(cfg));
	((uint32_t *)cfg)[1] = 60;
	cl_send(fd, VHOST_USER_GET_CONFIG, false, cfg, sizeof(cfg), NULL, 0);
	CHECK(cl_recv(fd, &r) == 1 && r.size == sizeof(cfg));
	CHECK_EQ_U64(virtio_get64(r.payload + 12), DISK / 512);
	mem_table(fd, &g);
	CHECK(start_ring(fd, &g, &f, GB_DESC) == 0);
	status = read_req(&g, 0);
	gb_publish(&g, 0);
	kick(&f);
	CHECK(wait_used(&g, 1));
	CHECK_EQ_U64(*status, VIRTIO_BLK_S_OK);
	/* GET_VRING_BASE stops the ring and reports the next avail index. */
	cl_send(fd, VHOST_USER_GET_VRING_BASE, false, &st, 8, NULL, 0);
	CHECK(cl_recv(fd, &r) == 1 && r.request == VHOST_USER_GET_VRING_BASE && r.size == 8);
	CHECK_EQ_U64(((struct vhost_vring_state *)r.payload)->num, 1);
	/* A second frontend is refused while this one is connected ... */
	{
		int fd2 = cl_connect();

		CHECK(closed(fd2));
	}
	/* ... and this one still works. */
	CHECK((get_u64(fd, VHOST_USER_GET_FEATURES) & VIRTIO_BIT(VIRTIO_F_VERSION_1)) != 0);
	CHECK_EQ_U64(atomic_load(&exp_->clients), 1);
	close(fd);
	settle();
	CHECK_EQ_U64(atomic_load(&exp_->clients), 0);
	close_fds(&f);
	gb_fini(&g);
}

/* Each malformed message closes its connection. */
static void expect_close(const char *what, uint32_t req, uint32_t flags, const void *p,
			 uint32_t size, const int *fds, unsigned nfds)
{
	int fd = cl_connect();
	bool ok;

	cl_send_raw(fd, req, flags, p, size, fds, nfds);
	ok = closed(fd);
	if (!ok)
		fprintf(stderr, "case '%s': connection not closed\n", what);
	CHECK(ok);
}

static void test_bad_messages(void)
{
	uint64_t u = 0, packed = VIRTIO_BIT(VIRTIO_F_RING_PACKED) | VIRTIO_BIT(VIRTIO_F_VERSION_1);
	struct vhost_vring_state bad_idx = { 7, 16 };
	uint8_t big[600] = { 0 };
	int efd[2] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC) };
	uint8_t mt[8 + 32 * 9] = { 0 };
	uint32_t cfg[3] = { 0, 300, 0 };
	uint32_t v = VHOST_USER_VERSION;

	expect_close("GET_FEATURES with a payload", VHOST_USER_GET_FEATURES, v, &u, 8, NULL, 0);
	expect_close("SET_FEATURES with 4 bytes", VHOST_USER_SET_FEATURES, v, &u, 4, NULL, 0);
	expect_close("SET_FEATURES with bits never offered", VHOST_USER_SET_FEATURES, v, &packed, 8,
		     NULL, 0);
	expect_close("unknown request", 99, v, NULL, 0, NULL, 0);
	expect_close("request 0", 0, v, NULL, 0, NULL, 0);
	expect_close("SET_LOG_BASE (not offered)", VHOST_USER_SET_LOG_BASE, v, &u, 8, NULL, 0);
	expect_close("protocol version 2", VHOST_USER_GET_FEATURES, 2, NULL, 0, NULL, 0);
	expect_close("payload larger than any message", VHOST_USER_SET_FEATURES, v, big,
		     sizeof(big), NULL, 0);
	expect_close("queue index out of range", VHOST_USER_SET_VRING_NUM, v, &bad_idx, 8, NULL, 0);
	expect_close("GET_VRING_BASE of queue 7", VHOST_USER_GET_VRING_BASE, v, &bad_idx, 8, NULL,
		     0);
	u = 0;
	expect_close("SET_VRING_KICK with two fds", VHOST_USER_SET_VRING_KICK, v, &u, 8, efd, 2);
	expect_close("SET_VRING_CALL without its fd", VHOST_USER_SET_VRING_CALL, v, &u, 8, NULL, 0);
	u = VHOST_USER_VRING_NOFD;
	expect_close("SET_VRING_CALL with no-fd flag and an fd", VHOST_USER_SET_VRING_CALL, v, &u,
		     8, efd, 1);
	u = 1ull << 20;
	expect_close("SET_VRING_KICK with unknown bits", VHOST_USER_SET_VRING_KICK, v, &u, 8, efd,
		     1);
	u = 5;
	expect_close("SET_VRING_ERR of queue 5", VHOST_USER_SET_VRING_ERR, v, &u, 8, efd, 1);
	expect_close("SET_FEATURES with an fd", VHOST_USER_SET_FEATURES, v, &u, 8, efd, 1);
	((uint32_t *)mt)[0] = 2;
	expect_close("SET_MEM_TABLE: 2 regions, 1 fd", VHOST_USER_SET_MEM_TABLE, v, mt, 8 + 64, efd,
		     1);
	((uint32_t *)mt)[0] = 9;
	expect_close("SET_MEM_TABLE: 9 regions", VHOST_USER_SET_MEM_TABLE, v, mt, sizeof(mt), efd,
		     1);
	((uint32_t *)mt)[0] = 1;
	expect_close("SET_MEM_TABLE: size mismatch", VHOST_USER_SET_MEM_TABLE, v, mt, 8 + 16, efd,
		     1);
	expect_close("SET_MEM_TABLE: no fd", VHOST_USER_SET_MEM_TABLE, v, mt, 8 + 32, NULL, 0);
	expect_close("ADD_MEM_REG without fd", VHOST_USER_ADD_MEM_REG, v, mt, 40, NULL, 0);
	expect_close("GET_CONFIG of 300 bytes", VHOST_USER_GET_CONFIG, v, cfg, sizeof(cfg), NULL,
		     0);
	cfg[0] = 250;
	cfg[1] = 10;
	{
		uint8_t c[12 + 10] = { 0 };

		memcpy(c, cfg, 12);
		expect_close("GET_CONFIG past 256 bytes", VHOST_USER_GET_CONFIG, v, c, sizeof(c),
			     NULL, 0);
		cfg[0] = 0;
		memcpy(c, cfg, 12);
		expect_close("GET_CONFIG size disagreeing with the message", VHOST_USER_GET_CONFIG,
			     v, c, 12 + 4, NULL, 0);
	}
	expect_close("SET_INFLIGHT_FD without fd", VHOST_USER_SET_INFLIGHT_FD, v, big, 24, NULL, 0);
	/* Kick, call and err fds must be eventfds (a pipe or /dev/null would block or spin). */
	{
		int p[2], dn = open("/dev/null", O_RDWR | O_CLOEXEC);

		CHECK(pipe2(p, O_CLOEXEC) == 0);
		u = 0;
		expect_close("SET_VRING_KICK with a pipe", VHOST_USER_SET_VRING_KICK, v, &u, 8, p,
			     1);
		expect_close("SET_VRING_CALL with /dev/null", VHOST_USER_SET_VRING_CALL, v, &u, 8,
			     &dn, 1);
		expect_close("SET_VRING_ERR with a pipe", VHOST_USER_SET_VRING_ERR, v, &u, 8, &p[1],
			     1);
		close(p[0]);
		close(p[1]);
		close(dn);
	}
	close(efd[0]);
	close(efd[1]);
}

/* Refused with a non-zero ack; the connection stays usable. */
static void test_nacks(void)
{
	struct gbuild g;
	struct vring_fds f;
	int fd = cl_connect();
	uint64_t legacy = VIRTIO_BIT(VHOST_USER_F_PROTOCOL_FEATURES), u;
	struct vhost_vring_state st = { 0, 48 };
	uint8_t buf[8 + 64];
	struct vhost_mem_region reg;
	uint32_t n = 1;
	struct vhost_inflight_msg in = { 0, 0, 2, NUM };
	struct reply r;

	gb_init_shared(&g, NUM);
	handshake(fd, OK_FEATURES);
	CHECK(acked(fd, VHOST_USER_SET_FEATURES, &legacy, 8, NULL, 0) == 1); /* no VERSION_1 */
	CHECK(acked(fd, VHOST_USER_SET_VRING_NUM, &st, 8, NULL, 0) == 1); /* not a power of two */
	st.num = 128;
	CHECK(acked(fd, VHOST_USER_SET_VRING_NUM, &st, 8, NULL, 0) == 1); /* above queue-size 64 */
	st.num = 0;
	CHECK(acked(fd, VHOST_USER_SET_VRING_NUM, &st, 8, NULL, 0) == 1);
	st.num = 70000;
	CHECK(acked(fd, VHOST_USER_SET_VRING_BASE, &st, 8, NULL, 0) == 1);
	u = VHOST_USER_VRING_NOFD;
	CHECK(acked(fd, VHOST_USER_SET_VRING_KICK, &u, 8, NULL, 0) == 1); /* polling: unsupported */
	{
		uint32_t c[4] = { 0, 1, 0, 0 };

		CHECK(acked(fd, VHOST_USER_SET_CONFIG, c, 13, NULL, 0) == 1); /* read-only config */
	}
	/* Memory tables: wrapping, larger than the file, overlapping, empty. */
	memset(buf, 0, sizeof(buf));
	memcpy(buf, &n, 4);
	reg = (struct vhost_mem_region){ UINT64_MAX - 4095, GB_SIZE, (uint64_t)(uintptr_t)g.mem,
					 0 };
	memcpy(buf + 8, &reg, 32);
	CHECK(acked(fd, VHOST_USER_SET_MEM_TABLE, buf, 40, &g.fd, 1) == 1);
	reg = (struct vhost_mem_region){ GB_GPA, 2 * GB_SIZE, (uint64_t)(uintptr_t)g.mem, 0 };
	memcpy(buf + 8, &reg, 32);
	CHECK(acked(fd, VHOST_USER_SET_MEM_TABLE, buf, 40, &g.fd, 1) == 1);
	reg = (struct vhost_mem_region){ GB_GPA, GB_SIZE, (uint64_t)(uintptr_t)g.mem, GB_SIZE };
	memcpy(buf + 8, &reg, 32);
	CHECK(acked(fd, VHOST_USER_SET_MEM_TABLE, buf, 40, &g.fd, 1) == 1); /* offset past the end
									     */
	reg = (struct vhost_mem_region){ GB_GPA, 0, (uint64_t)(uintptr_t)g.mem, 0 };
	memcpy(buf + 8, &reg, 32);
	CHECK(acked(fd, VHOST_USER_SET_MEM_TABLE, buf, 40, &g.fd, 1) == 1);
	n = 2;
	memcpy(buf, &n, 4);
	reg = (struct vhost_mem_region){ GB_GPA, GB_SIZE, (uint64_t)(uintptr_t)g.mem, 0 };
	memcpy(buf + 8, &reg, 32);
	reg.guest_phys_addr += 4096;
	reg.userspace_addr += GB_SIZE;
	memcpy(buf + 40, &reg, 32);
	{
		int two[2] = { g.fd, g.fd };

		CHECK(acked(fd, VHOST_USER_SET_MEM_TABLE, buf, 72, two, 2) == 1);
	}
	/* REM_MEM_REG of a region that is not there. */
	{
		struct vhost_mem_single s = { 0, { 0x5000000, 4096, 0x7000000, 0 } };

		CHECK(acked(fd, VHOST_USER_REM_MEM_REG, &s, sizeof(s), NULL, 0) == 1);
	}
	/* Inflight: a region too small for what it claims; none for 0 queues. */
	{
		struct vhost_inflight_msg bad = { 64, 0, 2, NUM };

		CHECK(acked(fd, VHOST_USER_SET_INFLIGHT_FD, &bad, sizeof(bad), &g.fd, 1) == 1);
		bad.mmap_size = 1 << 20;
		bad.num_queues = 0;
		CHECK(acked(fd, VHOST_USER_SET_INFLIGHT_FD, &bad, sizeof(bad), &g.fd, 1) == 1);
		/* An offset that would misalign the region's 64-bit fields. */
		bad.num_queues = 2;
		bad.mmap_offset = 1;
		CHECK(acked(fd, VHOST_USER_SET_INFLIGHT_FD, &bad, sizeof(bad), &g.fd, 1) == 1);
	}
	/* GET_INFLIGHT_FD hands out a region of the size it reports. */
	cl_send(fd, VHOST_USER_GET_INFLIGHT_FD, false, &in, sizeof(in), NULL, 0);
	CHECK(cl_recv(fd, &r) == 1 && r.size == sizeof(in) && r.fd >= 0);
	memcpy(&in, r.payload, sizeof(in));
	CHECK_EQ_U64(in.mmap_size, 2 * vq_inflight_size(NUM));
	CHECK_EQ_U64(lseek(r.fd, 0, SEEK_END), in.mmap_size);
	close(r.fd);
	/* Rings outside the memory table, or misaligned, are refused at KICK. */
	mem_table(fd, &g);
	CHECK(start_ring(fd, &g, &f, GB_SIZE - 64) == 1); /* the table runs off the end */
	close_fds(&f);
	CHECK(start_ring(fd, &g, &f, 8) == 1); /* not 16-byte aligned */
	close_fds(&f);
	/* After all that, the connection still works. */
	CHECK(start_ring(fd, &g, &f, GB_DESC) == 0);
	read_req(&g, 0);
	gb_publish(&g, 0);
	kick(&f);
	CHECK(wait_used(&g, 1));
	close(fd);
	settle();
	close_fds(&f);
	gb_fini(&g);
}

/* A malformed ring ends the connection, signals err, and nothing else. */
/* A connection with queue 0 started on fresh shared memory. */
static int ring_session(struct gbuild *g, struct vring_fds *f)
{
	int fd = cl_connect();

	gb_init_shared(g, NUM);
	handshake(fd, OK_FEATURES);
	mem_table(fd, g);
	CHECK(start_ring(fd, g, f, GB_DESC) == 0);
	return fd;
}

/* Post the chain at head 0, kick, and expect the daemon to close the connection. */
static void expect_ring_closed(struct gbuild *g, struct vring_fds *f, int fd)
{
	gb_publish(g, 0);
	kick(f);
	CHECK(closed(fd));
	settle();
	close_fds(f);
	gb_fini(g);
}

static void test_bad_ring(void)
{
	struct gbuild g;
	struct vring_fds f;
	int fd = cl_connect();
	uint64_t v = 0;
	bool gone;

	gb_init_shared(&g, NUM);
	handshake(fd, OK_FEATURES);
	mem_table(fd, &g);
	CHECK(start_ring(fd, &g, &f, GB_DESC) == 0);
	gb_desc(&g, 0, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 1);
	gb_desc(&g, 1, gb_alloc(&g, 16), 16, VRING_DESC_F_NEXT, 0); /* a loop */
	gb_publish(&g, 0);
	kick(&f);
	gone = closed(fd);
	CHECK(gone);
	CHECK(read(f.err, &v, 8) == 8 && v >= 1);
	settle();
	close_fds(&f);
	gb_fini(&g);

	/* The same for a status byte that is not writable. */
	fd = ring_session(&g, &f);
	gb_desc(&g, 0, gb_blk_hdr(&g, VIRTIO_BLK_T_FLUSH, 0), 16, VRING_DESC_F_NEXT, 1);
	gb_desc(&g, 1, gb_alloc(&g, 1), 1, 0, 0);
	expect_ring_closed(&g, &f, fd);
}

/*
 * A frontend that fills its call eventfd, makes the file blocking again and
 * never reads it: the worker's interrupt write is abandoned by the eventfd
 * watchdog (lib/efd.c), the queue stops and the connection closes, and
 * the worker goes on serving.
 */
static void test_full_call_fd(void)
{
	struct gbuild g;
	struct vring_fds f;
	int fd = ring_session(&g, &f);

	settle();
	{
		eventfd_t was;

		(void)eventfd_read(f.call, &was); /* the signal a new call fd gets */
	}
	CHECK(eventfd_write(f.call, 0xfffffffffffffffeull) == 0);
	CHECK(fcntl(f.call, F_SETFL, 0) == 0); /* blkgw made it O_NONBLOCK; same open file */
	gb_desc(&g, 0, gb_blk_hdr(&g, VIRTIO_BLK_T_FLUSH, 0), 16, VRING_DESC_F_NEXT, 1);
	gb_desc(&g, 1, gb_alloc(&g, 1), 1, VRING_DESC_F_WRITE, 0);
	expect_ring_closed(&g, &f, fd);
	fd = cl_connect();
	CHECK(get_u64(fd, VHOST_USER_GET_FEATURES) != ~0ull);
	close(fd);
	settle();
}

/*
 * A frontend that reconnects at once is served, even when the loop sees the
 * new connection before the old one's EOF.
 */
static void test_quick_reconnect(void)
{
	unsigned served = 0;

	for (int i = 0; i < 100; i++) {
		int fd = cl_connect();

		if (get_u64(fd, VHOST_USER_GET_FEATURES) != ~0ull)
			served++;
		close(fd); /* the next connect comes before the loop runs again */
	}
	CHECK_EQ_U64(served, 100);
	settle();
}

/*
 * A message whose header and fd arrived but not all of its payload when the
 * connection ends: the fd goes with the connection. main() checks that
 * every fd was closed. The next frontend connects before the first one
 * closes, so the daemon may notice the close while accepting rather than
 * while reading; both must close the fd.
 */
static void test_partial_message_fds(void)
{
	int fd = cl_connect();

	for (int i = 0; i < 20; i++) {
		int mfd = memfd_create("partial", MFD_CLOEXEC), next;
		uint32_t hdr[3] = { VHOST_USER_ADD_MEM_REG, VHOST_USER_VERSION, 40 };
		uint8_t buf[12 + 3] = { 0 };
		union {
			char c[CMSG_SPACE(sizeof(int))];
			struct cmsghdr a;
		} ctl;
		struct iovec iov = { buf, sizeof(buf) }; /* 3 of the 40 payload bytes */
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = ctl.c,
				     .msg_controllen = sizeof(ctl.c) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

		memcpy(buf, hdr, sizeof(hdr));
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &mfd, sizeof(int));
		CHECK(sendmsg(fd, &mh, 0) == (ssize_t)sizeof(buf));
		pump();
		close(mfd);
		next = cl_connect_nopump();
		close(fd);
		pump();
		fd = next;
	}
	close(fd);
	settle();
}

int main(void)
{
	struct vhost_opts o = { .queues = 2,
				.queue_size = 64,
				.perm = { 0600, GW_ID_UNSET, GW_ID_UNSET } };
	struct {
		uint64_t size;
	} mo = { DISK };
	char err[256] = "", dir[] = "/tmp/test-vhost-XXXXXX";
	struct gw_backend *b;
	unsigned fds_before;

	gw_log_set_level(getenv("TEST_VERBOSE") ? GW_LOG_DEBUG : GW_LOG_ERR);
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock_path, sizeof(sock_path), "%s/vu.sock", dir);
	o.socket = sock_path;
	gw_main_init(EV_DEFAULT);
	CHECK(gw_guard_init(EV_DEFAULT) == 0); /* as the gateway does: regions of unsealed memfds
						  are guarded */
	CHECK(gw_efd_init() == 0);             /* and writes to a frontend's eventfds */
	if (gw_workers_start(2, err, sizeof(err)) < 0) {
		fprintf(stderr, "workers: %s\n", err);
		return 77;
	}
	b = gw_backend_open(gw_backend_find("memory"), "mem0", &mo, err, sizeof(err));
	exp_ = gw_export_new("mem0", b, false, 0);
	exp_->topts = &o;
	exp_->transport = &gw_vhost_transport;
	CHECK(gw_vhost_transport.start(exp_, err, sizeof(err)) == 0);
	fds_before = open_fds();

	test_data_path();
	test_bad_messages();
	test_nacks();
	test_bad_ring();
	test_quick_reconnect();
	test_partial_message_fds();
	test_full_call_fd();
	test_data_path(); /* the export still serves */
	settle();
	CHECK_EQ_U64(open_fds(), fds_before); /* every fd a message carried was closed */

	gw_vhost_transport.stop(exp_, on_stopped);
	settle();
	CHECK(stopped);
	CHECK(access(sock_path, F_OK) < 0); /* the socket is gone */
	gw_workers_stop();
	gw_main_exit();
	gw_backend_close(b);
	gw_export_free(exp_);
	rmdir(dir);
	return check_report();
}
