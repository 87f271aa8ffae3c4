/*
 * The transport interface: NBD, vhost-user-blk, VDUSE, ublk.
 *
 * A transport serves one export at a time per start() call and keeps its own
 * per-export state in exp->tpriv. Transports know nothing of YAML or of each
 * other: their settings arrive decoded through their option schema, and the
 * gateway picks among them in the manifest's order of preference, using
 * probe() to learn whether one can work on this host and why not.
 *
 * Thread: every op runs on the main thread (the libev default loop). I/O
 * runs on workers (lib/worker.h) through gw_export_submit().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/export.h"
#include "lib/opts.h"

#define GW_TRANSPORT_ABI 2

/*
 * What a transport may know of its surroundings, passed explicitly (no
 * process-wide state): validating a second manifest must not change what a
 * running export sees.
 */
struct gw_transport_env {
	const char *run_dir;   /* sockets, state that survives a restart, device links */
	uint64_t buffer_limit; /* gateway buffer-limit: bytes buffered for all clients */
};

enum gw_listen_kind {
	GW_LISTEN_UNIX, /* a unix socket path */
	GW_LISTEN_TCP,  /* HOST:PORT */
};

struct gw_export_status {
	char endpoint[1024]; /* how to reach it: URIs, socket paths */
	char device[128];    /* local device node, if any ("" when none) */
	/* Connection limits at work (docs/reliability.md), when the transport counts them. */
	bool has_conn_counters;
	unsigned long long refused_connections; /* max-connections reached */
	unsigned long long refused_no_fds;      /* out of file descriptors */
	unsigned long long handshake_timeouts;
	unsigned long long idle_timeouts;
	unsigned long long payload_timeouts; /* a write's payload too slow */
	/* Socket polling left off for connections whose requests are slow (NBD). */
	bool has_poll_counters;
	unsigned long long poll_slow_stops;   /* times a connection stopped polling */
	unsigned long long poll_slow_resumes; /* times one started again */
	unsigned long long poll_slow_now;     /* connections not polled for that now */
};

/* start() returned: the device is being created; exp->started() tells how it ended. */
#define GW_START_PENDING 1

struct gw_transport_ops {
	uint32_t abi_version; /* GW_TRANSPORT_ABI */
	const char *name;     /* the manifest's word: "nbd", "vhost-user-blk" */
	const char *summary;  /* one line for --help and docs */
	struct gw_opt_schema schema;

	/*
	 * Optional. Can this transport work on this host for these options?
	 * No side effects. 0, or -errno with a reason a user can act on
	 * ("nbd kernel module not loaded"). Called by `check` and before start.
	 */
	int (*probe)(const struct gw_transport_env *env, const void *opts, char *why, size_t len);

	/*
	 * Optional. Would exports a and b (same transport) collide, e.g. the same
	 * socket and export name? Returns NULL, or a message. No side effects.
	 */
	const char *(*conflict)(const struct gw_transport_env *env, const void *a,
				const char *image_a, const void *b, const char *image_b, char *buf,
				size_t len);

	/*
	 * Optional. What this export would listen on, for `check` and before
	 * start: the gateway checks each unix socket's path (its folder, a file
	 * in the way) and refuses one path claimed by two transports or by a
	 * transport and the control socket, which no transport can see alone;
	 * TCP addresses it names as not checked (a port may be taken by then).
	 * Calls add(arg, kind, where) for each: a path, or HOST:PORT. No side
	 * effects.
	 */
	void (*listens)(const struct gw_transport_env *env, const void *opts, const char *image,
			void (*add)(void *arg, enum gw_listen_kind kind, const char *where),
			void *arg);

	/*
	 * Optional. The export's size must be a multiple of this many bytes: a
	 * transport that counts 512-byte sectors (virtio-blk, a kernel block
	 * device) would hide a partial last one. 0 (or no op): any size.
	 * Checked for check and before start. No side effects.
	 */
	uint32_t (*size_unit)(const void *opts);

	/* Optional. One line for `check`: where the export would be reachable. */
	void (*describe)(const struct gw_transport_env *env, const void *opts, const char *image,
			 char *buf, size_t len);

	/*
	 * Required. Start serving exp (exp->topts holds the options, exp->env
	 * the surroundings, valid until done() of stop). 0, or
	 * -errno with a message; on failure nothing is left behind, and the
	 * gateway may try the next transport. Or GW_START_PENDING: creating the
	 * device goes on off the main thread (a kernel call that may block) and
	 * ends with exp->started(); the gateway bounds it (gateway start-timeout)
	 * and, past it, calls stop() and tries the next transport: stop() must
	 * then tear the device down whenever the kernel returns, and never call
	 * started().
	 */
	int (*start)(struct gw_export *exp, char *err, size_t errlen);

	/*
	 * Required. Stop accepting, finish in-flight requests, detach clients,
	 * remove sockets/devices; then call done(exp) on the main thread (it may
	 * be called before stop returns).
	 */
	void (*stop)(struct gw_export *exp, void (*done)(struct gw_export *exp));

	/* Optional. Fill status fields. */
	void (*status)(struct gw_export *exp, struct gw_export_status *st);

	/*
	 * Optional. Would stopping exp now cut someone off: a client connected,
	 * a kernel device mounted or held open? 1 with the reason in why, or 0.
	 * Apply refuses to remove or restart an export in use unless forced.
	 * Without it: a device that status() names is checked (mounted, held by
	 * another device, open in a process: lib/blkuse.h), else any attached
	 * client (exp->clients) counts as use.
	 */
	int (*in_use)(struct gw_export *exp, char *why, size_t len);

	/*
	 * Optional. Once at start-up, after the manifest's exports started:
	 * remove what a previous daemon left in the run dir for exports this
	 * transport no longer serves (kernel devices kept for crash recovery).
	 * wanted(arg, id) tells whether export id is served by this transport
	 * now. Must not block the main thread (hand slow work to a thread).
	 */
	void (*reclaim)(const struct gw_transport_env *env,
			bool (*wanted)(void *arg, const char *id), void *arg);
};

const struct gw_transport_ops *gw_transport_find(const char *name);
const struct gw_transport_ops *const *gw_transport_list(size_t *n);
