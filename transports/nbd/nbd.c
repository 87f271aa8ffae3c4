/*
 * The NBD transport: options, listeners and export lifecycle, on the main
 * thread. Connections are accepted here and handed to a worker
 * (nbd_conn.c), which runs the handshake and the transmission phase.
 *
 * Several exports may share one listener (the same socket or address);
 * a client chooses among them by export name, and an empty name picks the
 * first export of the listener.
 *
 * An attached export's device is recorded in RUN-DIR/nbd/N.state (one line,
 * struct nbd_rec) while it is attached, so that a daemon started after a
 * kill -9 hands the kernel fresh sockets (NBD_CMD_RECONFIGURE) instead of
 * attaching anew: the kernel keeps a netlink-connected device until
 * NBD_CMD_DISCONNECT, and holds its I/O for dead-conn-timeout meanwhile.
 */
#include <linux/capability.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lib/blkuse.h"
#include "lib/devlink.h"
#include "lib/log.h"
#include "lib/sockets.h"
#include "lib/statefile.h"
#include "gateway/transport.h"
#include "lib/util.h"
#include "transports/nbd/nbd_conn.h"
#include "transports/nbd/nbd_internal.h"
#include "transports/nbd/nbd_netlink.h"
#include "transports/nbd/nbd_proto.h"

static void nbd_check_opts(const void *opts, struct gw_opt_report *r);
static int device_index(const char *dev);

#define NBD_DEAD_CONN_TIMEOUT_DEF 60

static const struct gw_opt_desc nbd_opts_table[] = {
	{ .key = "socket",
	  .type = GW_OPT_PATH,
	  .offset = offsetof(struct nbd_opts, socket),
	  .help = "unix socket to serve on (default RUN-DIR/IMAGE.sock when 'listen' is not set)" },
	{ .key = "listen",
	  .type = GW_OPT_HOSTPORT,
	  .offset = offsetof(struct nbd_opts, listen),
	  .help = "TCP address to serve on, e.g. 127.0.0.1:10809" },
	{ .key = "name",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct nbd_opts, name),
	  .help = "export name clients ask for (default: the image name)" },
	{ .key = "description",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct nbd_opts, description),
	  .help = "free text shown to clients that list exports" },
	GW_SOCK_PERM_OPTS(struct nbd_opts, perm, ""),
	{ .key = "poll-us",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, poll_us),
	  .max = 1000,
	  .def = 50,
	  .help = "a queue-depth-1 client that comes back quickly after each reply has its socket polled up to this long instead of the worker sleeping (adaptive; not while its requests take more than 2x this long; 0: never; default 50)" },
	{ .key = "max-connections",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, max_connections),
	  .def = 1000,
	  .help = "connections at once on each socket or address of this export, handshakes included; more are closed at once and counted (default 1000; 0: no limit but the descriptor limit)" },
	{ .key = "handshake-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, handshake_timeout),
	  .max = 86400,
	  .def = 10,
	  .help = "seconds a client may take to negotiate before it is disconnected (default 10; 0: no limit)" },
	{ .key = "idle-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, idle_timeout),
	  .max = 31536000,
	  .help = "seconds a client may send no request (with none outstanding) before it is disconnected (default 0: never)" },
	{ .key = "payload-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, payload_timeout),
	  .max = 86400,
	  .help = "seconds a write's payload may take to arrive once its header has (a client dripping it holds its buffer meanwhile); the client is disconnected and the write not done (default 0: no limit)" },
	{ .key = "client-buffer",
	  .type = GW_OPT_SIZE,
	  .offset = offsetof(struct nbd_opts, client_buffer),
	  .min = 1 << 20,
	  .max = 1ull << 30,
	  .def = 16 << 20,
	  .help = "request data in flight plus replies not yet sent, per client, beyond which blkgw stops reading that client's requests until it drains (default 16M; one request may go beyond it)" },
	{ .key = "attach",
	  .type = GW_OPT_BOOL,
	  .offset = offsetof(struct nbd_opts, attach),
	  .help = "also attach the export as a local /dev/nbdN through the kernel's NBD client" },
	{ .key = "device",
	  .type = GW_OPT_STR,
	  .offset = offsetof(struct nbd_opts, device),
	  .help = "with attach: the device to use, e.g. /dev/nbd3 (default: the first free one)" },
	{ .key = "connections",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, connections),
	  .min = 1,
	  .max = 16,
	  .def = 1,
	  .help = "with attach: sockets (kernel queues) handed to the kernel, 1 to 16" },
	{ .key = "timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, timeout),
	  .max = 86400,
	  .help = "with attach: seconds before the kernel gives up on a request (default: never)" },
	{ .key = "dead-conn-timeout",
	  .type = GW_OPT_U32,
	  .offset = offsetof(struct nbd_opts, dead_conn_timeout),
	  .max = 86400,
	  .def = NBD_DEAD_CONN_TIMEOUT_DEF,
	  .help = "with attach: seconds the kernel holds I/O while blkgw is away (killed, restarting) before failing it; a restarted blkgw reattaches the device (default 60; 0: fail at once)" },
};

static struct nbd_listener *listeners;

/* ---- options ---- */

