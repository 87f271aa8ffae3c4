/*
 * The ublk transport: an export as /dev/ublkbN through the kernel's ublk
 * driver. Options, probe and the device lifecycle, on the main thread; the
 * commands that block run on the device's control thread; I/O runs on one
 * thread per queue (ublk_queue.c).
 *
 * Start: GET_FEATURES, ADD_DEV (with USER_RECOVERY and REISSUE, so a
 * restarted daemon can take the device over) and SET_PARAMS here; the queue
 * threads open their rings and fetch every tag; the control thread sends
 * START_DEV, which waits for those fetches and then adds the disk (its
 * partition scan is served by the queue threads). Stop: STOP_DEV (in-flight
 * requests finish, pending fetches are aborted), the queue threads end,
 * /dev/ublkcN is closed, DEL_DEV.
 *
 * The run dir keeps RUN-DIR/ublk/ID.state per device (ublk_state_format)
 * while it exists, and RUN-DIR/dev/EXPORT -> /dev/ublkbN while it is live.
 */
#include <linux/capability.h>
#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/transport.h"
#include "lib/blkuse.h"
#include "lib/devlink.h"
#include "lib/log.h"
#include "lib/sockets.h"
#include "lib/statefile.h"
#include "lib/util.h"
#include "lib/worker.h"
#include "transports/ublk/ublk_internal.h"

static void ublk_check_opts(const void *opts, struct gw_opt_report *r);

static const struct gw_opt_desc ublk_opts_table[] = {
	{ .key = "id",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct ublk_opts, id),
	  .help = "device number N for /dev/ublkbN, or -1 for the first free one (default -1)" },
	{ .key = "queues",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct ublk_opts, queues),
	  .min = 1,
	  .max = UBLK_MAX_QUEUES,
	  .def = 1,
	  .help = "hardware queues, each served by its own thread and io_uring (1 to 64, at most the CPUs; default 1)" },
	{ .key = "depth",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct ublk_opts, depth),
	  .min = 1,
	  .max = UBLK_MAX_QUEUE_DEPTH,
	  .def = 128,
	  .help = "requests in flight per queue (1 to 4096; default 128)" },
	{ .key = "max-io",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct ublk_opts, max_io),
	  .min = 4096,
	  .max = 32 << 20,
	  .def = 512 << 10,
	  .help = "largest request, a multiple of 4K up to 32M; each queue keeps depth x max-io of buffers (default 512K)" },
	{ .key = "poll-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct ublk_opts, poll_us),
	  .max = 1000,
	  .def = 50,
	  .help = "a queue-depth-1 client that comes back quickly has its queue's ring polled up to this long instead of the thread sleeping (adaptive; 0: never; default 50)" },
};

static void ublk_check_opts(const void *opts, struct gw_opt_report *r)
{
	const struct ublk_opts *o = opts;
	uint32_t id;

	if (ublk_parse_id(o->id, &id) < 0)
		gw_opt_problem(r, "id",
			       "'id' must be -1 (the first free device) or a number such as 0");
	if (!gw_opt_bad(r, "max-io") && o->max_io % 4096)
		gw_opt_problem(r, "max-io", "'max-io' must be a multiple of 4K");
}

static uint32_t opt_id(const struct ublk_opts *o)
{
	uint32_t id = UBLK_ID_AUTO;

	ublk_parse_id(o->id, &id);
	return id;
}

static const char *ublk_conflict(const struct gw_transport_env *env, const void *a,
				 const char *image_a, const void *b, const char *image_b, char *buf,
				 size_t len)
{
	uint32_t ia = opt_id(a), ib = opt_id(b);

	if (ia == UBLK_ID_AUTO || ia != ib)
		return NULL;
	snprintf(buf, len, "ublk device id %u is asked for by another export", ia);
	return buf;
}

