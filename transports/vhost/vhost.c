/*
 * The vhost-user-blk transport: options, the listening unix socket (QEMU
 * is the client), and one frontend connection per export, on the main
 * thread. The connection's queues run on the workers.
 *
 * A second frontend is refused while one is connected; one that arrives
 * while the previous connection is still closing (QEMU reconnecting) waits
 * until that one is gone, then is served.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/sockets.h"
#include "gateway/transport.h"
#include "lib/util.h"
#include "transports/vhost/vhost_internal.h"

static void vhost_check_opts(const void *opts, struct gw_opt_report *r);

static const struct gw_opt_desc vhost_opts_table[] = {
	{ .key = "socket",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct vhost_opts, socket),
	  .help = "unix socket QEMU connects to (default RUN-DIR/IMAGE.vhost.sock)" },
	{ .key = "queues",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vhost_opts, queues),
	  .min = 1,
	  .max = VHOST_MAX_QUEUES,
	  .def = 16,
	  .help = "virtqueues offered, at least QEMU's num-queues (default 16, at most 64)" },
	{ .key = "queue-size",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vhost_opts, queue_size),
	  .min = 4,
	  .max = VHOST_MAX_QUEUE_SIZE,
	  .def = 256,
	  .help = "largest virtqueue accepted, a power of two; seg_max is queue-size - 2 (default 256)" },
	{ .key = "serial",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct vhost_opts, serial),
	  .help = "disk serial reported by GET_ID, at most 20 bytes (default: the image name)" },
	GW_SOCK_PERM_OPTS(struct vhost_opts, perm, ""),
	{ .key = "poll-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vhost_opts, poll_us),
	  .min = 0,
	  .max = 1000,
	  .def = 32,
	  .help = "a busy queue polls its ring up to this long before sleeping (adaptive; 0: never; default 32)" },
	{ .key = "notify-hold-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vhost_opts, notify_hold_us),
	  .min = 0,
	  .max = 1000,
	  .def = 40,
	  .help = "a driver that posts requests this long/4 apart or more gets its interrupts held until it "
		  "is quiet this long, while that lets one interrupt carry several completions "
		  "(adaptive; 0: never; default 40)" },
	{ .key = "handshake-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct vhost_opts, handshake_timeout),
	  .max = 86400,
	  .def = 10,
	  .help = "seconds a frontend that connected may take to send its first message before it is closed, so a silent connection cannot hold the one frontend slot (default 10; 0: no limit)" },
};

static void vhost_check_opts(const void *opts, struct gw_opt_report *r)
{
	const struct vhost_opts *o = opts;

	if (o->socket && strlen(o->socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		gw_opt_problem(r, "socket",
			       "'socket' path is too long for a unix socket (at most 107 bytes)");
	if (!gw_is_pow2(o->queue_size))
		gw_opt_problem(r, "queue-size", "'queue-size' must be a power of two (4 to 1024)");
	if (o->serial && strlen(o->serial) > VIRTIO_BLK_ID_BYTES)
		gw_opt_problem(r, "serial",
			       "'serial' is longer than 20 bytes (virtio-blk's GET_ID limit)");
}

static void socket_path(const struct gw_transport_env *env, const struct vhost_opts *o,
			const char *image, char *buf, size_t len)
{
	if (o->socket)
		snprintf(buf, len, "%s", o->socket);
	else
		snprintf(buf, len, "%s/%s.vhost.sock", env->run_dir, image);
}

static const char *vhost_conflict(const struct gw_transport_env *env, const void *a,
				  const char *image_a, const void *b, const char *image_b,
				  char *buf, size_t len)
{
	char pa[4200], pb[4200];

	socket_path(env, a, image_a, pa, sizeof(pa));
	socket_path(env, b, image_b, pb, sizeof(pb));
	if (strcmp(pa, pb) != 0)
		return NULL;
	snprintf(
		buf, len,
		"vhost-user-blk socket %s is already used by another export (one device per socket)",
		pa);
	return buf;
}

static void vhost_describe(const struct gw_transport_env *env, const void *opts, const char *image,
			   char *buf, size_t len)
{
	socket_path(env, opts, image, buf, len);
}

/* virtio-blk's capacity counts 512-byte sectors. */
static uint32_t vhost_size_unit(const void *opts)
{
	return 512;
}