static void nbd_check_opts(const void *opts, struct gw_opt_report *r)
{
	const struct nbd_opts *o = opts;
	static const char *const attach_only[] = { "device", "connections", "timeout",
						   "dead-conn-timeout" };
	const bool given[] = { o->device, o->connections != 1, o->timeout,
			       o->dead_conn_timeout != NBD_DEAD_CONN_TIMEOUT_DEF };

	if (o->name && strlen(o->name) > NBD_MAX_STRING)
		gw_opt_problem(r, "name", "'name' is longer than 4096 bytes");
	if (o->description && strlen(o->description) > NBD_MAX_STRING)
		gw_opt_problem(r, "description", "'description' is longer than 4096 bytes");
	if (o->socket && strlen(o->socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		gw_opt_problem(r, "socket",
			       "'socket' path is too long for a unix socket (at most 107 bytes)");
	if (o->device && device_index(o->device) < 0)
		gw_opt_problem(r, "device", "'device' must be an NBD device such as /dev/nbd0");
	if (o->attach || gw_opt_bad(r, "attach"))
		return;
	for (size_t i = 0; i < GW_ARRAY_SIZE(attach_only); i++)
		if (given[i])
			gw_opt_problem(r, attach_only[i], "'%s' needs 'attach: true'",
				       attach_only[i]);
}

/* "/dev/nbd12" -> 12, else -1. */
static int device_index(const char *dev)
{
	const char *p = dev;
	long v = 0;

	if (strncmp(p, "/dev/nbd", 8) != 0 || !p[8])
		return -1;
	for (p += 8; *p; p++) {
		if (*p < '0' || *p > '9' || v > 1000000)
			return -1;
		v = v * 10 + (*p - '0');
	}
	return (int)v;
}

static const char *wire_name(const struct nbd_opts *o, const char *image)
{
	return o->name ? o->name : image;
}

/* The endpoints an export serves on, as listener keys ("unix:PATH", "tcp:HOST:PORT"). */
static unsigned endpoints(const struct gw_transport_env *env, const struct nbd_opts *o,
			  const char *image, char keys[2][4200])
{
	unsigned n = 0;

	if (o->socket)
		snprintf(keys[n++], sizeof(keys[0]), "unix:%s", o->socket);
	if (o->listen)
		snprintf(keys[n++], sizeof(keys[0]), "tcp:%s", o->listen);
	if (!n && !o->attach)
		snprintf(keys[n++], sizeof(keys[0]), "unix:%s/%s.sock", env->run_dir, image);
	return n;
}

static const char *nbd_conflict(const struct gw_transport_env *env, const void *a,
				const char *image_a, const void *b, const char *image_b, char *buf,
				size_t len)
{
	const struct nbd_opts *oa = a, *ob = b;
	char ka[2][4200], kb[2][4200];
	unsigned na = endpoints(env, oa, image_a, ka), nb = endpoints(env, ob, image_b, kb);

	if (oa->attach && ob->attach && oa->device && ob->device &&
	    strcmp(oa->device, ob->device) == 0) {
		snprintf(buf, len, "%s is attached by another export", oa->device);
		return buf;
	}
	for (unsigned i = 0; i < na; i++) {
		for (unsigned j = 0; j < nb; j++) {
			if (strcmp(ka[i], kb[j]) != 0)
				continue;
			if (strcmp(wire_name(oa, image_a), wire_name(ob, image_b)) == 0) {
				snprintf(
					buf, len,
					"export name '%s' on %s %s is already served by another export",
					wire_name(oa, image_a),
					ka[i][0] == 'u' ? "socket" : "address",
					ka[i] + (ka[i][0] == 'u' ? 5 : 4));
				return buf;
			}
			if (oa->max_connections != ob->max_connections ||
			    oa->handshake_timeout != ob->handshake_timeout) {
				snprintf(
					buf, len,
					"%s is shared with another export but with a different max-connections or handshake-timeout (they apply to the socket or address)",
					ka[i] + (ka[i][0] == 'u' ? 5 : 4));
				return buf;
			}
			if (ka[i][0] == 'u' && !gw_sock_perm_equal(&oa->perm, &ob->perm)) {
				char pa[96], pb[96];

				snprintf(
					buf, len,
					"%s is shared with another export but with different socket-mode, socket-owner or socket-group (%s vs %s)",
					ka[i] + 5, gw_sock_perm_str(&oa->perm, pa, sizeof(pa)),
					gw_sock_perm_str(&ob->perm, pb, sizeof(pb)));
				return buf;
			}
		}
	}
	return NULL;
}

/* Its sockets and addresses, so the gateway can check them (folders, clashes). */
static void nbd_listens(const struct gw_transport_env *env, const void *opts, const char *image,
			void (*add)(void *arg, enum gw_listen_kind kind, const char *where),
			void *arg)
{
	char keys[2][4200];
	unsigned n = endpoints(env, opts, image, keys);

	for (unsigned i = 0; i < n; i++) {
		if (strncmp(keys[i], "unix:", 5) == 0)
			add(arg, GW_LISTEN_UNIX, keys[i] + 5);
		else
			add(arg, GW_LISTEN_TCP, keys[i] + 4);
	}
}

/* Percent-encode an export name for a URI path. */
static void uri_name(char *out, size_t len, const char *name)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)name; *p && n + 4 < len; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
			out[n++] = (char)*p;
		} else {
			out[n++] = '%';
			out[n++] = hex[*p >> 4];
			out[n++] = hex[*p & 15];
		}
	}
	out[n] = '\0';
}

static size_t describe_sockets(const struct gw_transport_env *env, const struct nbd_opts *o,
			       const char *image, char *buf, size_t len)
{
	char keys[2][4200], name[1024];
	unsigned n = endpoints(env, o, image, keys);
	size_t used = 0;

	uri_name(name, sizeof(name), wire_name(o, image));
	buf[0] = '\0';
	for (unsigned i = 0; i < n && used < len; i++) {
		if (keys[i][0] == 'u')
			used += (size_t)snprintf(buf + used, len - used,
						 "%snbd+unix:///%s?socket=%s", i ? " " : "", name,
						 keys[i] + 5);
		else
			used += (size_t)snprintf(buf + used, len - used, "%snbd://%s/%s",
						 i ? " " : "", keys[i] + 4, name);
	}
	return GW_MIN(used, len);
}

/* The kernel's NBD device counts sectors; the protocol itself takes any size. */
static uint32_t nbd_size_unit(const void *opts)
{
	return ((const struct nbd_opts *)opts)->attach ? 512 : 0;
}

static void nbd_describe(const struct gw_transport_env *env, const void *opts, const char *image,
			 char *buf, size_t len)
{
	const struct nbd_opts *o = opts;
	size_t used = describe_sockets(env, o, image, buf, len);

	if (o->attach && used < len)
		snprintf(buf + used, len - used, "%skernel %s", used ? " " : "",
			 o->device ? o->device : "/dev/nbdN (first free)");
}

/* ---- listeners ---- */

static void listener_free(struct nbd_listener *l)
{
	pthread_mutex_destroy(&l->lock);
	free(l->exps);
	free(l->key);
	free(l->path);
	free(l->hostport);
	free(l);
}

void nbd_listener_put(struct nbd_listener *l)
{
	if (atomic_fetch_sub(&l->refs, 1) == 1)
		listener_free(l);
}

struct nbd_exp *nbd_listener_get(struct nbd_listener *l, const char *name, size_t len)
{
	struct nbd_exp *found = NULL;

	pthread_mutex_lock(&l->lock);
	for (unsigned i = 0; i < l->nexps; i++) {
		struct nbd_exp *x = l->exps[i];

		if (len == 0 || (strlen(x->name) == len && memcmp(x->name, name, len) == 0)) {
			found = x;
			break;
		}
	}
	if (found)
		atomic_fetch_add(&found->conns, 1);
	pthread_mutex_unlock(&l->lock);
	return found;
}

void nbd_listener_each(struct nbd_listener *l, void (*fn)(void *arg, struct nbd_exp *x), void *arg)
{
	pthread_mutex_lock(&l->lock);
	for (unsigned i = 0; i < l->nexps; i++)
		fn(arg, l->exps[i]);
	pthread_mutex_unlock(&l->lock);
}

/* Who is on the other end, for the log: "192.0.2.1:50312", "[::1]:40000", "pid 12 uid 0". */
static void peer_name(int fd, const struct sockaddr_storage *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		struct ucred cr;
		socklen_t cl = sizeof(cr);

		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0)
			snprintf(buf, len, "pid %d uid %u", (int)cr.pid, (unsigned)cr.uid);
		else
			snprintf(buf, len, "unix peer");
	}
}

static struct gw_ratelimit refuse_rl = GW_RATELIMIT_DEFAULT;