static void ublk_describe(const struct gw_transport_env *env, const void *opts, const char *image,
			  char *buf, size_t len)
{
	const struct ublk_opts *o = opts;
	uint32_t id = opt_id(o);
	char sz[32];

	if (id == UBLK_ID_AUTO)
		snprintf(buf, len,
			 "kernel /dev/ublkbN (first free), %u queue%s x depth %u, max-io %s",
			 o->queues, o->queues == 1 ? "" : "s", o->depth,
			 gw_fmt_size(o->max_io, sz, sizeof(sz)));
	else
		snprintf(buf, len, "kernel /dev/ublkb%u, %u queue%s x depth %u, max-io %s", id,
			 o->queues, o->queues == 1 ? "" : "s", o->depth,
			 gw_fmt_size(o->max_io, sz, sizeof(sz)));
}

/* Turn an errno from opening the control device into advice. */
static int open_error(int rc, char *why, size_t len)
{
	if (rc == -ENOENT)
		gw_seterr(why, len,
			  "the ublk_drv kernel module is not loaded, no " UBLK_CONTROL_PATH
			  " (modprobe ublk_drv; Linux 6.5 or later)");
	else if (rc == -EACCES || rc == -EPERM)
		gw_seterr(
			why, len,
			"a ublk device needs root (CAP_SYS_ADMIN): permission denied on " UBLK_CONTROL_PATH);
	else
		gw_seterr(why, len, "cannot open " UBLK_CONTROL_PATH ": %s", strerror(-rc));
	return rc;
}

/* A ublk device's size is dev_sectors, 512-byte sectors. */
static uint32_t ublk_size_unit(const void *opts)
{
	return 512;
}

