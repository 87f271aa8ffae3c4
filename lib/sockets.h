/* Socket and folder helpers shared by the control socket and the transports. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/opts.h"

/* Who may use a unix socket blkgw creates. */
struct gw_sock_perm {
	uint32_t mode; /* permission bits */
	uint32_t uid;  /* owner; GW_ID_UNSET: blkgw's own user */
	uint32_t gid;  /* group; GW_ID_UNSET: blkgw's own group */
};

/*
 * The manifest keys of a socket's permissions, for an option table:
 * PREFIX "socket-mode", PREFIX "socket-owner", PREFIX "socket-group",
 * decoded into the struct gw_sock_perm FIELD of STYPE.
 */
// clang-format off
// offsetof's arguments cannot be parenthesised:
// NOLINTBEGIN(bugprone-macro-parentheses)
#define GW_SOCK_PERM_OPTS(stype, field, prefix)                                        \
	{ .key = prefix "socket-mode", .type = GW_OPT_MODE,                            \
	  .offset = offsetof(stype, field.mode), .def = 0600,                          \
	  .help = "permissions of the unix socket (default 0600)" },                   \
	{ .key = prefix "socket-owner", .type = GW_OPT_USER,                           \
	  .offset = offsetof(stype, field.uid),                                        \
	  .help = "owner of the unix socket, a user name or uid (default: blkgw's)" }, \
	{ .key = prefix "socket-group", .type = GW_OPT_GROUP,                          \
	  .offset = offsetof(stype, field.gid),                                        \
	  .help = "group of the unix socket, a group name or gid (default: blkgw's)" }
// NOLINTEND(bugprone-macro-parentheses)
// clang-format on

/* Do two sockets get the same owner, group and mode? */
static inline int gw_sock_perm_equal(const struct gw_sock_perm *a, const struct gw_sock_perm *b)
{
	return a->mode == b->mode && a->uid == b->uid && a->gid == b->gid;
}

/* "0660 owner 1000 group 27" (the ids as given, "-" when unset) for messages. */
const char *gw_sock_perm_str(const struct gw_sock_perm *p, char *buf, size_t len);

/* mkdir -p DIR (mode 0755 for what it creates). 0 or -errno. */
int gw_mkdir_p(const char *dir);
/* Create the folders above PATH. 0 or -errno. */
int gw_mkdir_parents(const char *path);

/*
 * Could gw_listen_unix() create a socket at PATH, as far as can be known
 * before trying (for `blkgw check`)? No side effects. 0; GW_SOCKET_LIVE when
 * a server answers there now (a start fails unless it is gone by then); or
 * -errno with why: the path is too long, exists and is not a socket, or its
 * folder cannot be created or written.
 */
#define GW_SOCKET_LIVE 1
/* Does DIR exist as a folder, or could gw_mkdir_p() create it? 0, or -errno with why. */
int gw_dir_check(const char *dir, char *why, size_t len);
int gw_socket_path_check(const char *path, char *why, size_t len);
/* The same without asking whether a server answers (a daemon checking its own paths). */
int gw_socket_path_check_quiet(const char *path, char *why, size_t len);

/*
 * Listen on a unix stream socket at PATH owned and permitted as PERM says
 * (never wider, not even for a moment: the owner and mode are set before
 * listen(), so no one connects in between), creating its folder. A stale
 * socket left by a killed process is replaced; one a live server answers
 * on is not (returns -EADDRINUSE). Returns the non-blocking listening fd,
 * or -errno with a message in err.
 */
int gw_listen_unix(const char *path, const struct gw_sock_perm *perm, int backlog, char *err,
		   size_t errlen);

/*
 * accept4(SOCK_NONBLOCK | SOCK_CLOEXEC) that survives running out of file
 * descriptors. The process keeps one spare descriptor; on EMFILE or ENFILE
 * it is given up, the waiting connection accepted and closed at once (the
 * client sees a close, not a backlog that never moves), and the spare taken
 * again. Returns the new fd; -EAGAIN when nothing waits; -EMFILE after
 * refusing one connection that way (*refused set: call again); -EMFILE with
 * *refused clear when even that failed (stop watching the listener a while);
 * other -errno. Logs exhaustion itself, rate-limited. Main thread only.
 */
int gw_accept(int lfd, struct sockaddr *sa, socklen_t *salen, bool *refused);
/* Take the spare descriptor now (before anything can use them all up). */
void gw_accept_reserve(void);
/* Connections refused for want of descriptors, since start. */
unsigned long long gw_accept_refused_fds(void);
