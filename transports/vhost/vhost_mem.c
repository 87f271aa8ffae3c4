/*
 * The frontend's memory: regions from SET_MEM_TABLE / ADD_MEM_REG mapped
 * into this process, described twice (by guest-physical address for
 * descriptors, by QEMU's virtual address for rings), and the inflight
 * region of INFLIGHT_SHMFD.
 *
 * A snapshot (struct vhost_mem) never changes; a table change builds a new
 * one sharing the mappings that stay. Queues hold the guest-physical map,
 * whose release drops the snapshot and unmaps what no snapshot uses. The
 * mapping counts are touched on the main thread only: release runs there
 * too (queues give their last reference back through the main thread).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/guard.h"
#include "lib/log.h"
#include "lib/util.h"
#include "transports/vhost/vhost_internal.h"

static void mapping_put(struct vhost_mapping *mp)
{
	if (--mp->refs)
		return;
	gw_guard_del(mp->guard);
	munmap(mp->base, mp->len);
	free(mp);
}

static void mem_free(struct vhost_mem *m)
{
	for (unsigned i = 0; i < m->n; i++)
		mapping_put(m->m[i]);
	free(m->uva);
	free(m);
}

static void release_on_main(void *arg)
{
	struct virtio_memmap *g = arg;

	mem_free(g->owner);
	free(g);
}

/* The last reference to the guest-physical map: free the snapshot on the main thread. */
static void gpa_release(struct virtio_memmap *g)
{
	if (gw_worker_self()) {
		if (gw_main_call(release_on_main, g) == 0)
			return;
		gw_err("vhost-user-blk: cannot hand a memory table back to the main thread; leaking it");
		return;
	}
	release_on_main(g);
}

void vhost_mem_put(struct vhost_mem *m)
{
	if (m)
		virtio_mem_put(m->gpa);
}

static int map_region(const struct vhost_mem_region *r, int fd, struct vhost_mapping **out,
		      char *err, size_t errlen)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), end, aligned, delta, last;
	struct vhost_mapping *mp;
	struct stat st;
	void *base;

	if (r->memory_size == 0 ||
	    __builtin_add_overflow(r->guest_phys_addr, r->memory_size - 1, &last) ||
	    __builtin_add_overflow(r->userspace_addr, r->memory_size - 1, &last) ||
	    __builtin_add_overflow(r->mmap_offset, r->memory_size, &end) || end > INT64_MAX) {
		gw_seterr(
			err, errlen,
			"region gpa 0x%llx size 0x%llx uva 0x%llx offset 0x%llx is empty or wraps",
			(unsigned long long)r->guest_phys_addr, (unsigned long long)r->memory_size,
			(unsigned long long)r->userspace_addr, (unsigned long long)r->mmap_offset);
		return -EINVAL;
	}
	if (fstat(fd, &st) < 0 || (S_ISREG(st.st_mode) && (uint64_t)st.st_size < end)) {
		gw_seterr(err, errlen,
			  "region gpa 0x%llx: its file is %lld bytes, the region ends at %llu",
			  (unsigned long long)r->guest_phys_addr, (long long)st.st_size,
			  (unsigned long long)end);
		return -EINVAL;
	}
	aligned = r->mmap_offset & ~(page - 1);
	delta = r->mmap_offset - aligned;
	if (r->memory_size + delta > SIZE_MAX) {
		gw_seterr(err, errlen, "region of 0x%llx bytes is too large",
			  (unsigned long long)r->memory_size);
		return -EINVAL;
	}
	base = mmap(NULL, (size_t)(r->memory_size + delta), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_NORESERVE, fd, (off_t)aligned);
	if (base == MAP_FAILED) {
		int e = errno;

		gw_seterr(err, errlen, "cannot map region gpa 0x%llx (0x%llx bytes): %s",
			  (unsigned long long)r->guest_phys_addr,
			  (unsigned long long)r->memory_size, strerror(e));
		return e > 0 ? -e : -EIO;
	}
	mp = calloc(1, sizeof(*mp));
	if (!mp) {
		munmap(base, (size_t)(r->memory_size + delta));
		return -ENOMEM;
	}
	mp->guard = -1;
	/* A frontend that can shrink the file could otherwise SIGBUS the daemon. */
	if (gw_guard_needed(fd)) {
		gw_debug(
			"vhost-user-blk: memory region gpa 0x%llx (0x%llx bytes) is not sealed against shrinking: "
			"guarded against SIGBUS",
			(unsigned long long)r->guest_phys_addr, (unsigned long long)r->memory_size);
		mp->guard = gw_guard_add(base, (size_t)(r->memory_size + delta), fd,
					 vhost_mem_fault, base);
		if (mp->guard < 0) {
			int rc = mp->guard;

			if (rc == -ENOSPC)
				gw_seterr(
					err, errlen,
					"region gpa 0x%llx: more than %u unsealed memory regions are "
					"mapped (seal them against shrinking: QEMU memory-backend-memfd with seal=on)",
					(unsigned long long)r->guest_phys_addr, GW_GUARD_SLOTS);
			else
				gw_seterr(
					err, errlen,
					"region gpa 0x%llx: cannot guard it against shrinking: %s",
					(unsigned long long)r->guest_phys_addr, strerror(-rc));
			munmap(base, (size_t)(r->memory_size + delta));
			free(mp);
			return rc;
		}
	}
	mp->refs = 1;
	mp->base = base;
	mp->len = (size_t)(r->memory_size + delta);
	mp->gpa = r->guest_phys_addr;
	mp->size = r->memory_size;
	mp->uva = r->userspace_addr;
	mp->host = (uint8_t *)base + delta;
	*out = mp;
	return 0;
}

