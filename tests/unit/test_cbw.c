/*
 * Copy-before-write views (lib/cbw.c): a view keeps the image as it was
 * while the image is rewritten, also with writers racing a reader; a copy
 * that cannot be made breaks the view, never the write; stop removes the
 * aside file. Each with copies staged in memory (the default), with a
 * staging area small enough to fill (copies then go to the file
 * directly), and with staging off.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lib/cbw.h"

#define CHUNK  65536u
#define NCHUNK 64u
#define SIZE   ((uint64_t)CHUNK * NCHUNK - 4096) /* the last chunk is short */

static char dir[256], src[300], aside[300];
static uint64_t stage = UINT64_MAX; /* gw_cbw_set_stage(); UINT64_MAX: the default */

static int view_open(struct gw_cbw **c)
{
	char err[256] = "";
	int rc = gw_cbw_open(c, src, aside, SIZE, CHUNK, err, sizeof(err));

	if (rc == 0 && stage != UINT64_MAX)
		gw_cbw_set_stage(*c, stage);
	return rc;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Bytes the aside file holds on disk or in the page cache (its blocks). */
static uint64_t aside_blocks(void)
{
	struct stat st;

	return stat(aside, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

static void fill(int fd, uint64_t off, uint64_t len, unsigned char v)
{
	char *b = malloc(len);

	memset(b, v, len);
	CHECK(pwrite(fd, b, len, (off_t)off) == (ssize_t)len);
	free(b);
}

/* The writer's side of the checked layer: tell the view, then write. */
static void change(struct gw_cbw *c, int fd, uint64_t off, uint64_t len, unsigned char v)
{
	gw_cbw_before_write(c, off, len);
	fill(fd, off, len, v);
}

/* Does the view read [off, off+len) as all v? */
static bool view_is(struct gw_cbw *c, uint64_t off, uint64_t len, unsigned char v)
{
	unsigned char *b = malloc(len);
	struct iovec iov[2] = { { b, len / 3 }, { b + len / 3, len - len / 3 } };
	bool ok = gw_cbw_read(c, iov, 2, off, len) == 0;

	for (uint64_t i = 0; ok && i < len; i++)
		ok = b[i] == v;
	free(b);
	return ok;
}

/*
 * A worker's read (gw_cbw_read_cached): all of it as it was, or -EAGAIN;
 * never a mixed answer reported as complete. -1 on a wrong answer.
 */
static int cached_is(struct gw_cbw *c, uint64_t off, uint64_t len, unsigned char v)
{
	unsigned char *b = malloc(len);
	struct iovec iov = { b, len };
	int rc = gw_cbw_read_cached(c, &iov, 1, off, len), ok = 1;

	if (rc == -EAGAIN)
		ok = 0;
	else if (rc < 0)
		ok = -1;
	for (uint64_t i = 0; ok == 1 && i < len; i++)
		ok = b[i] == v ? 1 : -1;
	free(b);
	return ok;
}

static int make_src(void)
{
	int fd = open(src, O_RDWR | O_CREAT | O_TRUNC, 0600);

	CHECK(fd >= 0);
	fill(fd, 0, SIZE, 'A');
	return fd;
}

static void test_view(void)
{
	int fd = make_src();
	struct gw_cbw *c = NULL;
	struct stat st;

	double t0;

	CHECK(view_open(&c) == 0 && c);
	if (!c)
		return;
	t0 = now();
	change(c, fd, 100, 10, 'B');                     /* inside chunk 0 */
	change(c, fd, CHUNK - 1, 2, 'C');                /* across chunks 0 and 1 */
	change(c, fd, 10ull * CHUNK, 3ull * CHUNK, 'D'); /* chunks 10..12 whole */
	change(c, fd, SIZE - 10, 10, 'E');               /* the short last chunk */
	change(c, fd, 100, 10, 'F');                     /* chunk 0 again: no second copy */
	/*
	 * Staging on: the view's thread writes a backlog under 1 MiB out after
	 * 20 ms, so until then the first copy is still in memory.
	 */
	if (stage != 0 && now() - t0 < 0.02)
		CHECK(gw_cbw_staged(c) > 0);
	CHECK(view_is(c, 0, SIZE, 'A'));
	CHECK(view_is(c, CHUNK - 7, 20, 'A'));
	/* Units of 4K: the 10 bytes, the 2 across units, 3 chunks, the last unit. */
	CHECK_EQ_U64(gw_cbw_unit(c), 4096);
	CHECK_EQ_U64(gw_cbw_copied(c), 4096 + 8192 + 3ull * CHUNK + 4096);
	if (stage == 0) {
		/* Nothing waits in memory: every copy is in the aside file already. */
		CHECK_EQ_U64(gw_cbw_staged(c), 0);
		CHECK(aside_blocks() >= gw_cbw_copied(c));
	} else {
		/* Staged copies (some may be written out already) read back as they were... */
		CHECK(view_is(c, 0, SIZE, 'A'));
		gw_cbw_flush(c);
		/* ...and, once written out, from the file: nothing is left in memory. */
		CHECK_EQ_U64(gw_cbw_staged(c), 0);
		CHECK(aside_blocks() >= gw_cbw_copied(c));
	}
	/* A read over units copied and not, interleaved, in one request. */
	for (uint64_t u = 40ull * CHUNK / 4096; u < 42ull * CHUNK / 4096; u += 3)
		change(c, fd, u * 4096 + 5, 1, 'H');
	CHECK(view_is(c, 39ull * CHUNK, 4ull * CHUNK, 'A'));
	CHECK(view_is(c, 40ull * CHUNK + 4096 + 17, 3 * 4096, 'A'));
	/* All of it was just written or copied: in the page cache, so a worker reads it. */
	CHECK(cached_is(c, 0, SIZE, 'A') == 1);
	{
		bool set;

		/* Chunk 40 has copied units: it counts as copied, in whole chunks. */
		CHECK_EQ_U64(gw_cbw_copied_run(c, 40ull * CHUNK, 8ull * CHUNK, &set), 2ull * CHUNK);
		CHECK(set);
		CHECK_EQ_U64(gw_cbw_copied_run(c, 42ull * CHUNK, 8ull * CHUNK, &set), 8ull * CHUNK);
		CHECK(!set);
	}
	CHECK(!gw_cbw_broken(c, NULL, 0));
	gw_cbw_stop(c);
	CHECK(stat(aside, &st) < 0 && errno == ENOENT);
	CHECK(!view_is(c, 0, 4096, 'A'));      /* a stopped view reads nothing */
	change(c, fd, 20ull * CHUNK, 10, 'G'); /* and copies nothing */
	gw_cbw_put(c);
	close(fd);
}

/*
 * A copy that fails breaks the view and says why (the aside file may not
 * grow past 1 MiB here: RLIMIT_FSIZE); the write itself is not stopped.
 */
static void test_broken(void)
{
	int fd = make_src();
	struct gw_cbw *c = NULL;
	char why[256] = "";
	struct rlimit old, lim;
	struct iovec iov;
	char b[16];

	CHECK(view_open(&c) == 0 && c);
	if (!c)
		return;
	signal(SIGXFSZ, SIG_IGN);
	CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
	lim = (struct rlimit){ 1 << 20, old.rlim_max }; /* the soft limit only: it goes back up */
	CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
	gw_cbw_before_write(c, 0, 10); /* under the limit: copied */
	gw_cbw_flush(c);
	CHECK(!gw_cbw_broken(c, NULL, 0));
	gw_cbw_before_write(c, 40ull * CHUNK, 10); /* past it: EFBIG, now or when written out */
	gw_cbw_flush(c);
	CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
	CHECK(gw_cbw_broken(c, why, sizeof(why)));
	CHECK(strstr(why, "File too large") != NULL);
	iov = (struct iovec){ b, sizeof(b) };
	CHECK(gw_cbw_read(c, &iov, 1, 0, sizeof(b)) == -EIO);
	gw_cbw_put(c);
	close(fd);
}

/* Writers rewrite chunks while a reader reads the whole view again and again. */
struct race {
	struct gw_cbw *c;
	int fd;
	atomic_bool stop;
	atomic_int bad;
	unsigned seed;
};

static void *writer(void *arg)
{
	struct race *r = arg;
	unsigned s = r->seed;

	for (int n = 0; n < 400; n++) {
		uint64_t off = (uint64_t)(rand_r(&s) % (SIZE - 8192));
		uint64_t len = 1 + (uint64_t)(rand_r(&s) % 8192);

		change(r->c, r->fd, off, len, (unsigned char)('a' + rand_r(&s) % 26));
	}
	return NULL;
}

static void *reader(void *arg)
{
	struct race *r = arg;

	for (unsigned n = 0; !atomic_load(&r->stop); n++) {
		if (!view_is(r->c, 0, SIZE, 'A'))
			atomic_fetch_add(&r->bad, 1);
		if (cached_is(r->c, (n * 12345ull) % (SIZE / 2), SIZE / 2, 'A') < 0)
			atomic_fetch_add(&r->bad, 1);
	}
	return NULL;
}

static void test_race(void)
{
	struct race r = { .fd = make_src() };
	struct race w[3];
	pthread_t tr, tw[3];

	CHECK(view_open(&r.c) == 0 && r.c);
	if (!r.c)
		return;
	pthread_create(&tr, NULL, reader, &r);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct race){ .c = r.c, .fd = r.fd, .seed = 7u + (unsigned)i };
		pthread_create(&tw[i], NULL, writer, &w[i]);
	}
	for (int i = 0; i < 3; i++)
		pthread_join(tw[i], NULL);
	atomic_store(&r.stop, true);
	pthread_join(tr, NULL);
	CHECK_EQ_U64(atomic_load(&r.bad), 0);
	CHECK(view_is(r.c, 0, SIZE, 'A'));
	CHECK(gw_cbw_copied(r.c) > 0);
	gw_cbw_put(r.c);
	close(r.fd);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "%s/blkgw-cbw.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(src, sizeof(src), "%s/image", dir);
	snprintf(aside, sizeof(aside), "%s/aside", dir);
	/* Default staging; 64 KiB (16 units: it fills, copies go to the file too); none. */
	for (int i = 0; i < 3; i++) {
		stage = (uint64_t[]){ UINT64_MAX, 65536, 0 }[i];
		test_view();
		test_broken();
		test_race();
	}
	unlink(src);
	unlink(aside);
	rmdir(dir);
	return check_report();
}
