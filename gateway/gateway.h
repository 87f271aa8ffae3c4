/*
 * The daemon: opens images, starts workers and exports, serves the control
 * socket, and stops everything cleanly on SIGTERM/SIGINT.
 */
#pragma once

#include <stdbool.h>

struct gw_manifest;

struct gw_serve_opts {
	const char *pidfile;    /* NULL: none */
	const char *log_level;  /* NULL: the manifest's, else info */
};

/* Run until asked to stop. Returns the process exit status. */
int gw_serve(struct gw_manifest *m, const struct gw_serve_opts *o);

/* The run dir in force (set while loading a manifest). */
void gw_set_run_dir(const char *dir);
const char *gw_run_dir(void);