static void listener_watch(struct nbd_listener *l, bool on)
{
	for (unsigned i = 0; i < l->nfds; i++) {
		if (on)
			ev_io_start(EV_DEFAULT, &l->w[i]);
		else
			ev_io_stop(EV_DEFAULT, &l->w[i]);
	}
}

static void resume_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct nbd_listener *l = t->data;

	if (!atomic_load(&l->closed))
		listener_watch(l, true);
}

/*
 * A listener whose every export is served in the background (backup
 * exports): its connections go to the background worker, never sharing a
 * loop with the pool's. The client picks its export only after accept, so
 * a socket shared with other exports stays on the pool.
 */
static bool listener_background(struct nbd_listener *l)
{
	bool bg;

	pthread_mutex_lock(&l->lock);
	bg = l->nexps > 0;
	for (unsigned i = 0; i < l->nexps; i++)
		bg = bg && l->exps[i]->exp->background;
	pthread_mutex_unlock(&l->lock);
	return bg;
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct nbd_listener *l = w->data;

	for (int i = 0; i < 64; i++) {
		struct gw_worker *wk;
		struct sockaddr_storage sa;
		socklen_t salen = sizeof(sa);
		char peer[NBD_PEER_LEN];
		bool refused;
		int fd = gw_accept(w->fd, (struct sockaddr *)&sa, &salen, &refused);

		if (fd < 0) {
			if (fd == -EMFILE || fd == -ENFILE) {
				if (refused) {
					atomic_fetch_add(&l->refused_fds, 1);
					continue;
				}
				/* Not even the spare: stop listening a moment, no busy loop. */
				listener_watch(l, false);
				ev_timer_set(&l->resume, 0.1, 0);
				ev_timer_start(EV_DEFAULT, &l->resume);
			} else if (fd != -EAGAIN) {
				gw_warn_rl(&refuse_rl, "nbd: accept on %s: %s", l->key,
					   strerror(-fd));
			}
			return;
		}
		if (atomic_load(&nbd_conns_total) >= nbd_conn_budget) {
			unsigned long long n = atomic_fetch_add(&l->refused_fds, 1) + 1;

			close(fd); /* keep descriptors for the control socket and the backends */
			gw_warn_rl(
				&refuse_rl,
				"nbd: %s: %u connections use the descriptors this process may open (ulimit -n): closed a new connection (%llu so far)",
				l->key + (l->is_unix ? 5 : 4), nbd_conn_budget, n);
			continue;
		}
		if (l->max_conns && atomic_load(&l->nconns) >= l->max_conns) {
			unsigned long long n = atomic_fetch_add(&l->refused_max, 1) + 1;

			close(fd); /* at once: the client sees a close, not a backlog */
			gw_warn_rl(
				&refuse_rl,
				"nbd: %s: max-connections (%u) reached: closed a new connection (%llu so far)",
				l->key + (l->is_unix ? 5 : 4), l->max_conns, n);
			continue;
		}
		if (!l->is_unix) {
			int one = 1;

			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		peer_name(fd, &sa, peer, sizeof(peer));
		wk = listener_background(l) ? gw_worker_background() : gw_worker_pick();
		atomic_fetch_add(&l->refs, 1);
		atomic_fetch_add(&l->nconns, 1);
		atomic_fetch_add(&nbd_conns_total, 1);
		nbd_conn_accept(wk, fd, l, peer);
	}
}

static int listen_unix(struct nbd_listener *l, char *err, size_t errlen)
{
	int fd = gw_listen_unix(l->path, &l->perm, 128, err, errlen);

	if (fd < 0)
		return fd;
	l->fds[l->nfds++] = fd;
	return 0;
}

/* 127.0.0.0/8, ::1 or ::ffff:127.x.y.z: only this host can connect. */
static bool addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

static int listen_tcp(struct nbd_listener *l, char *err, size_t errlen)
{
	struct addrinfo hints, *res = NULL, *ai;
	char *host = NULL, *port = NULL;
	int rc, last = 0;

	rc = gw_split_hostport(l->hostport, &host, &port);
	if (rc < 0) {
		gw_seterr(err, errlen, "bad address %s", l->hostport);
		return rc;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		gw_seterr(err, errlen, "cannot resolve %s: %s", l->hostport, gai_strerror(rc));
		free(host);
		free(port);
		return -EINVAL;
	}
	for (ai = res; ai && l->nfds < NBD_MAX_LISTEN_FDS; ai = ai->ai_next) {
		int one = 1;
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
				ai->ai_protocol);

		if (fd < 0) {
			last = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
			last = errno;
			close(fd);
			continue;
		}
		if (!addr_is_loopback(ai->ai_addr))
			l->exposed = true;
		l->fds[l->nfds++] = fd;
	}
	freeaddrinfo(res);
	free(host);
	free(port);
	if (!l->nfds) {
		gw_seterr(err, errlen, "cannot listen on %s: %s", l->hostport,
			  strerror(last ? last : EADDRNOTAVAIL));
		return -(last ? last : EADDRNOTAVAIL);
	}
	return 0;
}

static void listener_close(struct nbd_listener *l)
{
	struct nbd_listener **pp;

	atomic_store(&l->closed, true);
	ev_timer_stop(EV_DEFAULT, &l->resume);
	for (unsigned i = 0; i < l->nfds; i++) {
		ev_io_stop(EV_DEFAULT, &l->w[i]);
		close(l->fds[i]);
	}
	l->nfds = 0;
	if (l->is_unix)
		unlink(l->path);
	for (pp = &listeners; *pp; pp = &(*pp)->next) {
		if (*pp == l) {
			*pp = l->next;
			break;
		}
	}
	gw_info("nbd: stopped listening on %s", l->key + (l->is_unix ? 5 : 4));
	nbd_listener_put(l);
}

/* Leave 64 descriptors of RLIMIT_NOFILE to everything but NBD clients. */
static void conn_budget(void)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur != RLIM_INFINITY)
		nbd_conn_budget = r.rlim_cur > 128 ? (unsigned)(r.rlim_cur - 64)
						   : (unsigned)(r.rlim_cur / 2);
}

static struct nbd_listener *listener_open(const char *key, const struct nbd_opts *o, char *err,
					  size_t errlen)
{
	struct nbd_listener *l;
	int rc;

	for (l = listeners; l; l = l->next)
		if (strcmp(l->key, key) == 0)
			return l;
	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->key = strdup(key);
	l->is_unix = strncmp(key, "unix:", 5) == 0;
	l->perm = o->perm;
	l->max_conns = o->max_connections;
	l->hs_timeout = o->handshake_timeout;
	ev_timer_init(&l->resume, resume_cb, 0.1, 0);
	l->resume.data = l;
	gw_accept_reserve();
	conn_budget();
	if (l->is_unix)
		l->path = strdup(key + 5);
	else
		l->hostport = strdup(key + 4);
	pthread_mutex_init(&l->lock, NULL);
	atomic_init(&l->refs, 1);
	atomic_init(&l->closed, false);
	rc = l->is_unix ? listen_unix(l, err, errlen) : listen_tcp(l, err, errlen);
	if (rc < 0) {
		listener_free(l);
		return NULL;
	}
	for (unsigned i = 0; i < l->nfds; i++) {
		ev_io_init(&l->w[i], accept_cb, l->fds[i], EV_READ);
		l->w[i].data = l;
		ev_io_start(EV_DEFAULT, &l->w[i]);
	}
	l->next = listeners;
	listeners = l;
	gw_info("nbd: listening on %s", key + (l->is_unix ? 5 : 4));
	return l;
}

