#include "gateway/control.h"

#include <errno.h>
#include <ev.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/manifest.h"
#include "lib/log.h"
#include "lib/sockets.h"
#include "lib/util.h"

struct ctl_client {
	int fd;
	ev_io rio, wio;
	char *in;
	size_t inlen;
	char *out;
	size_t outlen, outoff;
	ev_tstamp last; /* last request or accept: the least recent goes first when full */
	struct ctl_client *next;
	struct gw_ctl_pending *pending; /* a reply owed later; reading waits for it */
};

struct gw_ctl_pending {
	struct ctl_client *c; /* NULL once the client went away */
};

static struct {
	int fd;
	ev_io w;
	char *path;
	gw_ctl_handler handler;
	void *arg;
	struct ctl_client *clients;
	unsigned nclients;
	struct ctl_client *current; /* whose request the handler is answering */
	struct gw_ctl_pending *deferred;
	json_object *early; /* a deferred reply given before the handler returned */
	ev_timer resume;
	/* Limits: clients at once, request line, unsent replies beyond which a
	 * client's requests are not read until it reads. */
	struct gw_ctl_limits lim;
} ctl = { .fd = -1, .lim = { 64, 64 * 1024, 1024 * 1024 } };

void gw_ctl_set_limits(const struct gw_ctl_limits *lim)
{
	if (lim->max_clients)
		ctl.lim.max_clients = lim->max_clients;
	if (lim->max_line)
		ctl.lim.max_line = lim->max_line;
	if (lim->max_out)
		ctl.lim.max_out = lim->max_out;
}

json_object *gw_ctl_error(int code, const char *fmt, ...)
{
	json_object *r = json_object_new_object(), *e = json_object_new_object();
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_object_add(e, "code", json_object_new_int(code));
	json_object_object_add(e, "message", json_object_new_string(msg));
	json_object_object_add(r, "ok", json_object_new_boolean(0));
	json_object_object_add(r, "error", e);
	return r;
}

static void client_close(struct ctl_client *c)
{
	struct ctl_client **pp;

	ev_io_stop(EV_DEFAULT, &c->rio);
	ev_io_stop(EV_DEFAULT, &c->wio);
	if (c->pending)
		c->pending->c = NULL;
	close(c->fd);
	for (pp = &ctl.clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	ctl.nclients--;
	free(c->in);
	free(c->out);
	free(c);
}

static void client_lines(struct ctl_client *c);

static void client_flush(struct ctl_client *c)
{
again:
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				ev_io_start(EV_DEFAULT, &c->wio);
				/* It does not read what it asked for: stop reading it too. */
				if (c->outlen - c->outoff > ctl.lim.max_out)
					ev_io_stop(EV_DEFAULT, &c->rio);
				return;
			}
			client_close(c);
			return;
		}
		c->outoff += (size_t)n;
	}
	ev_io_stop(EV_DEFAULT, &c->wio);
	c->outlen = c->outoff = 0;
	if (!c->pending) {
		ev_io_start(EV_DEFAULT, &c->rio); /* drained: read requests again */
		if (c->inlen) {
			client_lines(c); /* and answer what it had sent meanwhile */
			if (c->outlen)
				goto again;
		}
	}
}

