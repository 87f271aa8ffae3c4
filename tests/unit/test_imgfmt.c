/* backends/imgfmt: container formats told by their headers, raw otherwise. */
#include <stdint.h>
#include <string.h>

#include "backends/imgfmt.h"
#include "check.h"

static uint8_t head[GW_IMGFMT_HEAD], tail[GW_IMGFMT_TAIL];

static const char *detect_head(const void *magic, size_t off, size_t len)
{
	memset(head, 0, sizeof(head));
	memcpy(head + off, magic, len);
	return gw_imgfmt_detect(head, sizeof(head), NULL, 0);
}

static int is(const char *got, const char *want)
{
	if (!got || !want)
		return got == want;
	return strcmp(got, want) == 0;
}

int main(void)
{
	/* The formats the issue names, each by its own header. */
	CHECK(is(detect_head("QFI\xfb\0\0\0\3", 0, 8), "qcow2"));
	CHECK(is(detect_head("QFI\xfb\0\0\0\2", 0, 8), "qcow2"));
	CHECK(is(detect_head("QFI\xfb\0\0\0\1", 0, 8), "qcow"));
	CHECK(is(detect_head("QFI\xfb\0\0\0\7", 0, 8), NULL)); /* no such version */
	CHECK(is(detect_head("QED\0", 0, 4), "qed"));
	CHECK(is(detect_head("KDMV", 0, 4), "vmdk"));
	CHECK(is(detect_head("COWD", 0, 4), "vmdk"));
	CHECK(is(detect_head("# Disk DescriptorFile\n", 0, 22), "vmdk"));
	CHECK(is(detect_head("vhdxfile", 0, 8), "vhdx"));
	CHECK(is(detect_head("\x7f\x10\xda\xbe", 64, 4), "vdi"));
	CHECK(is(detect_head("\x7f\x10\xda\xbe", 0, 4), NULL)); /* only at byte 64 */
	CHECK(is(detect_head("conectix", 0, 8), "vpc"));
	CHECK(is(detect_head("LUKS\xba\xbe\0\1", 0, 8), "luks"));
	CHECK(is(detect_head("LUKS\xba\xbe\0\2", 0, 8), "luks"));
	CHECK(is(detect_head("LUKS\xba\xbe\0\x09", 0, 8), NULL));

	/* Raw: zeros, an MBR, a filesystem, a magic off by a byte, a short image. */
	CHECK(is(detect_head("", 0, 0), NULL));
	CHECK(is(detect_head("\x55\xaa", 510, 2), NULL));
	CHECK(is(detect_head("QFI\xfb\0\0\0\3", 1, 8), NULL));
	CHECK(is(detect_head("qfi\xfb\0\0\0\3", 0, 8), NULL));
	memcpy(head, "QFI\xfb", 4);
	CHECK(is(gw_imgfmt_detect(head, 4, NULL, 0), NULL)); /* no version: too short to tell */
	CHECK(is(gw_imgfmt_detect(head, 0, NULL, 0), NULL));

	/* A fixed VHD: its footer is in the last 512 bytes (511 in old ones). */
	memset(head, 0, sizeof(head));
	memset(tail, 0, sizeof(tail));
	memcpy(tail, "conectix", 8);
	CHECK(is(gw_imgfmt_detect(head, sizeof(head), tail, sizeof(tail)), "vpc"));
	memset(tail, 0, sizeof(tail));
	memcpy(tail + 1, "conectix", 8);
	CHECK(is(gw_imgfmt_detect(head, sizeof(head), tail, sizeof(tail)), "vpc"));
	memset(tail, 0, sizeof(tail));
	memcpy(tail + 100, "conectix", 8);
	CHECK(is(gw_imgfmt_detect(head, sizeof(head), tail, sizeof(tail)), NULL));
	return check_report();
}