static int listener_add(struct nbd_listener *l, struct nbd_exp *x)
{
	int rc = 0;

	pthread_mutex_lock(&l->lock);
	if (l->nexps == l->cap) {
		unsigned cap = l->cap ? l->cap * 2 : 4;
		struct nbd_exp **v = realloc(l->exps, cap * sizeof(*v));

		if (v) {
			l->exps = v;
			l->cap = cap;
		} else {
			rc = -ENOMEM;
		}
	}
	if (!rc)
		l->exps[l->nexps++] = x;
	pthread_mutex_unlock(&l->lock);
	return rc;
}

/* Remove x; close the listener when it serves nothing any more. */
static void listener_remove(struct nbd_listener *l, struct nbd_exp *x)
{
	bool empty;

	pthread_mutex_lock(&l->lock);
	for (unsigned i = 0; i < l->nexps; i++) {
		if (l->exps[i] == x) {
			memmove(&l->exps[i], &l->exps[i + 1],
				(l->nexps - i - 1) * sizeof(*l->exps));
			l->nexps--;
			break;
		}
	}
	empty = l->nexps == 0;
	pthread_mutex_unlock(&l->lock);
	if (empty)
		listener_close(l);
}

/* ---- exports ---- */

uint16_t nbd_tflags(const struct nbd_exp *x, bool structured)
{
	const struct gw_export *e = x->exp;
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		     NBD_FLAG_SEND_CACHE;

	if (e->read_only)
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
	if (structured)
		f |= NBD_FLAG_SEND_DF;
	if (e->caps & GW_CAP_MULTI_CONN)
		f |= NBD_FLAG_CAN_MULTI_CONN;
	if (e->caps & GW_CAP_ROTATIONAL)
		f |= NBD_FLAG_ROTATIONAL;
	return f;
}

static void stop_finish(void *arg)
{
	struct nbd_exp *x = arg;
	struct gw_export *e = x->exp;
	void (*done)(struct gw_export *) = x->stop_done;

	if (e->tpriv == x)
		e->tpriv = NULL;
	free(x->prev);
	free(x->dev_link);
	free(x);
	if (done)
		done(e);
}

void nbd_exp_unbind(struct nbd_exp *x)
{
	if (atomic_fetch_sub(&x->conns, 1) != 1 || !atomic_load(&x->stopping))
		return;
	if (!atomic_exchange(&x->done_posted, true))
		gw_main_call(stop_finish, x);
}

/* ---- kernel attach ---- */

static int nbd_probe(const struct gw_transport_env *env, const void *opts, char *why, size_t len)
{
	const struct nbd_opts *o = opts;
	struct nbd_nl nl;
	int rc;

	if (!o->attach)
		return 0;
	if (!gw_have_cap(CAP_SYS_ADMIN)) {
		gw_seterr(
			why, len,
			"attaching a kernel NBD device needs root (CAP_SYS_ADMIN): permission denied");
		return -EPERM;
	}
	rc = nbd_nl_open(&nl, why, len);
	if (rc == -ENOENT)
		gw_seterr(why, len, "the nbd kernel module is not loaded (modprobe nbd)");
	if (rc < 0)
		return rc;
	nbd_nl_close(&nl);
	return 0;
}

/* ---- run dir record of attached devices (RUN-DIR/nbd/N.state) ---- */

#define NBD_REC_MAX_CONNS 16

static int rec_format(const struct nbd_rec *r, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%u %d %llu %u %u %u %s %s\n", r->index, r->pid,
			 (unsigned long long)r->size, r->block_size, r->flags, r->conns,
			 r->backend_id, r->export_id);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : n;
}

static int rec_parse(const char *line, struct nbd_rec *r)
{
	unsigned long long size;

	memset(r, 0, sizeof(*r));
	if (sscanf(line, "%u %d %llu %u %u %u %95s %255[^\n]", &r->index, &r->pid, &size,
		   &r->block_size, &r->flags, &r->conns, r->backend_id, r->export_id) != 8)
		return -EINVAL;
	r->size = size;
	if (r->pid <= 0 || !r->size || !r->conns || r->conns > NBD_REC_MAX_CONNS ||
	    strncmp(r->backend_id, "blkgw:", 6) != 0)
		return -EINVAL;
	return 0;
}

static void rec_path(const char *run_dir, uint32_t index, char *buf, size_t len)
{
	snprintf(buf, len, "%s/nbd/%u.state", run_dir, index);
}

static void rec_remove(const char *run_dir, uint32_t index)
{
	char path[4200];

	rec_path(run_dir, index, path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT)
		gw_warn("cannot remove %s: %s", path, strerror(errno));
}