static void client_reply(struct ctl_client *c, json_object *reply)
{
	const char *s = json_object_to_json_string_ext(
		reply, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	size_t n = strlen(s);
	char *b = realloc(c->out, c->outlen + n + 1);

	if (b) {
		/* A newline-framed byte stream, not a C string. */
		memcpy(b + c->outlen, s, n); // NOLINT(bugprone-not-null-terminated-result)
		b[c->outlen + n] = '\n';
		c->out = b;
		c->outlen += n + 1;
	}
	json_object_put(reply);
}

static void handle_line(struct ctl_client *c, const char *line, size_t len)
{
	json_tokener *tok = json_tokener_new();
	json_object *req, *reply;

	req = json_tokener_parse_ex(tok, line, (int)len);
	if (!req || json_tokener_get_error(tok) != json_tokener_success ||
	    tok->char_offset != (int)len) {
		reply = gw_ctl_error(-EINVAL, "request is not valid JSON: %s",
				     json_tokener_error_desc(json_tokener_get_error(tok)));
	} else if (!json_object_is_type(req, json_type_object)) {
		reply = gw_ctl_error(
			-EINVAL, "request must be a JSON object such as {\"command\": \"status\"}");
	} else {
		ctl.current = c;
		ctl.deferred = NULL;
		ctl.early = NULL;
		reply = ctl.handler(req, ctl.arg);
		ctl.current = NULL;
		if (!reply && ctl.early) {
			reply = ctl.early;
			ctl.early = NULL;
		} else if (!reply && ctl.deferred) {
			c->pending = ctl.deferred;
			ctl.deferred = NULL;
			ev_io_stop(EV_DEFAULT, &c->rio);
		} else if (!reply) {
			reply = gw_ctl_error(-EIO, "the command gave no answer");
		}
	}
	json_object_put(req);
	json_tokener_free(tok);
	if (reply)
		client_reply(c, reply);
}

/* Answer the complete lines buffered, until one defers its reply. */
static void client_lines(struct ctl_client *c)
{
	char *nl;

	while (!c->pending && (nl = memchr(c->in, '\n', c->inlen))) {
		size_t l = (size_t)(nl - c->in);

		if (l > 0)
			handle_line(c, c->in, l);
		memmove(c->in, nl + 1, c->inlen - l - 1);
		c->inlen -= l + 1;
		if (c->outlen - c->outoff > ctl.lim.max_out)
			break; /* answer the rest once it reads what it asked for */
	}
}

struct gw_ctl_pending *gw_ctl_defer(void)
{
	if (!ctl.current || ctl.deferred)
		return NULL;
	ctl.deferred = calloc(1, sizeof(*ctl.deferred));
	if (ctl.deferred)
		ctl.deferred->c = ctl.current;
	return ctl.deferred;
}

void gw_ctl_reply_later(struct gw_ctl_pending *p, json_object *reply)
{
	struct ctl_client *c = p->c;

	if (p == ctl.deferred) { /* kept before the handler even returned */
		ctl.deferred = NULL;
		ctl.early = reply;
		free(p);
		return;
	}
	free(p);
	if (!c) {
		json_object_put(reply);
		return;
	}
	c->pending = NULL;
	client_reply(c, reply);
	ev_io_start(EV_DEFAULT, &c->rio);
	client_lines(c);
	client_flush(c);
}

static void client_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ctl_client *c = w->data;
	char buf[4096];
	ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

	if (n <= 0) {
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			return;
		client_close(c);
		return;
	}
	c->last = ev_now(loop);
	if (c->inlen + (size_t)n > ctl.lim.max_line) {
		client_reply(c, gw_ctl_error(-E2BIG, "request longer than %zu bytes",
					     ctl.lim.max_line));
		client_flush(c);
		client_close(c);
		return;
	}
	{
		char *in = realloc(c->in, c->inlen + (size_t)n);

		if (!in) {
			client_close(c);
			return;
		}
		c->in = in;
	}
	memcpy(c->in + c->inlen, buf, (size_t)n);
	c->inlen += (size_t)n;
	client_lines(c);
	client_flush(c);
}

static void client_writable(struct ev_loop *loop, ev_io *w, int revents)
{
	client_flush(w->data);
}

static void resume_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	ev_io_start(loop, &ctl.w);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	bool refused;
	int fd = gw_accept(ctl.fd, NULL, NULL, &refused);
	struct ctl_client *c;

	if (fd < 0) {
		if ((fd == -EMFILE || fd == -ENFILE) && !refused) {
			/* Not even a spare descriptor: listen again in a moment, no busy loop. */
			ev_io_stop(loop, &ctl.w);
			ev_timer_set(&ctl.resume, 0.1, 0);
			ev_timer_start(loop, &ctl.resume);
		}
		return;
	}
	if (ctl.nclients >= ctl.lim.max_clients) {
		/* Full of clients: the one quiet longest makes room (so idle ones cannot lock
		 * out `blkgw status`). */
		struct ctl_client *old = ctl.clients;

		for (c = ctl.clients; c; c = c->next)
			if (c->last < old->last)
				old = c;
		if (old)
			client_close(old);
	}
	if (!(c = calloc(1, sizeof(*c)))) {
		close(fd);
		return;
	}
	c->last = ev_now(loop);
	c->fd = fd;
	ev_io_init(&c->rio, client_readable, fd, EV_READ);
	ev_io_init(&c->wio, client_writable, fd, EV_WRITE);
	c->rio.data = c->wio.data = c;
	ev_io_start(EV_DEFAULT, &c->rio);
	c->next = ctl.clients;
	ctl.clients = c;
	ctl.nclients++;
}

