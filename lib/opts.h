/*
 * Option schemas. Backends and transports describe their settings with a
 * table of gw_opt_desc; the manifest loader (config/) decodes YAML into the
 * struct the table describes, so neither backends nor transports know YAML,
 * and a later control-socket command can decode JSON through the same table.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum gw_opt_type {
	GW_OPT_STR,      /* char *, malloc'd; NULL when absent */
	GW_OPT_PATH,     /* char *, relative paths resolved against the manifest's folder */
	GW_OPT_BOOL,     /* bool: true/false/yes/no/on/off */
	GW_OPT_U32,      /* uint32_t, decimal or 0x hex, within [min, max] */
	GW_OPT_SIZE,     /* uint64_t bytes: 4096, 512K, 64M, 1G, 2T, 1GiB (binary units) */
	GW_OPT_MODE,     /* uint32_t file mode written in octal: 0600, 0660 */
	GW_OPT_HOSTPORT, /* char *: "127.0.0.1:10809", "[::1]:10809", "localhost:10809" */
	GW_OPT_ENUM,     /* char *: one of choices[] */
	GW_OPT_USER,     /* uint32_t uid: a user name or a number; GW_ID_UNSET when absent */
	GW_OPT_GROUP,    /* uint32_t gid: a group name or a number; GW_ID_UNSET when absent */
};

/* GW_OPT_USER/GROUP when the key is absent: leave the owner as it is. */
#define GW_ID_UNSET UINT32_MAX

#define GW_OPT_REQUIRED (1u << 0)

struct gw_opt_desc {
	const char *key;
	enum gw_opt_type type;
	size_t offset;              /* into the options struct */
	unsigned flags;             /* GW_OPT_REQUIRED */
	uint64_t min, max;          /* numeric bounds (0,0 = type's full range) */
	uint64_t def;               /* default for BOOL/U32/SIZE/MODE when absent */
	const char *const *choices; /* GW_OPT_ENUM: NULL-terminated */
	const char *help;           /* one line, for docs and error hints */
};

/*
 * Where a schema's cross-field check reports: every problem it finds, each
 * about one key (or the whole mapping). Filled by the decoder (config/).
 */
struct gw_opt_report {
	/* Take one problem; key NULL: the whole mapping. */
	void (*problem)(struct gw_opt_report *r, const char *key, const char *msg);
	/* Did key fail to decode (its field then holds the default)? */
	bool (*bad)(const struct gw_opt_report *r, const char *key);
	void *arg;
};

/* Report a problem about key (NULL: the whole mapping). */
void gw_opt_problem(struct gw_opt_report *r, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/*
 * Was key given but unreadable? A check that relates several keys skips a
 * rule whose input failed to decode, so one mistake gives one message.
 */
bool gw_opt_bad(const struct gw_opt_report *r, const char *key);

/* A whole schema: the table plus the struct it fills. */
struct gw_opt_schema {
	const struct gw_opt_desc *opts;
	size_t nopts;
	size_t size; /* sizeof the options struct */
	/*
	 * Optional cross-field check, run after every key was decoded (also
	 * when some failed: those hold their defaults). Reports each problem
	 * it finds with gw_opt_problem(), not only the first.
	 */
	void (*check)(const void *opts, struct gw_opt_report *r);
};

#define GW_OPT_SCHEMA(table, type, checkfn)                                          \
	{                                                                            \
		(table), sizeof(table) / sizeof((table)[0]), sizeof(type), (checkfn) \
	}

/*
 * Parse a size as QEMU writes it: "4096", "512B", "64M", "1G", "2T" (units K M
 * G T P E, powers of 1024), also "1GiB". Nothing else: no decimal "GB", no
 * bits "Gb", no lower case "g", no fractions. 0 or -EINVAL/-ERANGE.
 */
int gw_parse_size(const char *s, uint64_t *out);
/* For a size gw_parse_size refused: what to write instead ("write 1G or 1GiB: ..."). */
const char *gw_size_advice(const char *s, char *buf, size_t len);
int gw_parse_u64(const char *s, uint64_t *out);
int gw_parse_bool(const char *s, bool *out);

/* Find a key in a schema; NULL when unknown. */
const struct gw_opt_desc *gw_opt_find(const struct gw_opt_schema *s, const char *key);
/* The valid key closest to `key` (edit distance), or NULL when nothing is close. */
const char *gw_opt_closest(const struct gw_opt_schema *s, const char *key);
/* Edit distance for "did you mean" hints. */
unsigned gw_edit_distance(const char *a, const char *b);

/*
 * Decode one scalar into base+desc->offset. `dir` is the folder relative
 * paths are resolved against (may be NULL). Returns 0, or -1 with a message.
 */
int gw_opt_set(const struct gw_opt_desc *d, const char *text, const char *dir, void *base,
	       char *err, size_t errlen);
/* Fill defaults for every key of the schema (call on a zeroed struct). */
void gw_opt_defaults(const struct gw_opt_schema *s, void *base);
/* Free the strings a decode allocated. */
void gw_opt_free(const struct gw_opt_schema *s, void *base);
/* Do a and b (both decoded with s) hold the same settings? */
bool gw_opt_equal(const struct gw_opt_schema *s, const void *a, const void *b);
/*
 * The settings that differ from their defaults as the inside of a YAML flow
 * mapping ("path: \"/a\", size: 1024"), which decodes back to equal
 * settings (paths are absolute by then). malloc'd; NULL when out of memory.
 */
char *gw_opt_dump(const struct gw_opt_schema *s, const void *base);
/* Human name of a type, for messages ("a size such as 64M"). */
const char *gw_opt_type_hint(const struct gw_opt_desc *d);

/* Split "host:port" / "[v6]:port"; host and port are malloc'd. */
int gw_split_hostport(const char *s, char **host, char **port);
