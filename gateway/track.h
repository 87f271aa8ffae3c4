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

/* After opening an image: start tracking when its spec asks. 0 or -errno with a message. */
int gw_track_attach(struct gw_backend *b, const struct gw_image_spec *s, const char *run_dir,
		    char *err, size_t errlen);
/* Before closing an image (after its final flush): close its record cleanly. */
void gw_track_detach(struct gw_backend *b);
/* The "tracking" object of an image's status, or NULL when untracked. */
json_object *gw_track_status(struct gw_backend *b);

/* Control commands: checkpoint-create, checkpoint-list, checkpoint-delete. NULL: not ours. */
json_object *gw_track_command(const char *name, json_object *req);

/* The command line (gateway/track_cli.c): `blkgw checkpoint ...`. */
int gw_cli_checkpoint(int argc, char **argv);
void gw_cli_checkpoint_usage(FILE *f);
