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
 * backup-start: the view a backup export of image's `checkpoint` reads.
 * An existing checkpoint: its reflink copy, or with `inconsistent` the live
 * file. A new one is made now, with a reflink copy where the file system
 * can and a copy-before-write view elsewhere. The changes after `since`
 * (may be NULL) must be known and trusted. *fields (to free: the backend
 * settings of a manifest image that reads the view, "backend: file, path:
 * ...") and *view receive the view; 0 or -errno with a message that names
 * the fix. Backends that keep views themselves (rbd) get theirs.
 */
int gw_track_backup_view(const char *image, const char *checkpoint, const char *since,
			 bool inconsistent, char **fields, enum gw_backup_view *view, bool *created,
			 char *err, size_t errlen);
/* Undo a checkpoint backup-start made when its export did not start: delete it and its view. */
void gw_track_checkpoint_undo(const char *image, const char *checkpoint);
/* backup-stop and checkpoint delete: end image's copy-before-write view of checkpoint. */
void gw_track_backup_end(const char *image, const char *checkpoint);
/*
 * For an export of a backup image: its change map (*out NULL when the spec
 * has no `since`: the chunks of `of` changed after `since` up to
 * `checkpoint`) and, for a copy-before-write view, the view its reads come
 * from. 0 or -errno with why.
 */
struct gw_cbw;
int gw_track_backup_attach(const struct gw_backup_spec *s, uint64_t size,
			   struct gw_change_map **out, struct gw_cbw **view, char *err,
			   size_t errlen);

/* Control commands: checkpoint-create, checkpoint-list, checkpoint-delete. NULL: not ours. */
json_object *gw_track_command(const char *name, json_object *req);

/* The command line (gateway/track_cli.c): `blkgw checkpoint ...`. */
int gw_cli_checkpoint(int argc, char **argv);
void gw_cli_checkpoint_usage(FILE *f);
/* `blkgw backup start|stop`. */
int gw_cli_backup(int argc, char **argv);
void gw_cli_backup_usage(FILE *f);
