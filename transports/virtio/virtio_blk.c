#include "transports/virtio/virtio_blk.h"

#include <errno.h>
#include <string.h>

#include "backends/backend.h"
#include "lib/util.h"

int vblk_dev_init(struct vblk_dev *d, struct gw_export *e, const char *serial, uint16_t num_queues,
		  uint16_t queue_size)
{
	uint32_t pref;

	memset(d, 0, sizeof(*d));
	if (queue_size < 4 || !gw_is_pow2(queue_size) || num_queues == 0)
		return -EINVAL;
	d->exp = e;
	serial = serial ? serial : e->image;
	for (size_t i = 0; i < sizeof(d->serial) && serial[i]; i++)
		d->serial[i] = serial[i];
	d->capacity = e->size / VIRTIO_BLK_SECTOR;
	d->blk_size = GW_MAX(VIRTIO_BLK_SECTOR, e->min_block);
	if (!gw_is_pow2(d->blk_size))
		return -EINVAL;
	pref = GW_MAX(e->pref_block, d->blk_size);
	while (d->phys_exp < 3 && ((uint64_t)d->blk_size << (d->phys_exp + 1)) <= pref)
		d->phys_exp++;
	d->seg_max = (uint32_t)queue_size - 2;
	d->max_data = e->max_xfer;
	d->num_queues = num_queues;
	/* Header + data + status, plus room for buffers split across memory regions. */
	d->iov_max = d->seg_max + 2 + 16;
	d->features = VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VIRTIO_RING_F_INDIRECT_DESC) |
		      VIRTIO_BIT(VIRTIO_RING_F_EVENT_IDX) | VIRTIO_BIT(VIRTIO_BLK_F_SEG_MAX) |
		      VIRTIO_BIT(VIRTIO_BLK_F_BLK_SIZE) | VIRTIO_BIT(VIRTIO_BLK_F_FLUSH) |
		      VIRTIO_BIT(VIRTIO_BLK_F_TOPOLOGY) | VIRTIO_BIT(VIRTIO_BLK_F_MQ);
	if (e->read_only)
		d->features |= VIRTIO_BIT(VIRTIO_BLK_F_RO);
	else
		d->features |= VIRTIO_BIT(VIRTIO_BLK_F_DISCARD) |
			       VIRTIO_BIT(VIRTIO_BLK_F_WRITE_ZEROES);
	return 0;
}

int vblk_dev_init_dead(struct vblk_dev *d, uint16_t num_queues, uint16_t queue_size)
{
	memset(d, 0, sizeof(*d));
	if (queue_size < 4 || !gw_is_pow2(queue_size) || num_queues == 0)
		return -EINVAL;
	d->blk_size = VIRTIO_BLK_SECTOR;
	d->seg_max = (uint32_t)queue_size - 2;
	d->num_queues = num_queues;
	d->iov_max = d->seg_max + 2 + 16;
	d->fail_io = true;
	return 0;
}

void vblk_config(const struct vblk_dev *d, uint8_t cfg[VBLK_CONFIG_SIZE])
{
	uint32_t align = d->blk_size / VIRTIO_BLK_SECTOR;
	bool rw = !d->exp->read_only;

	memset(cfg, 0, VBLK_CONFIG_SIZE);
	virtio_put64(cfg + VBLK_CFG_CAPACITY, d->capacity);
	virtio_put32(cfg + VBLK_CFG_SEG_MAX, d->seg_max);
	virtio_put32(cfg + VBLK_CFG_BLK_SIZE, d->blk_size);
	cfg[VBLK_CFG_PHYS_BLOCK_EXP] = d->phys_exp;
	cfg[VBLK_CFG_ALIGNMENT_OFFSET] = 0;
	virtio_put16(cfg + VBLK_CFG_MIN_IO_SIZE, (uint16_t)(1u << d->phys_exp));
	virtio_put32(cfg + VBLK_CFG_OPT_IO_SIZE, 0);
	virtio_put16(cfg + VBLK_CFG_NUM_QUEUES, d->num_queues);
	if (rw) {
		virtio_put32(cfg + VBLK_CFG_MAX_DISCARD_SECTORS, VBLK_MAX_SEG_SECTORS);
		virtio_put32(cfg + VBLK_CFG_MAX_DISCARD_SEG, VBLK_MAX_SEGS);
		virtio_put32(cfg + VBLK_CFG_DISCARD_ALIGNMENT, align);
		virtio_put32(cfg + VBLK_CFG_MAX_WZ_SECTORS, VBLK_MAX_SEG_SECTORS);
		virtio_put32(cfg + VBLK_CFG_MAX_WZ_SEG, VBLK_MAX_SEGS);
		cfg[VBLK_CFG_WZ_MAY_UNMAP] = 1;
	}
}

