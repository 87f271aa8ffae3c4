/*
 * rbd: an image on a Ceph cluster, through librbd's asynchronous I/O.
 *
 * Completions come back on the submitting worker's own loop. librbd calls
 * its completion callback on one of its own threads; the callback pushes the
 * request onto a lock-free list owned by the submitting worker (one "channel"
 * per worker and image) and signals that channel's eventfd. The worker keeps
 * a read of the eventfd queued on its own io_uring while requests are in
 * flight, so the completion wakes the worker's loop like any other CQE and
 * the request finishes there. No lock on the data path: a compare-and-swap
 * push by librbd's thread, an exchange by the worker.
 *
 * FUA is a write followed by a flush; WRITE_ZEROES is rbd_aio_write_zeroes,
 * thick-provisioned when the client forbids unmapping. Extents come from
 * rbd_diff_iterate2 (whole objects, parent included), which librbd offers
 * only synchronously and which may wait on the OSDs: a worker's query goes
 * to the image's extents thread, which answers through the same channel as
 * the AIO completions, so the worker's loop never waits on the cluster.
 *
 * Opening connects to the cluster with a bounded timeout (connect-timeout),
 * shares one cluster connection between images with the same conf, user and
 * keyring, and with exclusive: true takes the image's exclusive lock in
 * librbd's "exclusive" mode: it is not handed over to another client that
 * asks for it. Snapshots, and images every export of which is read-only, open
 * read-only and take no lock.
 */
#include <errno.h>
#include <pthread.h>
#include <rbd/librbd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "backends/backend.h"
#include "lib/log.h"
#include "lib/util.h"

struct rbd_opts {
	char *pool;
	char *image;
	char *snapshot;
	char *ns;
	char *conf;
	char *user;
	char *keyring;
	bool exclusive;
	uint32_t connect_timeout;
	uint32_t io_timeout;
};

static const struct gw_opt_desc rbd_opts[] = {
	{ .key = "pool",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct rbd_opts, pool),
	  .help = "the RADOS pool holding the image (default rbd)" },
	{ .key = "image",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct rbd_opts, image),
	  .flags = GW_OPT_REQUIRED,
	  .help = "the RBD image name" },
	{ .key = "snapshot",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct rbd_opts, snapshot),
	  .help = "export this snapshot of the image (read-only, takes no lock)" },
	{ .key = "namespace",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct rbd_opts, ns),
	  .help = "the RADOS namespace inside the pool (default none)" },
	{ .key = "conf",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct rbd_opts, conf),
	  .help = "ceph.conf to read (default: librados's search, /etc/ceph/ceph.conf)" },
	{ .key = "user",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct rbd_opts, user),
	  .help = "the Ceph user, without 'client.' (default admin)" },
	{ .key = "keyring",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct rbd_opts, keyring),
	  .help = "the keyring holding the user's key (default: the conf's)" },
	{ .key = "exclusive",
	  .type = GW_OPT_BOOL,
	  .offset = offsetof(struct rbd_opts, exclusive),
	  .def = true,
	  .help = "take the image's exclusive lock so no other host writes it (snapshots never lock)" },
	{ .key = "connect-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct rbd_opts, connect_timeout),
	  .min = 1,
	  .max = 3600,
	  .def = 10,
	  .help = "seconds to wait for the cluster at open and check before giving up" },
	{ .key = "io-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct rbd_opts, io_timeout),
	  .max = 86400,
	  .def = 0,
	  .help = "seconds after which a request the cluster does not answer fails (0: wait, as librbd does)" },
};

/*
 * A cluster connection, shared by the images that name the same conf, user
 * and keyring. The first image to need one connects, without holding the
 * list's lock (opens and checks of images on other clusters go on
 * meanwhile); the others wait for it and share its outcome, so images on a
 * cluster that does not answer wait one connect-timeout, not one each.
 */
#define CONN_CONNECTING 1
#define CONN_READY      0 /* < 0: the connect failed with that -errno */

struct rbd_conn {
	struct rbd_conn *next;
	char *key;
	rados_t cluster;
	unsigned refs;
	int state; /* CONN_*, under conns_lock */
	char err[512];
};

static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conns_cond = PTHREAD_COND_INITIALIZER;
static struct rbd_conn *conns;

struct rbd_backend;

/*
 * One per (image, submitting thread): completions for requests that thread
 * submitted. librbd's threads push; the owner takes.
 */
