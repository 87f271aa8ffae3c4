/*
 * Copy-before-write: a point-in-time view of an image file on a file
 * system that cannot clone it (docs/backup.md). From the moment the view
 * is made, the first change to each unit of the live image (4 KiB; more
 * only on images so large that the map of units would pass 32 MiB, never
 * more than the tracking chunk) first copies the unit's old data into an
 * aside file (sparse, same offsets); reading the view takes a unit from the
 * aside file once it was copied, and from the live image before. So the
 * view is the image as it was when made, and costs disk space only for
 * the units changed since.
 *
 * Concurrency: units map onto a fixed set of locks. A change to units not
 * yet copied takes their locks, copies each run of them, marks them copied
 * and lets go, before the change is handed to the backend; a change to
 * units already copied costs one atomic load per unit. The copy is one
 * read into memory (32 MiB per view at most, gw_cbw_set_stage()); the
 * view's thread (nice 19) writes staged units to the aside file in
 * batches, and only when that memory is full does the changing thread
 * write the aside file itself (one read and one write per run). Every 4 MiB
 * written aside, the same thread starts the aside file's writeback
 * (sync_file_range, not waiting for it), so its dirty pages do not pile up
 * until the kernel throttles the writers. Reading the view takes no unit
 * lock (a backup reader never holds up the guest): a run of units not
 * copied is read from the live image with one read and its marks checked
 * again afterwards; units set by then are read again, from memory while
 * staged and from the aside file after. Copying is synchronous on the
 * caller's thread.
 *
 * A copy that fails (the aside file's file system full, an I/O error)
 * never fails the change: the view is marked broken (reads of it fail with
 * EIO and gw_cbw_broken() says why), as QEMU's fleecing breaks its
 * snapshot rather than the guest's write.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct gw_cbw;

/*
 * Make a view of the `size`-byte image file src_path, copying into
 * aside_path (created; removed when the view stops) in units of at most
 * `chunk` bytes (a power of two, the tracking granularity, which
 * gw_cbw_copied_run() answers in). 0 or -errno with a message.
 */
int gw_cbw_open(struct gw_cbw **out, const char *src_path, const char *aside_path, uint64_t size,
		uint32_t chunk, char *err, size_t errlen);

/* Any thread: [off, off+len) of the live image is about to change. */
void gw_cbw_before_write(struct gw_cbw *c, uint64_t off, uint64_t len);

/* Any thread: read the view's [off, off+len) into iov. 0 or -errno. */
int gw_cbw_read(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		uint64_t len);

/*
 * The same where every byte is in the page cache already, or -EAGAIN
 * (where it would wait on the disk; iov then holds a partial answer): a
 * worker loop reads most of a backup itself this way, without a round
 * trip through the view's threads.
 */
int gw_cbw_read_cached(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		       uint64_t len);

/*
 * The same without blocking the caller: the read runs on one of the view's
 * own threads, then job->done(job->arg) is posted to worker job->w (lib/
 * worker.h) with job->result set. For callers on a worker loop, which must
 * not wait on file I/O. Returns 0, or -ENOMEM (not queued: read inline).
 */
struct gw_worker;
struct gw_cbw_job {
	const struct iovec *iov;
	unsigned iovcnt;
	uint64_t off, len;
	int result; /* out */
	struct gw_worker *w;
	void (*done)(void *arg);
	void *arg;
	struct gw_cbw_job *next; /* private */
};
int gw_cbw_read_submit(struct gw_cbw *c, struct gw_cbw_job *job);

/*
 * The run from off (at most len), in whole chunks, over which chunks are
 * all copied aside (a chunk counts once any unit of it is) or all not
 * (*copied says which). Not copied yet: the view there is the live image,
 * its allocation included. Any thread; a hint that may age.
 */
uint64_t gw_cbw_copied_run(struct gw_cbw *c, uint64_t off, uint64_t len, bool *copied);

/* The copy unit in bytes. */
uint32_t gw_cbw_unit(const struct gw_cbw *c);

/* Bytes copied aside so far. */
uint64_t gw_cbw_copied(const struct gw_cbw *c);
/* Of those, bytes in memory now, not yet written to the aside file. */
uint64_t gw_cbw_staged(const struct gw_cbw *c);
/*
 * The memory copies may wait in for the aside file (default 32 MiB; 0:
 * every copy writes the aside file at once). Before the first change only.
 */
void gw_cbw_set_stage(struct gw_cbw *c, uint64_t bytes);
/* Write everything staged so far to the aside file; returns when done. */
void gw_cbw_flush(struct gw_cbw *c);
/* Is the view broken (a copy failed)? why (may be NULL) says how. */
bool gw_cbw_broken(struct gw_cbw *c, char *why, size_t len);

/*
 * End the view: changes copy nothing more, reads fail, the aside file is
 * removed. Threads may still hold c (they find it stopped).
 */
void gw_cbw_stop(struct gw_cbw *c);
/*
 * References: gw_cbw_open() returns one; each holder (the image's changes,
 * a backup export's reads) takes its own and puts it once nothing of its
 * own can use c any more. The last put stops and frees the view.
 */
struct gw_cbw *gw_cbw_get(struct gw_cbw *c);
void gw_cbw_put(struct gw_cbw *c);
