#include "gateway/track.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/control.h"
#include "lib/cbt.h"
#include "lib/cbw.h"
#include "lib/log.h"
#include "lib/util.h"

struct tracked {
	struct gw_backend *b;
	char *image;
	char *stamp_path; /* the file whose size and mtime stand for the image, or NULL */
	char *dir;        /* RUN-DIR/cbt/IMAGE: records, and snapshots snap.NAME */
	char *opts_text;  /* the image's backend settings, as a manifest writes them */
	const char *backend_name;
	/* The open copy-before-write view, of checkpoint cbw_ckpt (at most one). */
	struct gw_cbw *cbw;
	char cbw_ckpt[GW_CBT_NAME_MAX + 1];
	struct gw_cbw **retired; /* ended views: the image's requests may still hold them */
	size_t nretired;
};

/* Images open and close on an apply's thread too: the registry has a lock. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct tracked *tracked;
static size_t ntracked;

/* The image's source file, when its backend has a 'path' (file): its stamp. */
static char *source_path(const struct gw_image_spec *s)
{
	const struct gw_opt_desc *d = gw_opt_find(&s->ops->schema, "path");
	const char *p;

	if (!d || (d->type != GW_OPT_PATH && d->type != GW_OPT_STR))
		return NULL;
	p = *(char *const *)((const char *)s->opts + d->offset);
	return p ? strdup(p) : NULL;
}

static void stamp_of(const char *path, struct gw_cbt_stamp *st)
{
	struct stat sb;

	memset(st, 0, sizeof(*st));
	if (!path || stat(path, &sb) < 0)
		return;
	st->known = true;
	st->size = (uint64_t)sb.st_size;
	st->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
}

static int attach(struct gw_backend *b, const struct gw_image_spec *s, const char *run_dir,
		  char *err, size_t errlen);

/*
 * Aside files of copy-before-write views a previous daemon left (killed
 * while a backup ran): their maps of copied chunks died with it, so they
 * hold nothing usable. Remove them.
 */
static void drop_stale_views(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	while (d && (de = readdir(d))) {
		char *p;

		if (strncmp(de->d_name, "cbw.", 4) != 0 ||
		    asprintf(&p, "%s/%s", dir, de->d_name) < 0)
			continue;
		if (unlink(p) == 0)
			gw_info("removed %s: a copy-before-write view that ended with the daemon "
				"that kept it",
				p);
		free(p);
	}
	if (d)
		closedir(d);
}

int gw_track_attach(struct gw_backend *b, const struct gw_image_spec *s, const char *run_dir,
		    char *err, size_t errlen)
{
	int rc;

	if (!s->track_changes)
		return 0;
	pthread_mutex_lock(&mu);
	rc = attach(b, s, run_dir, err, errlen);
	pthread_mutex_unlock(&mu);
	return rc;
}

static int attach(struct gw_backend *b, const struct gw_image_spec *s, const char *run_dir,
		  char *err, size_t errlen)
{
	struct gw_cbt_stamp st;
	struct tracked *n;
	char *dir = NULL;
	int rc;

	if (!s->track_changes)
		return 0;
	n = realloc(tracked, (ntracked + 1) * sizeof(*tracked));
	if (!n)
		return -ENOMEM;
	tracked = n;
	n = &tracked[ntracked];
	memset(n, 0, sizeof(*n));
	n->b = b;
	n->image = strdup(s->name);
	n->stamp_path = source_path(s);
	if (!n->image || asprintf(&dir, "%s/cbt/%s", run_dir, s->name) < 0) {
		free(n->image);
		free(n->stamp_path);
		return -ENOMEM;
	}
	stamp_of(n->stamp_path, &st);
	rc = gw_cbt_open(&b->cbt, dir, b->size, s->change_granularity, &st, err, errlen);
	if (rc < 0) {
		free(dir);
		free(n->image);
		free(n->stamp_path);
		return rc;
	}
	n->dir = dir;
	n->opts_text = gw_opt_dump(&s->ops->schema, s->opts);
	n->backend_name = s->ops->name;
	drop_stale_views(dir);
	ntracked++;
	gw_info("image %s: tracking changes in %u-byte chunks", s->name, s->change_granularity);
	return 0;
}