struct rbd_chan {
	struct gw_uring_cb ucb;
	struct gw_ioq *q;
	struct rbd_backend *r;
	int efd;
	/*
	 * Completed requests, newest first: a struct gw_io *, or with bit 0
	 * set a struct gw_ext_req * (an extents query the extents thread
	 * answered); linked through their scratch[S_NEXT].
	 */
	_Atomic(uintptr_t) done;
	unsigned pending; /* owner only: submitted, not yet finished */
	bool armed;       /* owner only: an eventfd read is queued */
	uint64_t val;
};

#define RBD_MAX_CHANS 256

struct rbd_backend {
	struct gw_backend b;
	struct rbd_conn *conn;
	rados_ioctx_t io;
	rbd_image_t image;
	char *name; /* the image's name in its pool, for snapshot handles */
	bool locked;
	char *desc;
	_Atomic unsigned nchans;
	_Atomic(struct rbd_chan *) chans[RBD_MAX_CHANS];

	/* The extents thread, started on the first query: a queue of them. */
	pthread_mutex_t ext_lock;
	pthread_cond_t ext_cond;
	struct gw_ext_req *ext_head, **ext_tail;
	pthread_t ext_thread;
	bool ext_started, ext_stop;
};

/* What the request's scratch space holds. */
#define S_NEXT  0 /* next on a channel's done list */
#define S_RES   1 /* librbd's result */
#define S_STAGE 2 /* 0: the request; 1: the flush after a FUA write */
#define S_CHAN  3

#define DONE_EXT ((uintptr_t)1)

static inline struct rbd_backend *to_rbd(struct gw_backend *b)
{
	return container_of(b, struct rbd_backend, b);
}

static const char *or_default(const char *s, const char *def)
{
	return s && *s ? s : def;
}

/* A plain message for the errors a user will meet. */
static const char *rbd_strerror(int rc)
{
	switch (-rc) {
	case ETIMEDOUT:
		return "the cluster did not answer (is it running, and is 'conf' right?)";
	case EACCES:
	case EPERM:
		return "permission denied (check 'user' and 'keyring')";
	case ENOENT:
		return "no such pool or image";
	default:
		return strerror(-rc);
	}
}

