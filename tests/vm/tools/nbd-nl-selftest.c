/*
 * nbd-nl-selftest - guest-side proof of transports/nbd/nbd_netlink.c.
 *
 * "serve" makes socketpairs, hands one end of each to the kernel NBD client
 * with nbd_nl_connect() and serves a minimal in-memory NBD transmission phase
 * (simple replies; READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC) on the other
 * end, one thread per connection, until the kernel disconnects. Optionally it
 * drops a connection after N requests and repairs it with
 * nbd_nl_reconfigure() when the LINK_DEAD event arrives. It then prints
 * request counters and exits 0 only if no protocol error was seen.
 *
 * "genl-check" tests lib/genl.c against the running kernel's controller
 * ("nlctrl"), which every Linux has; it runs on the build host.
 *
 * Test scaffolding for the netlink code, not blkgw's NBD server.
 */
#include <endian.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/genetlink.h>

#include "transports/nbd/nbd_netlink.h"
#include "transports/nbd/nbd_proto.h"

/* The wire format is blkgw's own (one source); only the server's limits are here. */
#define MAX_REQ_LEN (32u << 20)
#define MAX_CONNS   16

static struct {
	uint8_t *disk;
	uint64_t size;
	pthread_mutex_t lock;
	atomic_ulong reads, writes, flushes, trims, wzeroes, fua, discs;
	atomic_ulong bytes_read, bytes_written, errors, served;
	atomic_ulong drop_after; /* 0: never drop */
	atomic_bool dropped;
	atomic_int live; /* connection threads running */
} srv = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void die_usage(void)
{
	fprintf(stderr, "usage: nbd-nl-selftest serve [--size BYTES] [--block-size N] [--conns N]\n"
			"           [--index N] [--timeout S] [--dead-timeout S] [--destroy]\n"
			"           [--read-only] [--drop-after N] [--as-user UID]\n"
			"           [--ready-file PATH] [--dump PATH]\n"
			"       nbd-nl-selftest disconnect INDEX\n"
			"       nbd-nl-selftest status [INDEX]\n"
			"       nbd-nl-selftest probe\n"
			"       nbd-nl-selftest genl-check\n");
	exit(2);
}

static int read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -EPIPE : -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void protocol_error(const char *what)
{
	fprintf(stderr, "nbd-nl-selftest: protocol error: %s\n", what);
	atomic_fetch_add(&srv.errors, 1);
}

static int send_reply(int fd, uint64_t cookie, uint32_t error, const void *data, uint32_t len)
{
	/* The cookie is opaque: echoed as received. */
	struct nbd_simple_reply r = {
		.magic = htobe32(NBD_SIMPLE_MAGIC),
		.error = htobe32(error),
		.cookie = cookie,
	};
	int ret = write_full(fd, &r, sizeof(r));

	if (ret == 0 && data && len)
		ret = write_full(fd, data, len);
	return ret;
}