static int ublk_probe(const struct gw_transport_env *env, const void *opts, char *why, size_t len)
{
	int fd;

	if (access(UBLK_CONTROL_PATH, F_OK) < 0)
		return open_error(-ENOENT, why, len);
	if (!gw_have_cap(CAP_SYS_ADMIN))
		return open_error(-EPERM, why, len);
	fd = open(UBLK_CONTROL_PATH, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return open_error(-errno, why, len);
	close(fd);
	return 0;
}

/* ---- run dir state ---- */

static char *state_path(const struct gw_transport_env *env, uint32_t dev_id)
{
	char *p;

	if (asprintf(&p, "%s/ublk/%u.state", env->run_dir, dev_id) < 0)
		return NULL;
	return p;
}

static void state_save(struct ublk_dev *d)
{
	struct ublk_state s;
	char line[512], tmp[4200];
	int fd, n;

	memset(&s, 0, sizeof(s));
	s.dev_id = d->dev_id;
	s.pid = (int)getpid();
	s.queues = d->nr_queues;
	s.depth = d->depth;
	s.max_io = d->max_io;
	gw_strlcpy(s.export_id, d->exp->id, sizeof(s.export_id));
	n = ublk_state_format(&s, line, sizeof(line));
	if (!d->state_path || n < 0)
		return;
	gw_mkdir_parents(d->state_path);
	snprintf(tmp, sizeof(tmp), "%s.tmp", d->state_path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, line, (size_t)n) != n || fsync(fd) < 0 ||
	    rename(tmp, d->state_path) < 0)
		gw_warn("export %s: cannot record ublk%u in %s: %s", d->exp->id, d->dev_id,
			d->state_path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

struct state_each_ctx {
	int (*fn)(void *arg, const char *path, const struct ublk_state *s);
	void *arg;
};

static int state_each_fn(void *arg, const char *path, const char *name, const char *line)
{
	struct state_each_ctx *c = arg;
	struct ublk_state st;

	(void)name;
	return ublk_state_parse(line, &st) == 0 ? c->fn(c->arg, path, &st) : 0;
}

/*
 * Call fn for every state line in RUN-DIR/ublk (its path and the parsed
 * line); stops when fn returns nonzero and returns that.
 */
static int state_each(const struct gw_transport_env *env,
		      int (*fn)(void *arg, const char *path, const struct ublk_state *s), void *arg)
{
	struct state_each_ctx c = { fn, arg };

	return gw_state_each(env->run_dir, "ublk", state_each_fn, &c);
}

struct state_find {
	const char *id;
	struct ublk_state st;
	char path[4400];
};

static int state_find_fn(void *arg, const char *path, const struct ublk_state *s)
{
	struct state_find *f = arg;

	if (strcmp(s->export_id, f->id) != 0)
		return 0;
	f->st = *s;
	gw_strlcpy(f->path, path, sizeof(f->path));
	return 1;
}

/* Stop and delete a device nobody will take over, without waiting for the last close. */
static void abandon(struct ublk_ctrl *c, uint32_t dev_id, const char *path)
{
	int rc;

	ublk_ctrl_cmd(c, UBLK_U_CMD_STOP_DEV, dev_id, NULL, 0, 0);
	rc = ublk_ctrl_cmd(c, UBLK_U_CMD_DEL_DEV_ASYNC, dev_id, NULL, 0, 0);
	if (rc < 0 && rc != -ENODEV)
		gw_warn("ublk%u: DEL_DEV: %s", dev_id, strerror(-rc));
	unlink(path);
}

/*
 * A device a previous daemon recorded for this export: take it over when
 * its daemon is gone and it still fits the export (1: d describes it now),
 * else delete it (0: create a new one). -errno with a message when another
 * live daemon serves it.
 */
static int find_previous(struct ublk_dev *d, const struct ublk_opts *o, char *err, size_t errlen)
{
	struct gw_export *e = d->exp;
	struct state_find f = { .id = e->id };
	struct ublksrv_ctrl_dev_info info;
	struct ublk_params want, have;
	const char *why = NULL;
	int rc;

	if (state_each(e->env, state_find_fn, &f) <= 0)
		return 0;
	if (f.st.pid != (int)getpid() && gw_pid_alive(f.st.pid)) {
		gw_seterr(err, errlen,
			  "/dev/ublkb%u of export %s is served by another blkgw (pid %d)",
			  f.st.dev_id, e->id, f.st.pid);
		return -EBUSY;
	}
	rc = ublk_ctrl_dev_info(&d->ctrl, f.st.dev_id, &info);
	if (rc < 0) {
		gw_info("export %s: ublk%u recorded in %s is gone", e->id, f.st.dev_id, f.path);
		unlink(f.path);
		return 0;
	}
	if (info.ublksrv_pid > 0 && info.ublksrv_pid != f.st.pid && info.ublksrv_pid != getpid() &&
	    gw_pid_alive(info.ublksrv_pid)) {
		/* The id was freed and taken again: not ours to recover or delete. */
		gw_warn("export %s: ublk%u recorded in %s now belongs to pid %d; leaving it alone",
			e->id, f.st.dev_id, f.path, info.ublksrv_pid);
		unlink(f.path);
		return 0;
	}
	memset(&have, 0, sizeof(have));
	have.len = sizeof(have);
	why = ublk_info_unfit(&info, f.st.dev_id);
	if (!why && (e->caps & GW_CAP_EPHEMERAL))
		why = "its image lived in the killed blkgw's memory: recovered, the device would show other data";
	else if (!why && opt_id(o) != UBLK_ID_AUTO && opt_id(o) != f.st.dev_id)
		why = "the manifest asks for another id";
	else if (!why && (ublk_build_params(e, info.max_io_buf_bytes, &want, NULL, 0) < 0 ||
			  ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_GET_PARAMS, f.st.dev_id, &have,
					sizeof(have), 0) < 0 ||
			  !ublk_params_match(&have, &want)))
		why = "its size, block size or read-only state differs from the export's now";
	if (why) {
		gw_warn("export %s: deleting /dev/ublkb%u left by pid %d: %s", e->id, f.st.dev_id,
			f.st.pid, why);
		abandon(&d->ctrl, f.st.dev_id, f.path);
		return 0;
	}
	d->dev_id = info.dev_id;
	d->nr_queues = info.nr_hw_queues;
	d->depth = info.queue_depth;
	d->max_io = info.max_io_buf_bytes;
	d->flags = info.flags;
	d->recovered = true;
	d->old_pid = f.st.pid;
	if (d->nr_queues != o->queues || d->depth != o->depth || d->max_io != o->max_io)
		gw_warn("export %s: /dev/ublkb%u keeps its %u queue%s x depth %u, max-io %u KiB until it is recreated",
			e->id, d->dev_id, d->nr_queues, d->nr_queues == 1 ? "" : "s", d->depth,
			d->max_io >> 10);
	return 1;
}

/* Reclaim: devices recorded for exports this daemon does not serve. */
struct orphan {
	uint32_t dev_id;
	char export_id[256];
	char path[4400];
};

struct orphans {
	bool (*wanted)(void *arg, const char *id);
	void *arg;
	struct orphan *v;
	size_t n;
};

static int orphan_fn(void *arg, const char *path, const struct ublk_state *s)
{
	struct orphans *o = arg;
	struct orphan *v;

	if (s->pid == (int)getpid() || gw_pid_alive(s->pid) || o->wanted(o->arg, s->export_id))
		return 0;
	v = realloc(o->v, (o->n + 1) * sizeof(*v));
	if (!v)
		return 0;
	o->v = v;
	v[o->n].dev_id = s->dev_id;
	gw_strlcpy(v[o->n].export_id, s->export_id, sizeof(v[o->n].export_id));
	gw_strlcpy(v[o->n].path, path, sizeof(v[o->n].path));
	o->n++;
	return 0;
}

/* A short-lived thread of its own: STOP_DEV and DEL_DEV block. */
static void *reclaim_main(void *arg)
{
	struct orphans *o = arg;
	struct ublk_ctrl c;
	sigset_t all;
	int rc;

	gw_thread_sigset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	gw_log_set_thread_name("ublk-reclaim");
	rc = ublk_ctrl_open(&c);
	if (rc < 0)
		gw_warn("cannot remove ublk devices left by a stopped blkgw: " UBLK_CONTROL_PATH
			": %s",
			strerror(-rc));
	for (size_t i = 0; rc == 0 && i < o->n; i++) {
		int r;

		ublk_ctrl_cmd(&c, UBLK_U_CMD_STOP_DEV, o->v[i].dev_id, NULL, 0, 0);
		r = ublk_ctrl_cmd(&c, UBLK_U_CMD_DEL_DEV, o->v[i].dev_id, NULL, 0, 0);
		if (r < 0 && r != -ENODEV) {
			gw_warn("/dev/ublkb%u (export %s, no longer served): DEL_DEV: %s",
				o->v[i].dev_id, o->v[i].export_id, strerror(-r));
			continue;
		}
		gw_info("removed /dev/ublkb%u left by a stopped blkgw for export %s, which is no longer served over ublk",
			o->v[i].dev_id, o->v[i].export_id);
		unlink(o->v[i].path);
	}
	if (rc == 0)
		ublk_ctrl_close(&c);
	free(o->v);
	free(o);
	return NULL;
}

static void ublk_reclaim(const struct gw_transport_env *env,
			 bool (*wanted)(void *arg, const char *id), void *arg)
{
	struct orphans *o = calloc(1, sizeof(*o));
	pthread_attr_t attr;
	pthread_t t;

	if (!o)
		return;
	o->wanted = wanted;
	o->arg = arg;
	state_each(env, orphan_fn, o);
	if (o->n && access(UBLK_CONTROL_PATH, F_OK) < 0)
		gw_warn("%zu ublk device%s left by a stopped blkgw, but no " UBLK_CONTROL_PATH,
			o->n, o->n == 1 ? "" : "s");
	if (!o->n || access(UBLK_CONTROL_PATH, F_OK) < 0) {
		free(o->v);
		free(o);
		return;
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, reclaim_main, o) != 0) {
		free(o->v);
		free(o);
	}
	pthread_attr_destroy(&attr);
}