static struct tracked *by_backend(struct gw_backend *b)
{
	for (size_t i = 0; i < ntracked; i++)
		if (tracked[i].b == b)
			return &tracked[i];
	return NULL;
}

static struct tracked *by_image(const char *name)
{
	for (size_t i = 0; i < ntracked; i++)
		if (strcmp(tracked[i].image, name) == 0)
			return &tracked[i];
	return NULL;
}

void gw_track_detach(struct gw_backend *b)
{
	struct tracked *t;
	struct gw_cbt_stamp st;

	if (!b->cbt)
		return;
	pthread_mutex_lock(&mu);
	t = by_backend(b);
	if (!t) {
		pthread_mutex_unlock(&mu);
		return;
	}
	stamp_of(t->stamp_path, &st);
	gw_cbt_close(b->cbt, &st);
	b->cbt = NULL;
	/* No request of the image runs any more: its references to views go. */
	__atomic_store_n(&b->cbw, NULL, __ATOMIC_RELEASE);
	gw_cbw_put(t->cbw);
	for (size_t i = 0; i < t->nretired; i++)
		gw_cbw_put(t->retired[i]);
	free(t->retired);
	free(t->image);
	free(t->stamp_path);
	free(t->dir);
	free(t->opts_text);
	*t = tracked[--ntracked];
	if (!ntracked) {
		free(tracked);
		tracked = NULL;
	}
	pthread_mutex_unlock(&mu);
}

static json_object *info_json(const struct gw_cbt_info *i, uint32_t gran)
{
	json_object *o = json_object_new_object();

	if (i->name[0])
		json_object_object_add(o, "name", json_object_new_string(i->name));
	json_object_object_add(o, "time", json_object_new_int64(i->created));
	json_object_object_add(o, "changed_chunks",
			       json_object_new_int64((int64_t)i->dirty_chunks));
	json_object_object_add(o, "changed_bytes",
			       json_object_new_int64((int64_t)(i->dirty_chunks * gran)));
	json_object_object_add(o, "trusted", json_object_new_boolean(i->trusted));
	if (!i->trusted)
		json_object_object_add(o, "untrusted_why", json_object_new_string(i->why));
	return o;
}

/* Every record: checkpoints oldest first, then the current one. */
static json_object *records_json(struct gw_cbt *c, json_object **current)
{
	size_t n = gw_cbt_list(c, NULL, 0);
	struct gw_cbt_info *v = calloc(n, sizeof(*v));
	json_object *a = json_object_new_array();

	*current = NULL;
	if (!v)
		return a;
	n = gw_cbt_list(c, v, n);
	for (size_t i = 0; i < n; i++) {
		json_object *o = info_json(&v[i], gw_cbt_granularity(c));

		if (i + 1 == n)
			*current = o;
		else
			json_object_array_add(a, o);
	}
	free(v);
	return a;
}

json_object *gw_track_status(struct gw_backend *b)
{
	json_object *o, *cur, *ck;

	if (!b->cbt)
		return NULL;
	o = json_object_new_object();
	ck = records_json(b->cbt, &cur);
	json_object_object_add(o, "granularity", json_object_new_int64(gw_cbt_granularity(b->cbt)));
	json_object_object_add(o, "checkpoints",
			       json_object_new_int64((int64_t)json_object_array_length(ck)));
	json_object_object_add(o, "trusted",
			       json_object_get(json_object_object_get(cur, "trusted")));
	if (json_object_object_get(cur, "untrusted_why"))
		json_object_object_add(
			o, "untrusted_why",
			json_object_get(json_object_object_get(cur, "untrusted_why")));
	json_object_object_add(o, "changed_bytes",
			       json_object_get(json_object_object_get(cur, "changed_bytes")));
	pthread_mutex_lock(&mu);
	{
		struct tracked *t = by_backend(b);
		char why[256];

		if (t && t->cbw) {
			json_object *v = json_object_new_object();

			json_object_object_add(v, "checkpoint",
					       json_object_new_string(t->cbw_ckpt));
			json_object_object_add(
				v, "copied_bytes",
				json_object_new_int64((int64_t)gw_cbw_copied(t->cbw)));
			json_object_object_add(
				v, "staged_bytes",
				json_object_new_int64((int64_t)gw_cbw_staged(t->cbw)));
			if (gw_cbw_broken(t->cbw, why, sizeof(why)))
				json_object_object_add(v, "broken", json_object_new_string(why));
			json_object_object_add(o, "copy_before_write", v);
		}
	}
	pthread_mutex_unlock(&mu);
	json_object_put(cur);
	json_object_put(ck);
	return o;
}