/* One connection: requests until DISC or EOF. */
static void *serve_conn(void *arg)
{
	int fd = (int)(intptr_t)arg;
	uint8_t *buf = malloc(MAX_REQ_LEN);
	bool disc = false;

	if (!buf) {
		protocol_error("out of memory");
		goto out;
	}
	for (;;) {
		struct nbd_request rq;
		uint64_t off;
		uint32_t len, err = 0;
		uint16_t type;

		if (read_full(fd, &rq, sizeof(rq)) < 0)
			break;
		if (be32toh(rq.magic) != NBD_REQUEST_MAGIC) {
			protocol_error("bad request magic");
			break;
		}
		type = be16toh(rq.type);
		off = be64toh(rq.offset);
		len = be32toh(rq.length);
		if (be16toh(rq.flags) & NBD_CMD_FLAG_FUA)
			atomic_fetch_add(&srv.fua, 1);
		if (type == NBD_CMD_DISC) {
			atomic_fetch_add(&srv.discs, 1);
			disc = true;
			break;
		}
		if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) && len > MAX_REQ_LEN) {
			protocol_error("request larger than 32 MiB");
			break;
		}
		if (type != NBD_CMD_FLUSH && (off > srv.size || len > srv.size - off)) {
			/* the kernel never does this; say so and answer EINVAL */
			protocol_error("request beyond the end of the export");
			err = NBD_EINVAL;
		}
		switch (type) {
		case NBD_CMD_READ:
			atomic_fetch_add(&srv.reads, 1);
			if (!err) {
				pthread_mutex_lock(&srv.lock);
				memcpy(buf, srv.disk + off, len);
				pthread_mutex_unlock(&srv.lock);
				atomic_fetch_add(&srv.bytes_read, len);
			}
			if (send_reply(fd, rq.cookie, err, err ? NULL : buf, len) < 0)
				goto out;
			break;
		case NBD_CMD_WRITE:
			atomic_fetch_add(&srv.writes, 1);
			if (read_full(fd, buf, len) < 0)
				goto out;
			if (!err) {
				pthread_mutex_lock(&srv.lock);
				memcpy(srv.disk + off, buf, len);
				pthread_mutex_unlock(&srv.lock);
				atomic_fetch_add(&srv.bytes_written, len);
			}
			if (send_reply(fd, rq.cookie, err, NULL, 0) < 0)
				goto out;
			break;
		case NBD_CMD_FLUSH:
			atomic_fetch_add(&srv.flushes, 1);
			if (send_reply(fd, rq.cookie, 0, NULL, 0) < 0)
				goto out;
			break;
		case NBD_CMD_TRIM:
		case NBD_CMD_WRITE_ZEROES:
			atomic_fetch_add(type == NBD_CMD_TRIM ? &srv.trims : &srv.wzeroes, 1);
			if (!err) {
				/* a trimmed range reads back as zeroes here */
				pthread_mutex_lock(&srv.lock);
				memset(srv.disk + off, 0, len);
				pthread_mutex_unlock(&srv.lock);
			}
			if (send_reply(fd, rq.cookie, err, NULL, 0) < 0)
				goto out;
			break;
		default:
			protocol_error("unknown command");
			if (send_reply(fd, rq.cookie, NBD_EINVAL, NULL, 0) < 0)
				goto out;
			break;
		}
		unsigned long n = atomic_fetch_add(&srv.served, 1) + 1;
		unsigned long drop = atomic_load(&srv.drop_after);

		if (drop && n >= drop && !atomic_exchange(&srv.dropped, true)) {
			fprintf(stderr,
				"nbd-nl-selftest: dropping the connection after %lu requests\n", n);
			break;
		}
	}
	(void)disc;
out:
	free(buf);
	shutdown(fd, SHUT_RDWR);
	close(fd);
	atomic_fetch_sub(&srv.live, 1);
	return NULL;
}

static int start_conn(int fd)
{
	pthread_t t;
	int ret;

	atomic_fetch_add(&srv.live, 1);
	ret = pthread_create(&t, NULL, serve_conn, (void *)(intptr_t)fd);
	if (ret) {
		atomic_fetch_sub(&srv.live, 1);
		return -ret;
	}
	pthread_detach(t);
	return 0;
}

static unsigned long long parse_num(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		die_usage();
	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		end++;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		end++;
		break;
	default:
		break;
	}
	if (*end)
		die_usage();
	return v;
}

static int write_ready_file(const char *path, uint32_t index)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		return -errno;
	fprintf(f, "%" PRIu32 "\n", index);
	if (fclose(f) != 0)
		return -errno;
	return rename(tmp, path) < 0 ? -errno : 0;
}

static int dump_disk(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -errno;
	if (fwrite(srv.disk, 1, srv.size, f) != srv.size) {
		fclose(f);
		return -EIO;
	}
	return fclose(f) != 0 ? -errno : 0;
}

