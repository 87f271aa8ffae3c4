/*
 * IOVA translation for a VDUSE device: a cache of IOTLB_GET_FD mmaps (the
 * bounce region at IOVA 0 and the coherent allocations holding the rings),
 * filled lazily, dropped on UPDATE_IOTLB and reset. The queues never see the
 * cache: they get immutable snapshots (struct virtio_memmap) that hold a
 * reference on every mapping in them, so a mapping dropped from the cache is
 * unmapped only when the last request using it has completed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/vduse/vduse_internal.h"

int vduse_ioctl(const struct vduse_iotlb *t, int fd, unsigned long req, void *arg)
{
	return t->ioctl ? t->ioctl(fd, req, arg) : ioctl(fd, req, arg);
}

static void map_put(struct vduse_map *m)
{
	if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
		return;
	munmap(m->base, m->len);
	free(m);
}

static const struct vduse_map *cache_find(const struct vduse_iotlb *t, uint64_t iova)
{
	for (unsigned i = 0; i < t->n; i++)
		if (iova >= t->m[i]->start && iova <= t->m[i]->last)
			return t->m[i];
	return NULL;
}

/*
 * Only read-write regions are used: a snapshot has no permissions, and a
 * queue writes used rings and read buffers wherever the driver points, so
 * a write into a read-only mapping would crash the daemon (SIGSEGV). The
 * kernel's own DMA (virtio_vdpa: bounce region, coherent rings) maps
 * everything read-write; a region that is not is refused.
 */
static int prot_of(uint8_t perm)
{
	return perm == VDUSE_ACCESS_RW ? PROT_READ | PROT_WRITE : -1;
}

/* Map the IOTLB region holding iova into the cache. */
static int fetch(struct vduse_iotlb *t, uint64_t iova, char *err, size_t errlen)
{
	struct vduse_iotlb_entry e = { .start = iova, .last = iova };
	struct vduse_map *m;
	long page = sysconf(_SC_PAGESIZE);
	int fd, prot;
	void *p;

	if (t->n == VDUSE_MAX_MAPS) {
		gw_seterr(err, errlen, "more than %u IOVA regions in use", VDUSE_MAX_MAPS);
		return -ENOSPC;
	}
	fd = vduse_ioctl(t, t->fd, VDUSE_IOTLB_GET_FD, &e);
	if (fd < 0) {
		gw_seterr(err, errlen, "IOVA 0x%llx is not mapped (IOTLB_GET_FD: %s)",
			  (unsigned long long)iova, strerror(errno));
		return -EFAULT;
	}
	prot = prot_of(e.perm);
	if (e.last < e.start || iova < e.start || iova > e.last || prot < 0 ||
	    e.last - e.start >= SIZE_MAX || e.offset % (uint64_t)page) {
		close(fd);
		gw_seterr(
			err, errlen,
			"IOTLB_GET_FD for 0x%llx gave a bad region [0x%llx, 0x%llx] at offset 0x%llx, perm %u "
			"(only read-write regions are served)",
			(unsigned long long)iova, (unsigned long long)e.start,
			(unsigned long long)e.last, (unsigned long long)e.offset, e.perm);
		return -EPROTO;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		close(fd);
		return -ENOMEM;
	}
	m->len = (size_t)(e.last - e.start + 1);
	p = mmap(NULL, m->len, prot, MAP_SHARED, fd, (off_t)e.offset);
	close(fd);
	if (p == MAP_FAILED) {
		int rc = -errno;

		gw_seterr(err, errlen, "mmap of IOVA [0x%llx, 0x%llx]: %s",
			  (unsigned long long)e.start, (unsigned long long)e.last, strerror(-rc));
		free(m);
		return rc;
	}
	atomic_init(&m->refs, 1);
	m->start = e.start;
	m->last = e.last;
	m->base = p;
	m->host = p;
	t->m[t->n++] = m;
	return 0;
}