uint8_t vblk_status(int result)
{
	if (result == 0)
		return VIRTIO_BLK_S_OK;
	if (result == -EOPNOTSUPP) /* == -ENOTSUP on Linux */
		return VIRTIO_BLK_S_UNSUPP;
	return VIRTIO_BLK_S_IOERR;
}

static void finish(struct vblk_req *r, uint8_t status, uint32_t used_len)
{
	r->status = status;
	r->used_len = used_len;
	*r->elem.last_in = status;
	r->done(r);
}

/*
 * Drop `skip` bytes from the front of iov[*first .. end): adjusts the entry
 * where the skip ends and returns the new first index.
 */
static unsigned iov_skip(struct iovec *iov, unsigned first, unsigned end, size_t skip)
{
	while (skip && first < end) {
		if (iov[first].iov_len <= skip) {
			skip -= iov[first].iov_len;
			first++;
		} else {
			iov[first].iov_base = (uint8_t *)iov[first].iov_base + skip;
			iov[first].iov_len -= skip;
			skip = 0;
		}
	}
	return first;
}

/* Drop `trim` bytes from the back of iov[first .. *end). */
static void iov_trim(struct iovec *iov, unsigned first, unsigned *end, size_t trim)
{
	while (trim && *end > first) {
		struct iovec *v = &iov[*end - 1];

		if (v->iov_len <= trim) {
			trim -= v->iov_len;
			(*end)--;
		} else {
			v->iov_len -= trim;
			trim = 0;
		}
	}
}

static void rw_done(struct gw_io *io)
{
	struct vblk_req *r = container_of(io, struct vblk_req, io);
	uint8_t st = vblk_status(io->result);

	finish(r, st,
	       r->type == VIRTIO_BLK_T_IN && st == VIRTIO_BLK_S_OK ? (uint32_t)io->len + 1 : 1);
}

static void submit(struct vblk_req *r)
{
	r->io.done = rw_done;
	if (gw_export_submit(r->dev->exp, r->ioq, &r->io))
		rw_done(&r->io);
}

/* True when [sector, sector + bytes/512) lies within the device. */
static bool in_range(const struct vblk_dev *d, uint64_t sector, uint64_t bytes)
{
	uint64_t nsec = bytes / VIRTIO_BLK_SECTOR;

	return sector <= d->capacity && nsec <= d->capacity - sector;
}

static void do_rw(const struct vblk_dev *d, struct vblk_req *r, uint64_t sector)
{
	struct vq_elem *e = &r->elem;
	unsigned first, end;
	uint64_t len;

	if (r->type == VIRTIO_BLK_T_IN) {
		first = e->nout;
		end = e->nout + e->nin;
		len = e->in_len - 1;
		iov_trim(r->iov, first, &end, 1);
	} else {
		first = iov_skip(r->iov, 0, e->nout, VIRTIO_BLK_HDR_SIZE);
		end = e->nout;
		len = e->out_len - VIRTIO_BLK_HDR_SIZE;
	}
	if (len % VIRTIO_BLK_SECTOR || len > d->max_data || !in_range(d, sector, len)) {
		finish(r, VIRTIO_BLK_S_IOERR, 1);
		return;
	}
	r->io.op = r->type == VIRTIO_BLK_T_IN ? GW_OP_READ : GW_OP_WRITE;
	r->io.flags = 0;
	r->io.offset = sector * VIRTIO_BLK_SECTOR;
	r->io.len = len;
	r->io.iov = &r->iov[first];
	r->io.iovcnt = end - first;
	submit(r);
}

static void get_id(const struct vblk_dev *d, struct vblk_req *r)
{
	struct vq_elem *e = &r->elem;
	size_t n = (size_t)GW_MIN(e->in_len - 1, (uint64_t)VIRTIO_BLK_ID_BYTES);

	gw_iov_from_buf(&r->iov[e->nout], e->nin, 0, d->serial, n);
	finish(r, VIRTIO_BLK_S_OK, (uint32_t)n + 1);
}

static void seg_run(struct vblk_req *r);

static void seg_done(struct gw_io *io)
{
	struct vblk_req *r = container_of(io, struct vblk_req, io);

	if (io->result < 0) {
		finish(r, vblk_status(io->result), 1);
		return;
	}
	seg_run(r);
}