static const char *jstr(json_object *req, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(req, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static json_object *ok_reply(void)
{
	json_object *r = json_object_new_object();

	json_object_object_add(r, "ok", json_object_new_boolean(1));
	return r;
}

/* The tracked image a request names, or an error reply in *fail. */
static struct tracked *want_image(json_object *req, json_object **fail)
{
	const char *image = jstr(req, "image");
	struct tracked *t;

	*fail = NULL;
	if (!image) {
		*fail = gw_ctl_error(-EINVAL, "missing \"image\"");
		return NULL;
	}
	t = by_image(image);
	if (!t)
		*fail = gw_ctl_error(-ENOENT, "image '%s' is not served with 'track-changes: true'",
				     image);
	return t;
}

/*
 * The files of checkpoint `name`'s view, beside the records: snap.NAME (a
 * reflink copy), native.NAME (an empty mark: the backend keeps the view
 * itself, an rbd snapshot named blkgw.NAME), cbw.NAME (a copy-before-write
 * view's aside file). malloc'd, or NULL.
 */
static char *view_file(const struct tracked *t, const char *kind, const char *name)
{
	char *p;

	return asprintf(&p, "%s/%s.%s", t->dir, kind, name) < 0 ? NULL : p;
}

static char *snap_path(const struct tracked *t, const char *name)
{
	return view_file(t, "snap", name);
}

static char *native_mark(const struct tracked *t, const char *name)
{
	return view_file(t, "native", name);
}

static void native_name(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "blkgw.%s", name);
}

/* Does path p (freed here) exist? */
static bool exists(char *p)
{
	bool yes = p && access(p, F_OK) == 0;

	free(p);
	return yes;
}

static bool has_native(const struct tracked *t, const char *name)
{
	return exists(native_mark(t, name));
}

static bool has_snapshot(const struct tracked *t, const char *name)
{
	return exists(snap_path(t, name)) || has_native(t, name);
}

/* The backend's own view, where it keeps them (rbd). 0, -EOPNOTSUPP, or -errno with why. */
static int native_take(const struct tracked *t, const char *name, char *why, size_t len)
{
	const struct gw_backend_ops *ops = t->b->ops;
	char snap[GW_CBT_NAME_MAX + 8], *mark;
	int fd, rc;

	if (!ops->snap_create)
		return -EOPNOTSUPP;
	native_name(name, snap, sizeof(snap));
	mark = native_mark(t, name);
	if (!mark)
		return -ENOMEM;
	rc = ops->snap_create(t->b, snap, why, len);
	if (rc == 0) {
		fd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0 || fsync(fd) < 0) {
			rc = -errno;
			snprintf(why, len, "cannot write %s: %s", mark, strerror(-rc));
			ops->snap_remove(t->b, snap, NULL, 0);
		}
		if (fd >= 0)
			close(fd);
	}
	free(mark);
	return rc;
}

static void native_drop(const struct tracked *t, const char *name)
{
	char snap[GW_CBT_NAME_MAX + 8], why[512] = "", *mark = native_mark(t, name);

	if (mark && access(mark, F_OK) == 0 && t->b->ops->snap_remove) {
		native_name(name, snap, sizeof(snap));
		if (t->b->ops->snap_remove(t->b, snap, why, sizeof(why)) < 0)
			gw_warn("image %s: %s", t->image, why);
		else
			unlink(mark);
	}
	free(mark);
}

/*
 * The settings of a manifest image that reads checkpoint name's view of t's
 * image (kind): a reflink copy or the live file through the file backend,
 * or the backend's own view. NULL when out of memory.
 */