/* Main thread: the device is attached (or reattached) by this daemon now. */
static void rec_save(struct nbd_exp *x)
{
	struct gw_export *e = x->exp;
	struct nbd_rec r;
	char line[512], path[4200], tmp[4300];
	int fd, n;

	memset(&r, 0, sizeof(r));
	r.index = (uint32_t)x->dev_index;
	r.pid = (int)getpid();
	r.size = e->size;
	r.block_size = (uint32_t)x->attach_bs;
	r.flags = nbd_tflags(x, false);
	r.conns = x->kernel_conns;
	gw_strlcpy(r.backend_id, x->backend_id, sizeof(r.backend_id));
	gw_strlcpy(r.export_id, e->id, sizeof(r.export_id));
	n = rec_format(&r, line, sizeof(line));
	if (n < 0)
		return;
	rec_path(e->env->run_dir, r.index, path, sizeof(path));
	gw_mkdir_parents(path);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, line, (size_t)n) != n || fsync(fd) < 0 || rename(tmp, path) < 0)
		gw_warn("export %s: cannot record /dev/nbd%u in %s (a restart will attach anew): %s",
			e->id, r.index, path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

struct rec_each_ctx {
	int (*fn)(void *arg, const struct nbd_rec *r);
	void *arg;
};

/* A record counts when it parses and its file is named by its device index. */
static int rec_each_fn(void *arg, const char *path, const char *name, const char *line)
{
	struct rec_each_ctx *c = arg;
	struct nbd_rec r;
	char want[32];

	(void)path;
	if (rec_parse(line, &r) < 0)
		return 0;
	snprintf(want, sizeof(want), "%u.state", r.index);
	return strcmp(want, name) == 0 ? c->fn(c->arg, &r) : 0;
}

/* Call fn for every record in RUN-DIR/nbd; stops when fn returns nonzero and returns that. */
static int rec_each(const char *run_dir, int (*fn)(void *arg, const struct nbd_rec *r), void *arg)
{
	struct rec_each_ctx c = { fn, arg };

	return gw_state_each(run_dir, "nbd", rec_each_fn, &c);
}

struct rec_find {
	const char *export_id;
	struct nbd_rec r;
};

static int rec_find_fn(void *arg, const struct nbd_rec *r)
{
	struct rec_find *f = arg;

	if (strcmp(r->export_id, f->export_id) != 0)
		return 0;
	f->r = *r;
	return 1;
}

/* /sys/block/nbdN/backend: the backend identifier the device was connected with ("" if none). */
static void sysfs_backend(uint32_t index, char *buf, size_t len)
{
	char path[64];
	FILE *f;

	buf[0] = '\0';
	snprintf(path, sizeof(path), "/sys/block/nbd%u/backend", index);
	f = fopen(path, "re");
	if (!f)
		return;
	if (fgets(buf, (int)len, f))
		buf[strcspn(buf, "\n")] = '\0';
	else
		buf[0] = '\0';
	fclose(f);
}

/*
 * Is /dev/nbd<index> connected (or waiting for its connections to come
 * back) with this backend identifier? Then it is the device r recorded.
 */
static bool rec_device_live(struct nbd_nl *nl, const struct nbd_rec *r, char *why, size_t len)
{
	struct nbd_nl_dev_status st;
	char have[96], msg[256];
	int n = nbd_nl_status(nl, (int)r->index, &st, 1, msg, sizeof(msg));

	if (n < 0) {
		gw_seterr(why, len, "its state is unknown (%s)", msg);
		return false;
	}
	if (n == 0 || st.index != r->index || !st.connected) {
		gw_seterr(why, len,
			  "it is gone (disconnected meanwhile, or the nbd module was reloaded)");
		return false;
	}
	sysfs_backend(r->index, have, sizeof(have));
	if (strcmp(have, r->backend_id) != 0) {
		gw_seterr(why, len, "it belongs to something else now (backend '%s', not '%s')",
			  have, r->backend_id);
		return false;
	}
	return true;
}

/*
 * Disconnect a recorded device nobody will reattach, if it is still the one
 * recorded, and remove the record. Main thread (a netlink call, as detach).
 */
static void rec_drop(const char *run_dir, const struct nbd_rec *r, const char *why_dropped)
{
	struct nbd_nl nl;
	char why[256], msg[256];
	int rc = nbd_nl_open(&nl, msg, sizeof(msg));

	if (rc < 0) {
		gw_warn("/dev/nbd%u (export %s): %s; cannot check it: %s", r->index, r->export_id,
			why_dropped, msg);
	} else {
		if (!rec_device_live(&nl, r, why, sizeof(why)))
			gw_info("/dev/nbd%u recorded for export %s: %s; record removed", r->index,
				r->export_id, why);
		else if (nbd_nl_disconnect(&nl, r->index, msg, sizeof(msg)) < 0)
			gw_warn("/dev/nbd%u (export %s): %s; disconnecting it: %s", r->index,
				r->export_id, why_dropped, msg);
		else
			gw_info("disconnected /dev/nbd%u left by a stopped blkgw for export %s: %s",
				r->index, r->export_id, why_dropped);
		nbd_nl_close(&nl);
	}
	rec_remove(run_dir, r->index);
}

/* "blkgw:EXPORT:NONCE", blanks and odd bytes of the export id as '_'. */
static void make_backend_id(const char *export_id, char *buf, size_t len)
{
	unsigned char nonce[8] = { 0 };
	char id[48];
	size_t i;

	for (i = 0; i < sizeof(id) - 1 && export_id[i]; i++) {
		unsigned char c = (unsigned char)export_id[i];

		id[i] = (c > ' ' && c < 127) ? (char)c : '_';
	}
	id[i] = '\0';
	if (getrandom(nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce)) {
		uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);

		memcpy(nonce, &t, sizeof(nonce));
	}
	snprintf(buf, len, "blkgw:%s:%02x%02x%02x%02x%02x%02x%02x%02x", id, nonce[0], nonce[1],
		 nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7]);
}

/* ---- kernel attach ---- */

static void link_device(struct nbd_exp *x)
{
	char target[32];

	snprintf(target, sizeof(target), "/dev/nbd%d", x->dev_index);
	x->dev_link = gw_devlink_set(x->exp->env->run_dir, x->exp->id, target);
}

static void detach(struct nbd_exp *x);
static void stop_exp(struct nbd_exp *x, void (*done)(struct gw_export *e));
static int attach(struct nbd_exp *x, char *err, size_t errlen);

/* attach_main()'s answer when the recorded device cannot be reattached. */
#define ATTACH_ANEW 1

/* Main thread: NBD_CMD_CONNECT or RECONFIGURE answered (the attach thread ended). */
static void attach_done(void *arg)
{
	struct nbd_exp *x = arg;
	struct gw_export *e = x->exp;
	bool abandoned = atomic_load(&x->stopping);

	pthread_join(x->attach_thread, NULL);
	if (x->attach_rc == ATTACH_ANEW && abandoned) {
		x->attach_rc = -ECANCELED; /* the record stays for the next start or reclaim */
	} else if (x->attach_rc == ATTACH_ANEW) {
		/* The previous daemon's device cannot be taken over: say why, and attach anew. */
		gw_warn("export %s: not reattaching /dev/nbd%u left by blkgw pid %d: %s; %s", e->id,
			x->prev->index, x->prev->pid, x->attach_err,
			x->drop_index >= 0
				? "disconnecting it (I/O still queued there fails) and attaching anew"
				: "attaching anew");
		rec_remove(e->env->run_dir, x->prev->index);
		free(x->prev);
		x->prev = NULL;
		x->reuse = false;
		x->attach_err[0] = '\0';
		x->attach_rc = attach(x, x->attach_err, sizeof(x->attach_err));
		if (x->attach_rc == GW_START_PENDING) {
			nbd_exp_unbind(x); /* the first attach thread's reference */
			return;
		}
	}
	if (x->attach_rc == 0) {
		x->dev_index = (int)x->attach_index;
		if (abandoned) {
			/* Given up (start-timeout) or stopped meanwhile: never announced. */
			detach(x);
		} else {
			link_device(x);
			rec_save(x);
			if (x->reattached)
				gw_info("export %s: reattached /dev/nbd%u left by blkgw pid %d (%u fresh connection%s)",
					e->id, x->attach_index, x->prev->pid, x->kernel_conns,
					x->kernel_conns == 1 ? "" : "s");
			else
				gw_info("export %s: attached as /dev/nbd%u (%u connection%s, block size %llu)",
					e->id, x->attach_index, x->kernel_conns,
					x->kernel_conns == 1 ? "" : "s",
					(unsigned long long)x->attach_bs);
			if (x->reattached && x->kernel_conns != x->o->connections)
				gw_warn("export %s: /dev/nbd%u keeps its %u connection%s until it is attached anew",
					e->id, x->attach_index, x->kernel_conns,
					x->kernel_conns == 1 ? "" : "s");
		}
	}
	free(x->prev);
	x->prev = NULL;
	if (!abandoned) {
		if (x->attach_rc == 0) {
			e->started(e, 0, NULL);
		} else {
			char err[256];

			snprintf(err, sizeof(err), "%s", x->attach_err);
			e->tpriv = NULL;
			stop_exp(x, NULL); /* frees x once its connections are gone */
			e->started(e, x->attach_rc, err);
		}
	}
	nbd_exp_unbind(x); /* the attach's reference: a stop meanwhile may finish now */
}