static int cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = { { "size", required_argument, NULL, 's' },
					      { "block-size", required_argument, NULL, 'b' },
					      { "conns", required_argument, NULL, 'c' },
					      { "index", required_argument, NULL, 'i' },
					      { "timeout", required_argument, NULL, 't' },
					      { "dead-timeout", required_argument, NULL, 'd' },
					      { "destroy", no_argument, NULL, 'D' },
					      { "read-only", no_argument, NULL, 'r' },
					      { "drop-after", required_argument, NULL, 'x' },
					      { "as-user", required_argument, NULL, 'u' },
					      { "ready-file", required_argument, NULL, 'R' },
					      { "dump", required_argument, NULL, 'o' },
					      { 0 } };
	struct nbd_nl_connect_params p = {
		.size_bytes = 64 << 20,
		.block_size = 4096,
		.index = -1,
		.server_flags = NBD_NL_FLAG_HAS_FLAGS | NBD_NL_FLAG_SEND_FLUSH |
				NBD_NL_FLAG_SEND_FUA | NBD_NL_FLAG_SEND_TRIM |
				NBD_NL_FLAG_SEND_WRITE_ZEROES,
	};
	const char *ready = NULL, *dump = NULL;
	int kfds[MAX_CONNS], conns = 1, as_user = -1, c, ret;
	struct nbd_nl nl, mon;
	bool have_mon = false;
	uint32_t index;
	char msg[512];

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			p.size_bytes = parse_num(optarg);
			break;
		case 'b':
			p.block_size = parse_num(optarg);
			break;
		case 'c':
			conns = (int)parse_num(optarg);
			break;
		case 'i':
			p.index = (int)parse_num(optarg);
			break;
		case 't':
			p.timeout_s = parse_num(optarg);
			break;
		case 'd':
			p.dead_conn_timeout_s = parse_num(optarg);
			break;
		case 'D':
			p.client_flags |= NBD_CFLAG_DESTROY_ON_DISCONNECT;
			break;
		case 'r':
			p.server_flags |= NBD_NL_FLAG_READ_ONLY;
			break;
		case 'x':
			srv.drop_after = parse_num(optarg);
			break;
		case 'u':
			as_user = (int)parse_num(optarg);
			break;
		case 'R':
			ready = optarg;
			break;
		case 'o':
			dump = optarg;
			break;
		default:
			die_usage();
		}
	}
	if (conns < 1 || conns > MAX_CONNS)
		die_usage();
	if (conns > 1)
		p.server_flags |= NBD_NL_FLAG_CAN_MULTI_CONN;

	srv.size = p.size_bytes;
	srv.disk = calloc(1, srv.size);
	if (!srv.disk) {
		fprintf(stderr, "nbd-nl-selftest: cannot allocate %" PRIu64 " bytes\n", srv.size);
		return 1;
	}

	int sfds[MAX_CONNS];

	for (int i = 0; i < conns; i++) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			perror("socketpair");
			return 1;
		}
		kfds[i] = sv[0];
		sfds[i] = sv[1];
	}
	if (as_user >= 0 && setresuid((uid_t)as_user, (uid_t)as_user, (uid_t)as_user) < 0) {
		perror("setresuid");
		return 1;
	}

	ret = nbd_nl_open(&nl, msg, sizeof(msg));
	if (ret < 0) {
		fprintf(stderr, "nbd-nl-selftest: open: %s [%s]\n", msg, strerror(-ret));
		return 3;
	}
	if (srv.drop_after) {
		ret = nbd_nl_monitor_open(&mon, msg, sizeof(msg));
		if (ret < 0) {
			fprintf(stderr, "nbd-nl-selftest: monitor: %s\n", msg);
			return 1;
		}
		have_mon = true;
	}

	for (int i = 0; i < conns; i++) {
		if (start_conn(sfds[i]) < 0) {
			fprintf(stderr, "nbd-nl-selftest: cannot start a thread\n");
			return 1;
		}
	}
	p.fds = kfds;
	p.n_fds = (unsigned int)conns;
	ret = nbd_nl_connect(&nl, &p, &index, msg, sizeof(msg));
	for (int i = 0; i < conns; i++)
		close(kfds[i]); /* the kernel holds its own references */
	if (ret < 0) {
		fprintf(stderr, "nbd-nl-selftest: connect: %s [%s]\n", msg, strerror(-ret));
		return 3;
	}
	printf("connected /dev/nbd%" PRIu32 ": %" PRIu64 " bytes, block size %" PRIu64
	       ", %d connection(s), flags 0x%" PRIx64 "\n",
	       index, p.size_bytes, p.block_size, conns, p.server_flags);
	fflush(stdout);
	if (ready && (ret = write_ready_file(ready, index)) < 0) {
		fprintf(stderr, "nbd-nl-selftest: %s: %s\n", ready, strerror(-ret));
		return 1;
	}

	/*
	 * Serve until the kernel disconnects; repair a dropped connection.
	 *
	 * LINK_DEAD comes from whichever kernel path notices the dead socket
	 * first. When it is the send path, the old socket's receive worker may
	 * still be running; when it exits it marks "its" connection dead again,
	 * and after a RECONFIGURE that is the new socket (6.12 behaviour). So
	 * wait a little before reconfiguring, and reconfigure again on every
	 * further LINK_DEAD.
	 */
	unsigned int reconnects = 0;

	while (atomic_load(&srv.live) > 0 || (atomic_load(&srv.dropped) && reconnects == 0)) {
		uint32_t dead;

		if (!have_mon) {
			usleep(100 * 1000);
			continue;
		}
		ret = nbd_nl_monitor_next(&mon, 100, &dead);
		if (ret < 0) {
			fprintf(stderr, "nbd-nl-selftest: monitor: %s\n", strerror(-ret));
			return 1;
		}
		if (ret == 0 || dead != index)
			continue;
		printf("LINK_DEAD event for nbd%" PRIu32 "\n", dead);
		fflush(stdout);
		if (reconnects >= 8) {
			fprintf(stderr, "nbd-nl-selftest: giving up after %u reconnects\n",
				reconnects);
			atomic_fetch_add(&srv.errors, 1);
			continue;
		}
		usleep(300 * 1000);
		while (nbd_nl_monitor_next(&mon, 0, &dead) > 0)
			printf("LINK_DEAD event for nbd%" PRIu32 " (repeat)\n", dead);
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			perror("socketpair");
			return 1;
		}
		if (start_conn(sv[1]) < 0)
			return 1;
		struct nbd_nl_reconfigure_params rp = { .index = index, .fds = &sv[0], .n_fds = 1 };

		ret = nbd_nl_reconfigure(&nl, &rp, msg, sizeof(msg));
		close(sv[0]);
		if (ret < 0) {
			fprintf(stderr, "nbd-nl-selftest: reconfigure: %s [%s]\n", msg,
				strerror(-ret));
			return 1;
		}
		reconnects++;
		printf("reconfigured nbd%" PRIu32 " with a new socket\n", index);
		fflush(stdout);
	}

	printf("stats: read=%lu write=%lu flush=%lu trim=%lu write_zeroes=%lu fua=%lu disc=%lu"
	       " bytes_read=%lu bytes_written=%lu reconnects=%u errors=%lu\n",
	       atomic_load(&srv.reads), atomic_load(&srv.writes), atomic_load(&srv.flushes),
	       atomic_load(&srv.trims), atomic_load(&srv.wzeroes), atomic_load(&srv.fua),
	       atomic_load(&srv.discs), atomic_load(&srv.bytes_read),
	       atomic_load(&srv.bytes_written), reconnects, atomic_load(&srv.errors));
	if (dump && (ret = dump_disk(dump)) < 0) {
		fprintf(stderr, "nbd-nl-selftest: %s: %s\n", dump, strerror(-ret));
		return 1;
	}
	if (have_mon)
		nbd_nl_close(&mon);
	nbd_nl_close(&nl);
	free(srv.disk);
	return atomic_load(&srv.errors) ? 1 : 0;
}

