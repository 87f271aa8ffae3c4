/*
 * file: a regular file or a block device, I/O through the worker's io_uring.
 *
 * direct: true opens with O_DIRECT. Offsets and lengths are then kept aligned
 * by the checked layer (the backend's min_block is the device's direct-I/O
 * alignment); memory that is not aligned enough (a guest's buffers, say) goes
 * through a bounce buffer.
 *
 * FLUSH is fdatasync, FUA is RWF_DSYNC; TRIM punches holes; WRITE_ZEROES
 * uses FALLOC_FL_ZERO_RANGE (or punches, when unmapping is allowed) and
 * falls back to punch+allocate, then to writing zeros, where a filesystem
 * lacks one of them. Extents come from SEEK_DATA/SEEK_HOLE.
 *
 * A file on a memory filesystem (tmpfs, ramfs) is read, written and flushed
 * in the worker's own thread instead (preadv2/pwritev2: a memcpy that never
 * waits for a device). io_uring cannot start such I/O without blocking, as
 * shmem has no nowait reads or writes (6.12 to 6.18 at least), so it would
 * hand every request to one of its io-wq kernel threads: a wake-up and a
 * switch back per request, which dwarf the copy. Discard and zeroing still
 * go through io_uring (fallocate always runs on io-wq; they are rare).
 *
 * Locking speaks QEMU's language (its file-posix driver): open-file-
 * description byte-range locks, one byte per permission at 100 + bit ("I hold
 * it") and one at 200 + bit ("I do not let others hold it"), for the bits
 * consistent-read (0), write (1), write-unchanged (2) and resize (3). Every
 * lock is a shared (read) lock; a conflict is found by asking whether an
 * exclusive lock on a byte would be refused. So QEMU, qemu-img, qemu-io and
 * qemu-nbd refuse an image blkgw serves writable, blkgw refuses one they hold
 * for writing, and readers that let each other be coexist.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/major.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <limits.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backends/backend.h"
#include "backends/imgfmt.h"
#include "lib/log.h"
#include "lib/util.h"

struct file_opts {
	char *path;
	bool direct;
	uint64_t size;
	char *format; /* "raw": serve it as is, whatever its header says; NULL: detect */
	bool locking;
};

static const char *const file_formats[] = { "raw", NULL };

static const struct gw_opt_desc file_opts[] = {
	{ .key = "path",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct file_opts, path),
	  .flags = GW_OPT_REQUIRED,
	  .help = "image file or block device; a relative path is resolved against the manifest's folder" },
	{ .key = "direct",
	  .type = GW_OPT_BOOL,
	  .offset = offsetof(struct file_opts, direct),
	  .help = "bypass the page cache (O_DIRECT)" },
	{ .key = "size",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct file_opts, size),
	  .min = 1,
	  .max = INT64_MAX,
	  .help = "create a sparse file of this size if the path does not exist; must match an existing file" },
	{ .key = "format",
	  .type = GW_OPT_ENUM,
	  .offset = offsetof(struct file_opts, format),
	  .choices = file_formats,
	  .help = "raw: serve the image as is even if its header looks like qcow2, vmdk, LUKS...; unset: refuse those" },
	{ .key = "locking",
	  .type = GW_OPT_BOOL,
	  .offset = offsetof(struct file_opts, locking),
	  .def = 1,
	  .help = "take QEMU's image locks, so that QEMU and blkgw never write one image at once" },
};

enum file_stage {
	ST_IO = 0,   /* the request itself */
	ST_FUA_SYNC, /* the fdatasync after a FUA zero/trim */
};

struct file_backend {
	struct gw_backend b;
	int fd;
	bool direct;
	bool blockdev;
	bool no_punch;      /* filesystem refused PUNCH_HOLE once */
	bool no_zero_range; /* filesystem refused ZERO_RANGE once */
	bool created;       /* open() made the file: a failed start removes it */
	bool inline_rw;     /* on a memory filesystem: read/write/flush in the caller */
	uint32_t mem_align; /* O_DIRECT buffer alignment */
	char *path;
};

