/*
 * The control socket: JSON over a unix socket, one request per line, one
 * reply per line (docs/control.md). Runs on the main thread's loop.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>

#include "lib/sockets.h"

/* Handle one request; return the reply object (ownership passes to the caller). */
typedef json_object *(*gw_ctl_handler)(json_object *req, void *arg);

int gw_ctl_start(const char *path, const struct gw_sock_perm *perm, gw_ctl_handler handler,
		 void *arg, char *err, size_t errlen);
/* Close every client and the socket, and remove it. */
void gw_ctl_stop(void);

/* Build {"ok": false, "error": {"code": code, "message": msg}}. */
json_object *gw_ctl_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Client side, for `blkgw status`: send req, return the parsed reply, or NULL
 * with -errno in *code and a message in err.
 */
json_object *gw_ctl_request(const char *path, json_object *req, int *code, char *err,
			    size_t errlen);
