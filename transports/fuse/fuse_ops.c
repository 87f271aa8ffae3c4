/*
 * FUSE requests on the one-file filesystem: the root node is the image.
 * Decoding and answering are the same for both carriers (the read loop and
 * io_uring): the carrier hands over the request header, the op's fixed
 * argument and the payload, and gets the reply back through q->reply().
 *
 * Data ops go through the checked layer; the kernel's ranges are clipped at
 * the end of the image (reads) and rounded out to the image's block size
 * (reads; a misaligned O_DIRECT write gets EINVAL, as on a block device). A
 * misaligned buffered write is read-modify-written: the kernel sends
 * buffered writes through (no writeback cache, see docs/transports/fuse.md)
 * one at a time per file under its inode lock, so two of them never race
 * on one block.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "transports/fuse/fuse_internal.h"

#define ATTR_VALID_S 1 /* the size never changes; block counts may lag a second */

static void reply_err(struct fuse_req *r, int err)
{
	fuse_reply(r, err, NULL, 0, NULL, 0);
}

/*
 * Extents walks: GETATTR's allocated blocks (so du tells the truth) and
 * LSEEK's next data or hole go query by query through
 * gw_export_extents_submit, so a backend whose map is on a network (rbd)
 * answers later while the worker serves other requests; local backends
 * answer inline and the walk runs as a loop.
 */
struct walk {
	struct fuse_req *r;
	struct gw_ext_req x;
	struct gw_extents ex;
	uint64_t pos;  /* where the next query starts */
	uint64_t off;  /* LSEEK: the offset asked for */
	uint64_t used; /* GETATTR: allocated bytes found so far */
	bool seek, want_data;
	struct gw_extent v[64];
};

static void fill_attr(const struct fuse_exp *x, uint64_t allocated, struct fuse_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->ino = FUSE_ROOT_ID;
	a->size = x->exp->size;
	a->blocks = (allocated + 511) / 512;
	a->mode = x->mode_bits;
	a->nlink = 1;
	a->uid = x->uid;
	a->gid = x->gid;
	a->blksize = GW_MAX(4096u, x->exp->pref_block);
	a->atime = a->mtime = a->ctime = x->start_time;
}

static void attr_answer(struct fuse_req *r, uint64_t allocated)
{
	struct fuse_attr_out out = { .attr_valid = ATTR_VALID_S };

	fill_attr(r->q->x, allocated, &out.attr);
	fuse_reply(r, 0, &out, sizeof(out), NULL, 0);
}

static void seek_answer(struct fuse_req *r, uint64_t offset)
{
	struct fuse_lseek_out out = { .offset = offset };

	fuse_reply(r, 0, &out, sizeof(out), NULL, 0);
}

/* The query k->x answered: take its extents. False once the walk has replied. */
static bool walk_take(struct walk *k)
{
	struct gw_export *e = k->r->q->x->exp;
	struct gw_extents *ex = &k->ex;

	if (!k->seek) {
		/* An unreadable map counts the whole image: du overstates, never understates. */
		if (k->x.result < 0 || ex->end <= k->pos) {
			attr_answer(k->r, e->size);
			return false;
		}
		for (size_t i = 0; i < ex->n; i++)
			if (!(ex->v[i].flags & GW_EXT_HOLE))
				k->used += ex->v[i].len;
		k->pos = ex->end;
		if (k->pos < e->size)
			return true;
		attr_answer(k->r, k->used);
		return false;
	}
	if (k->x.result < 0) {
		reply_err(k->r, -k->x.result);
		return false;
	}
	/* Zero-reading runs count as holes. */
	for (size_t i = 0; i < ex->n; i++) {
		bool hole = ex->v[i].flags & (GW_EXT_HOLE | GW_EXT_ZERO);

		if (hole != k->want_data) {
			seek_answer(k->r, GW_MAX(k->pos, k->off));
			return false;
		}
		k->pos += ex->v[i].len;
	}
	if (ex->n > 0 && k->pos < e->size)
		return true;
	if (k->want_data)
		reply_err(k->r, ENXIO);
	else
		seek_answer(k->r, e->size); /* the implicit hole at the end */
	return false;
}