/* Run the remaining segments one after another (inline completions loop here). */
static void seg_run(struct vblk_req *r)
{
	while (r->seg < r->nseg) {
		const struct vblk_seg *s = &r->segs[r->seg++];

		r->io.op = r->type == VIRTIO_BLK_T_DISCARD ? GW_OP_TRIM : GW_OP_WRITE_ZEROES;
		r->io.flags = r->type == VIRTIO_BLK_T_WRITE_ZEROES &&
					      !(s->flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
				      ? GW_IO_NO_UNMAP
				      : 0;
		r->io.offset = s->offset;
		r->io.len = s->len;
		r->io.iov = NULL;
		r->io.iovcnt = 0;
		r->io.done = seg_done;
		if (!gw_export_submit(r->dev->exp, r->ioq, &r->io))
			return; /* seg_done continues */
		if (r->io.result < 0) {
			finish(r, vblk_status(r->io.result), 1);
			return;
		}
	}
	finish(r, VIRTIO_BLK_S_OK, 1);
}

static void discard_zeroes(const struct vblk_dev *d, struct vblk_req *r)
{
	struct vq_elem *e = &r->elem;
	uint64_t len = e->out_len - VIRTIO_BLK_HDR_SIZE;
	uint64_t feature = r->type == VIRTIO_BLK_T_DISCARD ? VIRTIO_BLK_F_DISCARD
							   : VIRTIO_BLK_F_WRITE_ZEROES;
	unsigned n;

	if (!(d->features & VIRTIO_BIT(feature)) || len == 0 || len % VIRTIO_BLK_SEG_SIZE ||
	    len / VIRTIO_BLK_SEG_SIZE > VBLK_MAX_SEGS) {
		finish(r, VIRTIO_BLK_S_UNSUPP, 1);
		return;
	}
	n = (unsigned)(len / VIRTIO_BLK_SEG_SIZE);
	for (unsigned i = 0; i < n; i++) {
		uint8_t raw[VIRTIO_BLK_SEG_SIZE];
		uint64_t sector;
		uint32_t nsec, flags;

		gw_iov_to_buf(raw, r->iov, e->nout,
			      VIRTIO_BLK_HDR_SIZE + (size_t)i * VIRTIO_BLK_SEG_SIZE, sizeof(raw));
		sector = virtio_get64(raw);
		nsec = virtio_get32(raw + 8);
		flags = virtio_get32(raw + 12);
		if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) ||
		    (r->type == VIRTIO_BLK_T_DISCARD &&
		     (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))) {
			finish(r, VIRTIO_BLK_S_UNSUPP, 1);
			return;
		}
		if (nsec > VBLK_MAX_SEG_SECTORS ||
		    !in_range(d, sector, (uint64_t)nsec * VIRTIO_BLK_SECTOR)) {
			finish(r, VIRTIO_BLK_S_IOERR, 1);
			return;
		}
		r->segs[i].offset = sector * VIRTIO_BLK_SECTOR;
		r->segs[i].len = (uint64_t)nsec * VIRTIO_BLK_SECTOR;
		r->segs[i].flags = flags;
	}
	r->nseg = (uint16_t)n;
	r->seg = 0;
	seg_run(r);
}

int vblk_req_start(const struct vblk_dev *d, struct vblk_req *r)
{
	struct vq_elem *e = &r->elem;
	uint8_t hdr[VIRTIO_BLK_HDR_SIZE];
	uint64_t sector;

	if (!e->last_in)
		return -EPROTO;
	r->dev = d;
	r->nseg = r->seg = 0;
	if (d->fail_io) {
		finish(r, VIRTIO_BLK_S_IOERR, 1);
		return 0;
	}
	if (e->truncated || e->out_len < VIRTIO_BLK_HDR_SIZE) {
		/* Too many buffers for our iovecs (beyond seg_max), or no whole header. */
		finish(r, VIRTIO_BLK_S_IOERR, 1);
		return 0;
	}
	gw_iov_to_buf(hdr, r->iov, e->nout, 0, sizeof(hdr));
	r->type = virtio_get32(hdr) & ~VIRTIO_BLK_T_BARRIER;
	sector = virtio_get64(hdr + 8);

	switch (r->type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		do_rw(d, r, sector);
		break;
	case VIRTIO_BLK_T_FLUSH:
		r->io.op = GW_OP_FLUSH;
		r->io.flags = 0;
		r->io.offset = 0;
		r->io.len = 0;
		r->io.iov = NULL;
		r->io.iovcnt = 0;
		submit(r);
		break;
	case VIRTIO_BLK_T_GET_ID:
		get_id(d, r);
		break;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		discard_zeroes(d, r);
		break;
	default:
		finish(r, VIRTIO_BLK_S_UNSUPP, 1);
		break;
	}
	return 0;
}
