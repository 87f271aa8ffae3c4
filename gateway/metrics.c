#include "gateway/metrics.h"

#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/opts.h"
#include "lib/sockets.h"
#include "lib/util.h"

#define MAX_CONNS 16

struct mconn {
	int fd;
	ev_io w;
	char in[2048];
	size_t inlen;
	struct mconn *next;
};

static struct {
	int fd;
	ev_io w;
	char *path; /* unix socket to remove, or NULL */
	gw_metrics_fill fill;
	void *arg;
	struct mconn *conns;
	unsigned nconns;
} mx = { .fd = -1 };

static void conn_close(struct mconn *c)
{
	struct mconn **pp;

	ev_io_stop(EV_DEFAULT, &c->w);
	close(c->fd);
	for (pp = &mx.conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	mx.nconns--;
	free(c);
}

static void send_all(int fd, const char *b, size_t n)
{
	while (n) {
		ssize_t k = send(fd, b, n, MSG_NOSIGNAL);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return;
		b += k;
		n -= (size_t)k;
	}
}

static void respond(struct mconn *c)
{
	char *body = NULL, head[256];
	size_t blen = 0;
	FILE *f;
	bool get = strncmp(c->in, "GET ", 4) == 0;
	bool head_only = strncmp(c->in, "HEAD ", 5) == 0;
	struct timeval tv = { .tv_sec = 2 };

	/* The answer goes out in one go: a slow reader gets 2 s, then is dropped. */
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (!get && !head_only) {
		static const char bad[] = "HTTP/1.0 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"
					  "Content-Length: 0\r\nConnection: close\r\n\r\n";

		send_all(c->fd, bad, sizeof(bad) - 1);
		return;
	}
	f = open_memstream(&body, &blen);
	if (!f)
		return;
	mx.fill(f, mx.arg);
	if (fclose(f) != 0) {
		free(body);
		return;
	}
	snprintf(head, sizeof(head),
		 "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
		 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
		 blen);
	send_all(c->fd, head, strlen(head));
	if (get)
		send_all(c->fd, body, blen);
	free(body);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct mconn *c = w->data;
	ssize_t n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - 1 - c->inlen, 0);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		conn_close(c);
		return;
	}
	c->inlen += (size_t)n;
	c->in[c->inlen] = '\0';
	/* The request line and headers end with an empty line (or fill the buffer). */
	if (!strstr(c->in, "\r\n\r\n") && !strstr(c->in, "\n\n") && c->inlen < sizeof(c->in) - 1)
		return;
	respond(c);
	conn_close(c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	int fd = accept4(mx.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	struct mconn *c;

	if (fd < 0)
		return;
	if (mx.nconns >= MAX_CONNS || !(c = calloc(1, sizeof(*c)))) {
		close(fd);
		return;
	}
	c->fd = fd;
	ev_io_init(&c->w, conn_cb, fd, EV_READ);
	c->w.data = c;
	ev_io_start(EV_DEFAULT, &c->w);
	c->next = mx.conns;
	mx.conns = c;
	mx.nconns++;
}

static int listen_tcp(const char *hostport, char *err, size_t len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res = NULL;
	char *host, *port;
	int fd = -1, rc, one = 1;

	if (gw_split_hostport(hostport, &host, &port) < 0) {
		gw_seterr(err, len, "metrics: bad address %s (HOST:PORT or a socket path)",
			  hostport);
		return -EINVAL;
	}
	rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
	free(host);
	free(port);
	if (rc) {
		gw_seterr(err, len, "metrics: cannot resolve %s: %s", hostport, gai_strerror(rc));
		return -EINVAL;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 16) < 0) {
		rc = -errno;
		gw_seterr(err, len, "metrics: cannot listen on %s: %s", hostport, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return rc;
	}
	freeaddrinfo(res);
	return fd;
}

int gw_metrics_start(const char *where, gw_metrics_fill fill, void *arg, char *err, size_t len)
{
	int fd;

	if (where[0] == '/') {
		struct gw_sock_perm perm = { .mode = 0660, .uid = GW_ID_UNSET, .gid = GW_ID_UNSET };

		fd = gw_listen_unix(where, &perm, 16, err, len);
		if (fd >= 0)
			mx.path = strdup(where);
	} else {
		fd = listen_tcp(where, err, len);
	}
	if (fd < 0)
		return fd;
	mx.fd = fd;
	mx.fill = fill;
	mx.arg = arg;
	ev_io_init(&mx.w, accept_cb, fd, EV_READ);
	ev_io_start(EV_DEFAULT, &mx.w);
	gw_info("metrics: Prometheus text at %s%s%s", mx.path ? "" : "http://", where,
		mx.path ? "" : "/metrics");
	return 0;
}

void gw_metrics_stop(void)
{
	while (mx.conns)
		conn_close(mx.conns);
	if (mx.fd >= 0) {
		ev_io_stop(EV_DEFAULT, &mx.w);
		close(mx.fd);
		if (mx.path)
			unlink(mx.path);
	}
	free(mx.path);
	mx.path = NULL;
	mx.fd = -1;
}