/* ---- lifecycle ---- */

static void dev_free(struct ublk_dev *d)
{
	ublk_ctrl_close(&d->ctrl);
	if (d->cdev_fd >= 0)
		close(d->cdev_fd);
	gw_devlink_remove(&d->dev_link);
	free(d->state_path);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	free(d);
}

/* Main thread, in start(): the device is up. */
static void went_live(struct ublk_dev *d)
{
	char target[32];

	snprintf(target, sizeof(target), "/dev/ublkb%u", d->dev_id);
	d->dev_link = gw_devlink_set(d->exp->env->run_dir, d->exp->id, target);
	atomic_store(&d->exp->clients, d->nr_queues);
	if (d->recovered)
		gw_info("export %s: %s recovered from blkgw pid %d (%u queue%s x depth %u)",
			d->exp->id, target, d->old_pid, d->nr_queues, d->nr_queues == 1 ? "" : "s",
			d->depth);
	else
		gw_info("export %s: %s is up (%u queue%s x depth %u, max-io %u KiB)", d->exp->id,
			target, d->nr_queues, d->nr_queues == 1 ? "" : "s", d->depth,
			d->max_io >> 10);
}

/*
 * Main thread: the control thread's verdict on START_DEV (or the take-over),
 * which start() did not wait for (GW_START_PENDING): tell the gateway.
 */