int gw_ctl_start(const char *path, const struct gw_sock_perm *perm, gw_ctl_handler handler,
		 void *arg, char *err, size_t errlen)
{
	int fd = gw_listen_unix(path, perm, 16, err, errlen);

	if (fd < 0)
		return fd;
	ctl.fd = fd;
	ctl.path = strdup(path);
	ctl.handler = handler;
	ctl.arg = arg;
	ev_io_init(&ctl.w, accept_cb, fd, EV_READ);
	ev_io_start(EV_DEFAULT, &ctl.w);
	ev_timer_init(&ctl.resume, resume_cb, 0.1, 0);
	gw_accept_reserve();
	return 0;
}

void gw_ctl_stop(void)
{
	while (ctl.clients)
		client_close(ctl.clients);
	if (ctl.fd >= 0) {
		ev_io_stop(EV_DEFAULT, &ctl.w);
		ev_timer_stop(EV_DEFAULT, &ctl.resume);
		close(ctl.fd);
		unlink(ctl.path);
	}
	free(ctl.path);
	ctl.path = NULL;
	ctl.fd = -1;
}

json_object *gw_ctl_request(const char *path, json_object *req, int *code, char *err, size_t errlen)
{
	return gw_ctl_request_ms(path, req, 10000, code, err, errlen);
}

json_object *gw_ctl_request_ms(const char *path, json_object *req, int timeout_ms, int *code,
			       char *err, size_t errlen)
{
	struct sockaddr_un sa;
	const char *s = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN |
								    JSON_C_TO_STRING_NOSLASHESCAPE);
	char *buf = NULL;
	size_t len = 0;
	json_object *reply = NULL;
	int fd;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (gw_strlcpy(sa.sun_path, path, sizeof(sa.sun_path)) < 0) {
		gw_seterr(err, errlen, "control socket path %s is too long", path);
		*code = -ENAMETOOLONG;
		return NULL;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		*code = -errno;
		gw_seterr(err, errlen, "cannot reach blkgw at %s: %s%s", path, strerror(errno),
			  errno == ENOENT || errno == ECONNREFUSED
				  ? " (is the daemon running? see --control)"
				  : "");
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) < 0 || send(fd, "\n", 1, MSG_NOSIGNAL) < 0) {
		*code = -errno;
		gw_seterr(err, errlen, "cannot send to %s: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char *nb;
		ssize_t n;

		if (poll(&p, 1, timeout_ms) <= 0) {
			gw_seterr(err, errlen, "no answer from %s within %d s", path,
				  timeout_ms / 1000);
			*code = -ETIMEDOUT;
			break;
		}
		nb = realloc(buf, len + 65536 + 1);
		if (!nb) {
			gw_seterr(err, errlen, "out of memory");
			*code = -ENOMEM;
			break;
		}
		buf = nb;
		n = recv(fd, buf + len, 65536, 0);
		if (n <= 0) {
			gw_seterr(err, errlen, "connection to %s closed before an answer", path);
			*code = -ECONNRESET;
			break;
		}
		len += (size_t)n;
		buf[len] = '\0';
		if (memchr(buf, '\n', len)) {
			reply = json_tokener_parse(buf);
			if (!reply) {
				gw_seterr(err, errlen, "answer from %s is not valid JSON", path);
				*code = -EBADMSG;
			}
			break;
		}
	}
	free(buf);
	close(fd);
	return reply;
}

/* See control.h. */
const char *gw_ctl_socket_path(const char *control, const char *manifest, char **owned)
{
	*owned = NULL;
	if (control)
		return control;
	if (manifest) {
		struct gw_manifest *m;
		struct gw_diags d = { 0 };

		if (gw_manifest_load(manifest, false, &m, &d) < 0) {
			gw_diags_print(&d, manifest, stderr);
			gw_diags_free(&d);
			return NULL;
		}
		*owned = strdup(m->gw.control_socket);
		gw_manifest_free(m);
		return *owned;
	}
	control = getenv("BLKGW_CONTROL");
	if (control && *control)
		return control;
	{
		char *rd = gw_default_run_dir();

		if (rd && asprintf(owned, "%s/control.sock", rd) < 0)
			*owned = NULL;
		free(rd);
	}
	return *owned;
}
