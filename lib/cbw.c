#include "lib/cbw.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lib/cbt.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lib/worker.h"

#define STRIPES 64 /* locks; chunk i takes lock i % STRIPES */
#define READERS 2  /* threads that read the view for workers (gw_cbw_read_submit) */

struct gw_cbw {
	int src, aside;
	char *aside_path;
	uint64_t size, nchunks;
	uint32_t chunk;
	_Atomic uint64_t *copied; /* one bit per chunk */
	pthread_mutex_t lock[STRIPES];
	pthread_mutex_t why_mu;
	pthread_rwlock_t fds; /* readers hold it shared; gw_cbw_stop() to close src, aside */
	atomic_bool broken, stopped;
	_Atomic uint64_t bytes;
	char why[256];
	/* Reads queued for the view's threads (started at the first). */
	pthread_mutex_t q_mu;
	pthread_cond_t q_cv;
	struct gw_cbw_job *q_head, *q_tail;
	pthread_t readers[READERS];
	unsigned nreaders;
	bool q_exit;
	atomic_uint refs;
};

int gw_cbw_open(struct gw_cbw **out, const char *src_path, const char *aside_path, uint64_t size,
		uint32_t chunk, char *err, size_t errlen)
{
	struct gw_cbw *c = calloc(1, sizeof(*c));
	int rc;

	*out = NULL;
	if (!c)
		return -ENOMEM;
	c->src = c->aside = -1;
	atomic_init(&c->refs, 1);
	c->size = size;
	c->chunk = chunk;
	c->nchunks = (size + chunk - 1) / chunk;
	c->copied = calloc((c->nchunks + 63) / 64 + 1, sizeof(*c->copied));
	c->aside_path = strdup(aside_path);
	if (!c->copied || !c->aside_path) {
		rc = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_init(&c->lock[i], NULL);
	pthread_mutex_init(&c->why_mu, NULL);
	pthread_rwlock_init(&c->fds, NULL);
	pthread_mutex_init(&c->q_mu, NULL);
	pthread_cond_init(&c->q_cv, NULL);
	c->src = open(src_path, O_RDONLY | O_CLOEXEC);
	if (c->src < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot open %s: %s", src_path, strerror(-rc));
		goto fail;
	}
	c->aside = open(aside_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (c->aside < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot create %s: %s", aside_path, strerror(-rc));
		goto fail;
	}
	*out = c;
	return 0;
fail:
	if (c->src >= 0)
		close(c->src);
	free(c->aside_path);
	free(c->copied);
	free(c);
	return rc;
}

static bool is_copied(const struct gw_cbw *c, uint64_t i)
{
	return (atomic_load_explicit(&c->copied[i >> 6], memory_order_acquire) >> (i & 63)) & 1;
}

/* The locks of chunks first..last, as a mask of lock numbers. */
static uint64_t stripes(uint64_t first, uint64_t last)
{
	uint64_t m = 0;

	if (last - first + 1 >= STRIPES)
		return ~0ull;
	for (uint64_t i = first; i <= last; i++)
		m |= 1ull << (i % STRIPES);
	return m;
}

/* Always in increasing order: two threads never wait on each other's. */
static void lock_all(struct gw_cbw *c, uint64_t m)
{
	for (unsigned s = 0; s < STRIPES; s++)
		if ((m >> s) & 1)
			pthread_mutex_lock(&c->lock[s]);
}

static void unlock_all(struct gw_cbw *c, uint64_t m)
{
	for (unsigned s = 0; s < STRIPES; s++)
		if ((m >> s) & 1)
			pthread_mutex_unlock(&c->lock[s]);
}

static void broke(struct gw_cbw *c, const char *fmt, ...) GW_PRINTF(2, 3);
static void broke(struct gw_cbw *c, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&c->why_mu);
	if (!atomic_load(&c->broken)) {
		va_start(ap, fmt);
		vsnprintf(c->why, sizeof(c->why), fmt, ap);
		va_end(ap);
		atomic_store(&c->broken, true);
	}
	pthread_mutex_unlock(&c->why_mu);
}

/* Read n bytes at off; past the file's end reads zeros. 0 or -errno. */
static int pread_full(int fd, char *p, uint64_t n, uint64_t off)
{
	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) {
			memset(p, 0, n);
			return 0;
		}
		p += r;
		n -= (uint64_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

static int pwrite_full(int fd, const char *p, uint64_t n, uint64_t off)
{
	while (n) {
		ssize_t r = pwrite(fd, p, n, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		n -= (uint64_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

void gw_cbw_before_write(struct gw_cbw *c, uint64_t off, uint64_t len)
{
	uint64_t first, last, m;
	char *buf;

	if (!len || off >= c->size || atomic_load(&c->stopped) || atomic_load(&c->broken))
		return;
	first = off / c->chunk;
	last = GW_MIN((off + len - 1) / c->chunk, c->nchunks - 1);
	for (uint64_t i = first;; i++) {
		if (!is_copied(c, i))
			break;
		if (i == last)
			return; /* the usual case: nothing left to copy, no lock */
	}
	m = stripes(first, last);
	lock_all(c, m);
	buf = atomic_load(&c->stopped) || atomic_load(&c->broken) ? NULL : malloc(c->chunk);
	if (!buf && !atomic_load(&c->stopped) && !atomic_load(&c->broken))
		broke(c, "out of memory copying a chunk aside");
	for (uint64_t i = first; buf && i <= last; i++) {
		uint64_t at = i * c->chunk, n = GW_MIN((uint64_t)c->chunk, c->size - at);
		int rc;

		if (is_copied(c, i))
			continue;
		rc = pread_full(c->src, buf, n, at);
		if (rc == 0)
			rc = pwrite_full(c->aside, buf, n, at);
		if (rc < 0) {
			broke(c, "copying %llu bytes at %llu aside to %s: %s",
			      (unsigned long long)n, (unsigned long long)at, c->aside_path,
			      strerror(-rc));
			break;
		}
		atomic_fetch_or_explicit(&c->copied[i >> 6], 1ull << (i & 63),
					 memory_order_release);
		atomic_fetch_add(&c->bytes, n);
	}
	free(buf);
	unlock_all(c, m);
}

/* Read [skip, skip+n) of the iovec's bytes from fd at off. */
static int read_into(int fd, const struct iovec *iov, unsigned iovcnt, uint64_t skip, uint64_t n,
		     uint64_t off)
{
	for (unsigned k = 0; k < iovcnt && n; k++) {
		uint64_t l = iov[k].iov_len, take;
		int rc;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		take = GW_MIN(l - skip, n);
		rc = pread_full(fd, (char *)iov[k].iov_base + skip, take, off);
		if (rc < 0)
			return rc;
		skip = 0;
		n -= take;
		off += take;
	}
	return n ? -EINVAL : 0;
}

int gw_cbw_read(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		uint64_t len)
{
	uint64_t pos = off, end = off + len;
	int rc = 0;

	if (end > c->size || end < off)
		return -EINVAL;
	pthread_rwlock_rdlock(&c->fds); /* against gw_cbw_stop() closing them */
	if (atomic_load(&c->stopped) || atomic_load(&c->broken))
		rc = -EIO;
	/*
	 * No chunk lock: a reader never holds up a writer (nor waits on one).
	 * A chunk not copied is read from the live image and then checked
	 * again: a write to it is handed to the backend only after the chunk
	 * is marked copied, so if the mark is still clear after the read, the
	 * read saw the old data; if it is set now, the old data is in the aside
	 * file, read again from there.
	 */
	while (rc == 0 && pos < end) {
		uint64_t i = pos / c->chunk, stop = GW_MIN((i + 1) * c->chunk, end);
		bool copied = is_copied(c, i);

		rc = read_into(copied ? c->aside : c->src, iov, iovcnt, pos - off, stop - pos, pos);
		atomic_thread_fence(memory_order_seq_cst);
		if (rc == 0 && !copied && is_copied(c, i))
			rc = read_into(c->aside, iov, iovcnt, pos - off, stop - pos, pos);
		pos = stop;
	}
	if (rc == 0 && atomic_load(&c->broken))
		rc = -EIO; /* a copy this read may have needed did not happen */
	pthread_rwlock_unlock(&c->fds);
	return rc;
}

static void *reader_main(void *arg)
{
	struct gw_cbw *c = arg;

	gw_log_set_thread_name("cbw-read");
	/*
	 * A backup is background work: on a busy host the guest's requests go
	 * first. The lowest scheduling weight for this thread only (Linux
	 * applies the nice value of a thread id to that thread).
	 */
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) < 0)
		gw_debug("cbw: cannot lower the reader's priority: %s", strerror(errno));
	pthread_mutex_lock(&c->q_mu);
	for (;;) {
		struct gw_cbw_job *j;

		while (!c->q_head && !c->q_exit)
			pthread_cond_wait(&c->q_cv, &c->q_mu);
		if (!c->q_head)
			break;
		j = c->q_head;
		c->q_head = j->next;
		if (!c->q_head)
			c->q_tail = NULL;
		pthread_mutex_unlock(&c->q_mu);
		j->result = gw_cbw_read(c, j->iov, j->iovcnt, j->off, j->len);
		/* The mailbox allocates: on the rare failure, try again shortly. */
		while (gw_worker_call(j->w, j->done, j->arg) < 0)
			usleep(1000);
		pthread_mutex_lock(&c->q_mu);
	}
	pthread_mutex_unlock(&c->q_mu);
	return NULL;
}

int gw_cbw_read_submit(struct gw_cbw *c, struct gw_cbw_job *job)
{
	int rc = 0;

	job->next = NULL;
	pthread_mutex_lock(&c->q_mu);
	while (c->nreaders < READERS && !c->q_exit) {
		if (pthread_create(&c->readers[c->nreaders], NULL, reader_main, c) != 0)
			break;
		c->nreaders++;
	}
	if (!c->nreaders || c->q_exit) {
		rc = -ENOMEM;
	} else {
		if (c->q_tail)
			c->q_tail->next = job;
		else
			c->q_head = job;
		c->q_tail = job;
		pthread_cond_signal(&c->q_cv);
	}
	pthread_mutex_unlock(&c->q_mu);
	return rc;
}

static bool copied_bit(const void *c, uint64_t i)
{
	return is_copied(c, i);
}

uint64_t gw_cbw_copied_run(struct gw_cbw *c, uint64_t off, uint64_t len, bool *copied)
{
	return gw_chunk_run(copied_bit, c, c->nchunks, c->chunk, c->size, off, len, copied);
}

uint64_t gw_cbw_copied(const struct gw_cbw *c)
{
	return atomic_load(&c->bytes);
}

bool gw_cbw_broken(struct gw_cbw *c, char *why, size_t len)
{
	bool b;

	pthread_mutex_lock(&c->why_mu);
	b = atomic_load(&c->broken);
	if (b && why)
		snprintf(why, len, "%s", c->why);
	pthread_mutex_unlock(&c->why_mu);
	return b;
}

void gw_cbw_stop(struct gw_cbw *c)
{
	if (!c)
		return;
	lock_all(c, ~0ull);
	pthread_rwlock_wrlock(&c->fds);
	if (!atomic_load(&c->stopped)) {
		atomic_store(&c->stopped, true);
		close(c->src);
		close(c->aside);
		c->src = c->aside = -1;
		unlink(c->aside_path);
	}
	pthread_rwlock_unlock(&c->fds);
	unlock_all(c, ~0ull);
}

struct gw_cbw *gw_cbw_get(struct gw_cbw *c)
{
	if (c)
		atomic_fetch_add(&c->refs, 1);
	return c;
}

void gw_cbw_put(struct gw_cbw *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	gw_cbw_stop(c);
	/* Queued reads finish first (a stopped view fails them), then the threads go. */
	pthread_mutex_lock(&c->q_mu);
	c->q_exit = true;
	pthread_cond_broadcast(&c->q_cv);
	pthread_mutex_unlock(&c->q_mu);
	for (unsigned i = 0; i < c->nreaders; i++)
		pthread_join(c->readers[i], NULL);
	pthread_mutex_destroy(&c->q_mu);
	pthread_cond_destroy(&c->q_cv);
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_destroy(&c->lock[i]);
	pthread_mutex_destroy(&c->why_mu);
	pthread_rwlock_destroy(&c->fds);
	free(c->aside_path);
	free((void *)c->copied);
	free(c);
}