static inline struct file_backend *to_file(struct gw_backend *b)
{
	return container_of(b, struct file_backend, b);
}

/* ---- QEMU-compatible image locks (see the file comment) ---- */

#define QLOCK_PERM_BASE   100
#define QLOCK_SHARED_BASE 200

enum qperm {
	QPERM_CONSISTENT_READ = 0,
	QPERM_WRITE,
	QPERM_WRITE_UNCHANGED,
	QPERM_RESIZE,
	QPERM__COUNT,
};

static const char *const qperm_names[] = { "consistent read", "write", "write unchanged",
					   "resize" };

static int qlock_byte(int fd, off_t off)
{
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };

	return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Does another open file description hold a lock on byte off? 1, 0 or -errno. */
static int qlock_held(int fd, off_t off)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -errno;
	return fl.l_type != F_UNLCK;
}

/*
 * Take the locks for holding perm while sharing shared (bit sets of enum
 * qperm), then look for someone whose locks forbid that, as QEMU does. 0, or
 * -EBUSY with a message naming the permission and the fixes.
 */
static int qlock_take(int fd, const char *path, unsigned perm, unsigned shared, char *err,
		      size_t errlen)
{
	const char *fix = "stop the other user (a QEMU guest, qemu-img, qemu-nbd, another blkgw?), "
			  "or set 'locking: off' for this image if you know it is safe";
	int rc;

	for (unsigned i = 0; i < QPERM__COUNT; i++) {
		if ((perm & (1u << i)) && (rc = qlock_byte(fd, QLOCK_PERM_BASE + i)) < 0)
			goto fail;
		if (!(shared & (1u << i)) && (rc = qlock_byte(fd, QLOCK_SHARED_BASE + i)) < 0)
			goto fail;
	}
	for (unsigned i = 0; i < QPERM__COUNT; i++) {
		if ((perm & (1u << i)) && qlock_held(fd, QLOCK_SHARED_BASE + i) > 0) {
			gw_seterr(
				err, errlen,
				"%s is in use: another process holds it and does not let others have "
				"'%s' permission%s; %s",
				path, qperm_names[i],
				i == QPERM_WRITE ? " (export it with read-only: true?)" : "", fix);
			return -EBUSY;
		}
	}
	for (unsigned i = 0; i < QPERM__COUNT; i++) {
		if (!(shared & (1u << i)) && qlock_held(fd, QLOCK_PERM_BASE + i) > 0) {
			gw_seterr(
				err, errlen,
				"%s is in use: another process holds it with '%s' permission, which "
				"blkgw does not share; %s",
				path, qperm_names[i], fix);
			return -EBUSY;
		}
	}
	return 0;
fail:
	if (rc == -EINVAL || rc == -ENOLCK || rc == -EOPNOTSUPP)
		gw_seterr(
			err, errlen,
			"%s: this filesystem cannot lock the image (%s); set 'locking: off' for it",
			path, strerror(-rc));
	else
		gw_seterr(err, errlen, "%s: cannot lock the image: %s", path, strerror(-rc));
	return rc;
}

/*
 * Would open() get this existing source for writing? 0, or GW_CHECK_READ_ONLY
 * with the reason in msg (as open() falls back to reading, see file_open).
 */
static int check_writable(const char *path, const struct stat *st, char *msg, size_t len)
{
	int fd, ro = 0;

	if (faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) < 0) {
		gw_seterr(msg, len, "%s: %s", path, strerror(errno));
		return GW_CHECK_READ_ONLY;
	}
	if (!S_ISBLK(st->st_mode))
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && ioctl(fd, BLKROGET, &ro) == 0 && ro)
		gw_seterr(msg, len, "%s is a read-only block device", path);
	if (fd >= 0)
		close(fd);
	return ro ? GW_CHECK_READ_ONLY : 0;
}

