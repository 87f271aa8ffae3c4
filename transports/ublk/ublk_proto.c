/*
 * The ublk transport's plain functions: device parameters from an export,
 * request descriptors to backend requests, results back, the device id
 * option and the run dir's state line. No kernel calls here.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/util.h"
#include "transports/ublk/ublk_internal.h"

/* The largest discard or write-zeroes the device announces (1 GiB). */
#define UBLK_MAX_ZERO_SECTORS ((1u << 30) >> 9)

int ublk_parse_id(const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	if (!s || strcmp(s, "-1") == 0 || strcmp(s, "auto") == 0) {
		*out = UBLK_ID_AUTO;
		return 0;
	}
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v >= (1ul << 20))
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static unsigned log2u(uint32_t v)
{
	return (unsigned)__builtin_ctz(v);
}

int ublk_build_params(const struct gw_export *e, uint32_t max_io, struct ublk_params *p, char *err,
		      size_t errlen)
{
	uint32_t lbs = GW_MAX(512u, e->min_block), pbs = lbs, max_bytes;
	uint64_t sectors;

	memset(p, 0, sizeof(*p));
	if (!gw_is_pow2(lbs) || lbs > 4096) {
		gw_seterr(
			err, errlen,
			"a ublk device takes block sizes 512 to 4096, the image has %u (set the image's block-size)",
			e->min_block);
		return -EINVAL;
	}
	if (gw_is_pow2(e->pref_block) && e->pref_block > lbs)
		pbs = GW_MIN(e->pref_block, 4096u);
	max_bytes = GW_MIN(max_io, e->max_xfer);
	max_bytes -= max_bytes % lbs;
	if (max_bytes < lbs) {
		gw_seterr(err, errlen, "max-io %u is smaller than the block size %u", max_io, lbs);
		return -EINVAL;
	}
	sectors = (e->size - e->size % lbs) >> 9;
	if (!sectors) {
		gw_seterr(err, errlen, "the image is smaller than one block (%u bytes)", lbs);
		return -EINVAL;
	}
	p->len = sizeof(*p);
	p->types = UBLK_PARAM_TYPE_BASIC;
	p->basic.logical_bs_shift = (uint8_t)log2u(lbs);
	p->basic.physical_bs_shift = (uint8_t)log2u(pbs);
	p->basic.io_min_shift = (uint8_t)log2u(lbs);
	p->basic.io_opt_shift = (uint8_t)log2u(pbs);
	p->basic.max_sectors = max_bytes >> 9;
	p->basic.dev_sectors = sectors;
	if (e->read_only)
		p->basic.attrs |= UBLK_ATTR_READ_ONLY;
	if (e->caps & GW_CAP_ROTATIONAL)
		p->basic.attrs |= UBLK_ATTR_ROTATIONAL;
	/* Only a volatile cache makes the block layer send FLUSH; FUA is emulated when not native.
	 */
	if (e->caps & GW_CAP_FLUSH)
		p->basic.attrs |= UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA;
	if (!e->read_only) {
		/* Write-zeroes always works (written as zeros when not native); discard when it
		 * can. */
		p->types |= UBLK_PARAM_TYPE_DISCARD;
		p->discard.discard_granularity = pbs;
		p->discard.max_write_zeroes_sectors = UBLK_MAX_ZERO_SECTORS;
		if (e->caps & GW_CAP_TRIM) {
			p->discard.max_discard_sectors = UBLK_MAX_ZERO_SECTORS;
			p->discard.max_discard_segments = 1;
		}
	}
	return 0;
}

int ublk_decode(const struct ublksrv_io_desc *iod, void *buf, uint32_t buf_len, struct gw_io *io,
		struct iovec *iov)
{
	uint32_t opf = iod->op_flags;

