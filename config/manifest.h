/*
 * The manifest (version 1): images, exports and gateway settings, decoded
 * from YAML and fully validated before anything starts. Every problem is
 * collected with its position, so `blkgw check` can list them all as
 * FILE:LINE:COL: message. See docs/manifest.md.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backends/backend.h"
#include "gateway/transport.h"
#include "lib/sockets.h"

struct gw_diag_item {
	int line, col;
	char *msg;
};

struct gw_diags {
	struct gw_diag_item *v;
	size_t n, cap;
};

void gw_diag_add(struct gw_diags *d, int line, int col, const char *fmt, ...) GW_PRINTF(4, 5);
/* Print sorted by position as FILE:LINE:COL: message (or FILE: message without a position). */
void gw_diags_print(const struct gw_diags *d, const char *file, FILE *out);
void gw_diags_free(struct gw_diags *d);

struct gw_gateway_cfg {
	char *control_socket;
	struct gw_sock_perm control_perm; /* its owner, group and mode */
	char *run_dir;
	/* Where they were written (the gateway mapping, or 0 when defaulted). */
	int control_line, control_col, run_dir_line, run_dir_col;
	uint32_t workers;
	uint32_t coalesce_us;
	uint32_t start_timeout; /* seconds a transport's device creation may take */
	char *log_level;        /* NULL: default */
	char *metrics;          /* HOST:PORT or a socket path; NULL: none */
	/* Control socket limits (docs/reliability.md). */
	uint32_t control_max_clients;
	uint64_t control_max_line, control_max_output;
};

/*
 * An image that is another image's checkpoint (docs/backup.md): its data is
 * the checkpoint's point-in-time view (backend and path as `blkgw backup
 * start` writes them), its exports are read-only, and NBD offers the chunks
 * changed since `since`.
 */
enum gw_backup_view {
	GW_VIEW_SNAPSHOT = 0, /* the checkpoint's reflink copy (its path) */
	GW_VIEW_CBW,          /* copy-before-write: lives only as long as the daemon */
	GW_VIEW_LIVE,         /* the live image (--inconsistent) */
};
#define GW_VIEW_NAMES                                   \
	{                                               \
		"snapshot", "copy-before-write", "live" \
	}

struct gw_backup_spec {
	char *of;          /* the tracked image */
	char *checkpoint;  /* the view's checkpoint */
	char *since;       /* an earlier checkpoint, or NULL */
	bool only_changed; /* unchanged chunks read as not allocated (needs since) */
	enum gw_backup_view view;
	uint64_t rate; /* reads at most this many bytes per second (0: no cap) */
};

struct gw_image_spec {
	char *name;
	const struct gw_backend_ops *ops;
	void *opts;                    /* decoded with ops->schema */
	uint32_t block_size;           /* 0: the backend's own */
	struct gw_fault_opts *fault;   /* a fault layer over the backend, or NULL */
	bool track_changes;            /* changed-block tracking (docs/backup.md) */
	uint32_t change_granularity;   /* bytes per tracked chunk (default 64K) */
	struct gw_backup_spec *backup; /* a backup image (name IMAGE@CHECKPOINT), or NULL */
	int line, col;
	/* Found when sources were checked: it opens for reading only (why). */
	bool read_only_source;
	char *read_only_why;
	/* Every export of it is read-only: it opens for reading only. */
	bool read_only;
};

struct gw_transport_spec {
	const struct gw_transport_ops *ops;
	void *opts; /* decoded with ops->schema */
	int line, col;
};

struct gw_export_spec {
	char *id; /* image name, or image#N for the N-th export of one image */
	char *image;
	size_t image_index;
	bool read_only;
	struct gw_transport_spec *transports; /* in order of preference */
	size_t ntransports;
	int line, col;
};

struct gw_manifest {
	char *path;     /* as given (messages name it so) */
	char *abs_path; /* absolute, for status */
	char *dir;      /* folder relative paths are resolved against */
	struct gw_gateway_cfg gw;
	struct gw_transport_env env; /* what transports see; points into gw */
	struct gw_image_spec *images;
	size_t nimages;
	struct gw_export_spec *exports;
	size_t nexports;
	bool images_ok; /* 'images' was a mapping (so unknown names are worth reporting) */
};

/*
 * Load and validate. Returns 0 with *out set, or -1 with every problem in d
 * (and *out NULL). check_sources: also ask backends whether their sources
 * exist (e.g. missing image files), as `check` and `serve` do.
 */
int gw_manifest_load(const char *path, bool check_sources, struct gw_manifest **out,
		     struct gw_diags *d);
void gw_manifest_free(struct gw_manifest *m);
/* Remove image i and every export of it (before the manifest is served). */
void gw_manifest_drop_image(struct gw_manifest *m, size_t i);

/* The run dir defaults: /run/blkgw for root, else $XDG_RUNTIME_DIR/blkgw or /tmp/blkgw-UID. */
char *gw_default_run_dir(void);