/* Add mapping mp to both maps of m (taking a reference). */
static int mem_add(struct vhost_mem *m, struct vhost_mapping *mp, char *err, size_t errlen)
{
	int rc;

	if (m->n >= VHOST_MAX_MEM_SLOTS) {
		gw_seterr(err, errlen, "more than %u memory regions", VHOST_MAX_MEM_SLOTS);
		return -ENOSPC;
	}
	rc = virtio_mem_add(m->gpa, VHOST_MAX_MEM_SLOTS, mp->gpa, mp->size, mp->host);
	if (rc == 0) {
		rc = virtio_mem_add(m->uva, VHOST_MAX_MEM_SLOTS, mp->uva, mp->size, mp->host);
		if (rc < 0) {
			/* Undo the first insertion (regions are unique by address). */
			for (unsigned i = 0; i < m->gpa->n; i++) {
				if (m->gpa->r[i].addr == mp->gpa) {
					memmove(&m->gpa->r[i], &m->gpa->r[i + 1],
						(m->gpa->n - i - 1) * sizeof(m->gpa->r[0]));
					m->gpa->n--;
					break;
				}
			}
		}
	}
	if (rc < 0) {
		gw_seterr(err, errlen,
			  "region gpa 0x%llx size 0x%llx uva 0x%llx overlaps another one",
			  (unsigned long long)mp->gpa, (unsigned long long)mp->size,
			  (unsigned long long)mp->uva);
		return -EINVAL;
	}
	mp->refs++;
	m->m[m->n++] = mp;
	return 0;
}

struct vhost_mem *vhost_mem_build(const struct vhost_mem *base, const struct vhost_mapping *skip,
				  const struct vhost_mem_region *r, const int *fds, unsigned n,
				  char *err, size_t errlen)
{
	struct vhost_mem *m = calloc(1, sizeof(*m));
	unsigned i = 0;
	int rc = -ENOMEM;

	if (!m)
		goto fail_fds;
	m->gpa = virtio_mem_new(VHOST_MAX_MEM_SLOTS, gpa_release, m);
	m->uva = virtio_mem_new(VHOST_MAX_MEM_SLOTS, NULL, NULL);
	if (!m->gpa || !m->uva) {
		free(m->gpa);
		free(m->uva);
		free(m);
		goto fail_fds;
	}
	for (unsigned k = 0; base && k < base->n; k++) {
		if (base->m[k] == skip)
			continue;
		rc = mem_add(m, base->m[k], err, errlen);
		if (rc < 0)
			goto fail;
	}
	for (; i < n; i++) {
		struct vhost_mapping *mp = NULL;

		rc = map_region(&r[i], fds[i], &mp, err, errlen);
		close(fds[i]);
		if (rc < 0 || !mp) {
			rc = rc < 0 ? rc : -EIO;
			i++;
			goto fail;
		}
		rc = mem_add(m, mp, err, errlen);
		mapping_put(mp); /* the snapshot holds it now, or nobody does */
		if (rc < 0) {
			i++;
			goto fail;
		}
	}
	return m;
fail:
	for (; i < n; i++)
		close(fds[i]);
	free(m->gpa);
	mem_free(m);
	if (!err || !*err)
		gw_seterr(err, errlen, "%s", strerror(-rc));
	return NULL;
fail_fds:
	for (i = 0; i < n; i++)
		close(fds[i]);
	gw_seterr(err, errlen, "out of memory");
	return NULL;
}

bool vhost_mem_owns(const struct vhost_mem *m, const void *base, uint64_t *gpa, uint64_t *size)
{
	for (unsigned i = 0; m && i < m->n; i++) {
		if (m->m[i]->base == base) {
			*gpa = m->m[i]->gpa;
			*size = m->m[i]->size;
			return true;
		}
	}
	return false;
}

const struct vhost_mapping *vhost_mem_match(const struct vhost_mem *m,
					    const struct vhost_mem_region *r)
{
	for (unsigned i = 0; m && i < m->n; i++)
		if (m->m[i]->gpa == r->guest_phys_addr && m->m[i]->size == r->memory_size &&
		    m->m[i]->uva == r->userspace_addr)
			return m->m[i];
	return NULL;
}

