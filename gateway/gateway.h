/*
 * The daemon: opens images, starts workers and exports, serves the control
 * socket, and stops everything cleanly on SIGTERM/SIGINT.
 */
#pragma once

#include <stdbool.h>

struct gw_manifest;

struct gw_serve_opts {
	const char *pidfile;   /* NULL: none */
	const char *log_level; /* NULL: the manifest's, else info */
};

/* Run until asked to stop (m is the daemon's from now on). Returns the exit status. */
int gw_serve(struct gw_manifest *m, const struct gw_serve_opts *o);