static void on_verdict(void *arg)
{
	struct ublk_dev *d = arg;
	struct gw_export *e = d->exp;
	void (*done)(struct gw_export *) = d->stop_done;
	char err[512];
	int rc = d->start_rc;

	d->verdict = true;
	if (rc < 0) {
		/* The control thread deleted the device and ended. */
		pthread_join(d->ctl_thread, NULL);
		snprintf(err, sizeof(err), "%s /dev/ublkb%u: %s",
			 d->recovered ? "taking over" : "starting", d->dev_id, d->ctl_err);
		if (e->tpriv == d)
			e->tpriv = NULL;
		dev_free(d);
		if (done)
			done(e); /* given up (start-timeout) or stopped meanwhile */
		else
			e->started(e, rc, err);
		return;
	}
	if (done)
		return; /* given up or stopped: the control thread removes it (on_gone) */
	went_live(d);
	e->started(e, 0, NULL);
}

/* Main thread: a queue ended on its own (its tags were aborted): the device was deleted. */
static void on_died(void *arg)
{
	struct ublk_dev *d = arg;
	char why[160];

	if (d->stop_done || d->exp->tpriv != d || d->exp->state != GW_EXPORT_RUNNING)
		return;
	snprintf(why, sizeof(why),
		 "/dev/ublkb%u was stopped or deleted behind blkgw's back (its queues were "
		 "aborted)",
		 d->dev_id);
	d->exp->died(d->exp, why);
}

/* Main thread: everything is gone. */
static void on_gone(void *arg)
{
	struct ublk_dev *d = arg;
	struct gw_export *e = d->exp;
	void (*done)(struct gw_export *) = d->stop_done;

	pthread_join(d->ctl_thread, NULL);
	if (e->tpriv == d) {
		atomic_store(&e->clients, 0);
		e->tpriv = NULL;
	}
	dev_free(d);
	if (done)
		done(e);
}

/*
 * Stop and delete the device: on the control thread (wait: DEL_DEV waits for
 * the last close), or in start()'s failure path on the main thread (!wait:
 * DEL_DEV_ASYNC returns at once).
 */
