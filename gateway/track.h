/*
 * Changed-block tracking and checkpoints of the daemon's images
 * (docs/backup.md): the records (lib/cbt.h) of images with
 * `track-changes: true`, and the control commands that manage them.
 * Main thread only.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>

#include "backends/backend.h"
#include "config/manifest.h"
#include "gateway/export.h"

/* After opening an image: start tracking when its spec asks. 0 or -errno with a message. */
int gw_track_attach(struct gw_backend *b, const struct gw_image_spec *s, const char *run_dir,
		    char *err, size_t errlen);
/* Before closing an image (after its final flush): close its record cleanly. */
void gw_track_detach(struct gw_backend *b);
/* The "tracking" object of an image's status, or NULL when untracked. */
json_object *gw_track_status(struct gw_backend *b);

/*
 * backup-start's checks: image tracks changes, has `checkpoint`, and the
 * changes after `since` (may be NULL) up to it can be trusted. *path (to
 * free) receives the file a backup export reads: the checkpoint's
 * point-in-time view, or with `inconsistent` and none, the live source file.
 * 0 or -errno with a message that names the fix.
 */
int gw_track_backup_view(const char *image, const char *checkpoint, const char *since,
			 bool inconsistent, char **path, char *err, size_t errlen);
/*
 * A backup image's change map for its exports (*out NULL when the spec has
 * no `since`): the chunks of `of` changed after `since` up to `checkpoint`.
 * 0 or -errno with why.
 */
int gw_track_backup_map(const struct gw_backup_spec *s, uint64_t size, struct gw_change_map **out,
			char *err, size_t errlen);

/* Control commands: checkpoint-create, checkpoint-list, checkpoint-delete. NULL: not ours. */
json_object *gw_track_command(const char *name, json_object *req);

/* The command line (gateway/track_cli.c): `blkgw checkpoint ...`. */
int gw_cli_checkpoint(int argc, char **argv);
void gw_cli_checkpoint_usage(FILE *f);
/* `blkgw backup start|stop`. */
int gw_cli_backup(int argc, char **argv);
void gw_cli_backup_usage(FILE *f);
