/*
 * libFuzzer target: the split-virtqueue walk shared by every virtio
 * transport (transports/virtio/vq.c): the rings, descriptor chains and
 * indirect tables come from the input, and so does the address map
 * (regions at arbitrary addresses, 64-bit ends included, as vhost-user
 * memory tables and VDUSE IOTLB entries make them).
 *
 * Input: byte 0 (bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bit 2
 * NOTIFY_ON_EMPTY, bits 3-5 log2 of the ring size), byte 1 (regions, 1-4),
 * then per region 8 bytes of address, 2 of length (x16) and 2 of offset
 * into guest memory (x16), then 2 bytes of starting avail index; the rest
 * fills the guest memory (a 64 KiB heap block: ASan sees any access outside).
 * Descriptor table at 0, avail ring at 4 KiB, used ring at 8 KiB.
 *
 * Every popped chain's readable buffers are read and writable ones written,
 * then the head is completed, until the ring is empty or broken.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "lib/log.h"
#include "transports/virtio/virtio_mem.h"
#include "transports/virtio/vq.h"

#define MEM      (64u << 10)
#define OFF_AVL  4096u
#define OFF_USED 8192u
#define MAXIOV   64

static uint64_t get(const uint8_t **p, size_t *left, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++) {
		v = v << 8 | (*left ? **p : 0);
		if (*left) {
			(*p)++;
			(*left)--;
		}
	}
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	const uint8_t *p = data;
	size_t left = size;
	uint8_t *mem;
	struct virtio_memmap *map;
	struct vq q;
	struct iovec iov[MAXIOV];
	struct vq_elem e;
	unsigned flags, nreg;
	uint8_t sink[256];

	if (!init) {
		gw_log_set_level(GW_LOG_ERR);
		init = 1;
	}
	if (size < 2)
		return 0;
	flags = (unsigned)get(&p, &left, 1);
	nreg = (unsigned)get(&p, &left, 1) % 4 + 1;
	mem = calloc(1, MEM);
	map = virtio_mem_new(nreg, NULL, NULL);
	if (!mem || !map)
		abort();
	for (unsigned i = 0; i < nreg; i++) {
		uint64_t addr = get(&p, &left, 8);
		uint64_t len = get(&p, &left, 2) * 16;
		uint64_t off = get(&p, &left, 2) * 16 % MEM;

		if (len > MEM - off)
			len = MEM - off;
		/* Refused (empty, overflowing, overlapping) regions are simply left out. */
		virtio_mem_add(map, nreg, addr, len, mem + off);
	}
	memset(&q, 0, sizeof(q));
	q.num = (uint16_t)(1u << ((flags >> 3) & 7));
	q.indirect = flags & 1;
	q.event_idx = flags & 2;
	q.notify_on_empty = flags & 4;
	q.desc = (struct vring_desc *)mem;
	q.avail = (uint16_t *)(mem + OFF_AVL);
	q.used = mem + OFF_USED;
	q.mem = map;
	q.name = "fuzz";
	{
		uint16_t last = (uint16_t)get(&p, &left, 2);

		memcpy(mem, p, left < MEM ? left : MEM);
		if (vq_init(&q, last) < 0)
			abort();
	}
	for (unsigned round = 0; round < 2u * q.num + 2; round++) {
		int rc = vq_pop(&q, &e, iov, MAXIOV);

		if (rc <= 0)
			break;
		if (e.nout + e.nin > MAXIOV)
			abort();
		for (unsigned i = 0; i < e.nout; i++)
			for (size_t o = 0; o < iov[i].iov_len; o += sizeof(sink)) {
				size_t n = iov[i].iov_len - o;

				memcpy(sink, (uint8_t *)iov[i].iov_base + o,
				       n < sizeof(sink) ? n : sizeof(sink));
			}
		for (unsigned i = e.nout; i < e.nout + e.nin; i++)
			memset(iov[i].iov_base, 0xa5, iov[i].iov_len);
		if (e.last_in)
			*e.last_in = 0;
		vq_push(&q, e.head, (uint32_t)(e.in_len > UINT32_MAX ? UINT32_MAX : e.in_len));
		vq_should_notify(&q);
	}
	if (!q.broken) {
		vq_arm_kick(&q);
		vq_pending(&q);
		vq_suppress_kicks(&q);
	}
	vq_fini(&q);
	virtio_mem_put(map);
	free(mem);
	return 0;
}
