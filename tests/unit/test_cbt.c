/* Changed-block tracking records (lib/cbt.c): marks, checkpoints, merge-forward, trust. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "lib/cbt.h"
#include "lib/sockets.h"

#define SIZE  (64ull << 20)
#define GRAN  65536u
#define NBITS (SIZE / GRAN)

static char dir[256];
static const struct gw_cbt_stamp stamp = { .known = true, .size = SIZE, .mtime_ns = 1000 };

static struct gw_cbt *open_ok(const struct gw_cbt_stamp *st)
{
	struct gw_cbt *t = NULL;
	char err[256] = "";
	int rc = gw_cbt_open(&t, dir, SIZE, GRAN, st, err, sizeof(err));

	if (rc < 0)
		fprintf(stderr, "gw_cbt_open: %s\n", err);
	CHECK(rc == 0 && t);
	return t;
}

/* The changes since `since` up to `upto` as a string of 0/1 over the first n chunks. */
static int changes(struct gw_cbt *t, const char *since, const char *upto, uint64_t **bits)
{
	char why[256];

	return gw_cbt_changes(t, since, upto, bits, why, sizeof(why));
}

static bool current_trusted(struct gw_cbt *t, char *why, size_t len)
{
	struct gw_cbt_info v[64];
	size_t n = gw_cbt_list(t, v, 64);

	snprintf(why, len, "%s", v[n - 1].why);
	return v[n - 1].trusted;
}

static void test_marks(void)
{
	struct gw_cbt *t = open_ok(&stamp);
	uint64_t *b = NULL;
	char err[256];

	gw_cbt_mark(t, 0, 4096);
	gw_cbt_mark(t, GRAN * 3 + 5, 1);        /* one chunk */
	gw_cbt_mark(t, GRAN * 10 - 1, 2);       /* straddles 9 and 10 */
	gw_cbt_mark(t, GRAN * 100, GRAN * 130); /* a long run, several words */
	gw_cbt_mark(t, SIZE - 512, 4096);       /* clipped at the end */
	CHECK(gw_cbt_sync(t) == 0);
	CHECK(gw_cbt_checkpoint(t, "c1", err, sizeof(err)) == 0);
	CHECK(gw_cbt_checkpoint(t, "c1", err, sizeof(err)) == -EEXIST);
	CHECK(gw_cbt_checkpoint(t, "../x", err, sizeof(err)) == -EINVAL);
	gw_cbt_mark(t, GRAN * 7, 1);
	CHECK(gw_cbt_checkpoint(t, "c2", err, sizeof(err)) == 0);
	CHECK(changes(t, "c1", "c2", &b) == 0);
	for (uint64_t i = 0; i < NBITS; i++)
		CHECK(gw_cbt_bit(b, i) == (i == 7));
	free(b);
	CHECK(changes(t, "c2", NULL, &b) == 0);
	for (uint64_t i = 0; i < NBITS; i++)
		CHECK(!gw_cbt_bit(b, i));
	free(b);
	CHECK(changes(t, "c2", "c1", &b) == -EINVAL);
	CHECK(changes(t, "nope", NULL, &b) == -ENOENT);
	/* c1's own record: what changed before it. */
	{
		struct gw_cbt_info v[8];
		size_t n = gw_cbt_list(t, v, 8);

		CHECK_EQ_U64(n, 3);
		CHECK(strcmp(v[0].name, "c1") == 0 && strcmp(v[1].name, "c2") == 0);
		CHECK_EQ_U64(v[0].dirty_chunks, 1 + 1 + 2 + 130 + 1);
		CHECK_EQ_U64(v[1].dirty_chunks, 1);
		CHECK_EQ_U64(v[2].dirty_chunks, 0);
		CHECK(v[0].trusted && v[1].trusted && v[2].trusted);
	}
	gw_cbt_close(t, &stamp);
}

/* A record survives a process killed without closing it: every mark made is there. */
static void test_kill(void)
{
	pid_t p = fork();
	struct gw_cbt *t;
	uint64_t *b = NULL;
	char why[256];
	int st;

	if (p == 0) {
		struct gw_cbt *c = NULL;
		char err[256];

		if (gw_cbt_open(&c, dir, SIZE, GRAN, &stamp, err, sizeof(err)) < 0)
			_exit(2);
		for (uint64_t i = 0; i < NBITS; i += 3)
			gw_cbt_mark(c, i * GRAN, 512);
		_exit(0); /* no close, no sync: as kill -9 */
	}
	CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	t = open_ok(&stamp);
	CHECK(current_trusted(t, why, sizeof(why)));
	CHECK(changes(t, "c2", NULL, &b) == 0);
	for (uint64_t i = 0; i < NBITS; i++)
		CHECK(gw_cbt_bit(b, i) == (i % 3 == 0));
	free(b);
	gw_cbt_close(t, &stamp);
}

