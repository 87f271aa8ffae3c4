/*
 * The backend interface: what every data source (file, memory, null; later
 * HTTP, NBD, RBD, overlays) implements.
 *
 * Requests are asynchronous. A transport fills a struct gw_io (usually embedded
 * in its own request struct) and submits it through the checked layer
 * (gw_export_submit() in gateway/export.h), never through these ops directly.
 * The checked layer validates range, alignment, size, flags and read-only
 * state, then calls ops->submit on the submitting thread:
 *
 *   submit() returns 1 when the request completed inline (io->result is set),
 *   or 0 when it was queued; a queued request completes later, on the same
 *   thread, through gw_io_complete(io, result). Backends that do real I/O use
 *   the thread's io_uring (struct gw_ioq), so completions need no locks.
 *
 * Results are 0 or -errno. Backends never see out-of-range, misaligned or
 * unsupported requests: the checked layer refuses them first.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "lib/iov.h" /* gw_iov_*: helpers for backends */
#include "lib/ioq.h"
#include "lib/opts.h"

#define GW_BACKEND_ABI 1

enum gw_io_op {
	GW_OP_READ = 0,
	GW_OP_WRITE,
	GW_OP_FLUSH,        /* make every completed write durable */
	GW_OP_TRIM,         /* hint: the range may be deallocated; contents undefined after */
	GW_OP_WRITE_ZEROES, /* the range must read back as zeros */
	GW_OP_CACHE,        /* hint: prefetch */
	GW_OP__COUNT,
};

/*
 * Request flags (io->flags).
 *   FUA        WRITE/WRITE_ZEROES/TRIM: durable before completion
 *   NO_UNMAP   WRITE_ZEROES: must not deallocate the range
 *   FAST_ZERO  WRITE_ZEROES: fail with -ENOTSUP unless cheaper than writing
 *   HOLE_OK    READ: the caller accepts GW_IO_R_HOLE instead of zero-filled data
 *   BORROW     READ, no iovec: point io->ref at the backend's own copy of the
 *              data (GW_CAP_BORROW backends only); see GW_IO_R_REF
 */
#define GW_IO_FUA       (1u << 0)
#define GW_IO_NO_UNMAP  (1u << 1)
#define GW_IO_FAST_ZERO (1u << 2)
#define GW_IO_HOLE_OK   (1u << 3)
#define GW_IO_BORROW    (1u << 4)
#define GW_IO__ALL      ((1u << 5) - 1)

/*
 * Result flags (io->rflags), set by the backend before completion.
 *   R_HOLE  READ: the whole range reads as zeros and the buffer was NOT filled
 *   R_REF   READ with GW_IO_BORROW: io->ref holds the data (io->len bytes),
 *           readable while the image is open; it may change under later writes
 */
#define GW_IO_R_HOLE (1u << 0)
#define GW_IO_R_REF  (1u << 1)

/* backend check(): the source opens, but only for reading. */
#define GW_CHECK_READ_ONLY 1

/*
 * Capabilities (backend->caps). The checked layer refuses what is missing.
 *   FLUSH       FLUSH does something (volatile cache)
 *   FUA         FUA honoured natively (else emulated with a flush)
 *   ZERO        WRITE_ZEROES efficient (else written as zeros)
 *   FAST_ZERO   can tell fast zeroing from slow
 *   EXTENTS     extents() reports real allocation
 *   MULTI_CONN  a FLUSH from any client covers writes from all clients
 *   READ_ONLY   the source itself cannot be written
 *   INLINE      submit() always completes inline: a caller may lend buffers
 *               that live only for the call (memory, null)
 *   BORROW      reads can lend the backend's own memory (GW_IO_BORROW)
 *   EPHEMERAL   the data lives in this process and dies with it (memory):
 *               a kernel device that outlives the daemon must not be
 *               handed to a new process, which would show other data
 */
#define GW_CAP_FLUSH      (1u << 0)
#define GW_CAP_FUA        (1u << 1)
#define GW_CAP_TRIM       (1u << 2)
#define GW_CAP_ZERO       (1u << 3)
#define GW_CAP_FAST_ZERO  (1u << 4)
#define GW_CAP_EXTENTS    (1u << 5)
#define GW_CAP_CACHE      (1u << 6)
#define GW_CAP_MULTI_CONN (1u << 7)
#define GW_CAP_READ_ONLY  (1u << 8)
#define GW_CAP_ROTATIONAL (1u << 9)
#define GW_CAP_INLINE     (1u << 10)
#define GW_CAP_BORROW     (1u << 11)
#define GW_CAP_EPHEMERAL  (1u << 12)

struct gw_io;
struct gw_cbt;
struct gw_cbw;
typedef void (*gw_io_done_fn)(struct gw_io *io);

struct gw_io {
	uint8_t op;     /* enum gw_io_op */
	uint32_t flags; /* GW_IO_* */
	uint64_t offset;
	uint64_t len;      /* bytes; for READ/WRITE equals the iovec total */
	struct iovec *iov; /* READ/WRITE data */
	unsigned iovcnt;

