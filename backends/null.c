/*
 * null: reads zeros, drops writes. The floor for measuring what a transport
 * costs by itself.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "backends/backend.h"
#include "lib/util.h"

struct null_opts {
	uint64_t size;
};

static const struct gw_opt_desc null_opts[] = {
	{ .key = "size",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct null_opts, size),
	  .flags = GW_OPT_REQUIRED,
	  .min = 1,
	  .max = INT64_MAX,
	  .help = "virtual size (e.g. 100G)" },
};

static int null_inspect(const void *opts, struct gw_source_info *info)
{
	info->size = ((const struct null_opts *)opts)->size;
	return 0;
}

static int null_open(struct gw_backend *b, const void *opts, char *err, size_t errlen)
{
	const struct null_opts *o = opts;

	b->size = o->size;
	b->caps = GW_CAP_TRIM | GW_CAP_ZERO | GW_CAP_FAST_ZERO | GW_CAP_EXTENTS |
		  GW_CAP_MULTI_CONN | GW_CAP_INLINE;
	return 0;
}

static int null_submit(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io)
{
	if (io->op == GW_OP_READ) {
		if (io->flags & GW_IO_HOLE_OK)
			io->rflags |= GW_IO_R_HOLE;
		else
			gw_iov_zero(io->iov, io->iovcnt);
	}
	io->result = 0;
	return 1;
}

static int null_extents(struct gw_backend *b, uint64_t offset, uint64_t len, struct gw_extents *out)
{
	gw_extents_add(out, len, GW_EXT_HOLE | GW_EXT_ZERO);
	return 0;
}

static void null_close(struct gw_backend *b)
{
}

static void null_describe(struct gw_backend *b, char *buf, size_t len)
{
	char s[32];

	snprintf(buf, len, "null %s", gw_fmt_size(b->size, s, sizeof(s)));
}

const struct gw_backend_ops gw_null_backend = {
	.abi_version = GW_BACKEND_ABI,
	.name = "null",
	.summary = "reads zeros, discards writes (measures a transport's own cost)",
	.instance_size = sizeof(struct gw_backend),
	.schema = GW_OPT_SCHEMA(null_opts, struct null_opts, NULL),
	.open = null_open,
	.inspect = null_inspect,
	.submit = null_submit,
	.extents = null_extents,
	.close = null_close,
	.describe = null_describe,
};