static void teardown(struct ublk_dev *d, bool wait)
{
	int rc;

	rc = ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_STOP_DEV, d->dev_id, NULL, 0, 0);
	if (rc < 0)
		gw_warn("export %s: STOP_DEV ublk%u: %s", d->exp->id, d->dev_id, strerror(-rc));
	/* Queues whose fetches STOP_DEV did not abort (never started) are told to quit. */
	for (unsigned i = 0; i < d->nr_queues; i++)
		ublk_queue_quit(&d->q[i]);
	for (unsigned i = 0; i < d->nr_queues; i++)
		ublk_queue_join(&d->q[i]);
	if (d->cdev_fd >= 0)
		close(d->cdev_fd);
	d->cdev_fd = -1;
	rc = ublk_ctrl_cmd(&d->ctrl, wait ? UBLK_U_CMD_DEL_DEV : UBLK_U_CMD_DEL_DEV_ASYNC,
			   d->dev_id, NULL, 0, 0);
	if (rc < 0)
		gw_warn("export %s: DEL_DEV ublk%u: %s", d->exp->id, d->dev_id, strerror(-rc));
	else if (d->state_path)
		unlink(d->state_path);
	gw_info("export %s: removed /dev/ublkb%u", d->exp->id, d->dev_id);
}

static int open_cdev(struct ublk_dev *d, char *err, size_t errlen);

/*
 * Control thread: take over a device whose daemon died. START_USER_RECOVERY
 * answers EBUSY until the kernel noticed the death and the old daemon's
 * /dev/ublkcN is released; then the queues fetch again and
 * END_USER_RECOVERY waits for them and lets the held requests run.
 */
static int recover(struct ublk_dev *d)
{
	int rc;

	char cdev[32], holder[128];

	snprintf(cdev, sizeof(cdev), "/dev/ublkc%u", d->dev_id);
	for (int i = 0;; i++) {
		rc = ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_START_USER_RECOVERY, d->dev_id, NULL, 0, 0);
		if (rc != -EBUSY || i >= 600)
			break;
		/* Past a second, a live process holding the node will not let go: say who. */
		if (i >= 20 && i % 20 == 0 && gw_chardev_open_by(cdev, holder, sizeof(holder))) {
			snprintf(d->ctl_err, sizeof(d->ctl_err),
				 "START_USER_RECOVERY: %s is %s, so the kernel will not hand the "
				 "device over: stop that process",
				 cdev, holder);
			return rc;
		}
		usleep(50000);
	}
	if (rc == -EBUSY) {
		snprintf(d->ctl_err, sizeof(d->ctl_err),
			 "START_USER_RECOVERY: busy for 30 s: something still holds /dev/ublkc%u "
			 "(find it with fuser -v /dev/ublkc%u and stop it)",
			 d->dev_id, d->dev_id);
		return rc;
	}
	if (rc < 0) {
		snprintf(d->ctl_err, sizeof(d->ctl_err), "START_USER_RECOVERY: %s", strerror(-rc));
		return rc;
	}
	rc = open_cdev(d, d->ctl_err, sizeof(d->ctl_err));
	for (unsigned i = 0; rc == 0 && i < d->nr_queues; i++)
		rc = ublk_queue_start(d, i, d->ctl_err, sizeof(d->ctl_err));
	if (rc < 0)
		return rc;
	rc = ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_END_USER_RECOVERY, d->dev_id, NULL, 0,
			   (uint64_t)getpid());
	if (rc < 0)
		snprintf(d->ctl_err, sizeof(d->ctl_err), "END_USER_RECOVERY: %s", strerror(-rc));
	return rc;
}

static void post_main(void (*fn)(void *arg), void *arg)
{
	while (gw_main_call(fn, arg) < 0)
		usleep(1000);
}