/*
 * Attach thread: hand the recorded device the fresh sockets. 0; ATTACH_ANEW
 * with the reason in attach_err (drop_index set when that device must be
 * disconnected first); or -errno.
 */
static int reattach(struct nbd_exp *x, struct nbd_nl *nl)
{
	const struct nbd_rec *r = x->prev;
	const struct nbd_opts *o = x->o;
	struct gw_export *e = x->exp;
	struct nbd_nl_reconfigure_params rp;
	char msg[256];
	int rc;

	if (!rec_device_live(nl, r, x->attach_err, sizeof(x->attach_err)))
		return ATTACH_ANEW;
	if (r->pid != (int)getpid() && gw_pid_alive(r->pid)) {
		gw_seterr(x->attach_err, sizeof(x->attach_err),
			  "/dev/nbd%u of export %s is served by another blkgw (pid %d)", r->index,
			  e->id, r->pid);
		return -EBUSY;
	}
	x->drop_index = (int)r->index;
	if (r->size != e->size || r->block_size != x->attach_bs ||
	    r->flags != nbd_tflags(x, false)) {
		gw_seterr(
			x->attach_err, sizeof(x->attach_err),
			"its size, block size or flags (%llu bytes, %u, 0x%x) differ from the export's now (%llu bytes, %llu, 0x%x)",
			(unsigned long long)r->size, r->block_size, r->flags,
			(unsigned long long)e->size, (unsigned long long)x->attach_bs,
			nbd_tflags(x, false));
		return ATTACH_ANEW;
	}
	if (o->device && device_index(o->device) != (int)r->index) {
		gw_seterr(x->attach_err, sizeof(x->attach_err), "the manifest asks for %s",
			  o->device);
		return ATTACH_ANEW;
	}
	memset(&rp, 0, sizeof(rp));
	rp.index = r->index;
	rp.fds = x->attach_kfds;
	rp.n_fds = x->attach_n;
	rp.backend_id = r->backend_id;
	rp.set_timeouts = true;
	rp.timeout_s = o->timeout;
	rp.dead_conn_timeout_s = o->dead_conn_timeout;
	rc = nbd_nl_reconfigure(nl, &rp, msg, sizeof(msg));
	if (rc < 0) {
		gw_seterr(x->attach_err, sizeof(x->attach_err), "%s", msg);
		return ATTACH_ANEW;
	}
	x->drop_index = -1;
	gw_strlcpy(x->backend_id, r->backend_id, sizeof(x->backend_id));
	x->attach_index = r->index;
	x->reattached = true;
	return 0;
}

static void *attach_main(void *arg)
{
	struct nbd_exp *x = arg;
	const struct nbd_opts *o = x->o;
	struct gw_export *e = x->exp;
	struct nbd_nl_connect_params p;
	struct nbd_nl nl;
	sigset_t all;
	bool opened;
	int rc;

	gw_thread_sigset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	gw_log_set_thread_name("nbd-attach");
	rc = nbd_nl_open(&nl, x->attach_err, sizeof(x->attach_err));
	opened = rc == 0;
	if (rc == -ENOENT)
		gw_seterr(x->attach_err, sizeof(x->attach_err),
			  "the nbd kernel module is not loaded (modprobe nbd)");
	if (rc == 0 && x->reuse) {
		rc = reattach(x, &nl);
	} else if (rc == 0) {
		if (x->drop_index >= 0) {
			char msg[256];

			if (nbd_nl_disconnect(&nl, (uint32_t)x->drop_index, msg, sizeof(msg)) < 0)
				gw_warn("export %s: disconnecting /dev/nbd%d: %s", e->id,
					x->drop_index, msg);
			x->drop_index = -1;
		}
		memset(&p, 0, sizeof(p));
		p.size_bytes = e->size;
		p.block_size = x->attach_bs;
		p.server_flags = nbd_tflags(x, false);
		p.timeout_s = o->timeout;
		p.dead_conn_timeout_s = o->dead_conn_timeout;
		/*
		 * The device goes when it is disconnected, not when blkgw dies: the
		 * kernel holds the netlink connect's reference until DISCONNECT.
		 */
		p.client_flags = NBD_CFLAG_DESTROY_ON_DISCONNECT;
		p.index = o->device ? device_index(o->device) : -1;
		p.fds = x->attach_kfds;
		p.n_fds = x->attach_n;
		p.backend_id = x->backend_id;
		rc = nbd_nl_connect(&nl, &p, &x->attach_index, x->attach_err,
				    sizeof(x->attach_err));
	}
	if (opened)
		nbd_nl_close(&nl);
	/* The kernel holds its own references; ours go (on failure this ends the server side too).
	 */
	for (unsigned i = 0; i < x->attach_n; i++)
		close(x->attach_kfds[i]);
	x->attach_rc = rc;
	while (gw_main_call(attach_done, x) < 0)
		usleep(1000);
	return NULL;
}

/*
 * One connection for the kernel: a socketpair whose one end is served on a
 * worker as a connection already in transmission (bound to x), the other
 * end returned in *kfd to hand to the kernel. 0 or -errno with a message.
 */
static int kernel_socket(struct nbd_exp *x, int *kfd, char *err, size_t errlen)
{
	int sp[2], rc;

	*kfd = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "socketpair: %s", strerror(errno));
		return rc;
	}
	if (fcntl(sp[0], F_SETFL, O_NONBLOCK) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "fcntl: %s", strerror(errno));
		close(sp[0]);
		close(sp[1]);
		return rc;
	}
	*kfd = sp[1];
	atomic_fetch_add(&x->conns, 1);
	atomic_fetch_add(&x->kconns_live, 1);
	nbd_conn_attach(gw_worker_pick(), sp[0], x);
	return 0;
}

/*
 * Hand the kernel one end of a socketpair per connection; the other ends are
 * served on workers as already-negotiated connections (simple replies).
 * NBD_CMD_CONNECT (or RECONFIGURE of the device a previous daemon recorded,
 * x->reuse) runs on a thread (GW_START_PENDING): a wedged kernel call holds
 * up nothing but this export, for start-timeout at most.
 */
