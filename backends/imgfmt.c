/*
 * Image container formats by header. The magic numbers are the formats'
 * published ones (QEMU's docs/interop and the formats' specifications):
 *
 *   qcow2, qcow  "QFI\xfb" then a big-endian version: 1 is qcow, 2 and 3 qcow2
 *   qed          "QED\0"
 *   vmdk         "KDMV" (hosted sparse extent), "COWD" (ESX sparse), or a
 *                text descriptor beginning "# Disk DescriptorFile"
 *   vhdx         "vhdxfile" at 0
 *   vdi          little-endian 0xbeda107f at byte 64
 *   vpc (VHD)    "conectix" at 0 (dynamic and differencing disks carry a copy
 *                of their footer there), or in the last 512 bytes (fixed)
 *   luks         "LUKS\xba\xbe" then a big-endian version 1 or 2
 */
#include "backends/imgfmt.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static int at(const uint8_t *buf, size_t len, size_t off, const void *magic, size_t mlen)
{
	return off + mlen <= len && memcmp(buf + off, magic, mlen) == 0;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

const char *gw_imgfmt_detect(const uint8_t *head, size_t hlen, const uint8_t *tail, size_t tlen)
{
	if (at(head, hlen, 0, "QFI\xfb", 4) && hlen >= 8) {
		uint32_t v = be32(head + 4);

		if (v == 1)
			return "qcow";
		if (v == 2 || v == 3)
			return "qcow2";
	}
	if (at(head, hlen, 0, "QED\0", 4))
		return "qed";
	if (at(head, hlen, 0, "KDMV", 4) || at(head, hlen, 0, "COWD", 4) ||
	    at(head, hlen, 0, "# Disk DescriptorFile", 21))
		return "vmdk";
	if (at(head, hlen, 0, "vhdxfile", 8))
		return "vhdx";
	if (at(head, hlen, 64, "\x7f\x10\xda\xbe", 4))
		return "vdi";
	if (at(head, hlen, 0, "conectix", 8))
		return "vpc";
	if (at(head, hlen, 0, "LUKS\xba\xbe", 6) && hlen >= 8) {
		uint16_t v = be16(head + 6);

		if (v == 1 || v == 2)
			return "luks";
	}
	/* A fixed VHD: raw data, then a 512-byte footer (511 bytes in old ones). */
	if (tail && tlen >= 511 &&
	    (at(tail, tlen, tlen - 512, "conectix", 8) ||
	     at(tail, tlen, tlen - 511, "conectix", 8)))
		return "vpc";
	return NULL;
}

static ssize_t read_at(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

int gw_imgfmt_detect_fd(int fd, uint64_t size, const char **fmt)
{
	uint8_t head[GW_IMGFMT_HEAD], tail[GW_IMGFMT_TAIL];
	ssize_t h, t = 0;

	*fmt = NULL;
	h = read_at(fd, head, sizeof(head), 0);
	if (h < 0)
		return (int)h;
	if (size >= sizeof(head) + sizeof(tail)) {
		t = read_at(fd, tail, sizeof(tail), size - sizeof(tail));
		if (t < 0)
			return (int)t;
	}
	*fmt = gw_imgfmt_detect(head, (size_t)h, t == sizeof(tail) ? tail : NULL, (size_t)t);
	return 0;
}