	memset(io, 0, sizeof(*io));
	io->offset = iod->start_sector << 9;
	io->len = (uint64_t)iod->nr_sectors << 9;
	switch (opf & 0xff) {
	case UBLK_IO_OP_READ:
	case UBLK_IO_OP_WRITE:
		if (io->len > buf_len)
			return -EINVAL;
		io->op = (opf & 0xff) == UBLK_IO_OP_READ ? GW_OP_READ : GW_OP_WRITE;
		iov->iov_base = buf;
		iov->iov_len = io->len;
		io->iov = iov;
		io->iovcnt = 1;
		if (io->op == GW_OP_WRITE && (opf & UBLK_IO_F_FUA))
			io->flags |= GW_IO_FUA;
		return 0;
	case UBLK_IO_OP_FLUSH:
		io->op = GW_OP_FLUSH;
		io->offset = 0;
		io->len = 0;
		return 0;
	case UBLK_IO_OP_DISCARD:
		io->op = GW_OP_TRIM;
		if (opf & UBLK_IO_F_FUA)
			io->flags |= GW_IO_FUA;
		return 0;
	case UBLK_IO_OP_WRITE_ZEROES:
		io->op = GW_OP_WRITE_ZEROES;
		if (opf & UBLK_IO_F_NOUNMAP)
			io->flags |= GW_IO_NO_UNMAP;
		if (opf & UBLK_IO_F_FUA)
			io->flags |= GW_IO_FUA;
		return 0;
	default:
		return -EOPNOTSUPP;
	}
}

const char *ublk_info_unfit(const struct ublksrv_ctrl_dev_info *info, uint32_t dev_id)
{
	if (info->dev_id != dev_id)
		return "the kernel described another device";
	if (info->state == UBLK_S_DEV_DEAD)
		return "it was never started";
	if (!(info->flags & UBLK_F_USER_RECOVERY))
		return "it was made without user recovery";
	/* What blkgw itself could have made (ublk_opts' limits): the queues are sized by it. */
	if (info->nr_hw_queues == 0 || info->nr_hw_queues > UBLK_MAX_QUEUES ||
	    info->queue_depth == 0 || info->queue_depth > UBLK_MAX_QUEUE_DEPTH ||
	    info->max_io_buf_bytes < 4096 || info->max_io_buf_bytes > (32u << 20) ||
	    info->max_io_buf_bytes % 4096)
		return "its queues, depth or max-io are not ones blkgw makes";
	return NULL;
}

bool ublk_params_match(const struct ublk_params *have, const struct ublk_params *want)
{
	return have->basic.dev_sectors == want->basic.dev_sectors &&
	       have->basic.logical_bs_shift == want->basic.logical_bs_shift &&
	       (have->basic.attrs & UBLK_ATTR_READ_ONLY) ==
		       (want->basic.attrs & UBLK_ATTR_READ_ONLY);
}

int ublk_result(const struct gw_io *io)
{
	if (io->result < 0)
		return io->result;
	if (io->op == GW_OP_READ || io->op == GW_OP_WRITE)
		return (int)io->len;
	return 0;
}

int ublk_state_format(const struct ublk_state *s, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%u %d %u %u %u %s\n", s->dev_id, s->pid, s->queues, s->depth,
			 s->max_io, s->export_id);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : n;
}

int ublk_state_parse(const char *buf, struct ublk_state *s)
{
	memset(s, 0, sizeof(*s));
	if (sscanf(buf, "%u %d %u %u %u %255[^\n]", &s->dev_id, &s->pid, &s->queues, &s->depth,
		   &s->max_io, s->export_id) != 6)
		return -EINVAL;
	if (s->pid <= 0 || !s->queues || s->queues > UBLK_MAX_QUEUES || !s->depth ||
	    s->depth > UBLK_MAX_QUEUE_DEPTH || !s->max_io)
		return -EINVAL;
	return 0;
}

int ublk_check_features(uint64_t features, char *err, size_t errlen)
{
	const char *missing = NULL;

	if (!(features & UBLK_F_USER_RECOVERY))
		missing = "USER_RECOVERY";
	else if (!(features & UBLK_F_USER_RECOVERY_REISSUE))
		missing = "USER_RECOVERY_REISSUE";
	if (!missing)
		return 0;
	gw_seterr(
		err, errlen,
		"this kernel's ublk driver lacks %s (features 0x%llx), which blkgw needs so a device survives a daemon restart: use Linux 6.5 or later, or another transport",
		missing, (unsigned long long)features);
	return -EOPNOTSUPP;
}

void ublk_cpus_format(const cpu_set_t *cpus, char *buf, size_t len)
{
	size_t n = 0;
	int first = -1;

	if (len)
		buf[0] = '\0';
	for (int c = 0; c <= CPU_SETSIZE; c++) {
		bool in = c < CPU_SETSIZE && CPU_ISSET(c, cpus);

		if (in && first < 0)
			first = c;
		if (in || first < 0)
			continue;
		if (n < len)
			n += (size_t)snprintf(buf + n, len - n, "%s%d", n ? "," : "", first);
		if (c - 1 > first && n < len)
			n += (size_t)snprintf(buf + n, len - n, "-%d", c - 1);
		first = -1;
	}
}