static void walk_done(struct gw_ext_req *x);

/* Query on from k->pos until a query is queued or the walk has replied (then k is freed). */
static void walk_run(struct walk *k)
{
	struct fuse_queue *q = k->r->q;
	struct gw_export *e = q->x->exp;

	do {
		k->ex = (struct gw_extents){ .v = k->v, .cap = GW_ARRAY_SIZE(k->v) };
		k->x = (struct gw_ext_req){
			.offset = k->pos, .len = e->size - k->pos, .out = &k->ex, .done = walk_done
		};
		if (gw_export_extents_submit(e, &q->w->ioq, &k->x) == 0)
			return;
	} while (walk_take(k));
	free(k);
}

static void walk_done(struct gw_ext_req *x)
{
	struct walk *k = container_of(x, struct walk, x);

	if (walk_take(k))
		walk_run(k);
	else
		free(k);
}

/* A walk for r, or NULL after answering ENOMEM. */
static struct walk *walk_new(struct fuse_req *r)
{
	struct walk *k = calloc(1, sizeof(*k));

	if (!k)
		reply_err(r, ENOMEM);
	else
		k->r = r;
	return k;
}

static void reply_attr(struct fuse_req *r)
{
	struct gw_export *e = r->q->x->exp;
	struct walk *k;

	if (!(e->caps & GW_CAP_EXTENTS) || e->size == 0) {
		attr_answer(r, e->size);
		return;
	}
	k = walk_new(r);
	if (k)
		walk_run(k);
}

static void setattr(struct fuse_req *r, const struct fuse_setattr_in *in)
{
	struct fuse_exp *x = r->q->x;

	if ((in->valid & FATTR_SIZE) && in->size != x->exp->size) {
		if (!x->warned_truncate)
			gw_warn("fuse %s: refusing to resize %s to %llu bytes: the %s backend cannot resize",
				x->exp->id, x->path, (unsigned long long)in->size,
				x->exp->backend->ops->name);
		x->warned_truncate = true;
		reply_err(r, x->exp->read_only ? EROFS : EPERM);
		return;
	}
	/* Mode, owner and times are accepted and forgotten: the image has none. */
	reply_attr(r);
}

static void io_done(struct gw_io *io);

static void submit(struct fuse_req *r)
{
	struct fuse_queue *q = r->q;

	r->io.done = io_done;
	gw_worker_note_work(q->w, 1);
	if (gw_export_submit(q->x->exp, &q->w->ioq, &r->io) == 1)
		io_done(&r->io);
}

static void io_done(struct gw_io *io)
{
	struct fuse_req *r = container_of(io, struct fuse_req, io);
	int rc = io->result;

	if (rc < 0) {
		free(r->bounce);
		r->bounce = NULL;
		reply_err(r, -rc);
		return;
	}
	switch (r->opcode) {
	case FUSE_READ: {
		uint8_t *d = r->iov.iov_base;

		if (io->rflags & GW_IO_R_HOLE)
			memset(d + r->skip, 0, r->want);
		fuse_reply(r, 0, NULL, 0, d + r->skip, r->want);
		return;
	}
	case FUSE_WRITE: {
		struct fuse_write_out out = { .size = r->want };

		if (r->bounce && !r->rmw_wrote) {
			/* The aligned range was read: merge the payload, write it back. */
			memcpy(r->bounce + r->skip, r->iov.iov_base, r->want);
			r->rmw_wrote = true;
			r->iov.iov_base = r->bounce;
			r->iov.iov_len = io->len;
			r->io = (struct gw_io){ .op = GW_OP_WRITE,
						.offset = io->offset,
						.len = io->len,
						.iov = &r->iov,
						.iovcnt = 1,
						.flags = r->wflags };
			submit(r);
			return;
		}
		free(r->bounce);
		r->bounce = NULL;

		fuse_reply(r, 0, &out, sizeof(out), NULL, 0);
		return;
	}
	default:
		reply_err(r, 0);
		return;
	}
}

