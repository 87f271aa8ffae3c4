/* Parsers underneath the manifest: sizes, booleans, modes, addresses, hints. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lib/opts.h"

struct o {
	char *path;
	uint32_t n;
	uint64_t size;
	uint32_t mode;
	bool flag;
	char *addr;
	char *word;
	uint32_t uid, gid;
};

static const char *const words[] = { "one", "two", NULL };
static const struct gw_opt_desc table[] = {
	{ .key = "path", .type = GW_OPT_PATH, .offset = offsetof(struct o, path) },
	{ .key = "n",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct o, n),
	  .min = 1,
	  .max = 8,
	  .def = 3 },
	{ .key = "size",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct o, size),
	  .min = 512,
	  .def = 4096 },
	{ .key = "mode", .type = GW_OPT_MODE, .offset = offsetof(struct o, mode), .def = 0600 },
	{ .key = "flag", .type = GW_OPT_BOOL, .offset = offsetof(struct o, flag), .def = 1 },
	{ .key = "addr", .type = GW_OPT_HOSTPORT, .offset = offsetof(struct o, addr) },
	{ .key = "word", .type = GW_OPT_ENUM, .offset = offsetof(struct o, word), .choices = words },
	{ .key = "owner", .type = GW_OPT_USER, .offset = offsetof(struct o, uid) },
	{ .key = "group", .type = GW_OPT_GROUP, .offset = offsetof(struct o, gid) },
};
static const struct gw_opt_schema schema = GW_OPT_SCHEMA(table, struct o, NULL);

static int advice_has(const char *text, const char *want)
{
	char buf[256];
	const char *got = gw_size_advice(text, buf, sizeof(buf));

	if (strstr(got, want))
		return 1;
	fprintf(stderr, "advice for '%s': '%s' lacks '%s'\n", text, got, want);
	return 0;
}

static int set(struct o *v, const char *key, const char *text)
{
	char err[256];

	return gw_opt_set(gw_opt_find(&schema, key), text, "/base", v, err, sizeof(err));
}

int main(void)
{
	uint64_t v;
	bool b;
	char *h, *p;
	struct o o;

	/* sizes: QEMU's units K M G T P E, also KiB..EiB and B; nothing else */
	CHECK(gw_parse_size("4096", &v) == 0 && v == 4096);
	CHECK(gw_parse_size("1K", &v) == 0 && v == 1024);
	CHECK(gw_parse_size("64M", &v) == 0 && v == 64ull << 20);
	CHECK(gw_parse_size("1G", &v) == 0 && v == 1ull << 30);
	CHECK(gw_parse_size("2T", &v) == 0 && v == 2ull << 40);
	CHECK(gw_parse_size("1GiB", &v) == 0 && v == 1ull << 30);
	CHECK(gw_parse_size("512B", &v) == 0 && v == 512);
	CHECK(gw_parse_size("1P", &v) == 0 && v == 1ull << 50);
	CHECK(gw_parse_size("3E", &v) == 0 && v == 3ull << 60);
	CHECK(gw_parse_size("4KiB", &v) == 0 && v == 4096);
	CHECK(gw_parse_size("2TiB", &v) == 0 && v == 2ull << 40);
	CHECK(gw_parse_size("1PiB", &v) == 0 && v == 1ull << 50);
	CHECK(gw_parse_size("0", &v) == 0 && v == 0);
	/* Not QEMU's spellings: decimal units, bits, lower case, "iB" alone. */
	CHECK(gw_parse_size("1g", &v) == -EINVAL);
	CHECK(gw_parse_size("1k", &v) == -EINVAL);
	CHECK(gw_parse_size("1GB", &v) == -EINVAL);
	CHECK(gw_parse_size("1KB", &v) == -EINVAL);
	CHECK(gw_parse_size("1Gb", &v) == -EINVAL);
	CHECK(gw_parse_size("1gib", &v) == -EINVAL);
	CHECK(gw_parse_size("1Gib", &v) == -EINVAL);
	CHECK(gw_parse_size("512b", &v) == -EINVAL);
	CHECK(gw_parse_size("1iB", &v) == -EINVAL);
	CHECK(gw_parse_size("1GiBB", &v) == -EINVAL);
	CHECK(gw_parse_size("1BB", &v) == -EINVAL);
	CHECK(gw_parse_size("G", &v) == -EINVAL);
	CHECK(gw_parse_size("0x10", &v) == -EINVAL);
	/* ... each refused with what to write instead. */
	CHECK(advice_has("1GB", "write 1G or 1GiB: units are binary"));
	CHECK(advice_has("1KB", "write 1K or 1KiB"));
	CHECK(advice_has("10Gb", "write 10G or 10GiB"));
	CHECK(advice_has("1g", "write 1G: units are upper case"));
	CHECK(advice_has("4kib", "write 4KiB: units are upper case"));
	CHECK(advice_has("512b", "write 512 or 512B"));
	CHECK(advice_has("1.5G", "1536M"));
	CHECK(advice_has("10X", "K, M, G, T, P or E"));
	CHECK(advice_has("1GiBB", "K, M, G, T, P or E"));
	CHECK(gw_parse_size("1.5G", &v) == -EINVAL);
	CHECK(gw_parse_size("10X", &v) == -EINVAL);
	CHECK(gw_parse_size("-1", &v) == -EINVAL);
	CHECK(gw_parse_size("", &v) == -EINVAL);
	CHECK(gw_parse_size(" 1G", &v) == -EINVAL);
	CHECK(gw_parse_size("1G ", &v) == -EINVAL);
	CHECK(gw_parse_size("16E", &v) == -ERANGE);
	CHECK(gw_parse_size("99999999999999999999", &v) == -ERANGE);
	CHECK(gw_parse_size("17179869184G", &v) == -ERANGE);

	CHECK(gw_parse_bool("yes", &b) == 0 && b);
	CHECK(gw_parse_bool("off", &b) == 0 && !b);
	CHECK(gw_parse_bool("maybe", &b) == -EINVAL);

	CHECK(gw_split_hostport("127.0.0.1:10809", &h, &p) == 0 && !strcmp(h, "127.0.0.1") &&
	      !strcmp(p, "10809"));
	free(h);
	free(p);
	CHECK(gw_split_hostport("[::1]:80", &h, &p) == 0 && !strcmp(h, "::1") && !strcmp(p, "80"));
	free(h);
	free(p);
	CHECK(gw_split_hostport("localhost:65535", &h, &p) == 0);
	free(h);
	free(p);
	CHECK(gw_split_hostport("127.0.0.1", &h, &p) < 0);
	CHECK(gw_split_hostport("::1:80", &h, &p) < 0);
	CHECK(gw_split_hostport("host:0", &h, &p) < 0);
	CHECK(gw_split_hostport("host:65536", &h, &p) < 0);
	CHECK(gw_split_hostport(":80", &h, &p) < 0);
	CHECK(gw_split_hostport("host:8x", &h, &p) < 0);

	CHECK(gw_edit_distance("file", "file") == 0);
	CHECK(gw_edit_distance("fiel", "file") == 1);
	CHECK(gw_edit_distance("imagess", "images") == 1);
	CHECK(gw_edit_distance("sockt", "socket") == 1);
	CHECK(gw_edit_distance("", "abc") == 3);
	CHECK(gw_opt_closest(&schema, "pth") && !strcmp(gw_opt_closest(&schema, "pth"), "path"));
	CHECK(gw_opt_closest(&schema, "completely-different") == NULL);

	memset(&o, 0, sizeof(o));
	gw_opt_defaults(&schema, &o);
	CHECK(o.n == 3 && o.size == 4096 && o.mode == 0600 && o.flag);
	CHECK(set(&o, "path", "rel/file") == 0 && !strcmp(o.path, "/base/rel/file"));
	CHECK(set(&o, "path", "/abs") == 0 && !strcmp(o.path, "/abs"));
	CHECK(set(&o, "path", "") < 0);
	CHECK(set(&o, "n", "8") == 0 && o.n == 8);
	CHECK(set(&o, "n", "9") < 0 && o.n == 8);
	CHECK(set(&o, "n", "0") < 0);
	CHECK(set(&o, "n", "0x4") == 0 && o.n == 4);
	CHECK(set(&o, "size", "256") < 0);
	CHECK(set(&o, "size", "1M") == 0 && o.size == 1u << 20);
	CHECK(set(&o, "size", "1GB") < 0 && o.size == 1u << 20);
	CHECK(set(&o, "mode", "0660") == 0 && o.mode == 0660);
	CHECK(set(&o, "mode", "0o644") == 0 && o.mode == 0644);
	CHECK(set(&o, "mode", "0999") < 0);
	CHECK(set(&o, "mode", "17777") < 0);
	CHECK(set(&o, "flag", "false") == 0 && !o.flag);
	CHECK(set(&o, "addr", "127.0.0.1:1") == 0 && !strcmp(o.addr, "127.0.0.1:1"));
	CHECK(set(&o, "addr", "nope") < 0);
	CHECK(set(&o, "word", "two") == 0 && !strcmp(o.word, "two"));
	CHECK(set(&o, "word", "three") < 0);
	CHECK(o.uid == GW_ID_UNSET && o.gid == GW_ID_UNSET);
	CHECK(set(&o, "owner", "root") == 0 && o.uid == 0);
	CHECK(set(&o, "owner", "64201") == 0 && o.uid == 64201);
	CHECK(set(&o, "owner", "no-such-user-blkgw") < 0 && o.uid == 64201);
	CHECK(set(&o, "owner", "4294967295") < 0);
	CHECK(set(&o, "owner", "12x") < 0);
	CHECK(set(&o, "group", "root") == 0 && o.gid == 0);
	CHECK(set(&o, "group", "0x10") == 0 && o.gid == 16);
	CHECK(set(&o, "group", "no-such-group-blkgw") < 0);
	gw_opt_free(&schema, &o);
	CHECK(o.path == NULL && o.addr == NULL);
	return check_report();
}
