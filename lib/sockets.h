/* Socket and folder helpers shared by the control socket and the transports. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* mkdir -p DIR (mode 0755 for what it creates). 0 or -errno. */
int gw_mkdir_p(const char *dir);
/* Create the folders above PATH. 0 or -errno. */
int gw_mkdir_parents(const char *path);

/*
 * Listen on a unix stream socket at PATH with permissions MODE (never wider,
 * not even for a moment), creating its folder. A stale socket left by a
 * killed process is replaced; one a live server answers on is not (returns
 * -EADDRINUSE). Returns the non-blocking listening fd, or -errno with a
 * message in err.
 */
int gw_listen_unix(const char *path, uint32_t mode, int backlog, char *err, size_t errlen);