static int attach(struct nbd_exp *x, char *err, size_t errlen)
{
	const struct nbd_opts *o = x->o;
	struct gw_export *e = x->exp;
	unsigned want = x->reuse ? x->prev->conns : o->connections;
	int rc = 0;

	if (e->min_block > 4096) {
		gw_seterr(err, errlen,
			  "a kernel NBD device takes block sizes up to 4096, the image has %u",
			  e->min_block);
		return -EINVAL;
	}
	/* 4096 unless the image insists on its own block size. */
	x->attach_bs = e->min_block > 1 ? GW_MAX(512u, e->min_block) : 4096;
	if (!x->reuse)
		make_backend_id(e->id, x->backend_id, sizeof(x->backend_id));
	for (x->attach_n = 0; x->attach_n < want; x->attach_n++) {
		rc = kernel_socket(x, &x->attach_kfds[x->attach_n], err, errlen);
		if (rc < 0)
			break;
	}
	x->kernel_conns = x->attach_n;
	if (rc == 0) {
		atomic_fetch_add(&x->conns, 1); /* the attach thread's: stop waits for it */
		rc = -pthread_create(&x->attach_thread, NULL, attach_main, x);
		if (rc < 0) {
			atomic_fetch_sub(&x->conns, 1);
			gw_seterr(err, errlen, "cannot start the attach thread: %s", strerror(-rc));
		}
	}
	if (rc < 0)
		for (unsigned i = 0; i < x->attach_n; i++)
			close(x->attach_kfds[i]);
	return rc < 0 ? rc : GW_START_PENDING;
}

/*
 * While serving, the kernel ends a connection: it gave up on a request
 * (`timeout`) and waits `dead-conn-timeout` for a new connection, or the
 * device was disconnected behind blkgw's back (nbd-client -d). Main thread,
 * with a reference: ask the kernel which, then hand the device fresh
 * connections for the lost ones (NBD_CMD_RECONFIGURE), or report the
 * export dead so that the daemon serves it over the next transport.
 */
static void kernel_conn_lost(void *arg)
{
	struct nbd_exp *x = arg;
	struct gw_export *e = x->exp;
	int lost = (int)x->kernel_conns - atomic_load(&x->kconns_live);
	uint64_t now = gw_now_ns();
	struct nbd_nl_dev_status st;
	struct nbd_nl nl;
	char msg[256] = "", why[384], have[96];
	int fds[16], n = 0, rc;
	bool gone = false;

	if (atomic_load(&x->stopping) || e->tpriv != x || e->state != GW_EXPORT_RUNNING ||
	    x->dev_index < 0 || lost <= 0) {
		nbd_exp_unbind(x);
		return;
	}
	rc = nbd_nl_open(&nl, msg, sizeof(msg));
	if (rc < 0) {
		snprintf(why, sizeof(why), "/dev/nbd%d lost %d connection%s: %s", x->dev_index,
			 lost, lost == 1 ? "" : "s", msg);
		e->died(e, why);
		nbd_exp_unbind(x);
		return;
	}
	rc = nbd_nl_status(&nl, x->dev_index, &st, 1, msg, sizeof(msg));
	sysfs_backend((uint32_t)x->dev_index, have, sizeof(have));
	if (rc >= 0 && (rc == 0 || !st.connected || strcmp(have, x->backend_id) != 0)) {
		snprintf(
			why, sizeof(why),
			"/dev/nbd%d was disconnected behind blkgw's back (nbd-client -d?): the kernel closed its connections",
			x->dev_index);
		gone = true;
		rc = -ENODEV;
	} else if (rc >= 0 && x->repair_ns[0] && now - x->repair_ns[0] < 60ull * 1000000000ull) {
		/* Connected and waiting, but this is the 5th time in a minute. */
		rc = -EAGAIN;
		snprintf(msg, sizeof(msg),
			 "the kernel dropped connections 5 times within a minute");
	}
	for (; rc >= 0 && n < lost && n < (int)GW_ARRAY_SIZE(fds); n++) {
		rc = kernel_socket(x, &fds[n], msg, sizeof(msg));
		if (rc < 0)
			break;
	}
	if (rc >= 0) {
		struct nbd_nl_reconfigure_params rp = { .index = (uint32_t)x->dev_index,
							.fds = fds,
							.n_fds = (unsigned)n,
							.backend_id = x->backend_id };

		rc = nbd_nl_reconfigure(&nl, &rp, msg, sizeof(msg));
	}
	nbd_nl_close(&nl);
	/* The kernel holds its own references; ours go (on failure this ends the server side). */
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (gone) {
		e->died(e, why);
	} else if (rc < 0) {
		snprintf(why, sizeof(why),
			 "/dev/nbd%d lost %d connection%s and blkgw cannot hand it new ones: %s",
			 x->dev_index, lost, lost == 1 ? "" : "s", msg);
		e->died(e, why);
	} else {
		memmove(x->repair_ns, x->repair_ns + 1,
			sizeof(x->repair_ns) - sizeof(x->repair_ns[0]));
		x->repair_ns[GW_ARRAY_SIZE(x->repair_ns) - 1] = now;
		gw_warn("export %s: the kernel dropped %d connection%s of /dev/nbd%d (a request outlived `timeout`?); handed it %d fresh one%s",
			e->id, lost, lost == 1 ? "" : "s", x->dev_index, n, n == 1 ? "" : "s");
	}
	nbd_exp_unbind(x);
}

void nbd_exp_kernel_conn_gone(struct nbd_exp *x)
{
	atomic_fetch_sub(&x->kconns_live, 1);
	if (atomic_load(&x->stopping))
		return;
	atomic_fetch_add(&x->conns, 1); /* kernel_conn_lost's */
	if (gw_main_call(kernel_conn_lost, x) < 0)
		nbd_exp_unbind(x);
}

static void detach(struct nbd_exp *x)
{
	struct nbd_nl nl;
	char msg[256];
	int rc;

	gw_devlink_remove(&x->dev_link);
	rc = nbd_nl_open(&nl, msg, sizeof(msg));
	if (rc == 0) {
		rc = nbd_nl_disconnect(&nl, (uint32_t)x->dev_index, msg, sizeof(msg));
		nbd_nl_close(&nl);
	}
	if (rc < 0)
		gw_warn("export %s: detaching /dev/nbd%d: %s", x->exp->id, x->dev_index, msg);
	else
		gw_info("export %s: detached /dev/nbd%d", x->exp->id, x->dev_index);
	rec_remove(x->exp->env->run_dir, (uint32_t)x->dev_index);
	x->dev_index = -1;
}

/*
 * At start: the device a previous daemon recorded for this export. Attached
 * now: try to reattach it (x->prev, x->reuse). Not attached any more:
 * disconnect it.
 */
