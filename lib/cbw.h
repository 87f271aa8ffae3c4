/*
 * Copy-before-write: a point-in-time view of an image file on a file
 * system that cannot clone it (docs/backup.md). From the moment the view
 * is made, the first change to each chunk of the live image first copies
 * the chunk's old data into an aside file (sparse, same offsets); reading
 * the view takes a chunk from the aside file once it was copied, and from
 * the live image before. So the view is the image as it was when made,
 * and costs disk space only for the chunks changed since.
 *
 * Concurrency: chunks map onto a fixed set of locks. A change to a chunk
 * not yet copied takes its lock, copies, marks it copied and lets go,
 * before the change is handed to the backend; reading the view holds a
 * chunk's lock while it reads that chunk. So a read of a chunk
 * not yet copied never sees a change that came after the view (the change
 * waits for the read, then copies the old data), and a change to a chunk
 * already copied costs one atomic load. Copying is synchronous on the
 * caller's thread (a pread and a pwrite of one chunk).
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
 * Make a view of the `size`-byte image file src_path, copying in chunks of
 * `chunk` bytes (a power of two) into aside_path (created; removed when
 * the view stops). 0 or -errno with a message.
 */
int gw_cbw_open(struct gw_cbw **out, const char *src_path, const char *aside_path, uint64_t size,
		uint32_t chunk, char *err, size_t errlen);

/* Any thread: [off, off+len) of the live image is about to change. */
void gw_cbw_before_write(struct gw_cbw *c, uint64_t off, uint64_t len);

/* Any thread: read the view's [off, off+len) into iov. 0 or -errno. */
int gw_cbw_read(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		uint64_t len);

/* Bytes copied aside so far. */
uint64_t gw_cbw_copied(const struct gw_cbw *c);
/* Is the view broken (a copy failed)? why (may be NULL) says how. */
bool gw_cbw_broken(struct gw_cbw *c, char *why, size_t len);

/*
 * End the view: changes copy nothing more, reads fail, the aside file is
 * removed. Threads may still hold c (they find it stopped); free it with
 * gw_cbw_free() once none can (the image closed).
 */
void gw_cbw_stop(struct gw_cbw *c);
void gw_cbw_free(struct gw_cbw *c);
