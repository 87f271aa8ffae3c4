/*
 * The FUSE transport: the image as a plain file. blkgw mounts a one-file
 * filesystem (its root node is a regular file) onto a regular file, as
 * qemu-storage-daemon's FUSE export does, and answers the kernel's
 * requests on the workers (fuse_dev.c, fuse_uring.c).
 *
 * Main thread: options, probe, the mount and the INIT handshake (answered
 * synchronously here, before any queue runs), stop and status. The mount
 * is made with mount(2) on an fd of /dev/fuse, so it needs CAP_SYS_ADMIN
 * (docs/transports/fuse.md says why not libfuse3).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "gateway/transport.h"
#include "transports/fuse/fuse_internal.h"

#define FUSE_OUR_MINOR 38 /* Debian 12's <linux/fuse.h>; what we decode */

static void fuse_check_opts(const void *opts, struct gw_opt_report *r)
{
	const struct fuse_opts *o = opts;

	if (o->path && o->path[0] != '/')
		gw_opt_problem(r, "path", "'path' must be absolute");
}

static const char *const io_uring_choices[] = { "auto", "on", "off", NULL };

static const struct gw_opt_desc fuse_opts_table[] = {
	{ .key = "path",
	  .type = GW_OPT_PATH,
	  .flags = GW_OPT_REQUIRED,
	  .offset = offsetof(struct fuse_opts, path),
	  .help = "regular file the image is mounted onto (created empty if missing)" },
	{ .key = "allow-other",
	  .type = GW_OPT_BOOL,
	  .offset = offsetof(struct fuse_opts, allow_other),
	  .def = 0,
	  .help = "let users other than blkgw's open the file (its mode still applies; default false)" },
	{ .key = "io-uring",
	  .type = GW_OPT_ENUM,
	  .offset = offsetof(struct fuse_opts, io_uring),
	  .choices = io_uring_choices,
	  .help = "serve through FUSE-over-io_uring queues (kernel 6.14+): auto, on or off (default auto)" },
	{ .key = "queues",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct fuse_opts, queues),
	  .min = 0,
	  .max = FUSE_MAX_QUEUES,
	  .def = 0,
	  .help = "read loop: cloned /dev/fuse fds, spread over the workers (default 0: one per worker)" },
	{ .key = "poll-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct fuse_opts, poll_us),
	  .min = 0,
	  .max = 1000,
	  .def = 50,
	  .help = "io_uring: a queue whose client sends one request at a time keeps its worker polling up to this many microseconds after a reply (adaptive; 0 never polls; default 50)" },
};

/* Is path itself a mount point (a file mounted onto)? */
static bool is_mountpoint(const char *path, const struct stat *st)
{
	char parent[4200];
	struct stat ps;
	char *slash;

	gw_strlcpy(parent, path, sizeof(parent));
	slash = strrchr(parent, '/');
	if (!slash)
		return false;
	if (slash == parent)
		slash[1] = '\0';
	else
		*slash = '\0';
	return stat(parent, &ps) == 0 && ps.st_dev != st->st_dev;
}

static int fuse_probe(const struct gw_transport_env *env, const void *opts, char *why, size_t len)
{
	const struct fuse_opts *o = opts;
	struct stat st;
	int fd;

	(void)env;
	fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		gw_seterr(why, len,
			  e == ENOENT ? "no /dev/fuse (load the fuse module: modprobe fuse)"
				      : "cannot open /dev/fuse: %s",
			  strerror(e));
		return -e;
	}
	close(fd);
	if (!gw_have_cap(CAP_SYS_ADMIN)) {
		gw_seterr(
			why, len,
			"mounting a FUSE filesystem needs CAP_SYS_ADMIN (run blkgw as root; fusermount3 is not used)");
		return -EPERM;
	}
	if (o->io_uring && strcmp(o->io_uring, "on") == 0) {
		int rc = fuse_uring_available(why, len);

		if (rc < 0) {
			size_t n = strlen(why);

			snprintf(why + n, len - n,
				 "; io-uring: auto or off serves with the read loop");
			return rc;
		}
	}
	if (stat(o->path, &st) < 0) {
		if (errno == ENOTCONN)
			return 0; /* a stale mount, cleaned at start */
		if (errno != ENOENT) {
			gw_seterr(why, len, "%s: %s", o->path, strerror(errno));
			return -errno;
		}
	} else if (!S_ISREG(st.st_mode)) {
		gw_seterr(why, len, "%s is not a regular file (a FUSE export mounts onto a file)",
			  o->path);
		return -EINVAL;
	}
	return 0;
}