static int vhost_probe(const struct gw_transport_env *env, const void *opts, char *why, size_t len)
{
	int fd;

	/* The inflight region (reconnect) and eventfd-driven queues need these. */
	fd = memfd_create("blkgw-probe", MFD_CLOEXEC);
	if (fd < 0) {
		gw_seterr(why, len, "memfd_create: %s (needed for the inflight region)",
			  strerror(errno));
		return -errno;
	}
	close(fd);
	return 0;
}

/* Its one socket, so the gateway can check the path (folder, clashes). */
static void vhost_listens(const struct gw_transport_env *env, const void *opts, const char *image,
			  void (*add)(void *arg, enum gw_listen_kind kind, const char *where),
			  void *arg)
{
	char path[4200];

	socket_path(env, opts, image, path, sizeof(path));
	add(arg, GW_LISTEN_UNIX, path);
}

/* ---- the listening socket ---- */

static int listen_unix(struct vhost_exp *x, char *err, size_t errlen)
{
	int fd = gw_listen_unix(x->path, &x->o->perm, 16, err, errlen);

	if (fd < 0)
		return fd;
	x->lfd = fd;
	return 0;
}

static struct gw_ratelimit vhost_rl = GW_RATELIMIT_DEFAULT;

static void serve(struct vhost_exp *x, int fd)
{
	x->conn = vhost_conn_new(x, fd);
	if (!x->conn) {
		gw_err("vhost-user-blk %s: out of memory for a connection", x->exp->id);
		close(fd);
		return;
	}
	ev_timer_stop(EV_DEFAULT, &x->silent);
	if (!x->o->handshake_timeout)
		return;
	ev_timer_set(&x->silent, x->o->handshake_timeout, 0);
	ev_timer_start(EV_DEFAULT, &x->silent);
}

static void silent_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct vhost_exp *x = t->data;

	if (x->conn && !x->conn->closing && !x->conn->spoke) {
		x->silent_closed++;
		gw_warn_rl(&vhost_rl, "vhost-user-blk %s: the frontend on %s sent nothing in %u s",
			   x->exp->id, x->path, x->o->handshake_timeout);
		vhost_conn_close(x->conn, "frontend sent nothing");
	}
}

static void resume_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct vhost_exp *x = t->data;

	if (x->lfd >= 0)
		ev_io_start(loop, &x->lw);
}

/*
 * Has the current frontend hung up without us having read its EOF yet? A
 * frontend that reconnects at once (QEMU, or the next fio job) must not be
 * refused because the loop happened to see the new connection first.
 */
static bool peer_gone(struct vhost_conn *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLRDHUP };

	return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vhost_exp *x = w->data;

	for (;;) {
		bool refused;
		int fd = gw_accept(x->lfd, NULL, NULL, &refused);

		if (fd < 0) {
			if ((fd == -EMFILE || fd == -ENFILE) && refused)
				continue;
			if (fd == -EMFILE || fd == -ENFILE) {
				/* Not even a spare descriptor: listen again in a moment. */
				ev_io_stop(loop, &x->lw);
				ev_timer_set(&x->resume, 0.1, 0);
				ev_timer_start(loop, &x->resume);
			} else if (fd != -EAGAIN) {
				gw_warn_rl(&vhost_rl, "vhost-user-blk %s: accept on %s: %s",
					   x->exp->id, x->path, strerror(-fd));
			}
			return;
		}
		if (x->conn && !x->conn->closing && peer_gone(x->conn))
			vhost_conn_close(x->conn, "frontend disconnected");
		if (!x->conn) {
			serve(x, fd);
		} else if (x->conn->closing && x->waiting_fd < 0) {
			gw_debug(
				"vhost-user-blk %s: a frontend connected while the last one is closing; it is served once that one is gone",
				x->exp->id);
			x->waiting_fd = fd;
		} else {
			gw_warn_rl(
				&vhost_rl,
				"vhost-user-blk %s: refusing a second frontend on %s: one is already connected (one device, one frontend)",
				x->exp->id, x->path);
			x->refused++;
			close(fd);
		}
	}
}