static int cmd_disconnect(int argc, char **argv)
{
	struct nbd_nl nl;
	char msg[512];
	int ret;

	if (argc != 2)
		die_usage();
	ret = nbd_nl_open(&nl, msg, sizeof(msg));
	if (ret == 0)
		ret = nbd_nl_disconnect(&nl, (uint32_t)parse_num(argv[1]), msg, sizeof(msg));
	if (ret < 0) {
		fprintf(stderr, "nbd-nl-selftest: disconnect: %s [%s]\n", msg, strerror(-ret));
		return 3;
	}
	nbd_nl_close(&nl);
	return 0;
}

static int cmd_status(int argc, char **argv)
{
	struct nbd_nl_dev_status devs[256];
	struct nbd_nl nl;
	char msg[512];
	int ret, index = argc > 1 ? (int)parse_num(argv[1]) : -1;

	ret = nbd_nl_open(&nl, msg, sizeof(msg));
	if (ret == 0)
		ret = nbd_nl_status(&nl, index, devs, 256, msg, sizeof(msg));
	if (ret < 0) {
		fprintf(stderr, "nbd-nl-selftest: status: %s [%s]\n", msg, strerror(-ret));
		return 3;
	}
	for (int i = 0; i < ret && i < 256; i++)
		printf("nbd%" PRIu32 " %s\n", devs[i].index,
		       devs[i].connected ? "connected" : "idle");
	nbd_nl_close(&nl);
	return 0;
}