static void do_read(struct fuse_req *r, const struct fuse_read_in *in, void *buf)
{
	struct fuse_exp *x = r->q->x;
	uint64_t size = x->exp->size, mb = x->exp->min_block;
	uint64_t off = in->offset, end, a0, a1;

	if (off >= size || in->size == 0) {
		fuse_reply(r, 0, NULL, 0, NULL, 0);
		return;
	}
	end = GW_MIN(off + in->size, size);
	a0 = off & ~(mb - 1);
	a1 = (end + mb - 1) & ~(mb - 1);
	if (a1 - a0 > x->data_buf) {
		reply_err(r, EINVAL);
		return;
	}
	r->skip = off - a0;
	r->want = (uint32_t)(end - off);
	r->iov.iov_base = buf;
	r->iov.iov_len = a1 - a0;
	r->io = (struct gw_io){ .op = GW_OP_READ,
				.flags = GW_IO_HOLE_OK,
				.offset = a0,
				.len = a1 - a0,
				.iov = &r->iov,
				.iovcnt = 1 };
	submit(r);
}

static void do_write(struct fuse_req *r, const struct fuse_write_in *in, void *payload,
		     size_t paylen)
{
	struct gw_export *e = r->q->x->exp;
	uint64_t mb = e->min_block, end = in->offset + in->size, a0, a1;

	if (in->size > paylen) {
		reply_err(r, EINVAL);
		return;
	}
	r->want = in->size;
	r->wflags = (in->flags & O_DSYNC) ? GW_IO_FUA : 0;
	r->rmw_wrote = false;
	r->iov.iov_base = payload;
	r->iov.iov_len = in->size;
	r->io = (struct gw_io){ .op = GW_OP_WRITE,
				.offset = in->offset,
				.len = in->size,
				.iov = &r->iov,
				.iovcnt = 1,
				.flags = r->wflags };
	if (gw_likely(((in->offset | in->size) & (mb - 1)) == 0) || end > e->size ||
	    (in->flags & O_DIRECT) || e->read_only) {
		submit(r); /* the checked layer refuses what is wrong */
		return;
	}
	/* A misaligned buffered write: read the blocks around it first. */
	a0 = in->offset & ~(mb - 1);
	a1 = (end + mb - 1) & ~(mb - 1);
	r->skip = in->offset - a0;
	if (posix_memalign((void **)&r->bounce, GW_MAX(4096u, mb), a1 - a0)) {
		r->bounce = NULL;
		reply_err(r, ENOMEM);
		return;
	}
	r->rmw_iov.iov_base = r->bounce;
	r->rmw_iov.iov_len = a1 - a0;
	r->io = (struct gw_io){
		.op = GW_OP_READ, .offset = a0, .len = a1 - a0, .iov = &r->rmw_iov, .iovcnt = 1
	};
	submit(r);
}

static void do_fallocate(struct fuse_req *r, const struct fuse_fallocate_in *in)
{
	struct gw_export *e = r->q->x->exp;
	uint32_t known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
	uint64_t end = in->offset + in->length;

	if ((in->mode & ~known) || end < in->offset) {
		reply_err(r, EOPNOTSUPP);
		return;
	}
	if (e->read_only) {
		reply_err(r, EROFS);
		return;
	}
	if (!(in->mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))) {
		/* Plain allocation: every byte of the image already exists. */
		reply_err(r, end <= e->size ? 0 : EFBIG);
		return;
	}
	if (end > e->size) {
		if (!(in->mode & FALLOC_FL_KEEP_SIZE) || in->offset >= e->size) {
			reply_err(r, (in->mode & FALLOC_FL_KEEP_SIZE) ? 0 : EFBIG);
			return;
		}
		end = e->size;
	}
	/* A punched hole must read back as zeros: write-zeroes that may unmap. */
	r->io = (struct gw_io){ .op = GW_OP_WRITE_ZEROES,
				.offset = in->offset,
				.len = end - in->offset };
	if (in->mode & FALLOC_FL_ZERO_RANGE)
		r->io.flags = GW_IO_NO_UNMAP;
	submit(r);
}

