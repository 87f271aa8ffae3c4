/*
 * What `check` and `serve` verify about this host before anything starts,
 * beyond the manifest's own consistency (manifest.c), so that `check`
 * refuses whatever `serve` would refuse for a reason knowable in advance,
 * with the same FILE:LINE:COL message:
 *
 *   - a transport of each export can work here (its probe: kernel module,
 *     privileges); a later one taking over is reported, not an error;
 *   - an image whose source opens for reading only is exported read-only;
 *   - every unix socket can be created where asked (its folder, a file in
 *     the way), and no path is claimed by two transports or by a transport
 *     and the control socket (transports know nothing of each other, so
 *     only this layer can see it);
 *   - the run dir exists or can be created.
 *
 * What cannot be known before serving (a TCP port taken by then, a server
 * answering on a socket now) is listed, not refused.
 *
 * Thread: main. No side effects beyond probes' reads.
 */
#pragma once

#include <stddef.h>

#include "config/manifest.h"

struct gw_preflight_export {
	int *probe_rc;    /* per transport: 0, or -errno from its probe */
	char **probe_why; /* per transport: why it cannot work here (NULL when it can) */
	size_t n;         /* the export's transports */
	int chosen;       /* the first transport that can work here, -1 when none */
};

struct gw_preflight {
	struct gw_preflight_export *exports; /* one per manifest export */
	size_t nexports;
	char **notes; /* worth knowing, not errors ("a server answers on X now") */
	size_t nnotes;
	char **unchecked; /* what cannot be checked before serving */
	size_t nunchecked;
};

/* Run every check. 0, or -1 with each problem in d (pf is filled either way). */
int gw_preflight_run(const struct gw_manifest *m, struct gw_preflight *pf, struct gw_diags *d);
/*
 * The same for a running daemon checking a manifest to apply: sockets are
 * not asked whether a server answers (the daemon's own do; a stranger's
 * makes that export fail to start, reported then).
 */
int gw_preflight_run_live(const struct gw_manifest *m, struct gw_preflight *pf, struct gw_diags *d);
void gw_preflight_free(struct gw_preflight *pf);