static const char *fuse_conflict(const struct gw_transport_env *env, const void *a,
				 const char *image_a, const void *b, const char *image_b, char *buf,
				 size_t len)
{
	const struct fuse_opts *oa = a, *ob = b;

	(void)env;
	(void)image_a;
	(void)image_b;
	if (strcmp(oa->path, ob->path) != 0)
		return NULL;
	snprintf(buf, len, "fuse path %s is already used by another export", oa->path);
	return buf;
}

static void fuse_describe(const struct gw_transport_env *env, const void *opts, const char *image,
			  char *buf, size_t len)
{
	const struct fuse_opts *o = opts;

	(void)env;
	(void)image;
	snprintf(buf, len, "%s", o->path);
}

/*
 * Make path a regular file to mount onto: create it when missing, and
 * unmount a FUSE mount left by a daemon that died (its connection is gone:
 * stat says "Transport endpoint is not connected").
 */
static int prepare_path(struct fuse_exp *x, struct stat *st, char *err, size_t errlen)
{
	const char *path = x->path;

	if (stat(path, st) < 0 && errno == ENOTCONN) {
		gw_info("fuse %s: %s is a stale FUSE mount (its daemon died); unmounting it",
			x->exp->id, path);
		if (umount2(path, MNT_DETACH) < 0) {
			gw_seterr(err, errlen, "cannot unmount the stale FUSE mount on %s: %s",
				  path, strerror(errno));
			return -errno;
		}
	}
	if (stat(path, st) < 0) {
		int fd;

		if (errno != ENOENT) {
			gw_seterr(err, errlen, "%s: %s", path, strerror(errno));
			return -errno;
		}
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 || fstat(fd, st) < 0) {
			gw_seterr(err, errlen, "cannot create %s to mount onto: %s", path,
				  strerror(errno));
			if (fd >= 0)
				close(fd);
			return -errno;
		}
		close(fd);
	}
	if (!S_ISREG(st->st_mode)) {
		gw_seterr(err, errlen,
			  "%s is not a regular file (a FUSE export mounts onto a file)", path);
		return -EINVAL;
	}
	if (is_mountpoint(path, st)) {
		gw_seterr(
			err, errlen,
			"%s is already a mount point (another blkgw or FUSE daemon serves it); unmount it first",
			path);
		return -EBUSY;
	}
	return 0;
}