static void do_lseek(struct fuse_req *r, const struct fuse_lseek_in *in)
{
	struct gw_export *e = r->q->x->exp;
	uint64_t mb = e->min_block, off = in->offset;
	bool want_data = in->whence == SEEK_DATA;
	struct walk *k;

	if (in->whence != SEEK_DATA && in->whence != SEEK_HOLE) {
		reply_err(r, EINVAL);
		return;
	}
	if (off >= e->size) {
		reply_err(r, ENXIO);
		return;
	}
	if (!(e->caps & GW_CAP_EXTENTS)) {
		seek_answer(r, want_data ? off : e->size);
		return;
	}
	/* Walk from the block holding off. */
	k = walk_new(r);
	if (!k)
		return;
	k->seek = true;
	k->want_data = want_data;
	k->off = off;
	k->pos = off & ~(mb - 1);
	walk_run(k);
}

static void do_statfs(struct fuse_req *r)
{
	struct fuse_exp *x = r->q->x;
	struct fuse_statfs_out out;
	uint32_t bs = 4096;

	memset(&out, 0, sizeof(out));
	out.st.bsize = bs;
	out.st.frsize = bs;
	out.st.blocks = (x->exp->size + bs - 1) / bs;
	out.st.files = 1;
	out.st.namelen = 255;
	fuse_reply(r, 0, &out, sizeof(out), NULL, 0);
}

static void do_open(struct fuse_req *r, const struct fuse_open_in *in)
{
	struct fuse_open_out out = { .open_flags = FOPEN_PARALLEL_DIRECT_WRITES };

	if (r->q->x->exp->read_only && (in->flags & O_ACCMODE) != O_RDONLY) {
		reply_err(r, EROFS);
		return;
	}
	fuse_reply(r, 0, &out, sizeof(out), NULL, 0);
}

static void do_flush(struct fuse_req *r)
{
	r->io = (struct gw_io){ .op = GW_OP_FLUSH };
	submit(r);
}

#define NEED(type)                            \
	do {                                  \
		if (arglen < sizeof(type)) {  \
			reply_err(r, EINVAL); \
			return;               \
		}                             \
	} while (0)

void fuse_dispatch(struct fuse_req *r, const struct fuse_in_header *in, const void *arg,
		   size_t arglen, void *payload, size_t paylen)
{
	r->unique = in->unique;
	r->opcode = in->opcode;
	switch (in->opcode) {
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_INTERRUPT: /* every request is answered soon anyway */
		if (r->uhdr)
			reply_err(r, ENOSYS); /* never sent over io_uring; keeps the entry cycling
					       */
		else
			fuse_req_done(r);
		return;
	case FUSE_GETATTR:
		reply_attr(r);
		return;
	case FUSE_SETATTR:
		NEED(struct fuse_setattr_in);
		setattr(r, arg);
		return;
	case FUSE_OPEN:
		NEED(struct fuse_open_in);
		do_open(r, arg);
		return;
	case FUSE_READ:
		NEED(struct fuse_read_in);
		do_read(r, arg, payload);
		return;
	case FUSE_WRITE:
		NEED(struct fuse_write_in);
		do_write(r, arg, payload, paylen);
		return;
	case FUSE_FLUSH:
	case FUSE_FSYNC:
		do_flush(r);
		return;
	case FUSE_RELEASE:
	case FUSE_DESTROY:
		reply_err(r, 0);
		return;
	case FUSE_FALLOCATE:
		NEED(struct fuse_fallocate_in);
		do_fallocate(r, arg);
		return;
	case FUSE_LSEEK:
		NEED(struct fuse_lseek_in);
		do_lseek(r, arg);
		return;
	case FUSE_STATFS:
		do_statfs(r);
		return;
	case FUSE_LOOKUP: /* a file has no names under it */
		reply_err(r, ENOTDIR);
		return;
	default:
		reply_err(r, ENOSYS);
		return;
	}
}