/* Rotation: create and delete over many cycles; the chain always holds the union. */
static void test_rotation(void)
{
	struct gw_cbt *t = open_ok(&stamp);
	static uint8_t truth[100][NBITS]; /* chunks written in cycle k */
	char err[256], name[32], prev2[32];
	unsigned seed = 1;

	/* Start from a clean chain: drop what earlier tests left. */
	{
		struct gw_cbt_info v[16];
		size_t n = gw_cbt_list(t, v, 16);

		for (size_t i = 0; i + 1 < n; i++)
			CHECK(gw_cbt_delete(t, v[i].name, err, sizeof(err)) == 0);
	}
	CHECK(gw_cbt_checkpoint(t, "r0", err, sizeof(err)) == 0);
	memset(truth, 0, sizeof(truth));
	for (int k = 1; k < 100; k++) {
		uint64_t *b = NULL;

		for (int w = 0; w < 20; w++) {
			uint64_t c = (uint64_t)rand_r(&seed) % NBITS;

			gw_cbt_mark(t, c * GRAN, 4096);
			truth[k][c] = 1;
		}
		snprintf(name, sizeof(name), "r%d", k);
		CHECK(gw_cbt_checkpoint(t, name, err, sizeof(err)) == 0);
		/* Keep two: delete the one before yesterday's. */
		if (k >= 2) {
			snprintf(prev2, sizeof(prev2), "r%d", k - 2);
			CHECK(gw_cbt_delete(t, prev2, err, sizeof(err)) == 0);
		}
		/* Changes since the remaining older one = the union of the last cycle. */
		snprintf(prev2, sizeof(prev2), "r%d", k - 1);
		CHECK(changes(t, prev2, name, &b) == 0);
		for (uint64_t i = 0; b && i < NBITS; i++)
			if (gw_cbt_bit(b, i) != truth[k][i]) {
				CHECK(!"rotation: wrong bit");
				break;
			}
		free(b);
	}
	/* A deleted middle checkpoint merges forward. */
	gw_cbt_mark(t, 0, 1);
	CHECK(gw_cbt_checkpoint(t, "m1", err, sizeof(err)) == 0);
	gw_cbt_mark(t, GRAN * 5, 1);
	CHECK(gw_cbt_checkpoint(t, "m2", err, sizeof(err)) == 0);
	gw_cbt_mark(t, GRAN * 9, 1);
	CHECK(gw_cbt_checkpoint(t, "m3", err, sizeof(err)) == 0);
	CHECK(gw_cbt_delete(t, "m2", err, sizeof(err)) == 0);
	{
		uint64_t *b = NULL;

		CHECK(changes(t, "m1", "m3", &b) == 0);
		for (uint64_t i = 0; b && i < NBITS; i++)
			CHECK(gw_cbt_bit(b, i) == (i == 5 || i == 9));
		free(b);
		CHECK(changes(t, "m2", "m3", &b) == -ENOENT);
	}
	gw_cbt_close(t, &stamp);
}

static void test_untrusted(void)
{
	struct gw_cbt *t;
	struct gw_cbt_stamp changed = stamp;
	char path[512], why[256], err[256];
	uint64_t *b = NULL;

	/* The image changed while nobody served it. */
	changed.mtime_ns = 2000;
	t = open_ok(&changed);
	CHECK(!current_trusted(t, why, sizeof(why)));
	CHECK(strstr(why, "changed while blkgw was not serving") != NULL);
	CHECK(changes(t, "m3", NULL, &b) == 1);
	free(b);
	/* Untrusted stays so across a checkpoint: the chain through it is not complete. */
	CHECK(gw_cbt_checkpoint(t, "u1", err, sizeof(err)) == 0);
	CHECK(changes(t, "m3", "u1", &b) == 1);
	free(b);
	CHECK(changes(t, "u1", NULL, &b) == 0);
	free(b);
	gw_cbt_close(t, &changed);

	/* The state file lost. */
	snprintf(path, sizeof(path), "%s/active.rec", dir);
	CHECK(unlink(path) == 0);
	t = open_ok(&changed);
	CHECK(!current_trusted(t, why, sizeof(why)));
	CHECK(strstr(why, "was lost") != NULL);
	CHECK(changes(t, "u1", NULL, &b) == 1);
	free(b);
	gw_cbt_close(t, &changed);

	/* Another size: the records are not opened as if they fit. */
	{
		struct gw_cbt *o = NULL;

		CHECK(gw_cbt_open(&o, dir, SIZE * 2, GRAN, NULL, err, sizeof(err)) == 0);
		CHECK(!current_trusted(o, why, sizeof(why)));
		gw_cbt_close(o, NULL);
	}
}

/* gw_mkdir_p creates every folder of a path, the last one too; gw_mkdir_parents all but the last.
 */
static void test_mkdir(void)
{
	char p[400];
	struct stat st;

	snprintf(p, sizeof(p), "%s/m/a/b", dir);
	CHECK(gw_mkdir_p(p) == 0);
	CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode));
	CHECK(gw_mkdir_p(p) == 0);
	snprintf(p, sizeof(p), "%s/m/x/y/", dir);
	CHECK(gw_mkdir_p(p) == 0);
	CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode));
	snprintf(p, sizeof(p), "%s/m/q/r/file", dir);
	CHECK(gw_mkdir_parents(p) == 0);
	CHECK(stat(p, &st) < 0 && errno == ENOENT);
	snprintf(p, sizeof(p), "%s/m/q/r", dir);
	CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode));
}

int main(void)
{
	snprintf(dir, sizeof(dir), "%s/blkgw-cbt.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_marks();
	test_kill();
	test_rotation();
	test_untrusted();
	test_mkdir();
	{
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return check_report();
}