int vhost_rings(const struct vhost_mem *m, const struct vhost_vring *vr, struct vring_desc **desc,
		uint16_t **avail, uint8_t **used, char *err, size_t errlen)
{
	if ((vr->desc_ua & 15) || (vr->avail_ua & 1) || (vr->used_ua & 3)) {
		gw_seterr(err, errlen, "misaligned rings (desc 0x%llx, avail 0x%llx, used 0x%llx)",
			  (unsigned long long)vr->desc_ua, (unsigned long long)vr->avail_ua,
			  (unsigned long long)vr->used_ua);
		return -EFAULT;
	}
	*desc = virtio_mem_ptr(m->uva, vr->desc_ua, vring_desc_bytes(vr->num));
	*avail = virtio_mem_ptr(m->uva, vr->avail_ua, vring_avail_bytes(vr->num));
	*used = virtio_mem_ptr(m->uva, vr->used_ua, vring_used_bytes(vr->num));
	if (!*desc || !*avail || !*used) {
		gw_seterr(
			err, errlen,
			"rings of %u entries (desc 0x%llx, avail 0x%llx, used 0x%llx) are not inside the memory table",
			vr->num, (unsigned long long)vr->desc_ua, (unsigned long long)vr->avail_ua,
			(unsigned long long)vr->used_ua);
		return -EFAULT;
	}
	return 0;
}

/* ---- inflight region ---- */

void vhost_inflight_drop(struct vhost_conn *c)
{
	gw_guard_del(c->infl_guard);
	c->infl_guard = -1;
	if (c->infl_base)
		munmap(c->infl_base, c->infl_len);
	c->infl_base = NULL;
	c->infl = NULL;
	c->infl_len = 0;
	c->infl_queues = c->infl_qsize = 0;
}

static bool inflight_params_ok(uint16_t num_queues, uint16_t queue_size)
{
	return num_queues && num_queues <= VHOST_MAX_QUEUES && queue_size &&
	       queue_size <= VHOST_MAX_QUEUE_SIZE && gw_is_pow2(queue_size);
}

int vhost_inflight_new(struct vhost_conn *c, uint16_t num_queues, uint16_t queue_size, int *fd,
		       uint64_t *size)
{
	size_t len;
	void *p;
	int mfd;

	if (!inflight_params_ok(num_queues, queue_size))
		return -EINVAL;
	len = vq_inflight_size(queue_size) * num_queues;
	mfd = memfd_create("blkgw-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0)
		return -errno;
	if (ftruncate(mfd, (off_t)len) < 0) {
		int rc = -errno;

		close(mfd);
		return rc;
	}
	fcntl(mfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (p == MAP_FAILED) {
		int rc = -errno;

		close(mfd);
		return rc;
	}
	vhost_inflight_drop(c);
	c->infl_base = p;
	c->infl = p;
	c->infl_len = len;
	c->infl_queues = num_queues;
	c->infl_qsize = queue_size;
	*fd = mfd;
	*size = len;
	return 0;
}

int vhost_inflight_set(struct vhost_conn *c, const struct vhost_inflight_msg *m, int fd)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), need, end, aligned, delta;
	struct stat st;
	int guard;
	void *p;

	if (!inflight_params_ok(m->num_queues, m->queue_size)) {
		close(fd);
		return -EINVAL;
	}
	need = (uint64_t)vq_inflight_size(m->queue_size) * m->num_queues;
	if (m->mmap_size < need || m->mmap_offset % _Alignof(struct vq_inflight) ||
	    __builtin_add_overflow(m->mmap_offset, m->mmap_size, &end) || end > INT64_MAX ||
	    fstat(fd, &st) < 0 || (S_ISREG(st.st_mode) && (uint64_t)st.st_size < end)) {
		close(fd);
		return -EINVAL;
	}
	aligned = m->mmap_offset & ~(page - 1);
	delta = m->mmap_offset - aligned;
	p = mmap(NULL, (size_t)(need + delta), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		 (off_t)aligned);
	if (p == MAP_FAILED) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	guard = -1;
	if (gw_guard_needed(fd)) {
		guard = gw_guard_add(p, (size_t)(need + delta), fd, vhost_mem_fault, p);
		if (guard < 0) {
			close(fd);
			munmap(p, (size_t)(need + delta));
			return guard;
		}
	}
	close(fd);
	vhost_inflight_drop(c);
	c->infl_guard = guard;
	c->infl_base = p;
	c->infl_len = (size_t)(need + delta);
	c->infl = (uint8_t *)p + delta;
	c->infl_queues = m->num_queues;
	c->infl_qsize = m->queue_size;
	return 0;
}

struct vq_inflight *vhost_inflight_queue(struct vhost_conn *c, unsigned i, uint16_t num)
{
	if (!c->infl || i >= c->infl_queues)
		return NULL;
	if (num > c->infl_qsize) {
		gw_warn("%s: queue %u has %u entries but the inflight region only %u: no reconnect tracking",
			c->name, i, num, c->infl_qsize);
		return NULL;
	}
	return (struct vq_inflight *)(c->infl + vq_inflight_size(c->infl_qsize) * i);
}
