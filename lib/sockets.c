#include "lib/sockets.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"

static int mkdir_upto(char *p, char *stop)
{
	/* Each folder ends at a '/' or at STOP (the end of the string for gw_mkdir_p). */
	for (char *s = p + 1; s <= stop && (*s || s == stop); s++) {
		if (*s != '/' && s != stop)
			continue;
		char c = *s;

		*s = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST) {
			int rc = -errno;

			*s = c;
			return rc;
		}
		*s = c;
	}
	return 0;
}

int gw_mkdir_p(const char *dir)
{
	char *p = strdup(dir);
	int rc;

	if (!p)
		return -ENOMEM;
	rc = mkdir_upto(p, p + strlen(p));
	free(p);
	return rc;
}

int gw_mkdir_parents(const char *path)
{
	char *p = strdup(path), *slash;
	int rc = 0;

	if (!p)
		return -ENOMEM;
	slash = strrchr(p, '/');
	if (slash && slash != p)
		rc = mkdir_upto(p, slash);
	free(p);
	return rc;
}

static int sun_of(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	return gw_strlcpy(sa->sun_path, path, sizeof(sa->sun_path)) < 0 ? -ENAMETOOLONG : 0;
}

/* Does a server accept connections on this socket now? */
static bool answers(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool live = fd >= 0 && connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;

	if (fd >= 0)
		close(fd);
	return live;
}

/*
 * Could path (and the folders above it) be created? The deepest of its
 * folders that exists must be a folder we may create entries in. 0, or
 * -errno with why ("cannot create WHAT PATH: ...").
 */
static int creatable(const char *what, const char *path, char *why, size_t len)
{
	char *dir = strdup(path);
	struct stat st;
	int rc = 0;

	if (!dir)
		return -ENOMEM;
	for (;;) {
		char *slash = strrchr(dir, '/');

		if (slash == dir) { /* the root */
			dir[1] = '\0';
			break;
		}
		if (!slash) { /* relative to the working folder (dir may be "") */
			free(dir);
			if (!(dir = strdup(".")))
				return -ENOMEM;
			break;
		}
		*slash = '\0';
		if (lstat(dir, &st) == 0)
			break;
	}
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		gw_seterr(why, len, "cannot create %s %s: %s is not a folder", what, path, dir);
		rc = -ENOTDIR;
	} else if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) < 0) {
		rc = -errno;
		gw_seterr(why, len, "cannot create %s %s: folder %s: %s", what, path, dir,
			  strerror(errno));
	}
	free(dir);
	return rc;
}

int gw_dir_check(const char *dir, char *why, size_t len)
{
	struct stat st;

	if (stat(dir, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return 0;
		gw_seterr(why, len, "%s exists and is not a folder", dir);
		return -ENOTDIR;
	}
	return creatable("the folder", dir, why, len);
}

static int path_check(const char *path, bool live, char *why, size_t len)
{
	struct sockaddr_un sa;
	struct stat st;
	int rc;

	if (sun_of(path, &sa) < 0) {
		gw_seterr(why, len, "socket path %s is too long", path);
		return -ENAMETOOLONG;
	}
	if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		gw_seterr(why, len, "%s exists and is not a socket", path);
		return -EEXIST;
	}
	rc = creatable("the socket", path, why, len);
	if (rc == 0 && live && answers(&sa)) {
		gw_seterr(why, len, "a server answers on %s now", path);
		rc = GW_SOCKET_LIVE;
	}
	return rc;
}

int gw_socket_path_check(const char *path, char *why, size_t len)
{
	return path_check(path, true, why, len);
}

int gw_socket_path_check_quiet(const char *path, char *why, size_t len)
{
	return path_check(path, false, why, len);
}

int gw_listen_unix(const char *path, const struct gw_sock_perm *perm, int backlog, char *err,
		   size_t errlen)
{
	struct sockaddr_un sa;
	struct stat st;
	mode_t old;
	int fd, rc;

	if (sun_of(path, &sa) < 0) {
		gw_seterr(err, errlen, "socket path %s is too long", path);
		return -ENAMETOOLONG;
	}
	rc = gw_mkdir_parents(path);
	if (rc < 0) {
		gw_seterr(err, errlen, "cannot create the folder of %s: %s", path, strerror(-rc));
		return rc;
	}
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			gw_seterr(err, errlen, "%s exists and is not a socket", path);
			return -EEXIST;
		}
		/* A live server keeps it; a stale socket (a killed process's) is replaced. */
		if (answers(&sa)) {
			gw_seterr(err, errlen, "%s is in use by another running server", path);
			return -EADDRINUSE;
		}
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "socket: %s", strerror(errno));
		return rc;
	}
	old = umask(0777 & ~(mode_t)perm->mode);
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "cannot serve on %s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	if ((perm->uid != GW_ID_UNSET || perm->gid != GW_ID_UNSET) &&
	    lchown(path, perm->uid == GW_ID_UNSET ? (uid_t)-1 : perm->uid,
		   perm->gid == GW_ID_UNSET ? (gid_t)-1 : perm->gid) < 0) {
		char pb[96];

		rc = -errno;
		gw_seterr(err, errlen, "cannot set the owner of %s (%s): %s", path,
			  gw_sock_perm_str(perm, pb, sizeof(pb)), strerror(errno));
		goto fail;
	}
	if (chmod(path, perm->mode) < 0 || listen(fd, backlog) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "cannot serve on %s: %s", path, strerror(errno));
		goto fail;
	}
	return fd;
fail:
	close(fd);
	unlink(path);
	return rc;
}

const char *gw_sock_perm_str(const struct gw_sock_perm *p, char *buf, size_t len)
{
	char u[16] = "-", g[16] = "-";

	if (p->uid != GW_ID_UNSET)
		snprintf(u, sizeof(u), "%u", p->uid);
	if (p->gid != GW_ID_UNSET)
		snprintf(g, sizeof(g), "%u", p->gid);
	snprintf(buf, len, "mode %04o owner %s group %s", p->mode, u, g);
	return buf;
}

static int spare_fd = -1;
static unsigned long long refused_fds;

void gw_accept_reserve(void)
{
	if (spare_fd < 0)
		spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

unsigned long long gw_accept_refused_fds(void)
{
	return refused_fds;
}

int gw_accept(int lfd, struct sockaddr *sa, socklen_t *salen, bool *refused)
{
	static struct gw_ratelimit rl = GW_RATELIMIT_INIT(5, 1);
	int fd, err;

	*refused = false;
	for (;;) {
		fd = accept4(lfd, sa, salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (errno != EINTR && errno != ECONNABORTED)
			break;
	}
	err = errno;
	if (err == EAGAIN || err == EWOULDBLOCK)
		return -EAGAIN;
	if (err != EMFILE && err != ENFILE)
		return -err;
	if (spare_fd >= 0) {
		close(spare_fd);
		spare_fd = -1;
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0) {
			close(fd);
			*refused = true;
			refused_fds++;
		}
		gw_accept_reserve();
	}
	gw_warn_rl(
		&rl,
		"accept: %s: refusing connections until descriptors are freed (%llu refused so far; raise the limit with ulimit -n or LimitNOFILE=)",
		strerror(err), refused_fds);
	return -err;
}
