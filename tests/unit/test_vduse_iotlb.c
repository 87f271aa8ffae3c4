/*
 * The VDUSE IOVA cache without a kernel: mappings entered by hand (anonymous
 * mmaps standing in for IOTLB_GET_FD's), snapshots the queues would get,
 * UPDATE_IOTLB-style drops, and the lifetime rule: a dropped mapping stays
 * mapped while a snapshot holds it. Every lookup through a snapshot is
 * checked against its regions, 64-bit overflow included.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"
#include "transports/vduse/vduse_internal.h"

static struct vduse_map *fake(uint64_t start, uint64_t len)
{
	struct vduse_map *m = calloc(1, sizeof(*m));

	atomic_init(&m->refs, 1);
	m->start = start;
	m->last = start + len - 1;
	m->len = len;
	m->base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	m->host = m->base;
	return m;
}

int main(void)
{
	struct vduse_iotlb t = { .fd = -1 };
	struct virtio_memmap *s1, *s2;
	struct vduse_map *ring;
	struct iovec iov[4];
	unsigned n = 0;
	char err[256];

	/* Bounce region at 0 (64 KiB) and a ring region high up, entered out of order. */
	ring = fake(0x10000000, 8192);
	t.m[t.n++] = ring;
	t.m[t.n++] = fake(0, 65536);
	s1 = vduse_iotlb_snapshot(&t);
	CHECK(s1 != NULL);
	CHECK_EQ_U64(s1->n, 2);
	CHECK_EQ_U64(s1->r[0].addr, 0); /* sorted */
	CHECK_EQ_U64(s1->r[1].addr, 0x10000000);
	CHECK(virtio_mem_ptr(s1, 0x10000000, 8192) == ring->host);
	CHECK(virtio_mem_ptr(s1, 0x10000000, 8193) == NULL);        /* past the region */
	CHECK(virtio_mem_ptr(s1, 65536, 1) == NULL);                /* a hole */
	CHECK(virtio_mem_ptr(s1, UINT64_MAX - 1, 4) == NULL);       /* wraps */
	CHECK(virtio_mem_iov(s1, 65535, 2, iov, &n, 4) == -EFAULT); /* runs into the hole */
	n = 0;
	CHECK(virtio_mem_iov(s1, 4096, 4096, iov, &n, 4) == 0 && n == 1);
	/* Already cached: no ioctl needed (the fd is -1: one would fail). */
	CHECK(vduse_iotlb_need(&t, 0x10000000, 8192, err, sizeof(err)) == 0);
	CHECK(vduse_iotlb_need(&t, 100, 1000, err, sizeof(err)) == 0);
	CHECK(vduse_iotlb_need(&t, UINT64_MAX, 2, err, sizeof(err)) == -EINVAL);
	CHECK(vduse_iotlb_need(&t, 0x20000000, 1, err, sizeof(err)) == -EFAULT);
	CHECK(vduse_iotlb_bounce(&t, 65536, err, sizeof(err)) == 0); /* cached already */

	/* UPDATE_IOTLB over the ring: dropped from the cache, alive in s1. */
	vduse_iotlb_drop(&t, 0x10001000, 0x10001fff);
	CHECK_EQ_U64(t.n, 1);
	CHECK_EQ_U64(t.m[0]->start, 0);
	CHECK_EQ_U64(atomic_load(&ring->refs), 1);                /* s1's reference */
	memset(virtio_mem_ptr(s1, 0x10000000, 8192), 0xa5, 8192); /* still mapped */
	s2 = vduse_iotlb_snapshot(&t);
	CHECK_EQ_U64(s2->n, 1);
	CHECK(virtio_mem_ptr(s2, 0x10000000, 1) == NULL);
	virtio_mem_put(s1); /* unmaps the ring region */

	/* Reset: everything goes; s2 keeps the bounce region until it is put. */
	vduse_iotlb_drop(&t, 1, 0);
	CHECK_EQ_U64(t.n, 0);
	CHECK(virtio_mem_ptr(s2, 0, 65536) != NULL);
	virtio_mem_put(s2);
	return check_report();
}