static int find_previous(struct nbd_exp *x, char *err, size_t errlen)
{
	struct gw_export *e = x->exp;
	struct rec_find f = { .export_id = e->id };

	if (rec_each(e->env->run_dir, rec_find_fn, &f) <= 0)
		return 0;
	if (!x->o->attach) {
		if (f.r.pid != (int)getpid() && gw_pid_alive(f.r.pid)) {
			gw_seterr(err, errlen,
				  "/dev/nbd%u of export %s is served by another blkgw (pid %d)",
				  f.r.index, e->id, f.r.pid);
			return -EBUSY;
		}
		rec_drop(e->env->run_dir, &f.r, "the export is no longer attached");
		return 0;
	}
	x->prev = malloc(sizeof(*x->prev));
	if (!x->prev) {
		gw_seterr(err, errlen, "out of memory");
		return -ENOMEM;
	}
	*x->prev = f.r;
	x->reuse = true;
	return 0;
}

static void stop_exp(struct nbd_exp *x, void (*done)(struct gw_export *e));

static int nbd_start(struct gw_export *e, char *err, size_t errlen)
{
	const struct nbd_opts *o = e->topts;
	char keys[2][4200];
	unsigned n = endpoints(e->env, o, e->image, keys);
	struct nbd_exp *x = calloc(1, sizeof(*x));
	int rc;

	if (!x)
		return -ENOMEM;
	x->exp = e;
	x->o = o;
	x->name = wire_name(o, e->image);
	x->dev_index = -1;
	x->drop_index = -1;
	if (e->env->buffer_limit)
		nbd_buffer_limit = e->env->buffer_limit;
	atomic_init(&x->conns, 0);
	atomic_init(&x->stopping, false);
	atomic_init(&x->done_posted, false);
	rc = find_previous(x, err, errlen);
	if (rc < 0) {
		free(x);
		return rc;
	}
	for (unsigned i = 0; i < n; i++) {
		struct nbd_listener *l = listener_open(keys[i], o, err, errlen);

		if (!l || listener_add(l, x) < 0) {
			if (l && !l->nexps)
				listener_close(l);
			for (unsigned j = 0; j < x->nlis; j++)
				listener_remove(x->lis[j], x);
			free(x->prev);
			free(x);
			return -EIO;
		}
		x->lis[x->nlis++] = l;
		if (l->exposed && !e->read_only)
			gw_warn("export %s: WRITABLE over NBD on %s, which is reachable beyond this "
				"host, WITHOUT TLS: anyone who can reach it can read and overwrite "
				"image %s. Listen on 127.0.0.1 or [::1], use a unix socket, or set "
				"'read-only: true'",
				e->id, l->hostport, e->image);
	}
	e->tpriv = x;
	if (o->attach) {
		rc = attach(x, err, errlen);

		if (rc < 0) {
			free(x->prev);
			x->prev = NULL;
			e->tpriv = NULL;
			stop_exp(x, NULL); /* frees x once its connections are gone */
		}
		return rc; /* GW_START_PENDING: attach_done() tells */
	}
	return 0;
}

static void stop_exp(struct nbd_exp *x, void (*done)(struct gw_export *e))
{
	x->stop_done = done;
	if (x->dev_index >= 0)
		detach(x);
	for (unsigned i = 0; i < x->nlis; i++)
		listener_remove(x->lis[i], x);
	x->nlis = 0;
	/* Hold a reference while the drain messages go out, so completion waits for them. */
	atomic_fetch_add(&x->conns, 1);
	atomic_store(&x->stopping, true);
	nbd_conns_drain(x);
	nbd_exp_unbind(x);
}

static void nbd_stop(struct gw_export *e, void (*done)(struct gw_export *e))
{
	stop_exp(e->tpriv, done);
}

static void nbd_status(struct gw_export *e, struct gw_export_status *st)
{
	struct nbd_exp *x = e->tpriv;

	describe_sockets(e->env, e->topts, e->image, st->endpoint, sizeof(st->endpoint));
	if (x) {
		st->has_conn_counters = true;
		for (unsigned i = 0; i < x->nlis; i++) {
			struct nbd_listener *l = x->lis[i];

			st->refused_connections += atomic_load(&l->refused_max);
			st->refused_no_fds += atomic_load(&l->refused_fds);
			st->handshake_timeouts += atomic_load(&l->hs_timeouts);
			st->idle_timeouts += atomic_load(&l->idle_timeouts);
			st->payload_timeouts += atomic_load(&l->payload_timeouts);
		}
		st->has_poll_counters = true;
		st->poll_slow_stops = atomic_load(&x->poll_slow_stops);
		st->poll_slow_resumes = atomic_load(&x->poll_slow_resumes);
		st->poll_slow_now = atomic_load(&x->poll_slow_conns);
	}
	if (x && x->dev_index >= 0)
		snprintf(st->device, sizeof(st->device), "/dev/nbd%d", x->dev_index);
}

/*
 * In use: a network client connected, or the attached device mounted, held
 * or open. The kernel's own connections (attach) are not users.
 */
static int nbd_in_use(struct gw_export *e, char *why, size_t len)
{
	struct nbd_exp *x = e->tpriv;
	unsigned clients = atomic_load(&e->clients), kernel = 0;
	char dev[32];

	if (x && x->dev_index >= 0)
		kernel = x->kernel_conns;
	if (clients > kernel) {
		snprintf(why, len, "%u client%s connected", clients - kernel,
			 clients - kernel == 1 ? "" : "s");
		return 1;
	}
	if (!x || x->dev_index < 0)
		return 0;
	snprintf(dev, sizeof(dev), "/dev/nbd%d", x->dev_index);
	return gw_blockdev_in_use(dev, why, len);
}

struct orphans {
	const char *run_dir;
	bool (*wanted)(void *arg, const char *id);
	void *arg;
};

static int orphan_fn(void *arg, const struct nbd_rec *r)
{
	struct orphans *o = arg;

	if (r->pid == (int)getpid() || gw_pid_alive(r->pid) || o->wanted(o->arg, r->export_id))
		return 0;
	rec_drop(o->run_dir, r, "its export is no longer served over NBD");
	return 0;
}

/* Devices a killed daemon left attached for exports no longer served: disconnect them. */
static void nbd_reclaim(const struct gw_transport_env *env,
			bool (*wanted)(void *arg, const char *id), void *arg)
{
	struct orphans o = { .run_dir = env->run_dir, .wanted = wanted, .arg = arg };

	rec_each(env->run_dir, orphan_fn, &o);
}

const struct gw_transport_ops gw_nbd_transport = {
	.abi_version = GW_TRANSPORT_ABI,
	.name = "nbd",
	.summary =
		"NBD server on unix sockets and TCP (QEMU, qemu-img, libnbd), optionally attached as /dev/nbdN",
	.schema = GW_OPT_SCHEMA(nbd_opts_table, struct nbd_opts, nbd_check_opts),
	.probe = nbd_probe,
	.conflict = nbd_conflict,
	.describe = nbd_describe,
	.size_unit = nbd_size_unit,
	.listens = nbd_listens,
	.start = nbd_start,
	.stop = nbd_stop,
	.status = nbd_status,
	.in_use = nbd_in_use,
	.reclaim = nbd_reclaim,
};
