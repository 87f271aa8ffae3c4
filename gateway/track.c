#include "gateway/track.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gateway/control.h"
#include "lib/cbt.h"
#include "lib/log.h"
#include "lib/util.h"

struct tracked {
	struct gw_backend *b;
	char *image;
	char *stamp_path; /* the file whose size and mtime stand for the image, or NULL */
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
	free(dir);
	if (rc < 0) {
		free(n->image);
		free(n->stamp_path);
		return rc;
	}
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
	free(t->image);
	free(t->stamp_path);
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

static json_object *cmd_create(json_object *req)
{
	json_object *fail, *r;
	struct tracked *t = want_image(req, &fail);
	const char *name = jstr(req, "name");
	char err[512] = "";
	int rc;

	if (!t)
		return fail;
	if (!name)
		return gw_ctl_error(-EINVAL, "missing \"name\"");
	rc = gw_cbt_checkpoint(t->b->cbt, name, err, sizeof(err));
	if (rc < 0)
		return gw_ctl_error(rc, "image %s: %s", t->image, err);
	gw_info("image %s: checkpoint %s created", t->image, name);
	r = ok_reply();
	json_object_object_add(r, "image", json_object_new_string(t->image));
	json_object_object_add(r, "name", json_object_new_string(name));
	return r;
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
	rc = gw_cbt_delete(t->b->cbt, name, err, sizeof(err));
	if (rc < 0)
		return gw_ctl_error(rc, "image %s: %s", t->image, err);
	gw_info("image %s: checkpoint %s deleted (merged into the next record)", t->image, name);
	return ok_reply();
}

static json_object *cmd_list(json_object *req)
{
	json_object *fail, *r, *cur;
	struct tracked *t = want_image(req, &fail);

	if (!t)
		return fail;
	r = ok_reply();
	json_object_object_add(r, "image", json_object_new_string(t->image));
	json_object_object_add(r, "granularity",
			       json_object_new_int64(gw_cbt_granularity(t->b->cbt)));
	json_object_object_add(r, "checkpoints", records_json(t->b->cbt, &cur));
	json_object_object_add(r, "current", cur);
	return r;
}

/* The changed ranges between two checkpoints (or since one), merged, in bytes. */
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
	if (rc < 0)
		return gw_ctl_error(rc, "image %s: %s", t->image, why);
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
