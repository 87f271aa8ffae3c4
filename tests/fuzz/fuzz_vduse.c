/*
 * libFuzzer target: the VDUSE device's message loop and IOVA cache
 * (transports/vduse/vduse_dev.c, vduse_iotlb.c) with this program playing
 * the kernel. The device fd is one end of a SOCK_SEQPACKET socketpair
 * (struct vduse_dev_request in, struct vduse_dev_response out, as in
 * tests/unit/test_vduse_msg.c), and the device's ioctls go to fake_ioctl()
 * below (struct vduse_iotlb's ioctl hook): VQ_GET_INFO and DEV_GET_FEATURES
 * answer what the input set, IOTLB_GET_FD hands out windows on one memfd
 * (the IOVA domain, sparse, 65 MiB) from an IOTLB table the input edits,
 * VQ_SETUP_KICKFD keeps the kick eventfd so the input can kick. A queue
 * that starts runs the real virtio-blk core on a worker against a 1 MiB
 * memory image, over rings and buffers the input wrote into the domain.
 *
 * Input: 2 header bytes (features: bit 0 INDIRECT_DESC, 1 EVENT_IDX,
 * 2 VERSION_1, 3 FLUSH, 4 NOTIFY_ON_EMPTY; then the IOTLB table's entry
 * count, 0-3, each 7 bytes as for op 3), then operations, each a byte
 * (low 3 bits the op) and its arguments, little-endian:
 *   0 a message: type byte (0 GET_VQ_STATE, 1 SET_STATUS, 2 UPDATE_IOTLB,
 *     other: that type), then GET_VQ_STATE: index byte; SET_STATUS: status
 *     byte; UPDATE_IOTLB: start and last, 8 bytes each. Its answer is
 *     awaited (a device that never answers is a hang: abort).
 *   1 poke: domain offset (4 bytes; file offset = IOVA in the kernel's
 *     windows), length byte, that many bytes.
 *   2 kick queue (op >> 3) & 1, and let the worker run a moment.
 *   3 IOTLB entry (op >> 3) & 3: first page (2 bytes), pages (1), perm (1),
 *     file page (2, reduced to fit the domain); an entry overlapping
 *     others replaces them, as the kernel's table never overlaps.
 *   4 queue (op >> 3) & 1's VQ_GET_INFO: ready, num (2), desc, driver,
 *     device (pages, 2 bytes each, + (op >> 4) * 64 bytes), avail index (2).
 *   5 a message of (op >> 3) bytes (short: refused).
 * At the end every queue is stopped and the device destroyed; a file
 * descriptor left open is reported as a leak (abort).
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/backend.h"
#include "fuzz.h"
#include "gateway/export.h"
#include "lib/log.h"
#include "lib/worker.h"
#include "transports/vduse/vduse_internal.h"

#define DISK     (1u << 20)
#define DOMAIN   (65ull << 20)
#define PAGE     4096ull
#define QUEUES   2u
#define QSIZE    256u
#define NENTRIES 4u

static struct gw_export *exp_;

/* The fake kernel's state. */
static struct {
	int domain; /* memfd: the IOVA domain's file */
	uint8_t *mem;
	struct vduse_iotlb_entry tlb[NENTRIES];
	bool tlb_on[NENTRIES];
	struct vduse_vq_info info[QUEUES];
	uint64_t features;
	int kick[QUEUES];
} k;

static void setup(void)
{
	static int done;

	if (done)
		return;
	done = 1;
	exp_ = fuzz_memory_export("fuzz_vduse", DISK, true);
	k.domain = memfd_create("fuzz-vduse-domain", MFD_CLOEXEC);
	if (k.domain < 0 || ftruncate(k.domain, (off_t)DOMAIN) < 0)
		abort();
	k.mem = mmap(NULL, DOMAIN, PROT_READ | PROT_WRITE, MAP_SHARED, k.domain, 0);
	if (k.mem == MAP_FAILED)
		abort();
}