static char *view_fields(const struct tracked *t, const char *name, enum gw_backup_view kind)
{
	const char *o = t->opts_text ? t->opts_text : "";
	char snap[GW_CBT_NAME_MAX + 8], *path, *out = NULL;
	json_object *q;

	if (kind == GW_VIEW_SNAPSHOT && has_native(t, name)) {
		native_name(name, snap, sizeof(snap));
		q = json_object_new_string(snap);
		if (asprintf(&out, "backend: %s, %s%s%s: %s", t->backend_name, o, *o ? ", " : "",
			     t->b->ops->snap_key, json_object_to_json_string(q)) < 0)
			out = NULL;
		json_object_put(q);
		return out;
	}
	if (kind == GW_VIEW_LIVE && !t->stamp_path) {
		/* A live view of a backend without a file (rbd): opened read-only, no lock. */
		if (asprintf(&out, "backend: %s%s%s", t->backend_name, *o ? ", " : "", o) < 0)
			out = NULL;
		return out;
	}
	path = kind == GW_VIEW_SNAPSHOT ? snap_path(t, name) : strdup(t->stamp_path);
	if (!path)
		return NULL;
	q = json_object_new_string(path);
	/* The live image's own locks belong to its writer; a view of it takes none. */
	if (asprintf(&out, "backend: file, path: %s, locking: false",
		     json_object_to_json_string_ext(q, JSON_C_TO_STRING_NOSLASHESCAPE)) < 0)
		out = NULL;
	json_object_put(q);
	free(path);
	return out;
}

/*
 * Keep the image as it is now beside the records: a reflink copy (FICLONE)
 * of its source file, which shares every block with it until one of the two
 * is written. Costs no copying; needs a file system that can (XFS, btrfs).
 * 0 or -errno with why.
 */
static int snapshot_take(const struct tracked *t, const char *name, char *why, size_t len)
{
	char *dst;
	int src, fd, rc = native_take(t, name, why, len);

	if (rc != -EOPNOTSUPP)
		return rc;
	rc = 0;
	if (!t->stamp_path) {
		snprintf(why, len, "its backend keeps no file blkgw can clone");
		return -EOPNOTSUPP;
	}
	dst = snap_path(t, name);
	if (!dst)
		return -ENOMEM;
	src = open(t->stamp_path, O_RDONLY | O_CLOEXEC);
	fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (src < 0 || fd < 0) {
		rc = -errno;
		snprintf(why, len, "cannot open %s: %s", src < 0 ? t->stamp_path : dst,
			 strerror(-rc));
	} else if (ioctl(fd, FICLONE, src) < 0) {
		rc = -errno;
		snprintf(why, len, "%s cannot be cloned (reflink) into %s: %s%s", t->stamp_path,
			 t->dir, strerror(-rc),
			 rc == -EOPNOTSUPP || rc == -EINVAL || rc == -EXDEV
				 ? " (the image and the run dir must share one XFS or btrfs file "
				   "system)"
				 : "");
	} else if (fsync(fd) < 0) {
		rc = -errno;
		snprintf(why, len, "fsync %s: %s", dst, strerror(-rc));
	}
	if (fd >= 0)
		close(fd);
	if (src >= 0)
		close(src);
	if (rc < 0 && fd >= 0)
		unlink(dst);
	free(dst);
	return rc;
}

/* End t's copy-before-write view if it is checkpoint name's (NULL: whichever). */
static void view_end(struct tracked *t, const char *name)
{
	struct gw_cbw **n;

	if (!t->cbw || (name && strcmp(t->cbw_ckpt, name) != 0))
		return;
	__atomic_store_n(&t->b->cbw, NULL, __ATOMIC_RELEASE);
	gw_cbw_stop(t->cbw);
	gw_info("image %s: the copy-before-write view of checkpoint %s ended (%llu bytes copied)",
		t->image, t->cbw_ckpt, (unsigned long long)gw_cbw_copied(t->cbw));
	n = realloc(t->retired, (t->nretired + 1) * sizeof(*n));
	if (n) {
		t->retired = n;
		t->retired[t->nretired++] = t->cbw;
	} /* else: kept unfreed rather than freed under a request */
	t->cbw = NULL;
	t->cbw_ckpt[0] = '\0';
}

