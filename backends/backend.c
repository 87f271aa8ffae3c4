#include "backends/backend.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "gw_config.h"
#include "lib/util.h"

extern const struct gw_backend_ops gw_file_backend;
extern const struct gw_backend_ops gw_memory_backend;
extern const struct gw_backend_ops gw_null_backend;
#if BLKGW_WITH_RBD
extern const struct gw_backend_ops gw_rbd_backend;
#endif

static const struct gw_backend_ops *const backends[] = {
	&gw_file_backend,
	&gw_memory_backend,
	&gw_null_backend,
#if BLKGW_WITH_RBD
	&gw_rbd_backend,
#endif
};

const struct gw_backend_ops *gw_backend_find(const char *name)
{
	for (size_t i = 0; i < GW_ARRAY_SIZE(backends); i++)
		if (strcmp(backends[i]->name, name) == 0)
			return backends[i];
	return NULL;
}

const struct gw_backend_ops *const *gw_backend_list(size_t *n)
{
	*n = GW_ARRAY_SIZE(backends);
	return backends;
}

struct gw_backend *gw_backend_open(const struct gw_backend_ops *ops, const char *image_name,
				   const void *opts, char *err, size_t errlen)
{
	return gw_backend_open_mode(ops, image_name, opts, false, err, errlen);
}

struct gw_backend *gw_backend_open_mode(const struct gw_backend_ops *ops, const char *image_name,
					const void *opts, bool read_only, char *err, size_t errlen)
{
	struct gw_backend *b;
	int rc;

	if (ops->abi_version != GW_BACKEND_ABI || ops->instance_size < sizeof(*b)) {
		gw_seterr(err, errlen, "backend '%s' was built for another interface version",
			  ops->name);
		return NULL;
	}
	b = calloc(1, ops->instance_size);
	if (!b) {
		gw_seterr(err, errlen, "out of memory");
		return NULL;
	}
	b->ops = ops;
	b->name = strdup(image_name);
	b->min_block = 1;
	b->pref_block = 4096;
	b->open_read_only = read_only;
	rc = b->name ? ops->open(b, opts, err, errlen) : -ENOMEM;
	if (rc < 0) {
		if (rc == -ENOMEM && err && !*err)
			gw_seterr(err, errlen, "out of memory");
		free((char *)b->name);
		free(b);
		return NULL;
	}
	return b;
}

void gw_backend_close(struct gw_backend *b)
{
	if (!b)
		return;
	b->ops->close(b);
	free((char *)b->name);
	free(b);
}

static void *open_one(void *arg)
{
	struct gw_backend_open_req *r = arg;

	r->err[0] = '\0';
	r->b = gw_backend_open_mode(r->ops, r->name, r->opts, r->read_only, r->err, sizeof(r->err));
	return NULL;
}

#define GW_OPEN_THREADS 32

size_t gw_backend_open_all(struct gw_backend_open_req *r, size_t n)
{
	pthread_t t[GW_OPEN_THREADS];
	bool started[GW_OPEN_THREADS];
	size_t failed = 0;

	for (size_t base = 0; base < n; base += GW_OPEN_THREADS) {
		size_t k = GW_MIN(n - base, (size_t)GW_OPEN_THREADS);

		/* One alone needs no thread. */
		for (size_t i = 0; i < k; i++)
			started[i] = k > 1 &&
				     pthread_create(&t[i], NULL, open_one, &r[base + i]) == 0;
		for (size_t i = 0; i < k; i++) {
			if (started[i])
				pthread_join(t[i], NULL);
			else
				open_one(&r[base + i]);
		}
	}
	for (size_t i = 0; i < n; i++)
		failed += !r[i].b;
	return failed;
}

int gw_extents_add(struct gw_extents *e, uint64_t len, uint32_t flags)
{
	if (!len)
		return e->n >= e->cap;
	if (e->n && e->v[e->n - 1].flags == flags) {
		e->v[e->n - 1].len += len;
	} else {
		if (e->n >= e->cap)
			return 1;
		e->v[e->n].len = len;
		e->v[e->n].flags = flags;
		e->n++;
	}
	e->end += len;
	return 0;
}