static int fake_ioctl(int fd, unsigned long req, void *arg)
{
	(void)fd;
	if (req == VDUSE_IOTLB_GET_FD) {
		struct vduse_iotlb_entry *e = arg;

		for (unsigned i = 0; i < NENTRIES; i++)
			if (k.tlb_on[i] && k.tlb[i].start <= e->last && e->start <= k.tlb[i].last) {
				*e = k.tlb[i];
				return dup(k.domain);
			}
		errno = EINVAL;
		return -1;
	}
	if (req == VDUSE_VQ_GET_INFO) {
		struct vduse_vq_info *i = arg;

		if (i->index >= QUEUES) {
			errno = EINVAL;
			return -1;
		}
		*i = k.info[i->index];
		return 0;
	}
	if (req == VDUSE_DEV_GET_FEATURES) {
		memcpy(arg, &k.features, sizeof(k.features));
		return 0;
	}
	if (req == VDUSE_VQ_SETUP_KICKFD) {
		struct vduse_vq_eventfd *ev = arg;

		if (ev->index >= QUEUES) {
			errno = EINVAL;
			return -1;
		}
		if (k.kick[ev->index] >= 0)
			close(k.kick[ev->index]);
		k.kick[ev->index] = ev->fd >= 0 ? dup(ev->fd) : -1;
		return 0;
	}
	if (req == VDUSE_VQ_INJECT_IRQ)
		return 0;
	errno = ENOTTY;
	return -1;
}

static void set_entry(unsigned idx, const uint8_t **p, size_t *left)
{
	uint64_t start = fuzz_get(p, left, 2) * PAGE, pages = fuzz_get(p, left, 1) + 1;
	uint8_t perm = (uint8_t)fuzz_get(p, left, 1);
	uint64_t fpage = fuzz_get(p, left, 2), fpages = DOMAIN / PAGE;
	struct vduse_iotlb_entry e = { .start = start, .last = start + pages * PAGE - 1 };

	/* The kernel's windows lie inside the domain's file. */
	e.offset = (fpage % (fpages - pages + 1)) * PAGE;
	e.perm = perm;
	for (unsigned i = 0; i < NENTRIES; i++)
		if (k.tlb_on[i] && k.tlb[i].start <= e.last && e.start <= k.tlb[i].last)
			k.tlb_on[i] = false;
	k.tlb[idx] = e;
	k.tlb_on[idx] = true;
}

static void pump(unsigned rounds)
{
	for (unsigned i = 0; i < rounds; i++) {
		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		usleep(50);
	}
}

