/*
 * The control socket: JSON over a unix socket, one request per line, one
 * reply per line (docs/control.md). Runs on the main thread's loop.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>

#include "lib/sockets.h"

/*
 * Handle one request; return the reply object (ownership passes to the
 * caller), or take gw_ctl_defer() and return NULL to answer later with
 * gw_ctl_reply_later() (that client's further requests wait until then).
 */
typedef json_object *(*gw_ctl_handler)(json_object *req, void *arg);

struct gw_ctl_pending;
/* Inside a handler: promise the reply for later. NULL when out of memory. */
struct gw_ctl_pending *gw_ctl_defer(void);
/* Keep the promise (takes reply; dropped when the client went away). */
void gw_ctl_reply_later(struct gw_ctl_pending *p, json_object *reply);

/* Limits of the control socket (gateway: control-max-*); 0 keeps a value. */
struct gw_ctl_limits {
	unsigned max_clients;
	size_t max_line, max_out;
};
void gw_ctl_set_limits(const struct gw_ctl_limits *lim);

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
/* The same, waiting up to timeout_ms for the answer (10 s above). */
/*
 * The control socket a CLI command talks to: control (--control), else the
 * one the manifest declares, else $BLKGW_CONTROL, else the default run dir's.
 * *owned is what to free. NULL (reported) when the manifest cannot be read.
 */
const char *gw_ctl_socket_path(const char *control, const char *manifest, char **owned);

json_object *gw_ctl_request_ms(const char *path, json_object *req, int timeout_ms, int *code,
			       char *err, size_t errlen);
