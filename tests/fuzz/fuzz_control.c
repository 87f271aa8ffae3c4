/*
 * libFuzzer target: the control socket (gateway/control.c): line framing,
 * the length limit, JSON parsing and replies, over a real unix socket on
 * the main loop. The handler answers every request it is given the way
 * the daemon's does for an unknown command (gw_ctl_error), so what is
 * fuzzed is everything between the socket and the command table.
 */
#include <errno.h>
#include <ev.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fuzz.h"
#include "gateway/control.h"
#include "lib/log.h"
#include "lib/opts.h"

static struct sockaddr_un addr;
static unsigned handled;

static json_object *handler(json_object *req, void *arg)
{
	json_object *cmd;

	handled++;
	if (!json_object_is_type(req, json_type_object))
		abort(); /* control.c promised an object */
	if (json_object_object_get_ex(req, "command", &cmd) &&
	    json_object_is_type(cmd, json_type_string))
		return gw_ctl_error(-EOPNOTSUPP, "unknown command '%s'",
				    json_object_get_string(cmd));
	return gw_ctl_error(-EINVAL, "missing \"command\"");
}

static char dir[] = "/tmp/fuzz-control-XXXXXX";

static void cleanup(void)
{
	gw_ctl_stop(); /* removes the socket */
	rmdir(dir);
}

static void setup(void)
{
	struct gw_sock_perm perm = { 0 };
	char err[256];

	if (addr.sun_family)
		return;
	gw_log_set_level(GW_LOG_ERR);
	if (!mkdtemp(dir))
		abort();
	addr.sun_family = AF_UNIX;
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/ctl.sock", dir);
	perm.mode = 0600;
	perm.uid = perm.gid = GW_ID_UNSET;
	if (gw_ctl_start(addr.sun_path, &perm, handler, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "fuzz_control: %s\n", err);
		abort();
	}
	atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd;
	size_t off = 0;
	bool shut = false;
	char buf[65536];

	setup();
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		abort();
	for (int idle = 0;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		ev_run(EV_DEFAULT, EVRUN_NOWAIT);
		if (off < size)
			p.events |= POLLOUT;
		else if (!shut) {
			shutdown(fd, SHUT_WR);
			shut = true;
		}
		if (poll(&p, 1, 1) <= 0) {
			if (++idle > FUZZ_HANG_MS) {
				fprintf(stderr, "fuzz_control: the server never closes\n");
				abort();
			}
			continue;
		}
		idle = 0;
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			n = recv(fd, buf, sizeof(buf), 0);
			if (n == 0 || (n < 0 && errno != EAGAIN))
				break;
		}
		if ((p.revents & POLLOUT) && off < size) {
			n = send(fd, data + off, size - off, MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN)
				off = size;
		}
	}
	close(fd);
	return 0;
}