/* Run the loop until the device answers on fd (true) or FUZZ_HANG_MS pass. */
static bool answered(int fd)
{
	for (int t = 0; t < FUZZ_HANG_MS * 10; t++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		if (poll(&p, 1, 0) == 1)
			return true;
		usleep(100);
	}
	return false;
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

static void message(int fd, const uint8_t **p, size_t *left)
{
	static uint32_t id;
	struct vduse_dev_request req;
	struct vduse_dev_response resp;
	unsigned t = (unsigned)fuzz_get(p, left, 1);

	memset(&req, 0, sizeof(req));
	req.type = t; /* VDUSE_GET_VQ_STATE 0, SET_STATUS 1, UPDATE_IOTLB 2 */
	req.request_id = ++id;
	if (req.type == VDUSE_GET_VQ_STATE)
		req.vq_state.index = (uint32_t)fuzz_get(p, left, 1);
	else if (req.type == VDUSE_SET_STATUS)
		req.s.status = (uint8_t)fuzz_get(p, left, 1);
	else if (req.type == VDUSE_UPDATE_IOTLB) {
		req.iova.start = fuzz_get(p, left, 8);
		req.iova.last = fuzz_get(p, left, 8);
	}
	if (write(fd, &req, sizeof(req)) != sizeof(req))
		abort();
	if (!answered(fd)) {
		fprintf(stderr, "fuzz_vduse: no answer to message type %u\n", req.type);
		abort();
	}
	if (read(fd, &resp, sizeof(resp)) != sizeof(resp) || resp.request_id != req.request_id) {
		fprintf(stderr, "fuzz_vduse: a wrong answer to message type %u\n", req.type);
		abort();
	}
}

static bool idle(struct vduse_exp *x)
{
	for (int t = 0; t < FUZZ_HANG_MS * 10 && (x->pending || x->req_pending); t++) {
		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		usleep(100);
	}
	return !x->pending && !x->req_pending;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data;
	size_t left = size;
	struct vduse_exp *x;
	unsigned fds0, feat, n;
	int sv[2];

	setup();
	if (size < 2)
		return 0;
	fds0 = open_fds();
	memset(k.tlb_on, 0, sizeof(k.tlb_on));
	memset(k.info, 0, sizeof(k.info));
	k.kick[0] = k.kick[1] = -1;
	feat = (unsigned)fuzz_get(&p, &left, 1);
	k.features = (feat & 1 ? VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC) : 0) |
		     (feat & 2 ? VIRTIO_BIT(VIRTIO_RING_F_EVENT_IDX) : 0) |
		     (feat & 4 ? VIRTIO_BIT(VIRTIO_F_VERSION_1) : 0) |
		     (feat & 8 ? VIRTIO_BIT(VIRTIO_BLK_F_FLUSH) : 0) |
		     (feat & 16 ? VIRTIO_BIT(VIRTIO_F_NOTIFY_ON_EMPTY) : 0);
	n = (unsigned)fuzz_get(&p, &left, 1) % NENTRIES;
	for (unsigned i = 0; i < n; i++)
		set_entry(i, &p, &left);

	x = calloc(1, sizeof(*x));
	if (!x)
		abort();
	x->exp = exp_;
	x->oc.queues = QUEUES;
	x->oc.queue_size = QSIZE;
	x->o = &x->oc;
	x->ctl_fd = -1;
	snprintf(x->name, sizeof(x->name), "fuzz");
	snprintf(x->log, sizeof(x->log), "vduse fuzz");
	for (unsigned i = 0; i < VDUSE_MAX_QUEUES; i++) {
		x->vq[i].x = x;
		x->vq[i].index = i;
	}
	if (vblk_dev_init(&x->dev, exp_, NULL, QUEUES, QSIZE) < 0 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	x->dev_fd = sv[0];
	x->iotlb.fd = sv[0];
	x->iotlb.ioctl = fake_ioctl;
	vduse_dev_serve(x);

	while (left) {
		unsigned op = (unsigned)fuzz_get(&p, &left, 1);

		switch (op & 7) {
		case 0:
			message(sv[1], &p, &left);
			break;
		case 1: {
			uint64_t off = fuzz_get(&p, &left, 4) % (DOMAIN - 256);
			size_t len = (size_t)fuzz_get(&p, &left, 1);

			if (len > left)
				len = left;
			memcpy(k.mem + off, p, len);
			p += len;
			left -= len;
			break;
		}
		case 2: {
			uint64_t one = 1;
			int fd = k.kick[(op >> 3) & 1];

			if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
				abort();
			pump(4);
			break;
		}
		case 3:
			set_entry((op >> 3) % NENTRIES, &p, &left);
			break;
		case 4: {
			struct vduse_vq_info *i = &k.info[(op >> 3) & 1];
			uint64_t extra = (op >> 4) * 64;

			i->index = (op >> 3) & 1;
			i->ready = (uint8_t)fuzz_get(&p, &left, 1);
			i->num = (uint32_t)fuzz_get(&p, &left, 2);
			i->desc_addr = fuzz_get(&p, &left, 2) * PAGE + extra;
			i->driver_addr = fuzz_get(&p, &left, 2) * PAGE + extra;
			i->device_addr = fuzz_get(&p, &left, 2) * PAGE + extra;
			i->split.avail_index = (uint16_t)fuzz_get(&p, &left, 2);
			break;
		}
		case 5: {
			uint8_t short_msg[32] = { 0 };

			if (write(sv[1], short_msg, op >> 3) < 0)
				abort();
			pump(2);
			break;
		}
		default:
			break;
		}
	}

	/* Stop every queue (after what is in flight), then tear the device down. */
	if (!idle(x)) {
		fprintf(stderr, "fuzz_vduse: a message is never answered\n");
		abort();
	}
	vduse_dev_stop_queues(x);
	if (!idle(x)) {
		fprintf(stderr, "fuzz_vduse: the queues never stop\n");
		abort();
	}
	if (getenv("FUZZ_VERBOSE"))
		for (unsigned i = 0; i < QUEUES; i++)
			if (k.info[i].device_addr + 4 <= DOMAIN)
				fprintf(stderr, "fuzz_vduse: queue %u: used index %u\n", i,
					*(uint16_t *)(k.mem + k.info[i].device_addr + 2));
	vduse_dev_destroy(x);
	close(sv[1]);
	for (unsigned i = 0; i < QUEUES; i++)
		if (k.kick[i] >= 0)
			close(k.kick[i]);
	free(x);
	/* The whole domain back to zeros (pages given back): the next input starts clean. */
	if (fallocate(k.domain, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)DOMAIN) < 0)
		memset(k.mem, 0, DOMAIN);
	if (open_fds() != fds0) {
		fprintf(stderr, "fuzz_vduse: %u file descriptors before, %u after\n", fds0,
			open_fds());
		abort();
	}
	return 0;
}