/* --- genl-check: host-side checks of lib/genl.c on any kernel ---------- */

static int gc_failed, gc_passed;

static void gc_check(bool ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok" : "FAILED", what);
	if (ok)
		gc_passed++;
	else
		gc_failed++;
}

struct gc_dump {
	int families;
	bool saw_nlctrl;
};

static const enum mnl_attr_data_type gc_ctrl_policy[CTRL_ATTR_MAX + 1] = {
	[CTRL_ATTR_FAMILY_NAME] = MNL_TYPE_NUL_STRING,
};

static int gc_dump_cb(const struct nlmsghdr *nlh, uint8_t cmd, void *arg)
{
	const struct nlattr *tb[CTRL_ATTR_MAX + 1];
	struct gc_dump *d = arg;

	if (gw_genl_parse(nlh, gc_ctrl_policy, CTRL_ATTR_MAX, tb) < 0)
		return -EBADMSG;
	d->families++;
	if (cmd == CTRL_CMD_NEWFAMILY && tb[CTRL_ATTR_FAMILY_NAME] &&
	    strcmp(mnl_attr_get_str(tb[CTRL_ATTR_FAMILY_NAME]), "nlctrl") == 0)
		d->saw_nlctrl = true;
	return 0;
}

static int gc_fail_cb(const struct nlmsghdr *nlh, uint8_t cmd, void *arg)
{
	int *calls = arg;

	(*calls)++;
	return -ECANCELED;
}