/* Can the file be created in its folder? 0, or -errno with a message. */
static int check_creatable(const char *path, char *msg, size_t len)
{
	char *dir = strdup(path), *slash = dir ? strrchr(dir, '/') : NULL;
	const char *d = !slash ? "." : slash == dir ? "/" : dir;
	struct stat ds;
	int rc = 0;

	if (!dir)
		return -ENOMEM;
	if (slash && slash != dir)
		*slash = '\0';
	if (stat(d, &ds) < 0 || !S_ISDIR(ds.st_mode)) {
		gw_seterr(msg, len, "cannot create %s: folder %s does not exist", path, d);
		rc = -ENOENT;
	} else if (faccessat(AT_FDCWD, d, W_OK | X_OK, AT_EACCESS) < 0) {
		rc = -errno;
		gw_seterr(msg, len, "cannot create %s: folder %s: %s", path, d, strerror(errno));
	}
	free(dir);
	return rc;
}

/*
 * Refuse a container format (qcow2, vmdk, LUKS...) served as raw, unless the
 * manifest says format: raw. fd: readable without O_DIRECT. 0 or -EINVAL with
 * a message; an unreadable header is left to the open that follows.
 */
static int check_format(const struct file_opts *o, int fd, uint64_t size, char *msg, size_t len)
{
	const char *fmt = NULL;

	if (o->format || size == 0 || gw_imgfmt_detect_fd(fd, size, &fmt) < 0 || !fmt)
		return 0;
	gw_seterr(msg, len,
		  "%s is a %s image, not a raw disk: served as is, its metadata would show as "
		  "disk data and the first write could destroy it. Convert it "
		  "(qemu-img convert -f %s -O raw %s NEW.raw) and serve the copy, or set "
		  "'format: raw' if the disk's own data begins with that header",
		  o->path, fmt, fmt, o->path);
	return -EINVAL;
}