static void *ctl_main(void *arg)
{
	struct ublk_dev *d = arg;
	char name[16];
	sigset_t all;
	int rc;

	gw_thread_sigset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	snprintf(name, sizeof(name), "ublk%u-ctl", d->dev_id);
	gw_log_set_thread_name(name);
	if (d->recovered) {
		rc = recover(d);
	} else {
		/* Blocks until every tag of every queue has a fetch pending, then adds the disk. */
		rc = ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_START_DEV, d->dev_id, NULL, 0,
				   (uint64_t)getpid());
		if (rc < 0)
			snprintf(d->ctl_err, sizeof(d->ctl_err), "START_DEV: %s", strerror(-rc));
	}
	if (rc < 0) {
		/*
		 * No disk anyone uses (or one whose daemon cannot come back):
		 * delete it without waiting for a last close, then let start()
		 * report the failure, so the export falls back to its next
		 * transport.
		 */
		teardown(d, false);
		d->start_rc = rc;
		post_main(on_verdict, d);
		return NULL;
	}
	pthread_mutex_lock(&d->lock);
	d->live = true;
	pthread_mutex_unlock(&d->lock);
	post_main(on_verdict, d);
	pthread_mutex_lock(&d->lock);
	while (!d->stop_requested && !d->queue_ended)
		pthread_cond_wait(&d->cond, &d->lock);
	if (!d->stop_requested) {
		/* Not asked to stop: the kernel aborted a queue, the device is gone. */
		pthread_mutex_unlock(&d->lock);
		post_main(on_died, d);
		pthread_mutex_lock(&d->lock);
		while (!d->stop_requested)
			pthread_cond_wait(&d->cond, &d->lock);
	}
	pthread_mutex_unlock(&d->lock);
	teardown(d, true);
	post_main(on_gone, d);
	return NULL;
}

static int add_dev(struct ublk_dev *d, const struct ublk_opts *o, char *err, size_t errlen)
{
	struct ublksrv_ctrl_dev_info info;
	uint32_t want = opt_id(o);
	int rc;

	memset(&info, 0, sizeof(info));
	info.nr_hw_queues = (uint16_t)o->queues;
	info.queue_depth = (uint16_t)o->depth;
	info.max_io_buf_bytes = (uint32_t)o->max_io;
	info.dev_id = want; /* the header's dev_id must be the same */
	info.flags = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
	rc = ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_ADD_DEV, want, &info, sizeof(info), 0);
	if (rc == -EEXIST) {
		gw_seterr(err, errlen, "ublk device id %u is in use (choose another 'id', or -1)",
			  want);
		return rc;
	}
	if (rc == -EPERM || rc == -EACCES)
		return open_error(rc, err, errlen);
	if (rc < 0) {
		gw_seterr(err, errlen, "ADD_DEV: %s", strerror(-rc));
		return rc;
	}
	d->dev_id = info.dev_id;
	d->nr_queues = info.nr_hw_queues;
	d->depth = info.queue_depth;
	d->max_io = info.max_io_buf_bytes;
	d->flags = info.flags;
	if (d->nr_queues != o->queues)
		gw_warn("export %s: ublk%u has %u queue%s (asked %u: at most one per CPU)",
			d->exp->id, d->dev_id, d->nr_queues, d->nr_queues == 1 ? "" : "s",
			o->queues);
	return 0;
}