	int result;         /* out: 0 or -errno */
	uint32_t rflags;    /* out: GW_IO_R_* */
	const void *ref;    /* out, with GW_IO_R_REF: where the data is */
	gw_io_done_fn done; /* called once for queued requests, on the submitting thread */

	/* Private to the checked layer. */
	void *_stats;
	struct gw_cbt *_cbt; /* changes are tracked: mark again on completion */
	uint64_t _start_ns;  /* when it reached the checked layer */

	/* Private to the backend: a ring callback and scratch space. */
	struct gw_uring_cb ucb;
	struct gw_ioq *q;
	uint64_t scratch[4];
};

/* One run of allocation state, in order from the queried offset. */
#define GW_EXT_HOLE (1u << 0) /* not allocated */
#define GW_EXT_ZERO (1u << 1) /* reads as zeros */

struct gw_extent {
	uint64_t len;
	uint32_t flags;
};

struct gw_extents {
	struct gw_extent *v;
	size_t n, cap; /* cap: the most the caller wants */
	uint64_t end;  /* offset just past the last extent */
};

/* Append a run, merging with the previous one when the flags agree. Returns 1 when full. */
int gw_extents_add(struct gw_extents *e, uint64_t len, uint32_t flags);

/*
 * An extents query answered later (backend extents_async(), through
 * gw_export_extents_submit()): for backends whose allocation map sits behind
 * a network, so the asking thread's loop never waits on it.
 */
struct gw_ext_req;
typedef void (*gw_ext_done_fn)(struct gw_ext_req *x);

struct gw_ext_req {
	uint64_t offset, len;
	struct gw_extents *out; /* filled as by extents(); must stay valid until done */
	int result;             /* out: 0 or -errno */
	gw_ext_done_fn done;    /* called once for queued queries, on the submitting thread */

	void *_export; /* private to the checked layer */
	struct gw_ioq *q;

	uint64_t scratch[4]; /* private to the backend */
};

struct gw_backend {
	const struct gw_backend_ops *ops;
	const char *name;    /* the image name */
	uint64_t size;       /* bytes */
	uint32_t caps;       /* GW_CAP_* */
	uint32_t min_block;  /* required offset/length alignment for READ/WRITE (1 = none) */
	uint32_t pref_block; /* preferred I/O size */
	uint32_t max_xfer;   /* largest READ/WRITE accepted (0 = no limit of its own) */
	/*
	 * In, set before open(): no export of this image writes, so a backend
	 * opens its source for reading only and lets other readers in (the file
	 * backend's QEMU-compatible locks take no write permission).
	 */
	bool open_read_only;
	/*
	 * In, set before close() when the daemon failed to start: remove what
	 * open() created (the file backend's new sparse file).
	 */
	bool start_failed;
	/*
	 * Set by the daemon when the image's changes are tracked (lib/cbt.h):
	 * the checked layer marks every write, write-zeroes and trim that
	 * reaches the backend, and makes the marks durable before a FLUSH or
	 * FUA request does. The backend itself never looks at it.
	 */
	struct gw_cbt *cbt;
	/*
	 * Set by the daemon while a copy-before-write view of the image is
	 * open (lib/cbw.h): the checked layer calls gw_cbw_before_write() for
	 * every write, write-zeroes and trim before it reaches the backend.
	 * Read with an atomic load; the object outlives every request.
	 */
	struct gw_cbw *cbw;
};

/* What a source is, before it is opened (backend inspect()). */
struct gw_source_info {
	/*
	 * Equal for two option sets naming one source (a file through a
	 * symlink or another path, one device through another node); "" when
	 * the backend cannot tell.
	 */
	char id[4200];
	uint64_t size; /* bytes; 0 when not known in advance */
	/* Serving takes locks other programs may hold now (QEMU's image locks). */
	bool locks_when_served;
};

struct gw_backend_ops {
	uint32_t abi_version; /* GW_BACKEND_ABI */
	const char *name;     /* "file", "memory", "null" */
	const char *summary;  /* one line for --help and docs */
	size_t instance_size; /* >= sizeof(struct gw_backend); the backend embeds it first */
	struct gw_opt_schema schema;

	/*
	 * Required. Main thread. Open the source described by opts (decoded with
	 * `schema`), fill size, caps and block sizes. Returns 0 or -errno with a
	 * message in err.
	 */
	int (*open)(struct gw_backend *b, const void *opts, char *err, size_t errlen);

	/*
	 * Optional. Main thread, no side effects: what open() would do, for
	 * `blkgw check` (e.g. "creates 1 GiB sparse file"). Returns 0,
	 * GW_CHECK_READ_ONLY when open() would succeed for reading only (msg
	 * says why: permissions, a read-only mount or device), or -errno with a
	 * message when open() would surely fail.
	 */
	int (*check)(const void *opts, char *msg, size_t len);