/* Requests: family lookup, dumps, errors, the socket surviving them. */
static void gc_requests(struct gw_genl_sock *s)
{
	struct gw_genl_sock other;
	struct gw_genl_msg m;
	struct gc_dump d = { 0 };
	uint32_t grp = 0;
	int ret, calls = 0;

	gc_check(s->family.id == GENL_ID_CTRL && strcmp(s->family.name, "nlctrl") == 0,
		 "resolve nlctrl to GENL_ID_CTRL");
	gc_check(gw_genl_group_id(&s->family, "notify", &grp) == 0 && grp != 0,
		 "nlctrl has a \"notify\" multicast group");
	gc_check(gw_genl_group_id(&s->family, "no-such-group", &grp) == -ENOENT,
		 "an unknown group is -ENOENT");
	ret = gw_genl_open(&other, "blkgw-nosuchfam");
	gc_check(ret == -ENOENT, "an unknown family is -ENOENT");
	gw_genl_close(&other); /* harmless after a failed open */
	ret = gw_genl_open(&other, "a-name-longer-than-16");
	gc_check(ret == -ENAMETOOLONG, "an over-long family name is -ENAMETOOLONG");

	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, NLM_F_DUMP);
	ret = gw_genl_request(s, &m, gc_dump_cb, &d);
	gc_check(ret == 0 && d.families >= 1 && d.saw_nlctrl,
		 "a dump of all families ends with NLMSG_DONE and lists nlctrl");
	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, NLM_F_DUMP);
	ret = gw_genl_request(s, &m, gc_fail_cb, &calls);
	gc_check(ret == -ECANCELED && calls == 1,
		 "a callback's error ends the callbacks and is returned");
	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, 0);
	gw_genl_put_str(&m, CTRL_ATTR_FAMILY_NAME, "nlctrl");
	ret = gw_genl_request(s, &m, NULL, NULL);
	gc_check(ret == 0, "the socket still works after a failed callback (replies drained)");

	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, 0);
	ret = gw_genl_request(s, &m, NULL, NULL);
	gc_check(ret < 0, "a GETFAMILY without a name gets the kernel's -errno");
	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, 0);
	gw_genl_put_u8(&m, CTRL_ATTR_FAMILY_ID, GENL_ID_CTRL); /* the kernel wants a u16 */
	ret = gw_genl_request(s, &m, NULL, NULL);
	printf("kernel's answer to a u8 family id: %s, extended ack \"%s\"\n", strerror(-ret),
	       s->ext_msg);
	gc_check(ret < 0 && s->ext_msg[0] != '\0',
		 "a policy violation gets the kernel's -errno and extended-ack text");
	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, 0);
	gw_genl_put_str(&m, CTRL_ATTR_FAMILY_NAME, "nlctrl");
	ret = gw_genl_request(s, &m, NULL, NULL);
	gc_check(ret == 0 && s->ext_msg[0] == '\0',
		 "the same socket still works after an error, and the text is cleared");

	gc_check(gw_genl_recv_event(s, NULL, NULL) == -EAGAIN,
		 "no event queued: recv_event does not block, -EAGAIN");
	gc_check(gw_genl_join_group(s, "notify") == 0, "join nlctrl's \"notify\" group by name");
	gc_check(gw_genl_join_group(s, "no-such-group") == -ENOENT,
		 "joining an unknown group is -ENOENT");
}

/* Building a request and reading it back. */
static void gc_messages(struct gw_genl_sock *s)
{
	static const enum mnl_attr_data_type policy[11] = {
		[2] = MNL_TYPE_U64, [7] = MNL_TYPE_NESTED, [10] = MNL_TYPE_NUL_STRING
	};
	static const enum mnl_attr_data_type wrong[11] = { [2] = MNL_TYPE_U32 };
	static const enum mnl_attr_data_type inner[2] = { [1] = MNL_TYPE_U32 };
	static uint8_t big[5000];
	const struct nlattr *tb[11], *a, *in[2];
	struct gw_genl_msg m;
	struct nlattr *outer, *item;
	uint32_t sum = 0;
	int ret, n = 0;

	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, 0);
	ret = gw_genl_put(&m, 1, big, sizeof(big));
	gc_check(ret == -EMSGSIZE, "an attribute larger than the message is -EMSGSIZE");
	gc_check(gw_genl_put_u32(&m, 2, 1) == -EMSGSIZE && gw_genl_nest_start(&m, 3) == NULL &&
			 gw_genl_request(s, &m, NULL, NULL) == -EMSGSIZE,
		 "the error sticks to later puts and to the request");
	gw_genl_msg_init(&m, &s->family, CTRL_CMD_GETFAMILY, 0);
	gw_genl_nest_start(&m, 7);
	gc_check(gw_genl_request(s, &m, NULL, NULL) == -EINVAL, "an unclosed nest is -EINVAL");

	/* a nest built here parses back with the same values */
	gw_genl_msg_init(&m, &s->family, 1, 0);
	gw_genl_put_u64(&m, 2, 0x1122334455667788ull);
	outer = gw_genl_nest_start(&m, 7);
	for (uint32_t v = 42; v <= 43; v++) {
		item = gw_genl_nest_start(&m, 1);
		gw_genl_put_u32(&m, 1, v);
		gw_genl_nest_end(&m, item);
	}
	gw_genl_nest_end(&m, outer);
	gw_genl_put_str(&m, 10, "abc");
	gc_check(m.err == 0 && m.open_nests == 0, "a message with nests builds");

	ret = gw_genl_parse(m.nlh, policy, 10, tb);
	gc_check(ret == 0 && tb[2] && tb[7] && tb[10] && !tb[3],
		 "parse finds the attributes that were put");
	gc_check(tb[2] && mnl_attr_get_u64(tb[2]) == 0x1122334455667788ull, "u64 round trip");
	gc_check(tb[10] && strcmp(mnl_attr_get_str(tb[10]), "abc") == 0, "string round trip");
	gc_check(gw_genl_parse(m.nlh, wrong, 10, tb) == -EINVAL,
		 "a u64 where the policy says u32 is -EINVAL");
	gw_genl_parse(m.nlh, policy, 10, tb);
	if (tb[7]) {
		mnl_attr_for_each_nested(a, tb[7])
		{
			if (gw_genl_parse_nested(a, inner, 1, in) == 0 && in[1])
				sum += mnl_attr_get_u32(in[1]);
			n++;
		}
	}
	gc_check(n == 2 && sum == 85, "a nested array iterates in order");

	{
		uint8_t bad[8] = { 2, 0, 1, 0, 0, 0, 0, 0 };         /* nla_len 2 < header */
		uint8_t over[8] = { 12, 0, 1, 0, 0, 0, 0, 0 };       /* runs past the end */
		uint8_t tail[10] = { 8, 0, 1, 0, 1, 2, 3, 4, 0, 0 }; /* 2 stray bytes */
		const struct nlattr *t[2];

		gc_check(gw_genl_parse_payload(bad, sizeof(bad), NULL, 1, t) == -EINVAL,
			 "an attribute shorter than its header is -EINVAL");
		gc_check(gw_genl_parse_payload(over, sizeof(over), NULL, 1, t) == -EINVAL,
			 "an attribute longer than the buffer is -EINVAL");
		gc_check(gw_genl_parse_payload(tail, sizeof(tail), NULL, 1, t) == -EINVAL && !t[0],
			 "stray bytes after the last attribute are -EINVAL");
	}
}