static int open_cdev(struct ublk_dev *d, char *err, size_t errlen)
{
	char path[32];

	snprintf(path, sizeof(path), "/dev/ublkc%u", d->dev_id);
	/* devtmpfs creates the node with the device; allow it a moment. */
	for (int i = 0; i < 200; i++) {
		d->cdev_fd = open(path, O_RDWR | O_CLOEXEC);
		if (d->cdev_fd >= 0 || errno != ENOENT)
			break;
		usleep(5000);
	}
	if (d->cdev_fd < 0) {
		gw_seterr(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return -errno;
	}
	return 0;
}

static int ublk_start(struct gw_export *e, char *err, size_t errlen)
{
	const struct ublk_opts *o = e->topts;
	struct ublk_params params;
	struct ublk_dev *d;
	uint64_t features = 0;
	bool added = false;
	int rc;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->exp = e;
	d->poll_us = o->poll_us;
	d->cdev_fd = -1;
	d->ctrl.fd = -1;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	rc = ublk_ctrl_open(&d->ctrl);
	if (rc < 0) {
		if (d->ctrl.fd >= 0 || rc == -ENOENT || rc == -EACCES || rc == -EPERM)
			open_error(rc, err, errlen);
		else
			gw_seterr(err, errlen, "cannot create an SQE128 io_uring: %s",
				  strerror(-rc));
		goto fail;
	}
	rc = ublk_ctrl_features(&d->ctrl, &features);
	if (rc < 0) {
		gw_seterr(
			err, errlen,
			"this kernel's ublk driver does not answer GET_FEATURES (%s): Linux 6.5 or later is needed",
			strerror(-rc));
		goto fail;
	}
	rc = ublk_check_features(features, err, errlen);
	if (rc < 0)
		goto fail;
	rc = ublk_build_params(e, (uint32_t)o->max_io, &params, err, errlen);
	if (rc < 0)
		goto fail;
	rc = find_previous(d, o, err, errlen);
	if (rc < 0)
		goto fail;
	if (rc == 1) {
		/* The control thread takes the device over (it waits for the old daemon's exit). */
		d->state_path = state_path(e->env, d->dev_id);
		state_save(d);
		goto start_ctl;
	}
	rc = add_dev(d, o, err, errlen);
	if (rc < 0)
		goto fail;
	added = true;
	d->state_path = state_path(e->env, d->dev_id);
	rc = ublk_build_params(e, d->max_io, &params, err, errlen);
	if (rc == 0)
		rc = ublk_ctrl_cmd(&d->ctrl, UBLK_U_CMD_SET_PARAMS, d->dev_id, &params,
				   sizeof(params), 0);
	if (rc < 0) {
		if (!*err)
			gw_seterr(err, errlen, "SET_PARAMS: %s", strerror(-rc));
		goto fail;
	}
	rc = open_cdev(d, err, errlen);
	if (rc < 0)
		goto fail;
	for (unsigned i = 0; i < d->nr_queues; i++) {
		rc = ublk_queue_start(d, i, err, errlen);
		if (rc < 0)
			goto fail;
	}
	state_save(d);
start_ctl:
	rc = pthread_create(&d->ctl_thread, NULL, ctl_main, d);
	if (rc) {
		gw_seterr(err, errlen, "cannot start the control thread: %s", strerror(rc));
		rc = -rc;
		goto fail;
	}
	d->ctl_started = true;
	/*
	 * START_DEV (or the recovery) blocks on the control thread (it reads the
	 * partition table through the queues): the gateway bounds it
	 * (start-timeout) and learns the verdict through exp->started(), so a
	 * device that fails to come up is a transport that failed to start.
	 */
	e->tpriv = d;
	return GW_START_PENDING;
fail:
	if (added)
		teardown(d, false);
	dev_free(d);
	return rc < 0 ? rc : -EIO;
}

static void ublk_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	struct ublk_dev *d = e->tpriv;

	d->stop_done = done;
	pthread_mutex_lock(&d->lock);
	d->stop_requested = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

static void ublk_status(struct gw_export *e, struct gw_export_status *st)
{
	struct ublk_dev *d = e->tpriv;

	if (!d)
		return;
	snprintf(st->endpoint, sizeof(st->endpoint),
		 "ublk id %u, %u queue%s x depth %u, max-io %u KiB%s", d->dev_id, d->nr_queues,
		 d->nr_queues == 1 ? "" : "s", d->depth, d->max_io >> 10,
		 d->recovered ? ", recovered" : "");
	snprintf(st->device, sizeof(st->device), "/dev/ublkb%u", d->dev_id);
}

const struct gw_transport_ops gw_ublk_transport = {
	.abi_version = GW_TRANSPORT_ABI,
	.name = "ublk",
	.summary =
		"kernel block device /dev/ublkbN through the ublk driver and io_uring (Linux 6.5+)",
	.schema = GW_OPT_SCHEMA(ublk_opts_table, struct ublk_opts, ublk_check_opts),
	.probe = ublk_probe,
	.size_unit = ublk_size_unit,
	.conflict = ublk_conflict,
	.describe = ublk_describe,
	.start = ublk_start,
	.stop = ublk_stop,
	.status = ublk_status,
	.reclaim = ublk_reclaim,
};