	/*
	 * Optional. Main thread, no side effects: fill info (what the source
	 * is, its size) so that `check` and `serve` can refuse two images of
	 * one source and a size a transport cannot carry. 0 or -errno (then
	 * nothing is known).
	 */
	int (*inspect)(const void *opts, struct gw_source_info *info);

	/* Required. Any I/O thread. See the file comment. */
	int (*submit)(struct gw_backend *b, struct gw_ioq *q, struct gw_io *io);

	/*
	 * Optional (without it everything reads as allocated data). Any I/O
	 * thread, synchronous. Describe [offset, offset+len): append runs to out
	 * until it is full or the range is covered. 0 or -errno.
	 */
	int (*extents)(struct gw_backend *b, uint64_t offset, uint64_t len, struct gw_extents *out);

	/* Optional. Main thread, after all I/O stopped: make everything durable. */
	int (*sync)(struct gw_backend *b);

	/* Required. Main thread, after all I/O stopped. Free everything. */
	void (*close)(struct gw_backend *b);

	/* Optional. Short description for status ("file /x (O_DIRECT)"). */
	void (*describe)(struct gw_backend *b, char *buf, size_t len);

	/*
	 * Optional. Any I/O thread: extents() without waiting. Returns 1 when
	 * answered inline (x->result set, x->done NOT called), 0 when queued:
	 * the backend then calls gw_ext_complete(x, result) later on the
	 * submitting thread. Backends with it keep extents() for callers that
	 * can wait (FUSE's SEEK_DATA and st_blocks).
	 */
	int (*extents_async)(struct gw_backend *b, struct gw_ioq *q, struct gw_ext_req *x);

	/*
	 * Optional: point-in-time views the backend keeps itself (rbd: its
	 * snapshots), for checkpoints (docs/backup.md). Main thread; they may
	 * wait on a network. snap_create makes view `name` of the image as it
	 * is now; snap_remove drops it; snap_changes sets bit i of `bits` for
	 * every chunk of `gran` bytes that differs between views `from` and
	 * `to` (NULL: the image as it is now). snap_key is the open option that opens a view,
	 * read-only (rbd: "snapshot"). 0 or -errno with a message.
	 */
	const char *snap_key;
	int (*snap_create)(struct gw_backend *b, const char *name, char *err, size_t errlen);
	int (*snap_remove)(struct gw_backend *b, const char *name, char *err, size_t errlen);
	int (*snap_changes)(struct gw_backend *b, const char *from, const char *to, uint32_t gran,
			    uint64_t *bits, char *err, size_t errlen);

	/*
	 * Optional. Any thread, when the daemon stops: requests the backend
	 * holds back on purpose (the fault layer's `delay`) go on now instead
	 * of when their time is up, so a stop does not wait out a delay.
	 */
	void (*release)(struct gw_backend *b);
};

/*
 * The fault layer (backends/fault.c) any image can stack: its `fault:`
 * mapping, decoded through gw_fault_schema.
 */
struct gw_fault_opts {
	char *errno_name; /* EIO ... or "none"; NULL: EIO (none when only delay is set) */
	uint32_t every, after;
	char *ops, *ranges, *delay; /* "read,write"; "0-1M,4M-8M"; "50ms" */
};
extern const struct gw_opt_schema gw_fault_schema;
/* Stack a fault layer on inner, which it then owns (closed on failure too). */
struct gw_backend *gw_fault_wrap(struct gw_backend *inner, const struct gw_fault_opts *o, char *err,
				 size_t errlen);

/* Registry: the backends this build has. */
const struct gw_backend_ops *gw_backend_find(const char *name);
const struct gw_backend_ops *const *gw_backend_list(size_t *n);

/* Open a backend instance; returns NULL with a message on failure. */
struct gw_backend *gw_backend_open(const struct gw_backend_ops *ops, const char *image_name,
				   const void *opts, char *err, size_t errlen);
/* The same, for reading only when read_only (see gw_backend.open_read_only). */
struct gw_backend *gw_backend_open_mode(const struct gw_backend_ops *ops, const char *image_name,
					const void *opts, bool read_only, char *err, size_t errlen);
void gw_backend_close(struct gw_backend *b);

/* One image to open with gw_backend_open_all(). */
struct gw_backend_open_req {
	const struct gw_backend_ops *ops;
	const char *name;
	const void *opts;
	bool read_only;       /* see gw_backend.open_read_only */
	struct gw_backend *b; /* out: the opened backend, or NULL */
	char err[1024];       /* out: why not */
};

/*
 * Open n images at once, each on a thread of its own (an open may wait on a
 * network: rbd connects to a cluster), so a slow one does not delay the rest.
 * Main thread. Returns how many failed.
 */
size_t gw_backend_open_all(struct gw_backend_open_req *r, size_t n);

/* For backends: finish a queued request (on the submitting thread). */
void gw_io_complete(struct gw_io *io, int result);
/* For backends: finish a queued extents query (on the submitting thread). */
void gw_ext_complete(struct gw_ext_req *x, int result);