int vduse_iotlb_need(struct vduse_iotlb *t, uint64_t iova, uint64_t len, char *err, size_t errlen)
{
	uint64_t end;
	int rc;

	if (len == 0 || __builtin_add_overflow(iova, len - 1, &end)) {
		gw_seterr(err, errlen, "IOVA range 0x%llx + 0x%llx wraps", (unsigned long long)iova,
			  (unsigned long long)len);
		return -EINVAL;
	}
	/* Ranges may span adjacent regions: cover each piece. */
	while (iova <= end) {
		const struct vduse_map *m = cache_find(t, iova);

		if (!m) {
			rc = fetch(t, iova, err, errlen);
			if (rc < 0)
				return rc;
			m = t->m[t->n - 1];
		}
		if (m->last >= end)
			break;
		iova = m->last + 1;
	}
	return 0;
}

void vduse_iotlb_drop(struct vduse_iotlb *t, uint64_t start, uint64_t last)
{
	unsigned k = 0;

	for (unsigned i = 0; i < t->n; i++) {
		struct vduse_map *m = t->m[i];

		if (start > last || (m->start <= last && start <= m->last))
			map_put(m);
		else
			t->m[k++] = m;
	}
	t->n = k;
}

int vduse_iotlb_bounce(struct vduse_iotlb *t, uint64_t size, char *err, size_t errlen)
{
	struct vduse_iotlb_entry e;
	struct vduse_map *m;
	void *p;
	int fd;

	if (cache_find(t, 0))
		return 0;
	if (vduse_iotlb_need(t, 0, 1, err, errlen) == 0)
		return 0;
	/*
	 * The kernel enters the bounce region into the IOTLB at the driver's
	 * first streaming map, after DRIVER_OK. Every region is a window on one
	 * file (the IOVA domain's, file offset = IOVA), so map [0, size) of the
	 * file a ring's region gave; the domain fills each page as it bounces.
	 */
	if (t->n == 0 || t->n == VDUSE_MAX_MAPS || size == 0 || size > SIZE_MAX) {
		gw_seterr(err, errlen, "no ring region to reach the bounce region through");
		return -ENOENT;
	}
	memset(&e, 0, sizeof(e));
	e.start = e.last = t->m[0]->start;
	fd = vduse_ioctl(t, t->fd, VDUSE_IOTLB_GET_FD, &e);
	if (fd < 0) {
		gw_seterr(err, errlen, "IOTLB_GET_FD 0x%llx: %s", (unsigned long long)e.start,
			  strerror(errno));
		return -errno;
	}
	if (e.offset != e.start || size > t->m[0]->start) {
		close(fd);
		gw_seterr(
			err, errlen,
			"the ring region at 0x%llx is not a window on the IOVA domain (offset 0x%llx), "
			"or it overlaps the bounce region of 0x%llx bytes",
			(unsigned long long)e.start, (unsigned long long)e.offset,
			(unsigned long long)size);
		return -EPROTO;
	}
	p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		gw_seterr(err, errlen, "mmap of the bounce region: %s", strerror(errno));
		return -errno;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		munmap(p, (size_t)size);
		return -ENOMEM;
	}
	atomic_init(&m->refs, 1);
	m->start = 0;
	m->last = size - 1;
	m->base = p;
	m->len = (size_t)size;
	m->host = p;
	t->m[t->n++] = m;
	return 0;
}

static void snapshot_release(struct virtio_memmap *mm)
{
	struct vduse_map **maps = mm->owner;

	for (unsigned i = 0; i < mm->n; i++)
		map_put(maps[i]);
	free(maps);
	free(mm);
}

struct virtio_memmap *vduse_iotlb_snapshot(struct vduse_iotlb *t)
{
	struct vduse_map **maps = calloc(t->n ? t->n : 1, sizeof(*maps));
	struct virtio_memmap *mm;

	if (!maps)
		return NULL;
	mm = virtio_mem_new(t->n, snapshot_release, maps);
	if (!mm) {
		free(maps);
		return NULL;
	}
	for (unsigned i = 0; i < t->n; i++) {
		struct vduse_map *m = t->m[i];

		if (virtio_mem_add(mm, t->n, m->start, m->last - m->start + 1, m->host) < 0)
			continue; /* cannot happen: IOTLB regions do not overlap */
		atomic_fetch_add(&m->refs, 1);
	}
	/* r[] is sorted by address; keep the references in the same order. */
	for (unsigned i = 0; i < mm->n; i++)
		for (unsigned j = 0; j < t->n; j++)
			if (t->m[j]->start == mm->r[i].addr)
				maps[i] = t->m[j];
	return mm;
}