/* Open a copy-before-write view of t's image as checkpoint name's. 0 or -errno with why. */
static int view_begin(struct tracked *t, const char *name, char *why, size_t len)
{
	char *aside;
	int rc;

	if (!t->stamp_path) {
		snprintf(why, len, "its backend keeps no file blkgw can read past");
		return -EOPNOTSUPP;
	}
	aside = view_file(t, "cbw", name);
	if (!aside)
		return -ENOMEM;
	rc = gw_cbw_open(&t->cbw, t->stamp_path, aside, t->b->size, gw_cbt_granularity(t->b->cbt),
			 why, len);
	free(aside);
	if (rc < 0)
		return rc;
	snprintf(t->cbw_ckpt, sizeof(t->cbw_ckpt), "%s", name);
	__atomic_store_n(&t->b->cbw, t->cbw, __ATOMIC_RELEASE);
	return 0;
}

static json_object *cmd_create(json_object *req)
{
	json_object *fail, *r, *v;
	struct tracked *t = want_image(req, &fail);
	const char *name = jstr(req, "name");
	char err[512] = "", why[1024] = "";
	int rc, snap = -1; /* -1: where the image's file system can; 1: required; 0: none */

	if (!t)
		return fail;
	if (!name)
		return gw_ctl_error(-EINVAL, "missing \"name\"");
	if (json_object_object_get_ex(req, "snapshot", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return gw_ctl_error(-EINVAL, "\"snapshot\" must be true or false");
		snap = json_object_get_boolean(v) ? 1 : 0;
	}
	/*
	 * The record switches first, the view is taken second: a write between
	 * the two is in the view and in the new record (copied twice, lost
	 * never); the other order would let such a write miss both.
	 */
	rc = gw_cbt_checkpoint(t->b->cbt, name, err, sizeof(err));
	if (rc < 0)
		return gw_ctl_error(rc, "image %s: %s", t->image, err);
	if (snap != 0 && (rc = snapshot_take(t, name, why, sizeof(why))) < 0 && snap == 1) {
		/* Asked for and not had: no checkpoint either (its record merges back). */
		gw_cbt_delete(t->b->cbt, name, err, sizeof(err));
		return gw_ctl_error(rc,
				    "image %s: no point-in-time view for checkpoint %s: %s; "
				    "create it without a snapshot (--no-snapshot) to track changes "
				    "only",
				    t->image, name, why);
	}
	gw_info("image %s: checkpoint %s created%s%s%s", t->image, name,
		snap != 0 && rc == 0 ? " with a point-in-time view" : "",
		snap != 0 && rc < 0 ? ", without a point-in-time view: " : "",
		snap != 0 && rc < 0 ? why : "");
	r = ok_reply();
	json_object_object_add(r, "image", json_object_new_string(t->image));
	json_object_object_add(r, "name", json_object_new_string(name));
	json_object_object_add(r, "snapshot", json_object_new_boolean(snap != 0 && rc == 0));
	if (snap != 0 && rc < 0)
		json_object_object_add(r, "snapshot_why", json_object_new_string(why));
	return r;
}

/* Delete checkpoint name of t and its view (its record merges into the next). 0 or -errno. */
static int checkpoint_drop(struct tracked *t, const char *name, char *err, size_t errlen)
{
	int rc = gw_cbt_delete(t->b->cbt, name, err, errlen);
	char *p;

	if (rc < 0)
		return rc;
	view_end(t, name);
	native_drop(t, name);
	/* Its reflink copy goes too (a backup export reading it keeps its open file). */
	p = snap_path(t, name);
	if (p && unlink(p) < 0 && errno != ENOENT)
		gw_warn("image %s: cannot remove %s: %s", t->image, p, strerror(errno));
	free(p);
	gw_info("image %s: checkpoint %s deleted (merged into the next record)", t->image, name);
	return 0;
}

static json_object *cmd_delete(json_object *req)
{
	json_object *fail;
	struct tracked *t = want_image(req, &fail);
	const char *name = jstr(req, "name");
	char err[512] = "";
	int rc;

	if (!t)
		return fail;
	if (!name)
		return gw_ctl_error(-EINVAL, "missing \"name\"");
	rc = checkpoint_drop(t, name, err, sizeof(err));
	if (rc < 0)
		return gw_ctl_error(rc, "image %s: %s", t->image, err);
	return ok_reply();
}

void gw_track_checkpoint_undo(const char *image, const char *name)
{
	struct tracked *t;
	char err[512] = "";

	pthread_mutex_lock(&mu);
	t = by_image(image);
	if (t && checkpoint_drop(t, name, err, sizeof(err)) < 0)
		gw_warn("image %s: cannot undo checkpoint %s: %s", image, name, err);
	pthread_mutex_unlock(&mu);
}

static json_object *cmd_list(json_object *req)
{
	json_object *fail, *r, *cur, *ck;
	struct tracked *t = want_image(req, &fail);

	if (!t)
		return fail;
	r = ok_reply();
	json_object_object_add(r, "image", json_object_new_string(t->image));
	json_object_object_add(r, "granularity",
			       json_object_new_int64(gw_cbt_granularity(t->b->cbt)));
	ck = records_json(t->b->cbt, &cur);
	for (size_t i = 0; i < json_object_array_length(ck); i++) {
		json_object *o = json_object_array_get_idx(ck, i);
		const char *name = json_object_get_string(json_object_object_get(o, "name"));

		json_object_object_add(o, "snapshot",
				       json_object_new_boolean(name && has_snapshot(t, name)));
		if (name && t->cbw && strcmp(t->cbw_ckpt, name) == 0)
			json_object_object_add(
				o, "copy_before_write",
				json_object_new_int64((int64_t)gw_cbw_copied(t->cbw)));
	}
	json_object_object_add(r, "checkpoints", ck);
	json_object_object_add(r, "current", cur);
	return r;
}

/* The changed ranges between two checkpoints (or since one), merged, in bytes. */
/*
 * Where the backend keeps views itself (rbd) and `since` (and `upto`, NULL
 * for now) are such views, the cluster is the truth: bits (zeroed first)
 * get the backend's own diff. 1 when it answered, 0 when it does not apply
 * here, -errno with why.
 */
static int native_changes(struct tracked *t, const char *since, const char *upto, uint64_t *bits,
			  uint64_t nchunks, char *why, size_t len)
{
	char from[GW_CBT_NAME_MAX + 8], to[GW_CBT_NAME_MAX + 8];
	int rc;

	if (!t->b->ops->snap_changes || !has_native(t, since) || (upto && !has_native(t, upto)))
		return 0;
	/* Up to now: what the image's own handle holds back must be on the cluster first. */
	if (!upto && t->b->ops->sync && (rc = t->b->ops->sync(t->b)) < 0) {
		snprintf(why, len, "flushing before the diff: %s", strerror(-rc));
		return rc;
	}
	native_name(since, from, sizeof(from));
	if (upto)
		native_name(upto, to, sizeof(to));
	memset(bits, 0, (nchunks + 63) / 64 * sizeof(uint64_t));
	rc = t->b->ops->snap_changes(t->b, from, upto ? to : NULL, gw_cbt_granularity(t->b->cbt),
				     bits, why, len);
	return rc < 0 ? rc : 1;
}

static json_object *cmd_changes(json_object *req)
{
	json_object *fail, *r, *a;
	struct tracked *t = want_image(req, &fail);
	const char *since = jstr(req, "since"), *upto = jstr(req, "upto");
	uint64_t *bits = NULL, n, g, size;
	char why[512] = "";
	int rc;

	if (!t)
		return fail;
	if (!since)
		return gw_ctl_error(-EINVAL, "missing \"since\" (a checkpoint)");
	rc = gw_cbt_changes(t->b->cbt, since, upto, &bits, why, sizeof(why));
	if (rc >= 0) {
		int nrc = native_changes(t, since, upto, bits, gw_cbt_chunks(t->b->cbt), why,
					 sizeof(why));

		rc = nrc < 0 ? nrc : nrc > 0 ? 0 : rc;
	}
	if (rc < 0) {
		free(bits);
		return gw_ctl_error(rc, "image %s: %s", t->image, why);
	}
	r = ok_reply();
	a = json_object_new_array();
	n = gw_cbt_chunks(t->b->cbt);
	g = gw_cbt_granularity(t->b->cbt);
	size = t->b->size;
	for (uint64_t i = 0; i < n;) {
		uint64_t j = i;

		if (!gw_cbt_bit(bits, i)) {
			i++;
			continue;
		}
		while (j < n && gw_cbt_bit(bits, j))
			j++;
		{
			json_object *p = json_object_new_array();
			uint64_t end = GW_MIN(j * g, size);

			json_object_array_add(p, json_object_new_int64((int64_t)(i * g)));
			json_object_array_add(p, json_object_new_int64((int64_t)(end - i * g)));
			json_object_array_add(a, p);
		}
		i = j;
	}
	free(bits);
	json_object_object_add(r, "granularity", json_object_new_int64((int64_t)g));
	json_object_object_add(r, "ranges", a);
	json_object_object_add(r, "trusted", json_object_new_boolean(rc == 0));
	if (rc)
		json_object_object_add(r, "untrusted_why", json_object_new_string(why));
	return r;
}

static json_object *command(const char *name, json_object *req);

json_object *gw_track_command(const char *name, json_object *req)
{
	json_object *r;

	if (strncmp(name, "checkpoint-", 11) != 0)
		return NULL;
	pthread_mutex_lock(&mu);
	r = command(name, req);
	pthread_mutex_unlock(&mu);
	return r;
}

static json_object *command(const char *name, json_object *req)
{
	if (strcmp(name, "checkpoint-changes") == 0)
		return cmd_changes(req);
	if (strcmp(name, "checkpoint-create") == 0)
		return cmd_create(req);
	if (strcmp(name, "checkpoint-delete") == 0)
		return cmd_delete(req);
	if (strcmp(name, "checkpoint-list") == 0)
		return cmd_list(req);
	return NULL;
}

int gw_track_backup_view(const char *image, const char *checkpoint, const char *since,
			 bool inconsistent, char **fields, enum gw_backup_view *view, bool *created,
			 char *err, size_t errlen)
{
	struct tracked *t;
	uint64_t *bits = NULL;
	char why[512] = "", why2[512] = "";
	int rc = 0;

	*fields = NULL;
	*created = false;
	pthread_mutex_lock(&mu);
	t = by_image(image);
	if (!t) {
		snprintf(err, errlen, "image '%s' is not served with 'track-changes: true'", image);
		rc = -ENOENT;
		goto out;
	}
	/* The changes since `since` up to now: known, and trusted. */
	if (since && (rc = gw_cbt_changes(t->b->cbt, since,
					  gw_cbt_has(t->b->cbt, checkpoint) ? checkpoint : NULL,
					  &bits, why, sizeof(why))) != 0) {
		if (rc > 0) {
			snprintf(
				err, errlen,
				"image %s: the changes after %s cannot be trusted (%s): back up in "
				"full (without --since)",
				image, since, why);
			rc = -ESTALE;
		} else {
			snprintf(err, errlen, "image %s: %s", image, why);
		}
		goto out;
	}
	if (gw_cbt_has(t->b->cbt, checkpoint)) {
		if (has_snapshot(t, checkpoint)) {
			*view = GW_VIEW_SNAPSHOT;
		} else if (inconsistent) {
			*view = GW_VIEW_LIVE;
		} else {
			snprintf(err, errlen,
				 "checkpoint %s of image %s has no point-in-time view (it was made "
				 "without one), and the live image goes on changing while a backup "
				 "reads it: the copy would not be consistent. Back up a new "
				 "checkpoint instead ('backup start %s NEWNAME' makes it, with a "
				 "view), or pass --inconsistent to read the live image",
				 checkpoint, image, image);
			rc = -EAGAIN;
			goto out;
		}
		*fields = view_fields(t, checkpoint, *view);
		rc = *fields ? 0 : -ENOMEM;
		goto out;
	}
	/* A new checkpoint, made now with its view: a reflink copy, or copy-before-write. */
	if (t->cbw) {
		snprintf(err, errlen,
			 "image %s: the copy-before-write view of checkpoint %s is open (its "
			 "backup runs): stop that backup first",
			 image, t->cbw_ckpt);
		rc = -EBUSY;
		goto out;
	}
	rc = gw_cbt_checkpoint(t->b->cbt, checkpoint, why, sizeof(why));
	if (rc < 0) {
		snprintf(err, errlen, "image %s: %s", image, why);
		goto out;
	}
	if (snapshot_take(t, checkpoint, why, sizeof(why)) == 0) {
		*view = GW_VIEW_SNAPSHOT;
	} else if ((rc = view_begin(t, checkpoint, why2, sizeof(why2))) == 0) {
		*view = GW_VIEW_CBW;
	} else {
		gw_cbt_delete(t->b->cbt, checkpoint, why, sizeof(why));
		snprintf(err, errlen, "image %s: no point-in-time view can be made: %s; %s", image,
			 why, why2);
		goto out;
	}
	*created = true;
	gw_info("image %s: checkpoint %s created for a backup, with a %s view", image, checkpoint,
		*view == GW_VIEW_CBW        ? "copy-before-write"
		: has_native(t, checkpoint) ? "snapshot"
					    : "reflink");
	*fields = view_fields(t, checkpoint, *view);
	rc = *fields ? 0 : -ENOMEM;
out:
	free(bits);
	pthread_mutex_unlock(&mu);
	return rc;
}

void gw_track_backup_end(const char *image, const char *checkpoint)
{
	struct tracked *t;

	pthread_mutex_lock(&mu);
	t = by_image(image);
	if (t)
		view_end(t, checkpoint);
	pthread_mutex_unlock(&mu);
}

int gw_track_backup_attach(const struct gw_backup_spec *s, uint64_t size,
			   struct gw_change_map **out, struct gw_cbw **view, char *err,
			   size_t errlen)
{
	struct tracked *t;
	struct gw_change_map *m = NULL;
	char why[512] = "";
	int rc = 0;

	*out = NULL;
	*view = NULL;
	if (s->since) {
		m = calloc(1, sizeof(*m));
		if (!m || !(m->since = strdup(s->since))) {
			free(m);
			return -ENOMEM;
		}
		m->only_changed = s->only_changed;
	}
	pthread_mutex_lock(&mu);
	t = by_image(s->of);
	if (!t) {
		snprintf(err, errlen, "image '%s' is not served with 'track-changes: true'", s->of);
		rc = -ENOENT;
	} else if (t->b->size != size) {
		snprintf(err, errlen, "image %s is %llu bytes, its view %llu: not the same disk",
			 s->of, (unsigned long long)t->b->size, (unsigned long long)size);
		rc = -EINVAL;
	} else if (s->view == GW_VIEW_CBW) {
		if (t->cbw && strcmp(t->cbw_ckpt, s->checkpoint) == 0) {
			*view = gw_cbw_get(t->cbw); /* the export's own reference */
		} else {
			snprintf(err, errlen,
				 "the copy-before-write view of %s's checkpoint %s is gone (it "
				 "lives as long as the daemon and its backup): remove image "
				 "%s@%s and start a new backup",
				 s->of, s->checkpoint, s->of, s->checkpoint);
			rc = -ENOENT;
		}
	}
	if (rc == 0 && m) {
		rc = gw_cbt_changes(t->b->cbt, s->since, s->checkpoint, &m->bits, why, sizeof(why));
		m->granularity = gw_cbt_granularity(t->b->cbt);
		m->nchunks = gw_cbt_chunks(t->b->cbt);
		/*
		 * Both checkpoints with the backend's own snapshots (rbd): the
		 * cluster is the truth (the disk may have been written from
		 * another host): its diff replaces this host's record.
		 */
		if (rc >= 0 && has_native(t, s->checkpoint)) {
			int nrc = native_changes(t, s->since, s->checkpoint, m->bits, m->nchunks,
						 why, sizeof(why));

			rc = nrc < 0 ? nrc : nrc > 0 ? 0 : rc;
		}
		if (rc > 0) {
			snprintf(err, errlen,
				 "image %s: the changes after %s up to %s cannot be trusted (%s)",
				 s->of, s->since, s->checkpoint, why);
			rc = -ESTALE;
		} else if (rc < 0) {
			snprintf(err, errlen, "image %s: %s", s->of, why);
		}
	}
	pthread_mutex_unlock(&mu);
	if (rc < 0) {
		gw_change_map_free(m);
		gw_cbw_put(*view);
		*view = NULL;
		return rc;
	}
	*out = m;
	return 0;
}