static int read_init(struct fuse_exp *x, char *err, size_t errlen)
{
	size_t blen = FUSE_MAX_WRITE + 8192;
	uint8_t *buf = malloc(blen);
	const struct fuse_in_header *in = (const void *)buf;
	const struct fuse_init_in *ii;
	struct fuse_out_header oh;
	struct fuse_init_out out;
	struct iovec v[2] = { { &oh, sizeof(oh) }, { &out, sizeof(out) } };
	struct pollfd p = { .fd = x->devfd, .events = POLLIN };
	uint64_t want, have;
	ssize_t n;

	if (!buf)
		return -ENOMEM;
	ii = (const void *)(buf + sizeof(*in));
	if (poll(&p, 1, 10000) != 1 || (n = read(x->devfd, buf, blen)) < 0) {
		gw_seterr(err, errlen, "the kernel sent no FUSE_INIT: %s",
			  errno ? strerror(errno) : "timed out");
		free(buf);
		return -EIO;
	}
	if ((size_t)n < sizeof(*in) + 8 || in->opcode != FUSE_INIT || ii->major != 7 ||
	    ii->minor < 31) {
		gw_seterr(err, errlen, "unexpected first FUSE request (opcode %u, protocol %u.%u)",
			  in->opcode, ii->major, ii->minor);
		free(buf);
		return -EPROTO;
	}
	have = ii->flags;
	if ((size_t)n >= sizeof(*in) + sizeof(*ii) && (have & FUSE_INIT_EXT))
		have |= (uint64_t)ii->flags2 << 32;
	want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_INIT_EXT |
	       FUSE_PARALLEL_DIROPS;
	want &= have;
	if (x->mode == FUSE_MODE_URING) {
		if (have & FUSE_OVER_IO_URING) {
			want |= FUSE_OVER_IO_URING;
		} else {
			x->mode = FUSE_MODE_READ;
			snprintf(x->why_read, sizeof(x->why_read),
				 "the kernel did not offer FUSE_OVER_IO_URING in FUSE_INIT");
			if (x->o->io_uring && strcmp(x->o->io_uring, "on") == 0) {
				gw_seterr(err, errlen, "io-uring: on, but %s", x->why_read);
				free(buf);
				return -EOPNOTSUPP;
			}
		}
	}
	memset(&out, 0, sizeof(out));
	out.major = 7;
	out.minor = GW_MIN(ii->minor, FUSE_OUR_MINOR);
	out.max_readahead = ii->max_readahead;
	out.flags = (uint32_t)want;
	out.flags2 = (uint32_t)(want >> 32);
	out.max_background = 256; /* async reads and direct I/O in flight: QD32 and more */
	out.congestion_threshold = 192;
	out.max_write = x->max_write;
	out.time_gran = 1;
	out.max_pages = (uint16_t)(x->max_write / 4096);
	memset(&oh, 0, sizeof(oh));
	oh.unique = in->unique;
	oh.len = sizeof(oh) + sizeof(out);
	free(buf);
	if (writev(x->devfd, v, 2) < 0) {
		gw_seterr(err, errlen, "answering FUSE_INIT: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

static int do_mount(struct fuse_exp *x, const struct stat *st, char *err, size_t errlen)
{
	char opts[256];
	unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME;

	x->devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (x->devfd < 0) {
		gw_seterr(err, errlen, "cannot open /dev/fuse: %s", strerror(errno));
		return -errno;
	}
	snprintf(opts, sizeof(opts),
		 "fd=%d,rootmode=%o,user_id=%u,group_id=%u,default_permissions%s", x->devfd,
		 S_IFREG, (unsigned)getuid(), (unsigned)getgid(),
		 x->o->allow_other ? ",allow_other" : "");
	if (x->exp->read_only)
		flags |= MS_RDONLY;
	if (mount("blkgw", x->path, "fuse.blkgw", flags, opts) < 0) {
		gw_seterr(err, errlen, "mounting FUSE onto %s: %s", x->path, strerror(errno));
		close(x->devfd);
		x->devfd = -1;
		return -errno;
	}
	x->mounted = true;
	x->start_time = (uint64_t)time(NULL);
	x->uid = st->st_uid;
	x->gid = st->st_gid;
	x->mode_bits = S_IFREG | (st->st_mode & 0777);
	if (x->exp->read_only)
		x->mode_bits &= ~(mode_t)0222;
	return 0;
}

/* Write back what the page cache holds, then unmount (lazily if still open). */
static void unmount(struct fuse_exp *x)
{
	int fd;

	if (!x->mounted)
		return;
	fd = open(x->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0) {
		if (syncfs(fd) < 0)
			gw_warn("fuse %s: syncfs %s: %s", x->exp->id, x->path, strerror(errno));
		close(fd);
	}
	if (umount2(x->path, 0) < 0) {
		gw_warn("fuse %s: %s is still open (%s); detaching the mount", x->exp->id, x->path,
			strerror(errno));
		if (umount2(x->path, MNT_DETACH) < 0)
			gw_warn("fuse %s: umount %s: %s", x->exp->id, x->path, strerror(errno));
	}
	x->mounted = false;
}

static void exp_free(struct fuse_exp *x)
{
	for (unsigned i = 0; x->qs && i < x->nq; i++) {
		fuse_queue_free(&x->qs[i]);
		if (x->qs[i].w)
			gw_worker_unload(x->qs[i].w);
	}
	free(x->qs);
	if (x->devfd >= 0)
		close(x->devfd);
	free(x->path);
	free(x);
}

static int fuse_start(struct gw_export *e, char *err, size_t errlen)
{
	const struct fuse_opts *o = e->topts;
	struct fuse_exp *x = calloc(1, sizeof(*x));
	struct stat st;
	int rc;

	if (!x)
		return -ENOMEM;
	x->exp = e;
	x->o = o;
	x->devfd = -1;
	x->mode = FUSE_MODE_READ;
	x->max_write = FUSE_MAX_WRITE;
	x->data_buf = FUSE_MAX_WRITE + 2 * GW_MAX(4096u, e->min_block);
	x->path = strdup(o->path);
	if (!x->path) {
		free(x);
		return -ENOMEM;
	}
	if (o->io_uring && strcmp(o->io_uring, "off") == 0)
		snprintf(x->why_read, sizeof(x->why_read), "io-uring: off");
	else if (fuse_uring_available(x->why_read, sizeof(x->why_read)) == 0)
		x->mode = FUSE_MODE_URING;
	x->depth = 32;
	rc = prepare_path(x, &st, err, errlen);
	if (rc == 0)
		rc = do_mount(x, &st, err, errlen);
	if (rc == 0)
		rc = read_init(x, err, errlen);
	if (rc == 0)
		rc = fuse_dev_start(x, err, errlen);
	if (rc == 0 && x->mode == FUSE_MODE_URING)
		rc = fuse_uring_start(x, err, errlen);
	if (rc < 0) {
		/* No queue runs yet: detach without writing back (nothing is cached). */
		if (x->mounted)
			umount2(x->path, MNT_DETACH);
		exp_free(x);
		return rc;
	}
	e->tpriv = x;
	if (x->mode == FUSE_MODE_URING)
		gw_info("fuse %s: %s mounted (io_uring, %u queues on %u workers)", e->id, x->path,
			x->kernel_queues, x->nq);
	else
		gw_info("fuse %s: %s mounted (read loop, %u queues: %s)", e->id, x->path, x->nq,
			x->why_read);
	return 0;
}

static void queue_gone_main(void *arg)
{
	struct fuse_queue *q = arg;
	struct fuse_exp *x = q->x;
	struct gw_export *e = x->exp;
	void (*done)(struct gw_export *);

	if (--x->nq_running > 0)
		return;
	done = x->stop_done;
	e->tpriv = NULL;
	exp_free(x);
	done(e);
}

void fuse_queue_gone(struct fuse_queue *q)
{
	if (gw_main_call(queue_gone_main, q) < 0)
		gw_err("fuse %s: out of memory stopping a queue", q->x->exp->id);
}

static void fuse_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	struct fuse_exp *x = e->tpriv;

	x->stop_done = done;
	x->stopping = true;
	unmount(x);
	fuse_queues_stop(x);
}

static void fuse_status(struct gw_export *e, struct gw_export_status *st)
{
	struct fuse_exp *x = e->tpriv;

	int failed = __atomic_load_n(&x->uring_failed, __ATOMIC_RELAXED);
	uint64_t ring = 0, dev = 0, polls = 0, hits = 0, same = 0;

	for (unsigned i = 0; i < x->nq; i++) {
		ring += __atomic_load_n(&x->qs[i].ring_reqs, __ATOMIC_RELAXED);
		dev += __atomic_load_n(&x->qs[i].dev_reqs, __ATOMIC_RELAXED);
		polls += __atomic_load_n(&x->qs[i].polls, __ATOMIC_RELAXED);
		hits += __atomic_load_n(&x->qs[i].poll_hits, __ATOMIC_RELAXED);
		same += __atomic_load_n(&x->qs[i].poll_same_cpu, __ATOMIC_RELAXED);
	}

	if (x->mode == FUSE_MODE_URING && failed)
		snprintf(st->endpoint, sizeof(st->endpoint),
			 "%s (read loop, %u queues: the kernel refused io_uring entries: %s)",
			 x->path, x->nq, strerror(failed));
	else if (x->mode == FUSE_MODE_URING)
		snprintf(st->endpoint, sizeof(st->endpoint),
			 "%s (io_uring, %u queues; requests: %llu over io_uring, %llu read; "
			 "polled for: %llu, came in time: %llu, not polled (client on the "
			 "worker's CPU): %llu)",
			 x->path, x->kernel_queues, (unsigned long long)ring,
			 (unsigned long long)dev, (unsigned long long)polls,
			 (unsigned long long)hits, (unsigned long long)same);
	else
		snprintf(st->endpoint, sizeof(st->endpoint),
			 "%s (read loop, %u queues; requests: %llu over io_uring, %llu read)",
			 x->path, x->nq, (unsigned long long)ring, (unsigned long long)dev);
}

const struct gw_transport_ops gw_fuse_transport = {
	.abi_version = GW_TRANSPORT_ABI,
	.name = "fuse",
	.summary = "the image as a plain file, mounted with FUSE (for tools that take a path)",
	.schema = GW_OPT_SCHEMA(fuse_opts_table, struct fuse_opts, fuse_check_opts),
	.probe = fuse_probe,
	.conflict = fuse_conflict,
	.describe = fuse_describe,
	.start = fuse_start,
	.stop = fuse_stop,
	.status = fuse_status,
};