/* Under conns_lock: drop a reference to a connection that is not READY (and so has no handle). */
static void conn_unref_failed(struct rbd_conn *c)
{
	struct rbd_conn **pp;

	if (--c->refs)
		return;
	for (pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	free(c->key);
	free(c);
}

/* Connect c's handle (no lock held). 0, or -errno with a message in c->err. */
static int conn_connect(struct rbd_conn *c, const struct rbd_opts *o)
{
	const char *user = or_default(o->user, "admin");
	char id[256], tmo[16];
	int rc;

	snprintf(id, sizeof(id), "client.%s", user);
	rc = rados_create2(&c->cluster, "ceph", id, 0);
	if (rc < 0) {
		gw_seterr(c->err, sizeof(c->err), "cannot create a cluster handle for %s: %s", id,
			  strerror(-rc));
		return rc;
	}
	rc = rados_conf_read_file(c->cluster, o->conf);
	if (rc < 0 && o->conf) {
		gw_seterr(c->err, sizeof(c->err), "cannot read ceph conf %s: %s", o->conf,
			  strerror(-rc));
		goto out_shutdown;
	}
	if (o->keyring && (rc = rados_conf_set(c->cluster, "keyring", o->keyring)) < 0) {
		gw_seterr(c->err, sizeof(c->err), "keyring %s: %s", o->keyring, strerror(-rc));
		goto out_shutdown;
	}
	/* Bounded waits: for the monitors at connect, optionally for the OSDs after. */
	snprintf(tmo, sizeof(tmo), "%u", o->connect_timeout);
	rados_conf_set(c->cluster, "client_mount_timeout", tmo);
	rados_conf_set(c->cluster, "rados_mon_op_timeout", tmo);
	if (o->io_timeout) {
		snprintf(tmo, sizeof(tmo), "%u", o->io_timeout);
		rados_conf_set(c->cluster, "rados_osd_op_timeout", tmo);
	}
	rc = rados_connect(c->cluster);
	if (rc < 0) {
		gw_seterr(c->err, sizeof(c->err),
			  "cannot connect to the Ceph cluster%s%s as %s: %s", o->conf ? " of " : "",
			  o->conf ? o->conf : "", id, rbd_strerror(rc));
		goto out_shutdown;
	}
	return 0;

out_shutdown:
	rados_shutdown(c->cluster);
	return rc < 0 ? rc : -EIO;
}

static int conn_get(const struct rbd_opts *o, struct rbd_conn **out, char *err, size_t errlen)
{
	const char *user = or_default(o->user, "admin");
	struct rbd_conn *c;
	char *key = NULL;
	int rc;

	if (asprintf(&key, "%s\n%s\n%s\n%u\n%u", o->conf ? o->conf : "", user,
		     o->keyring ? o->keyring : "", o->connect_timeout, o->io_timeout) < 0)
		return -ENOMEM;
	pthread_mutex_lock(&conns_lock);
	for (c = conns; c; c = c->next)
		if (c->state >= 0 && strcmp(c->key, key) == 0) /* not one that failed */
			break;
	if (c) { /* connected, or being connected by another thread: share its outcome */
		free(key);
		c->refs++;
		while (c->state == CONN_CONNECTING)
			pthread_cond_wait(&conns_cond, &conns_lock);
		if (c->state < 0) {
			rc = c->state;
			gw_seterr(err, errlen, "%s", c->err);
			conn_unref_failed(c);
			pthread_mutex_unlock(&conns_lock);
			return rc;
		}
		pthread_mutex_unlock(&conns_lock);
		*out = c;
		return 0;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		pthread_mutex_unlock(&conns_lock);
		free(key);
		return -ENOMEM;
	}
	c->key = key;
	c->refs = 1;
	c->state = CONN_CONNECTING;
	c->next = conns;
	conns = c;
	pthread_mutex_unlock(&conns_lock);

	rc = conn_connect(c, o);

	pthread_mutex_lock(&conns_lock);
	c->state = rc < 0 ? rc : CONN_READY;
	pthread_cond_broadcast(&conns_cond);
	if (rc < 0) {
		gw_seterr(err, errlen, "%s", c->err);
		conn_unref_failed(c);
	} else {
		*out = c;
	}
	pthread_mutex_unlock(&conns_lock);
	return rc;
}

static void conn_put(struct rbd_conn *c)
{
	struct rbd_conn **pp;

	pthread_mutex_lock(&conns_lock);
	if (--c->refs) {
		pthread_mutex_unlock(&conns_lock);
		return;
	}
	for (pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	pthread_mutex_unlock(&conns_lock);
	rados_shutdown(c->cluster);
	free(c->key);
	free(c);
}

/* "pool[/namespace]/image[@snap]" */
static void image_spec(const struct rbd_opts *o, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s/%s%s%s", or_default(o->pool, "rbd"), o->ns ? "/" : "",
		 o->ns ? o->ns : "", o->image, o->snapshot ? "@" : "",
		 o->snapshot ? o->snapshot : "");
}

/*
 * The image's header locks: an `rbd lock add` lock, or (tag "internal") the
 * exclusive-lock feature's own. Returns how many hold it, the first named in
 * buf ("client.4125 at 127.0.0.1:0/1014879856"); *managed: it is the
 * feature's lock; *live: its holder still watches the image (a client that
 * is running, not one that died holding it).
 */
static ssize_t lockers(rbd_image_t image, bool *managed, bool *live, char *buf, size_t len)
{
	char tag[128], clients[512], cookies[512], addrs[512];
	size_t tl = sizeof(tag), cl = sizeof(clients), kl = sizeof(cookies), al = sizeof(addrs);
	int excl = 0;
	ssize_t n =
		rbd_list_lockers(image, &excl, tag, &tl, clients, &cl, cookies, &kl, addrs, &al);

	*managed = false;
	*live = false;
	buf[0] = '\0';
	if (n <= 0)
		return n;
	*managed = strcmp(tag, "internal") == 0;
	{
		rbd_image_watcher_t w[64];
		size_t nw = GW_ARRAY_SIZE(w);

		if (rbd_watchers_list(image, w, &nw) == 0) {
			for (size_t i = 0; i < nw; i++)
				*live = *live || strcmp(w[i].addr, addrs) == 0;
			rbd_watchers_list_cleanup(w, nw);
		} else {
			*live = true; /* cannot tell: assume it runs */
		}
	}
	if (*managed)
		gw_seterr(buf, len, "%s at %s", clients, addrs);
	else
		gw_seterr(buf, len, "%s at %s (rbd lock '%s')", clients, addrs, cookies);
	return n;
}

/* Open the pool and the image; for check() and open(). */
static int open_image(const struct rbd_opts *o, struct rbd_conn *c, bool read_only,
		      rados_ioctx_t *io, rbd_image_t *image, char *err, size_t errlen)
{
	const char *pool = or_default(o->pool, "rbd");
	char spec[512];
	int rc;

	image_spec(o, spec, sizeof(spec));
	rc = rados_ioctx_create(c->cluster, pool, io);
	if (rc < 0) {
		gw_seterr(err, errlen, "rbd %s: %s", spec,
			  rc == -ENOENT ? "no such pool (ceph osd pool ls)" : rbd_strerror(rc));
		return rc;
	}
	if (o->ns)
		rados_ioctx_set_namespace(*io, o->ns);
	if (read_only)
		rc = rbd_open_read_only(*io, o->image, image, o->snapshot);
	else
		rc = rbd_open(*io, o->image, image, NULL);
	if (rc < 0) {
		if (rc == -ENOENT)
			gw_seterr(err, errlen, "rbd %s: no such image%s (rbd ls %s%s%s)", spec,
				  o->snapshot ? " or snapshot" : "", pool,
				  o->ns ? " --namespace " : "", o->ns ? o->ns : "");
		else
			gw_seterr(err, errlen, "rbd %s: cannot open: %s", spec, rbd_strerror(rc));
		rados_ioctx_destroy(*io);
		return rc;
	}
	return 0;
}

static int rbd_check(const void *opts, char *msg, size_t len)
{
	const struct rbd_opts *o = opts;
	struct rbd_conn *c;
	rados_ioctx_t io;
	rbd_image_t image;
	uint64_t size = 0;
	char spec[512], s[32], who[512] = "";
	bool managed = false, live = false;
	int rc, ro = 0;

	rc = conn_get(o, &c, msg, len);
	if (rc < 0)
		return rc;
	rc = open_image(o, c, true, &io, &image, msg, len);
	if (rc < 0) {
		conn_put(c);
		return rc;
	}
	image_spec(o, spec, sizeof(spec));
	rbd_get_size(image, &size);
	if (o->snapshot) {
		gw_seterr(msg, len, "rbd %s (%s): a snapshot can only be read", spec,
			  gw_fmt_size(size, s, sizeof(s)));
		ro = GW_CHECK_READ_ONLY;
	} else if (o->exclusive && lockers(image, &managed, &live, who, sizeof(who)) > 0 &&
		   !managed) {
		gw_seterr(
			msg, len,
			"rbd %s is locked by %s; remove that lock (rbd lock rm) or set 'exclusive: false'",
			spec, who);
		rc = -EBUSY;
	} else if (o->exclusive && *who) {
		/*
		 * Not an error here: a read-only export of it takes no lock. A
		 * writable one is refused at start while that client runs; a
		 * stale lock (its owner gone) open() breaks.
		 */
		gw_seterr(msg, len, "rbd %s (%s), its exclusive lock now held by %s%s", spec,
			  gw_fmt_size(size, s, sizeof(s)), who,
			  live ? ", a running client: a writable export will be refused" : "");
	} else {
		gw_seterr(msg, len, "rbd %s (%s)", spec, gw_fmt_size(size, s, sizeof(s)));
	}
	rbd_close(image);
	rados_ioctx_destroy(io);
	conn_put(c);
	return rc < 0 ? rc : ro;
}

static int rbd_open_backend(struct gw_backend *b, const void *opts, char *err, size_t errlen)
{
	const struct rbd_opts *o = opts;
	struct rbd_backend *r = to_rbd(b);
	char spec[512], who[512];
	uint64_t size, features = 0;
	bool ro = o->snapshot || b->open_read_only, managed, live;
	int rc;

	image_spec(o, spec, sizeof(spec));
	rc = conn_get(o, &r->conn, err, errlen);
	if (rc < 0)
		return rc;
	rc = open_image(o, r->conn, ro, &r->io, &r->image, err, errlen);
	if (rc < 0)
		goto fail_conn;
	rc = rbd_get_size(r->image, &size);
	if (rc < 0) {
		gw_seterr(err, errlen, "rbd %s: cannot read its size: %s", spec, rbd_strerror(rc));
		goto fail_image;
	}
	rbd_get_features(r->image, &features);
	if (!ro && o->exclusive) {
		ssize_t held = lockers(r->image, &managed, &live, who, sizeof(who));

		if (held > 0 && !managed) {
			gw_seterr(
				err, errlen,
				"rbd %s is locked by %s; remove that lock (rbd lock rm) or set 'exclusive: false'",
				spec, who);
			rc = -EBUSY;
			goto fail_image;
		}
		if (!(features & RBD_FEATURE_EXCLUSIVE_LOCK)) {
			gw_seterr(
				err, errlen,
				"rbd %s has no exclusive-lock feature: enable it (rbd feature enable %s exclusive-lock) or set 'exclusive: false'",
				spec, spec);
			rc = -EINVAL;
			goto fail_image;
		}
		/*
		 * A running client (QEMU's librbd, another blkgw) keeps its lock:
		 * librbd would ask one that took it automatically to hand it over,
		 * and the VM behind it would lose its disk. A lock whose owner is
		 * gone librbd breaks.
		 */
		rc = held > 0 && live ? -EBUSY
				      : rbd_lock_acquire(r->image, RBD_LOCK_MODE_EXCLUSIVE);
		if (rc < 0) {
			lockers(r->image, &managed, &live, who, sizeof(who));
			gw_seterr(
				err, errlen,
				"rbd %s: cannot take the exclusive lock: %s%s%s; stop that client or set 'exclusive: false'",
				spec,
				rc == -EROFS || rc == -EBUSY ? "held by another client"
							     : rbd_strerror(rc),
				*who ? " " : "", who);
			goto fail_image;
		}
		r->locked = true;
	}
	r->name = strdup(o->image);
	b->size = size;
	b->caps = GW_CAP_FLUSH | GW_CAP_FUA | GW_CAP_TRIM | GW_CAP_ZERO | GW_CAP_EXTENTS |
		  GW_CAP_MULTI_CONN;
	if (ro)
		b->caps |= GW_CAP_READ_ONLY;
	b->min_block = 1;
	b->pref_block = 4096;
	pthread_mutex_init(&r->ext_lock, NULL);
	pthread_cond_init(&r->ext_cond, NULL);
	r->ext_tail = &r->ext_head;
	if (asprintf(&r->desc, "rbd %s%s", spec,
		     r->locked ? " (exclusive lock)"
		     : ro      ? " (read-only)"
			       : "") < 0)
		r->desc = NULL;
	return 0;

fail_image:
	rbd_close(r->image);
	rados_ioctx_destroy(r->io);
fail_conn:
	conn_put(r->conn);
	return rc;
}

/* ---- the data path ---- */

/* The scratch space of a done-list entry (a request or, tagged, an extents query). */
static uint64_t *done_scratch(uintptr_t item)
{
	if (item & DONE_EXT)
		return ((struct gw_ext_req *)(item & ~DONE_EXT))->scratch;
	return ((struct gw_io *)item)->scratch;
}

/* Any thread: hand a finished entry with its result to the channel's owner. */
static void chan_push(struct rbd_chan *ch, uintptr_t item, int64_t res)
{
	uint64_t *sc = done_scratch(item);
	uintptr_t head = atomic_load_explicit(&ch->done, memory_order_relaxed);

	sc[S_RES] = (uint64_t)res;
	do
		sc[S_NEXT] = (uint64_t)head;
	while (!atomic_compare_exchange_weak_explicit(&ch->done, &head, item, memory_order_release,
						      memory_order_relaxed));
	/* Only a push onto an empty list needs to wake the owner. */
	if (!head) {
		uint64_t one = 1;

		if (write(ch->efd, &one, sizeof(one)) < 0)
			gw_warn("rbd: cannot signal a completion: %s", strerror(errno));
	}
}

static void rbd_io_cb(rbd_completion_t c, void *arg)
{
	struct gw_io *io = arg;
	struct rbd_chan *ch = (struct rbd_chan *)(uintptr_t)io->scratch[S_CHAN];
	ssize_t r = rbd_aio_get_return_value(c);

	rbd_aio_release(c);
	chan_push(ch, (uintptr_t)io, r < 0 ? r : 0);
}

static int start_io(struct rbd_backend *r, struct gw_io *io, int stage)
{
	rbd_completion_t c;
	int rc;

	io->scratch[S_STAGE] = (uint64_t)stage;
	rc = rbd_aio_create_completion(io, rbd_io_cb, &c);
	if (rc < 0)
		return rc;
	if (stage == 1) {
		rc = rbd_aio_flush(r->image, c);
	} else {
		switch (io->op) {
		case GW_OP_READ:
			rc = rbd_aio_readv(r->image, io->iov, (int)io->iovcnt, io->offset, c);
			break;
		case GW_OP_WRITE:
			rc = rbd_aio_writev(r->image, io->iov, (int)io->iovcnt, io->offset, c);
			break;
		case GW_OP_FLUSH:
			rc = rbd_aio_flush(r->image, c);
			break;
		case GW_OP_TRIM:
			rc = rbd_aio_discard(r->image, io->offset, io->len, c);
			break;
		case GW_OP_WRITE_ZEROES:
			rc = rbd_aio_write_zeroes(r->image, io->offset, io->len, c,
						  (io->flags & GW_IO_NO_UNMAP)
							  ? RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
							  : 0,
						  0);
			break;
		default:
			rc = -EOPNOTSUPP;
			break;
		}
	}
	if (rc < 0)
		rbd_aio_release(c);
	return rc;
}

static void chan_arm(struct rbd_chan *ch)
{
	struct io_uring_sqe *sqe;

	if (ch->armed || !ch->pending)
		return;
	sqe = gw_ioq_sqe(ch->q, &ch->ucb);
	io_uring_prep_read(sqe, ch->efd, &ch->val, sizeof(ch->val), 0);
	ch->armed = true;
}

/* The owning thread, from its ring: finish what librbd completed. */
static void chan_reap(struct gw_uring_cb *cb, int res)
{
	struct rbd_chan *ch = container_of(cb, struct rbd_chan, ucb);
	uintptr_t item = atomic_exchange_explicit(&ch->done, 0, memory_order_acquire);
	uintptr_t rev = 0;

	ch->armed = false;
	if (res < 0 && res != -EAGAIN && res != -EINTR)
		gw_warn("rbd: reading the completion eventfd: %s", strerror(-res));
	while (item) { /* newest first: reverse, to finish them in order */
		uint64_t *sc = done_scratch(item);
		uintptr_t next = (uintptr_t)sc[S_NEXT];

		sc[S_NEXT] = (uint64_t)rev;
		rev = item;
		item = next;
	}
	while (rev) {
		uint64_t *sc = done_scratch(rev);
		int result = (int)(int64_t)sc[S_RES];
		struct gw_io *cur;

		if (rev & DONE_EXT) {
			struct gw_ext_req *x = (struct gw_ext_req *)(rev & ~DONE_EXT);

			rev = (uintptr_t)sc[S_NEXT];
			ch->pending--;
			gw_ext_complete(x, result);
			continue;
		}
		cur = (struct gw_io *)rev;
		rev = (uintptr_t)sc[S_NEXT];
		/* FUA (writes, zeroes, trims): durable before the client hears. */
		if (result == 0 && cur->scratch[S_STAGE] == 0 && (cur->flags & GW_IO_FUA)) {
			result = start_io(ch->r, cur, 1);
			if (result == 0)
				continue;
		}
		ch->pending--;
		gw_io_complete(cur, result);
	}
	chan_arm(ch);
}

/* The calling thread's channel; made on its first request. */
static struct rbd_chan *chan_get(struct rbd_backend *r, struct gw_ioq *q)
{
	unsigned n = atomic_load_explicit(&r->nchans, memory_order_acquire);
	struct rbd_chan *ch;

	for (unsigned i = 0; i < n && i < RBD_MAX_CHANS; i++) {
		ch = atomic_load_explicit(&r->chans[i], memory_order_acquire);
		if (ch && ch->q == q)
			return ch;
	}
	ch = calloc(1, sizeof(*ch));
	if (!ch)
		return NULL;
	/* Blocking: io_uring polls it; librbd's writes never fill the counter. */
	ch->efd = eventfd(0, EFD_CLOEXEC);
	if (ch->efd < 0) {
		gw_warn("rbd: cannot make a completion eventfd: %s", strerror(errno));
		free(ch);
		return NULL;
	}
	ch->q = q;
	ch->r = r;
	ch->ucb.fn = chan_reap;
	n = atomic_fetch_add_explicit(&r->nchans, 1, memory_order_acq_rel);
	if (n >= RBD_MAX_CHANS) {
		gw_warn("rbd: more than %d threads submit to one image", RBD_MAX_CHANS);
		close(ch->efd);
		free(ch);
		return NULL;
	}
	atomic_store_explicit(&r->chans[n], ch, memory_order_release);
	return ch;
}

static int rbd_submit(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io)
{
	struct rbd_backend *r = to_rbd(b);
	struct rbd_chan *ch = chan_get(r, q);
	int rc;

	if (!ch) {
		io->result = -ENOMEM;
		return 1;
	}
	io->scratch[S_CHAN] = (uint64_t)(uintptr_t)ch;
	rc = start_io(r, io, 0);
	if (rc < 0) {
		io->result = rc;
		return 1;
	}
	ch->pending++;
	chan_arm(ch);
	return 0;
}

struct diff_walk {
	struct gw_extents *out;
	uint64_t pos, end;
	bool full; /* out could take no more: what follows pos is unknown */
};

/*
 * librbd stops iterating when the callback returns a negative value (a
 * positive one it ignores, and goes on): this one means "enough".
 */
#define DIFF_STOP (-ECANCELED)

static int diff_cb(uint64_t off, size_t len, int exists, void *arg)
{
	struct diff_walk *w = arg;
	uint64_t end = off + len;

	if (end <= w->pos)
		return 0;
	if (off < w->pos)
		off = w->pos;
	if (off >= w->end)
		return DIFF_STOP;
	if (end > w->end)
		end = w->end;
	if (off > w->pos && gw_extents_add(w->out, off - w->pos, GW_EXT_HOLE | GW_EXT_ZERO)) {
		w->full = true;
		return DIFF_STOP;
	}
	w->pos = off;
	if (gw_extents_add(w->out, end - off, exists ? 0 : GW_EXT_HOLE | GW_EXT_ZERO)) {
		w->full = true;
		return DIFF_STOP;
	}
	w->pos = end;
	return 0;
}

static int rbd_extents(struct gw_backend *b, uint64_t offset, uint64_t len, struct gw_extents *out)
{
	struct rbd_backend *r = to_rbd(b);
	struct diff_walk w = { .out = out, .pos = offset, .end = offset + len };
	int rc;

	rc = rbd_diff_iterate2(r->image, NULL, offset, len, 1, 1, diff_cb, &w);
	if (rc < 0 && rc != DIFF_STOP)
		return rc;
	/*
	 * Past the last object the image is a hole, but only when the walk got
	 * there: a full list (REQ_ONE asks for one extent) ends where it ends.
	 */
	if (!w.full && w.pos < w.end)
		gw_extents_add(out, w.end - w.pos, GW_EXT_HOLE | GW_EXT_ZERO);
	return 0;
}

/* The extents thread: one query at a time, answered through the asking worker's channel. */
static void *ext_main(void *arg)
{
	struct rbd_backend *r = arg;

	pthread_setname_np(pthread_self(), "rbd-extents");
	pthread_mutex_lock(&r->ext_lock);
	for (;;) {
		struct gw_ext_req *x = r->ext_head;
		int rc;

		if (!x) {
			if (r->ext_stop)
				break;
			pthread_cond_wait(&r->ext_cond, &r->ext_lock);
			continue;
		}
		r->ext_head = (struct gw_ext_req *)(uintptr_t)x->scratch[S_NEXT];
		if (!r->ext_head)
			r->ext_tail = &r->ext_head;
		pthread_mutex_unlock(&r->ext_lock);
		rc = rbd_extents(&r->b, x->offset, x->len, x->out);
		chan_push((struct rbd_chan *)(uintptr_t)x->scratch[S_CHAN], (uintptr_t)x | DONE_EXT,
			  rc);
		pthread_mutex_lock(&r->ext_lock);
	}
	pthread_mutex_unlock(&r->ext_lock);
	return NULL;
}

static int rbd_extents_async(struct gw_backend *b, struct gw_ioq *q, struct gw_ext_req *x)
{
	struct rbd_backend *r = to_rbd(b);
	struct rbd_chan *ch = chan_get(r, q);

	if (!ch) {
		x->result = -ENOMEM;
		return 1;
	}
	x->scratch[S_CHAN] = (uint64_t)(uintptr_t)ch;
	x->scratch[S_NEXT] = 0;
	pthread_mutex_lock(&r->ext_lock);
	if (!r->ext_started) {
		int rc = pthread_create(&r->ext_thread, NULL, ext_main, r);

		if (rc) {
			pthread_mutex_unlock(&r->ext_lock);
			gw_warn("rbd: cannot start the extents thread: %s", strerror(rc));
			x->result = -rc;
			return 1;
		}
		r->ext_started = true;
	}
	*r->ext_tail = x;
	r->ext_tail = (struct gw_ext_req **)&x->scratch[S_NEXT];
	pthread_cond_signal(&r->ext_cond);
	pthread_mutex_unlock(&r->ext_lock);
	ch->pending++;
	chan_arm(ch);
	return 0;
}

static int rbd_sync(struct gw_backend *b)
{
	return rbd_flush(to_rbd(b)->image);
}

static void rbd_close_backend(struct gw_backend *b)
{
	struct rbd_backend *r = to_rbd(b);
	unsigned n = atomic_load(&r->nchans);

	if (r->ext_started) { /* idle: every query was answered before I/O stopped */
		pthread_mutex_lock(&r->ext_lock);
		r->ext_stop = true;
		pthread_cond_signal(&r->ext_cond);
		pthread_mutex_unlock(&r->ext_lock);
		pthread_join(r->ext_thread, NULL);
	}
	pthread_mutex_destroy(&r->ext_lock);
	pthread_cond_destroy(&r->ext_cond);
	for (unsigned i = 0; i < n && i < RBD_MAX_CHANS; i++) {
		struct rbd_chan *ch = atomic_load(&r->chans[i]);

		if (ch) {
			close(ch->efd);
			free(ch);
		}
	}
	if (r->locked)
		rbd_lock_release(r->image);
	rbd_close(r->image);
	rados_ioctx_destroy(r->io);
	conn_put(r->conn);
	free(r->desc);
	free(r->name);
}

static void rbd_describe(struct gw_backend *b, char *buf, size_t len)
{
	snprintf(buf, len, "%s", to_rbd(b)->desc ? to_rbd(b)->desc : "rbd");
}

/* Checkpoint views are the image's own snapshots (librbd quiesces I/O for them). */
static int rbd_snap_create_op(struct gw_backend *b, const char *name, char *err, size_t errlen)
{
	struct rbd_backend *r = to_rbd(b);
	int rc = rbd_snap_create(r->image, name);

	if (rc < 0)
		gw_seterr(err, errlen, "%s: cannot create snapshot %s: %s", r->desc, name,
			  rbd_strerror(rc));
	return rc;
}

static int rbd_snap_remove_op(struct gw_backend *b, const char *name, char *err, size_t errlen)
{
	struct rbd_backend *r = to_rbd(b);
	int rc = rbd_snap_remove(r->image, name);

	if (rc < 0 && rc != -ENOENT)
		gw_seterr(err, errlen, "%s: cannot remove snapshot %s: %s", r->desc, name,
			  rbd_strerror(rc));
	return rc == -ENOENT ? 0 : rc;
}

struct snap_diff {
	uint64_t *bits;
	uint32_t gran;
	uint64_t nchunks;
};

static int snap_diff_cb(uint64_t off, size_t len, int exists, void *arg)
{
	struct snap_diff *d = arg;

	(void)exists; /* data written or discarded: changed either way */
	for (uint64_t i = off / d->gran; len && i < d->nchunks && i * d->gran < off + len; i++)
		d->bits[i >> 6] |= 1ull << (i & 63);
	return 0;
}

/*
 * What changed between two of the image's snapshots: Ceph's own diff
 * (fast with the fast-diff feature), read through a handle opened at `to`.
 */
static int rbd_snap_changes_op(struct gw_backend *b, const char *from, const char *to,
			       uint32_t gran, uint64_t *bits, char *err, size_t errlen)
{
	struct rbd_backend *r = to_rbd(b);
	struct snap_diff d = { bits, gran, (b->size + gran - 1) / gran };
	rbd_image_t img;
	int rc = rbd_open_read_only(r->io, r->name, &img, to);

	if (rc < 0) {
		gw_seterr(err, errlen, "%s: cannot open %s: %s", r->desc, to ? to : "the image",
			  rbd_strerror(rc));
		return rc;
	}
	rc = rbd_diff_iterate2(img, from, 0, b->size, 1, 0, snap_diff_cb, &d);
	if (rc < 0)
		gw_seterr(err, errlen, "%s: the changes from snapshot %s to %s: %s", r->desc, from,
			  to ? to : "now", rbd_strerror(rc));
	rbd_close(img);
	return rc < 0 ? rc : 0;
}

const struct gw_backend_ops gw_rbd_backend = {
	.abi_version = GW_BACKEND_ABI,
	.name = "rbd",
	.summary = "an image on a Ceph cluster (librbd, asynchronous)",
	.instance_size = sizeof(struct rbd_backend),
	.schema = GW_OPT_SCHEMA(rbd_opts, struct rbd_opts, NULL),
	.open = rbd_open_backend,
	.check = rbd_check,
	.submit = rbd_submit,
	.extents = rbd_extents,
	.extents_async = rbd_extents_async,
	.sync = rbd_sync,
	.close = rbd_close_backend,
	.describe = rbd_describe,
	.snap_key = "snapshot",
	.snap_create = rbd_snap_create_op,
	.snap_remove = rbd_snap_remove_op,
	.snap_changes = rbd_snap_changes_op,
};
