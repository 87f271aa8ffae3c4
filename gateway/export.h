/*
 * Exports and the checked layer.
 *
 * An export is one image served over one transport. Transports never call a
 * backend: they call gw_export_submit(), which refuses bad requests (range,
 * alignment, size, flags, read-only) with the errno the protocols expect,
 * counts statistics (and the time each request takes, with one clock read
 * when it arrives and one when it completes) and then hands the request to
 * the backend.
 *
 *   READ/CACHE/TRIM past the end, misaligned, longer than max_xfer:     -EINVAL
 *   WRITE/WRITE_ZEROES past the end:                                    -ENOSPC
 *   any write on a read-only export:                                    -EPERM
 *   FAST_ZERO where zeroing is not fast:                                -ENOTSUP
 *   unknown op or flag:                                                 -EINVAL
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backends/backend.h"
#include "lib/util.h"

#define GW_STATS_SLOTS 32
/*
 * Latency histogram buckets: bucket i counts requests that took at most
 * 2^i microseconds (1 us .. ~2.1 s); the last counts the slower ones.
 */
#define GW_LAT_BUCKETS 23

/* Counters of one slot; each I/O thread writes its own slot. */
struct gw_stats {
	/* Requests per op: the sum of the op's latency buckets (one locked add fewer). */
	uint64_t time_ns[GW_OP__COUNT]; /* checked layer to completion, summed */
	uint64_t bytes_read;
	uint64_t bytes_written;
	uint64_t errors;
	uint64_t extents; /* extent queries */
	uint64_t fua;     /* requests that carried FUA (durable before completion) */
	int64_t inflight; /* handed to the backend, not yet complete (counted once the
			   * backend took it: may dip below 0 for a moment) */
	uint64_t lat[GW_OP__COUNT][GW_LAT_BUCKETS];
} __attribute__((aligned(GW_CACHELINE)));

struct gw_stats_total {
	uint64_t requests, reads, writes, flushes, trims, zeroes, caches, extents;
	uint64_t bytes_read, bytes_written, errors;
	uint64_t fua; /* of those requests, the ones that carried FUA */
	/* Per op (GW_OP_*): total time from the checked layer to completion, as
	 * QEMU's query-blockstats *_total_time_ns; divided by the op's count, the
	 * mean latency the export adds with its backend. */
	uint64_t time_ns[GW_OP__COUNT];
	int64_t inflight;
	uint64_t lat[GW_OP__COUNT][GW_LAT_BUCKETS]; /* not cumulative */
};

enum gw_export_state {
	GW_EXPORT_NEW = 0,
	GW_EXPORT_RUNNING,
	GW_EXPORT_STOPPING,
	GW_EXPORT_STOPPED,
	GW_EXPORT_FAILED,
	GW_EXPORT_STARTING, /* its transport is creating the device (start returned PENDING) */
};

struct gw_transport_ops;
struct gw_transport_env;

/*
 * What a backup export (docs/backup.md) tells its clients besides the data:
 * which chunks of the image changed after checkpoint `since`, up to the
 * checkpoint it shows. Set by the daemon before start and never changed
 * afterwards, so any I/O thread reads it without a lock.
 */
struct gw_change_map {
	char *since;          /* the earlier checkpoint: NBD's qemu:dirty-bitmap:SINCE */
	uint32_t granularity; /* bytes per chunk */
	uint64_t nchunks;
	uint64_t *bits;    /* one per chunk: 1 = changed */
	bool only_changed; /* unchanged chunks are reported not allocated: a layer over `since` */
};
void gw_change_map_free(struct gw_change_map *m);

/* A transport the export did not get, and why (its probe, or its start failing). */
struct gw_rejected {
	const char *transport; /* its name (static) */
	char *why;
};

struct gw_export {
	char *id; /* unique: image name, or image#N when exported twice */
	struct gw_backend *backend;
	const char *image; /* image name */
	bool read_only;
	uint64_t size;
	uint32_t caps;      /* backend caps, plus GW_CAP_READ_ONLY when read_only */
	uint32_t min_block; /* alignment the checked layer enforces */
	uint32_t pref_block;
	uint32_t max_xfer; /* largest READ/WRITE */