static int cmd_genl_check(void)
{
	struct gw_genl_sock s;
	struct nbd_nl nl;
	char msg[512];
	int ret;

	ret = gw_genl_open(&s, "nlctrl");
	gc_check(ret == 0, "open a generic netlink socket for nlctrl");
	if (ret)
		return 1;
	gc_requests(&s);
	gw_genl_close(&s);
	ret = gw_genl_open(&s, "nlctrl");
	if (ret == 0) {
		gc_messages(&s);
		gw_genl_close(&s);
	}

	ret = nbd_nl_open(&nl, msg, sizeof(msg));
	if (ret == 0) {
		gc_check(nl.sock.family.id != 0 && nl.mcast_group != 0,
			 "this kernel has nbd: family and multicast group resolved");
		nbd_nl_close(&nl);
	} else {
		printf("nbd_nl_open: %s\n", msg);
		gc_check(ret == -ENOENT && strstr(msg, "not loaded") != NULL,
			 "without the nbd module, nbd_nl_open says the driver is not loaded");
	}
	printf("genl-check: %d ok, %d FAILED\n", gc_passed, gc_failed);
	return gc_failed ? 1 : 0;
}

static int cmd_probe(void)
{
	struct nbd_nl nl;
	char msg[512];
	int ret = nbd_nl_open(&nl, msg, sizeof(msg));

	if (ret < 0) {
		fprintf(stderr, "nbd-nl-selftest: %s [%s]\n", msg, strerror(-ret));
		return 3;
	}
	printf("nbd family id %u version %u, multicast group %s id %u\n", nl.sock.family.id,
	       nl.sock.family.version, NBD_GENL_MCAST_GROUP_NAME, nl.mcast_group);
	nbd_nl_close(&nl);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		die_usage();
	if (strcmp(argv[1], "serve") == 0)
		return cmd_serve(argc - 1, argv + 1);
	if (strcmp(argv[1], "disconnect") == 0)
		return cmd_disconnect(argc - 1, argv + 1);
	if (strcmp(argv[1], "status") == 0)
		return cmd_status(argc - 1, argv + 1);
	if (strcmp(argv[1], "probe") == 0)
		return cmd_probe();
	if (strcmp(argv[1], "genl-check") == 0)
		return cmd_genl_check();
	die_usage();
}