/* The format of an existing source, for check: open it for reading, detect. */
static int check_source_format(const struct file_opts *o, const struct stat *st, char *msg,
			       size_t len)
{
	uint64_t size = (uint64_t)st->st_size;
	int fd, rc;

	if (o->format)
		return 0;
	fd = open(o->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0; /* reported as unreadable elsewhere */
	if (S_ISBLK(st->st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0)
		size = 0;
	rc = check_format(o, fd, size, msg, len);
	close(fd);
	return rc;
}

/* 'size' disagrees with an existing file or device: -EINVAL with a message. */
static int size_mismatch(const struct file_opts *o, uint64_t have, bool dev, char *msg, size_t len)
{
	char a[32], c[32];

	gw_seterr(msg, len, "%s is %s %s, but 'size' says %s%s", o->path, dev ? "a device of" : "",
		  gw_fmt_size(have, a, sizeof(a)), gw_fmt_size(o->size, c, sizeof(c)),
		  dev ? ": a block device's size is its own (remove 'size')"
		      : " ('size' only creates a file that does not exist)");
	return -EINVAL;
}

static int file_check(const void *opts, char *msg, size_t len)
{
	const struct file_opts *o = opts;
	struct stat st;

	if (stat(o->path, &st) < 0) {
		if (errno == ENOENT && o->size) {
			char s[32];
			int rc = check_creatable(o->path, msg, len);

			if (rc < 0)
				return rc;
			gw_seterr(msg, len, "will create %s sparse file %s",
				  gw_fmt_size(o->size, s, sizeof(s)), o->path);
			return 0;
		}
		gw_seterr(msg, len, "%s: %s%s", o->path, strerror(errno),
			  errno == ENOENT ? " (set 'size' to create it)" : "");
		return -errno;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		gw_seterr(msg, len, "%s is neither a regular file nor a block device", o->path);
		return -EINVAL;
	}
	if (S_ISREG(st.st_mode) && o->size && (uint64_t)st.st_size != o->size)
		return size_mismatch(o, (uint64_t)st.st_size, false, msg, len);
	if (S_ISBLK(st.st_mode) && o->size) {
		uint64_t dsz = 0;
		int fd = open(o->path, O_RDONLY | O_CLOEXEC);

		if (fd >= 0 && ioctl(fd, BLKGETSIZE64, &dsz) == 0 && dsz != o->size) {
			close(fd);
			return size_mismatch(o, dsz, true, msg, len);
		}
		if (fd >= 0)
			close(fd);
	}
	if (check_source_format(o, &st, msg, len) < 0)
		return -EINVAL;
	gw_seterr(msg, len, "%s", o->path);
	return check_writable(o->path, &st, msg, len);
}

static int file_inspect(const void *opts, struct gw_source_info *info)
{
	const struct file_opts *o = opts;
	struct stat st;

	info->locks_when_served = o->locking;
	if (stat(o->path, &st) < 0) {
		/* To be created: its folder's real path names it. */
		char *dir = strdup(o->path), *slash = dir ? strrchr(dir, '/') : NULL;
		char real[PATH_MAX];
		const char *d = !slash ? "." : slash == dir ? "/" : dir;

		if (!dir)
			return -ENOMEM;
		if (slash && slash != dir)
			*slash = '\0';
		if (errno == ENOENT && realpath(d, real))
			snprintf(info->id, sizeof(info->id), "new:%s/%s", real,
				 slash ? slash + 1 : o->path);
		info->size = o->size;
		free(dir);
		return 0;
	}
	if (S_ISBLK(st.st_mode)) {
		int fd = open(o->path, O_RDONLY | O_CLOEXEC);
		struct loop_info64 li;

		snprintf(info->id, sizeof(info->id), "device %u:%u", major(st.st_rdev),
			 minor(st.st_rdev));
		/* A loop device is its backing file, which another image may name. */
		if (fd >= 0 && major(st.st_rdev) == LOOP_MAJOR &&
		    ioctl(fd, LOOP_GET_STATUS64, &li) == 0)
			snprintf(info->id, sizeof(info->id), "file %llu:%llu",
				 (unsigned long long)li.lo_device, (unsigned long long)li.lo_inode);
		if (fd >= 0 && ioctl(fd, BLKGETSIZE64, &info->size) < 0)
			info->size = 0;
		if (fd >= 0)
			close(fd);
	} else if (S_ISREG(st.st_mode)) {
		snprintf(info->id, sizeof(info->id), "file %llu:%llu",
			 (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
		info->size = (uint64_t)st.st_size;
	}
	return 0;
}

static void dio_alignment(struct file_backend *f, struct stat *st)
{
	struct statx sx;
	uint32_t off_align = 512, mem_align = 512;

	if (f->blockdev) {
		int ss = 0;

		if (ioctl(f->fd, BLKSSZGET, &ss) == 0 && ss > 0)
			off_align = mem_align = (uint32_t)ss;
	} else if (statx(f->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
		   (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align) {
		off_align = sx.stx_dio_offset_align;
		mem_align = sx.stx_dio_mem_align ? sx.stx_dio_mem_align : off_align;
	} else if (st->st_blksize > 512 && st->st_blksize <= 4096) {
		/* No reliable answer: the filesystem block is a safe alignment. */
		off_align = (uint32_t)st->st_blksize;
		mem_align = 512;
	}
	f->b.min_block = off_align;
	f->mem_align = mem_align;
}

/* Does fd live on a filesystem held in memory (whose I/O io_uring punts)? */
static bool on_memory_fs(int fd)
{
	struct statfs sfs;

	return fstatfs(fd, &sfs) == 0 && (sfs.f_type == (__typeof__(sfs.f_type))TMPFS_MAGIC ||
					  sfs.f_type == (__typeof__(sfs.f_type))RAMFS_MAGIC);
}

static int file_open(struct gw_backend *b, const void *opts, char *err, size_t errlen)
{
	const struct file_opts *o = opts;
	struct file_backend *f = to_file(b);
	int flags = O_RDWR | O_CLOEXEC;
	struct stat st;
	int rc;

	f->fd = -1;
	f->direct = o->direct;
	f->path = strdup(o->path);
	if (!f->path)
		return -ENOMEM;
	if (o->direct)
		flags |= O_DIRECT;
	if (b->open_read_only) {
		flags = (flags & ~O_RDWR) | O_RDONLY;
		b->caps |= GW_CAP_READ_ONLY;
	}
	f->fd = open(o->path, flags);
	if (f->fd < 0 && errno == ENOENT && o->size) {
		f->fd = open(o->path, flags | O_CREAT | O_EXCL, 0644);
		f->created = f->fd >= 0;
		if (f->fd >= 0 && ftruncate(f->fd, (off_t)o->size) < 0) {
			rc = -errno;
			gw_seterr(err, errlen, "%s: cannot size new file: %s", o->path,
				  strerror(errno));
			close(f->fd);
			unlink(o->path);
			goto err;
		}
	}
	if (f->fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
		/* Read-only source: an export of it must be read-only. */
		f->fd = open(o->path, (flags & ~O_RDWR) | O_RDONLY);
		if (f->fd >= 0)
			b->caps |= GW_CAP_READ_ONLY;
	}
	if (f->fd < 0) {
		rc = -errno;
		if (errno == EINVAL && o->direct)
			gw_seterr(err, errlen,
				  "%s: the filesystem does not support O_DIRECT (direct: true)",
				  o->path);
		else
			gw_seterr(err, errlen, "%s: %s%s", o->path, strerror(errno),
				  errno == ENOENT ? " (set 'size' to create it)" : "");
		goto err;
	}
	if (fstat(f->fd, &st) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "%s: %s", o->path, strerror(errno));
		goto err_close;
	}
	if (S_ISBLK(st.st_mode)) {
		uint64_t sz;

		f->blockdev = true;
		if (ioctl(f->fd, BLKGETSIZE64, &sz) < 0) {
			rc = -errno;
			gw_seterr(err, errlen, "%s: cannot read device size: %s", o->path,
				  strerror(errno));
			goto err_close;
		}
		b->size = sz;
	} else if (S_ISREG(st.st_mode)) {
		b->size = (uint64_t)st.st_size;
	} else {
		rc = -EINVAL;
		gw_seterr(err, errlen, "%s is neither a regular file nor a block device", o->path);
		goto err_close;
	}
	if (o->size && b->size != o->size) {
		rc = size_mismatch(o, b->size, f->blockdev, err, errlen);
		goto err_close;
	}
	if (b->size == 0) {
		rc = -EINVAL;
		gw_seterr(err, errlen, "%s is empty (size 0)", o->path);
		goto err_close;
	}
	if (!o->format) {
		int dfd = o->direct ? open(o->path, O_RDONLY | O_CLOEXEC) : f->fd;

		rc = dfd >= 0 ? check_format(o, dfd, b->size, err, errlen) : 0;
		if (dfd >= 0 && dfd != f->fd)
			close(dfd);
		if (rc < 0)
			goto err_close;
	}
	if (o->locking) {
		/* Hold: reading, and writing unless read-only. Share: reading, and
		 * writes that change nothing; never writing or resizing under us. */
		unsigned perm = 1u << QPERM_CONSISTENT_READ,
			 shared = perm | 1u << QPERM_WRITE_UNCHANGED;

		if (!(b->caps & GW_CAP_READ_ONLY))
			perm |= 1u << QPERM_WRITE;
		rc = qlock_take(f->fd, o->path, perm, shared, err, errlen);
		if (rc < 0)
			goto err_close;
	}
	if (o->direct)
		dio_alignment(f, &st);
	f->inline_rw = !f->blockdev && on_memory_fs(f->fd);
	b->pref_block = GW_MAX(4096u, b->min_block);
	b->caps |= GW_CAP_FLUSH | GW_CAP_FUA | GW_CAP_TRIM | GW_CAP_ZERO | GW_CAP_FAST_ZERO |
		   GW_CAP_CACHE | GW_CAP_MULTI_CONN;
	if (!f->blockdev)
		b->caps |= GW_CAP_EXTENTS;
	return 0;

err_close:
	close(f->fd);
	if (f->created)
		unlink(o->path);
err:
	free(f->path);
	return rc;
}

/* ---- completion paths ---- */

static bool iov_aligned(const struct gw_io *io, uint32_t align)
{
	for (unsigned i = 0; i < io->iovcnt; i++)
		if (((uintptr_t)io->iov[i].iov_base | io->iov[i].iov_len) & (align - 1))
			return false;
	return true;
}

/* scratch[0]: stage; scratch[1]: bounce buffer or 0; scratch[3]: the backend */
static void file_finish(struct gw_io *io, int res)
{
	void *bounce = (void *)(uintptr_t)io->scratch[1];

	if (bounce) {
		if (res == 0 && io->op == GW_OP_READ)
			gw_iov_from_buf(io->iov, io->iovcnt, 0, bounce, io->len);
		free(bounce);
		io->scratch[1] = 0;
	}
	gw_io_complete(io, res);
}

/* Finish a short read/write synchronously: rare (EOF races, signals). */
static int finish_short(struct file_backend *f, struct gw_io *io, uint64_t done)
{
	void *bounce = (void *)(uintptr_t)io->scratch[1];
	uint8_t *tmp = NULL;
	uint64_t left = io->len - done;
	int rc = 0;

	if (!bounce) {
		if (posix_memalign((void **)&tmp, 4096, left))
			return -ENOMEM;
		if (io->op == GW_OP_WRITE)
			gw_iov_to_buf(tmp, io->iov, io->iovcnt, done, left);
	}
	uint8_t *p = bounce ? (uint8_t *)bounce + done : tmp;
	uint64_t pos = 0;

	while (pos < left) {
		ssize_t n = io->op == GW_OP_READ ? pread(f->fd, p + pos, left - pos,
							 (off_t)(io->offset + done + pos))
						 : pwrite(f->fd, p + pos, left - pos,
							  (off_t)(io->offset + done + pos));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		if (n == 0) {
			if (io->op == GW_OP_READ) {
				/* Past end of file (it shrank under us): reads as zeros. */
				memset(p + pos, 0, left - pos);
				break;
			}
			rc = -EIO;
			break;
		}
		pos += (uint64_t)n;
	}
	if (rc == 0 && tmp && io->op == GW_OP_READ)
		gw_iov_from_buf(io->iov, io->iovcnt, done, tmp, left);
	if (rc == 0 && io->op == GW_OP_WRITE && (io->flags & GW_IO_FUA) && fdatasync(f->fd) < 0)
		rc = -errno;
	free(tmp);
	return rc;
}

static int zero_fallback(struct file_backend *f, struct gw_io *io);

static void file_cb(struct gw_uring_cb *cb, int res)
{
	struct gw_io *io = container_of(cb, struct gw_io, ucb);
	struct file_backend *f = (struct file_backend *)(uintptr_t)io->scratch[3];

	if (io->scratch[0] == ST_FUA_SYNC) {
		file_finish(io, res < 0 ? res : 0);
		return;
	}
	switch (io->op) {
	case GW_OP_READ:
	case GW_OP_WRITE:
		if (res >= 0 && (uint64_t)res < io->len)
			res = finish_short(f, io, (uint64_t)res);
		else if (res > 0)
			res = 0;
		break;
	case GW_OP_TRIM:
		if (res == -EOPNOTSUPP) {
			f->no_punch = true;
			res = 0; /* a hint */
		}
		break;
	case GW_OP_WRITE_ZEROES:
		if (res == -EOPNOTSUPP || res == -EINVAL) {
			if (io->flags & GW_IO_NO_UNMAP)
				f->no_zero_range = true;
			else
				f->no_punch = true;
			if (io->flags & GW_IO_FAST_ZERO) {
				res = -ENOTSUP;
				break;
			}
			res = zero_fallback(f, io);
		}
		break;
	case GW_OP_CACHE:
		res = 0; /* advisory */
		break;
	default:
		break;
	}
	if (res == 0 && (io->flags & GW_IO_FUA) &&
	    (io->op == GW_OP_TRIM || io->op == GW_OP_WRITE_ZEROES)) {
		struct io_uring_sqe *sqe = gw_ioq_sqe(io->q, &io->ucb);

		io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
		io->scratch[0] = ST_FUA_SYNC;
		return;
	}
	file_finish(io, res);
}

/* Zeroing where the fast paths are missing: punch+allocate, else write zeros. Synchronous. */
static int zero_fallback(struct file_backend *f, struct gw_io *io)
{
	static const uint8_t zeros[1 << 16] __attribute__((aligned(4096)));
	uint64_t off = io->offset, end = io->offset + io->len;

	if (!f->blockdev && fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
				      (off_t)io->len) == 0) {
		if (!(io->flags & GW_IO_NO_UNMAP))
			return 0;
		if (fallocate(f->fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)io->len) == 0)
			return 0;
	}
	while (off < end) {
		size_t n = (size_t)GW_MIN(end - off, sizeof(zeros));
		ssize_t w = pwrite(f->fd, zeros, n, (off_t)off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (uint64_t)w;
	}
	return 0;
}

/* READ, WRITE and FLUSH on a memory filesystem, here and now (file comment). */
static int inline_rw(struct file_backend *f, struct gw_io *io)
{
	ssize_t n;

	if (io->op == GW_OP_FLUSH)
		return fdatasync(f->fd) < 0 ? -errno : 0;
	/* O_DIRECT's alignment is a no-op on tmpfs, but keep to it all the same. */
	if (f->direct && !iov_aligned(io, f->mem_align))
		return finish_short(f, io, 0);
	do {
		if (io->op == GW_OP_READ)
			n = preadv2(f->fd, io->iov, (int)io->iovcnt, (off_t)io->offset, 0);
		else
			n = pwritev2(f->fd, io->iov, (int)io->iovcnt, (off_t)io->offset,
				     (io->flags & GW_IO_FUA) ? RWF_DSYNC : 0);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* Short: past the end of a file that shrank, or a signal; finish it. */
	return (uint64_t)n < io->len ? finish_short(f, io, (uint64_t)n) : 0;
}

static int file_submit(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io)
{
	struct file_backend *f = to_file(b);
	struct io_uring_sqe *sqe;
	const struct iovec *iov = io->iov;
	unsigned iovcnt = io->iovcnt;
	int mode;

	io->scratch[0] = ST_IO;
	io->scratch[1] = 0;
	io->scratch[3] = (uintptr_t)f;
	io->ucb.fn = file_cb;

	if (f->inline_rw &&
	    (io->op == GW_OP_READ || io->op == GW_OP_WRITE || io->op == GW_OP_FLUSH)) {
		io->result = inline_rw(f, io);
		return 1;
	}
	switch (io->op) {
	case GW_OP_READ:
	case GW_OP_WRITE:
		if (f->direct && !iov_aligned(io, f->mem_align)) {
			void *bounce;

			if (posix_memalign(&bounce, GW_MAX(4096u, f->mem_align), io->len)) {
				io->result = -ENOMEM;
				return 1;
			}
			if (io->op == GW_OP_WRITE)
				gw_iov_to_buf(bounce, io->iov, io->iovcnt, 0, io->len);
			io->scratch[1] = (uintptr_t)bounce;
			sqe = gw_ioq_sqe(q, &io->ucb);
			if (io->op == GW_OP_READ)
				io_uring_prep_read(sqe, f->fd, bounce, (unsigned)io->len,
						   io->offset);
			else
				io_uring_prep_write(sqe, f->fd, bounce, (unsigned)io->len,
						    io->offset);
		} else {
			sqe = gw_ioq_sqe(q, &io->ucb);
			if (iovcnt == 1) {
				if (io->op == GW_OP_READ)
					io_uring_prep_read(sqe, f->fd, iov[0].iov_base,
							   (unsigned)iov[0].iov_len, io->offset);
				else
					io_uring_prep_write(sqe, f->fd, iov[0].iov_base,
							    (unsigned)iov[0].iov_len, io->offset);
			} else if (io->op == GW_OP_READ) {
				io_uring_prep_readv(sqe, f->fd, iov, iovcnt, io->offset);
			} else {
				io_uring_prep_writev(sqe, f->fd, iov, iovcnt, io->offset);
			}
		}
		if (io->op == GW_OP_WRITE && (io->flags & GW_IO_FUA))
			sqe->rw_flags = RWF_DSYNC;
		return 0;
	case GW_OP_FLUSH:
		sqe = gw_ioq_sqe(q, &io->ucb);
		io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
		return 0;
	case GW_OP_TRIM:
		if (f->no_punch) {
			io->result = 0;
			return 1;
		}
		sqe = gw_ioq_sqe(q, &io->ucb);
		io_uring_prep_fallocate(sqe, f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					io->offset, io->len);
		return 0;
	case GW_OP_WRITE_ZEROES:
		if (io->flags & GW_IO_NO_UNMAP) {
			mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
			if (f->no_zero_range)
				mode = -1;
		} else {
			mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
			if (f->no_punch)
				mode = f->no_zero_range
					       ? -1
					       : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
		}
		if (mode < 0) {
			if (io->flags & GW_IO_FAST_ZERO) {
				io->result = -ENOTSUP;
				return 1;
			}
			io->result = zero_fallback(f, io);
			if (io->result == 0 && (io->flags & GW_IO_FUA) && fdatasync(f->fd) < 0)
				io->result = -errno;
			return 1;
		}
		sqe = gw_ioq_sqe(q, &io->ucb);
		io_uring_prep_fallocate(sqe, f->fd, mode, io->offset, io->len);
		return 0;
	case GW_OP_CACHE:
		sqe = gw_ioq_sqe(q, &io->ucb);
		io_uring_prep_fadvise(sqe, f->fd, io->offset, (off_t)io->len, POSIX_FADV_WILLNEED);
		return 0;
	default:
		io->result = -EINVAL;
		return 1;
	}
}

static int file_extents(struct gw_backend *b, uint64_t offset, uint64_t len, struct gw_extents *out)
{
	struct file_backend *f = to_file(b);
	uint64_t pos = offset, end = offset + len;

	while (pos < end) {
		off_t data = lseek(f->fd, (off_t)pos, SEEK_DATA);
		uint64_t d;

		if (data < 0) {
			if (errno == ENXIO) { /* hole up to the end of file */
				gw_extents_add(out, end - pos, GW_EXT_HOLE | GW_EXT_ZERO);
				return 0;
			}
			if (errno == EINVAL || errno == EOPNOTSUPP) { /* no hole support: all data
								       */
				gw_extents_add(out, end - pos, 0);
				return 0;
			}
			return -errno;
		}
		d = (uint64_t)data;
		if (d > pos) {
			if (gw_extents_add(out, GW_MIN(d, end) - pos, GW_EXT_HOLE | GW_EXT_ZERO))
				return 0;
			pos = d;
			if (pos >= end)
				return 0;
		}
		off_t hole = lseek(f->fd, (off_t)pos, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		uint64_t h = GW_MIN((uint64_t)hole, end);

		if (h <= pos) /* file shrank: the rest reads as zeros */
			h = end;
		if (gw_extents_add(out, h - pos, 0))
			return 0;
		pos = h;
	}
	return 0;
}

static int file_sync(struct gw_backend *b)
{
	struct file_backend *f = to_file(b);

	if (b->caps & GW_CAP_READ_ONLY)
		return 0;
	return fdatasync(f->fd) < 0 ? -errno : 0;
}

static void file_close(struct gw_backend *b)
{
	struct file_backend *f = to_file(b);

	close(f->fd);
	if (f->created && b->start_failed && unlink(f->path) == 0)
		gw_info("removed %s, created for a start that failed", f->path);
	free(f->path);
}

static void file_describe(struct gw_backend *b, char *buf, size_t len)
{
	struct file_backend *f = to_file(b);

	snprintf(buf, len, "file %s%s%s%s", f->path, f->direct ? " (O_DIRECT)" : "",
		 f->inline_rw ? " (memory filesystem: I/O in the worker)" : "",
		 b->caps & GW_CAP_READ_ONLY ? " (read-only)" : "");
}

const struct gw_backend_ops gw_file_backend = {
	.abi_version = GW_BACKEND_ABI,
	.name = "file",
	.summary = "regular file or block device through io_uring; O_DIRECT with direct: true",
	.instance_size = sizeof(struct file_backend),
	.schema = GW_OPT_SCHEMA(file_opts, struct file_opts, NULL),
	.open = file_open,
	.check = file_check,
	.inspect = file_inspect,
	.submit = file_submit,
	.extents = file_extents,
	.sync = file_sync,
	.close = file_close,
	.describe = file_describe,
};
