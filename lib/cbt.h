/*
 * Changed-block tracking records (docs/backup.md).
 *
 * One folder per image (RUN-DIR/cbt/IMAGE/) holds one record per
 * checkpoint, "ckpt.NAME.rec" (the chunks written between the previous
 * checkpoint and NAME), and the record in progress, "active.rec". A record
 * is a 4 KiB header and a bitmap of chunks (one bit per `granularity`
 * bytes), mapped shared: a bit set in memory is in the page cache at once,
 * so a kill -9 of the daemon loses none.
 *
 * Data path (any thread): gw_cbt_mark() before a write reaches the image,
 * and again when it completes (a write in flight while a checkpoint is
 * taken lands in both records). A chunk already marked costs a load and no
 * syscall. The first new mark after a sync makes the header's "pending"
 * flag durable (one msync of one page, batched: only the first new mark
 * of each sync period pays it); gw_cbt_sync(), called before a FLUSH or
 * FUA write is acknowledged, makes every mark durable and clears the flag
 * again. After a host crash a record whose durable header says "pending"
 * may miss writes that reached the disk, and is marked untrusted.
 *
 * Checkpoints are created, listed and deleted on one thread at a time
 * (the daemon's main thread); they exclude marks with a rwlock.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_CBT_NAME_MAX 64

struct gw_cbt;

/* What the image looked like: size and a change stamp (mtime); known=false when unknown. */
struct gw_cbt_stamp {
	bool known;
	uint64_t size;
	int64_t mtime_ns;
};

/*
 * Open (or create) the records in dir for an image of `size` bytes. A
 * record that cannot be proven complete (the active record lost, the image
 * changed while nobody tracked it, a host crash with marks not yet durable,
 * another granularity or size) is kept but marked untrusted, with why.
 * 0 or -errno with a message.
 */
int gw_cbt_open(struct gw_cbt **out, const char *dir, uint64_t size, uint32_t granularity,
		const struct gw_cbt_stamp *now, char *err, size_t errlen);
/* Clean close: everything durable, the image's stamp (may be NULL) remembered. */
void gw_cbt_close(struct gw_cbt *t, const struct gw_cbt_stamp *now);

/* Data path: record that [off, off+len) changes. */
void gw_cbt_mark(struct gw_cbt *t, uint64_t off, uint64_t len);
/* Data path: make every mark so far durable (before a FLUSH/FUA completes). 0 or -errno. */
int gw_cbt_sync(struct gw_cbt *t);

uint32_t gw_cbt_granularity(const struct gw_cbt *t);
uint64_t gw_cbt_chunks(const struct gw_cbt *t);

/* Main thread. End the active record as checkpoint `name`; start a new one. */
int gw_cbt_checkpoint(struct gw_cbt *t, const char *name, char *err, size_t errlen);
/* Main thread. Delete checkpoint `name`, merging its record into the next. */
int gw_cbt_delete(struct gw_cbt *t, const char *name, char *err, size_t errlen);

struct gw_cbt_info {
	char name[GW_CBT_NAME_MAX + 1]; /* "" for the active record */
	int64_t created;                /* unix seconds the record began (active) or ended */
	uint64_t dirty_chunks;
	bool trusted;
	char why[256]; /* why not trusted */
};
/* Checkpoints oldest first, then the active record. Returns how many exist. */
size_t gw_cbt_list(struct gw_cbt *t, struct gw_cbt_info *v, size_t cap);
/* Is `name` a checkpoint? */
bool gw_cbt_has(struct gw_cbt *t, const char *name);

/*
 * The chunks changed after checkpoint `since` up to checkpoint `upto`
 * (NULL: up to now). *bits (malloc'd, gw_cbt_chunks() bits) receives the
 * union. Returns 0 when the result is complete, 1 when it cannot be
 * trusted (why says which record, and a backup must be full), -ENOENT
 * for an unknown name, -EINVAL when upto is not after since.
 */
int gw_cbt_changes(struct gw_cbt *t, const char *since, const char *upto, uint64_t **bits,
		   char *why, size_t whylen);

/* Valid checkpoint name: 1..64 of [A-Za-z0-9._-], not starting with '.'. */
bool gw_cbt_valid_name(const char *name);

/*
 * Runs over a bitmap of chunks (`gran` bytes each, `nchunks` of them, the
 * image `size` bytes): the length from off, at most len and never past the
 * end, over which every chunk has the same bit (*set says which; chunks
 * past nchunks read 0). bit(arg, i) reads chunk i's.
 */
uint64_t gw_chunk_run(bool (*bit)(const void *arg, uint64_t i), const void *arg, uint64_t nchunks,
		      uint32_t gran, uint64_t size, uint64_t off, uint64_t len, bool *set);

/* Bit helpers for callers of gw_cbt_changes(). */
static inline bool gw_cbt_bit(const uint64_t *bits, uint64_t i)
{
	return (bits[i >> 6] >> (i & 63)) & 1;
}