	const struct gw_transport_ops *transport; /* the one in use */
	const void *topts;                        /* its decoded options */
	const struct gw_transport_env *env;       /* run dir etc., owned by the daemon */
	void *tpriv;                              /* the transport's per-export state */
	enum gw_export_state state;
	char *notes;                  /* why earlier transports were skipped ("" when none) */
	struct gw_rejected *rejected; /* the same, one entry per transport passed over */
	size_t nrejected;

	/*
	 * Set by the daemon before start(), for the transport to call on the main
	 * thread. started: a start() that returned GW_START_PENDING ends here,
	 * once (0: serving; -errno and why: failed, and the transport uses
	 * exp->tpriv no more); never from inside start(), never after stop().
	 * died: the running export's device is gone for good (deleted behind
	 * blkgw's back, recovery impossible); the daemon stops the export and
	 * serves it over the next transport of its list.
	 */
	void (*started)(struct gw_export *e, int rc, const char *why);
	void (*died)(struct gw_export *e, const char *why);
	/* The daemon's: abandoned starts still being torn down, and free once they are. */
	unsigned abandoned;
	bool free_when_idle;

	atomic_uint clients;           /* connections/queues attached, kept by the transport */
	struct gw_stats *stats;        /* GW_STATS_SLOTS entries */
	struct gw_change_map *changes; /* a backup export's, freed with it; else NULL */
	/* A backup export of a copy-before-write view: reads come from it (a reference). */
	struct gw_cbw *view;
	/*
	 * A backup export's read rate cap in bytes per second (0: none), set
	 * before start; rate_next: when (gw_now_ns) the next read may start.
	 */
	uint64_t rate;
	_Atomic uint64_t rate_next;
	/*
	 * Serve at low priority, on the background worker (lib/worker.h), so
	 * that it never takes CPU or a loop turn from the pool's exports: set
	 * by the daemon before start for backup exports.
	 */
	bool background;
};

/* Create an export of backend b (main thread). block_size: 0 = the backend's. */
struct gw_export *gw_export_new(const char *id, struct gw_backend *b, bool read_only,
				uint32_t block_size);
void gw_export_free(struct gw_export *e);

/*
 * The checked layer. Any I/O thread, with that thread's ioq. Returns 1 when
 * the request finished inline (io->result set, io->done NOT called), 0 when
 * queued (io->done runs later on this thread).
 */
int gw_export_submit(struct gw_export *e, struct gw_ioq *q, struct gw_io *io);

/*
 * Allocation state of [offset, offset+len), synchronous. Without backend
 * support everything is reported as data. 0 or -errno (-EINVAL for a bad range).
 */
int gw_export_extents(struct gw_export *e, struct gw_ioq *q, uint64_t offset, uint64_t len,
		      struct gw_extents *out);

/*
 * The same without waiting, for transports that answer later: 1 when
 * answered inline (x->result set, x->done NOT called), 0 when queued
 * (x->done runs later on this thread). x->out must live until then. Backends
 * without extents_async answer inline, synchronously.
 */
int gw_export_extents_submit(struct gw_export *e, struct gw_ioq *q, struct gw_ext_req *x);

/*
 * Backup exports: the length of the run from offset (inside the image) over
 * which every chunk is changed, or every chunk is not (*changed says which),
 * at most len and never past the image's end. Without a change map: all of
 * len, changed.
 */
uint64_t gw_export_changed_run(const struct gw_export *e, uint64_t offset, uint64_t len,
			       bool *changed);

/* Count a request the transport refused before it reached the checked layer. */
void gw_export_count_error(struct gw_export *e, struct gw_ioq *q);

/* Sum the statistics slots (any thread; values are approximate while I/O runs). */
void gw_export_stats(const struct gw_export *e, struct gw_stats_total *t);
const char *gw_export_state_name(enum gw_export_state s);