static void stop_finish(struct vhost_exp *x)
{
	struct gw_export *e = x->exp;
	void (*done)(struct gw_export *) = x->stop_done;

	e->tpriv = NULL;
	free(x->path);
	free(x);
	done(e);
}

void vhost_conn_gone(struct vhost_exp *x)
{
	x->conn = NULL;
	if (x->stopping) {
		stop_finish(x);
		return;
	}
	if (x->waiting_fd >= 0) {
		int fd = x->waiting_fd;

		x->waiting_fd = -1;
		serve(x, fd);
	}
}

static int vhost_start(struct gw_export *e, char *err, size_t errlen)
{
	const struct vhost_opts *o = e->topts;
	struct vhost_exp *x = calloc(1, sizeof(*x));
	char path[4200];
	int rc;

	if (!x)
		return -ENOMEM;
	x->exp = e;
	x->o = o;
	x->lfd = -1;
	x->waiting_fd = -1;
	rc = vblk_dev_init(&x->dev, e, o->serial, (uint16_t)o->queues, (uint16_t)o->queue_size);
	if (rc < 0) {
		gw_seterr(err, errlen, "block size %u cannot be expressed in virtio-blk",
			  e->min_block);
		free(x);
		return rc;
	}
	socket_path(e->env, o, e->image, path, sizeof(path));
	x->path = strdup(path);
	if (!x->path) {
		free(x);
		return -ENOMEM;
	}
	rc = listen_unix(x, err, errlen);
	if (rc < 0) {
		free(x->path);
		free(x);
		return rc;
	}
	ev_io_init(&x->lw, accept_cb, x->lfd, EV_READ);
	x->lw.data = x;
	ev_io_start(EV_DEFAULT, &x->lw);
	ev_timer_init(&x->silent, silent_cb, 0, 0);
	x->silent.data = x;
	ev_timer_init(&x->resume, resume_cb, 0.1, 0);
	x->resume.data = x;
	gw_accept_reserve();
	e->tpriv = x;
	return 0;
}

static void vhost_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	struct vhost_exp *x = e->tpriv;

	x->stop_done = done;
	x->stopping = true;
	ev_io_stop(EV_DEFAULT, &x->lw);
	ev_timer_stop(EV_DEFAULT, &x->silent);
	ev_timer_stop(EV_DEFAULT, &x->resume);
	close(x->lfd);
	x->lfd = -1;
	unlink(x->path);
	if (x->waiting_fd >= 0) {
		close(x->waiting_fd);
		x->waiting_fd = -1;
	}
	if (x->conn)
		vhost_conn_close(x->conn, "export stopping");
	else
		stop_finish(x);
}

static void vhost_status(struct gw_export *e, struct gw_export_status *st)
{
	struct vhost_exp *x = e->tpriv;

	snprintf(st->endpoint, sizeof(st->endpoint), "%s", x->path);
	/* Read on the main thread, where they are counted. */
	st->has_conn_counters = true;
	st->refused_connections = x->refused;
	st->handshake_timeouts = x->silent_closed;
}

const struct gw_transport_ops gw_vhost_transport = {
	.abi_version = GW_TRANSPORT_ABI,
	.name = "vhost-user-blk",
	.summary = "vhost-user-blk backend on a unix socket (QEMU -device vhost-user-blk-pci)",
	.schema = GW_OPT_SCHEMA(vhost_opts_table, struct vhost_opts, vhost_check_opts),
	.probe = vhost_probe,
	.size_unit = vhost_size_unit,
	.conflict = vhost_conflict,
	.describe = vhost_describe,
	.listens = vhost_listens,
	.start = vhost_start,
	.stop = vhost_stop,
	.status = vhost_status,
};
