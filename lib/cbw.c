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
#include "lib/iov.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lib/worker.h"

#define STRIPES      64           /* locks; chunk i takes lock i % STRIPES */
#define READERS      2            /* threads that read the view for workers (gw_cbw_read_submit) */
#define UNIT_MIN     4096u        /* the smallest copy unit */
#define UNITS_MAX    (1ull << 28) /* bits in the copied map at most (32 MiB) */
#define COPY_MAX     (1u << 20)   /* bytes copied by one pread and pwrite at most */
#define WB_KICK      (4u << 20)   /* bytes copied aside between writeback starts */
#define STAGE_DEF    (32u << 20)  /* memory that copies waiting for the aside file may hold */
#define STAGE_BATCH  256u         /* staged units written out per turn (1 MiB of 4K units) */
#define STAGE_WAKE   (1u << 20)   /* staged bytes that wake the writer thread */
#define STAGE_LAG_MS 20           /* a smaller backlog waits at most this long */
#define NO_SLOT      UINT32_MAX

struct gw_cbw {
	int src, aside;
	char *aside_path;
	uint64_t size, nunits;
	uint32_t chunk, unit, per; /* per: units in a chunk */
	_Atomic uint64_t *copied;  /* one bit per copy unit */
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
	/* Writeback of the aside file, started early on its own thread. */
	pthread_t wb;
	pthread_cond_t wb_cv;
	bool wb_started, wb_kick;
	uint64_t wb_pending; /* bytes copied since the last kick (under q_mu) */
	/*
	 * Staged copies (under q_mu): units copied into memory that the same
	 * thread writes to the aside file. A unit is in `ht` (unit -> slot)
	 * from before its copied bit is set until its data is in the aside
	 * file; `ready` holds the slots whose data is complete, oldest first.
	 */
	uint64_t stage_max; /* bytes; 0: copies go straight to the aside file */
	char *smem;
	uint32_t nslots, nfree, nready, rhead;
	uint64_t *slot_unit; /* NO_UNIT: free */
	uint32_t *freel, *ready;
	uint32_t *ht, htmask;
	bool writing;            /* the thread is writing out a batch */
	bool flush_now;          /* gw_cbw_flush() waits: write out whatever is staged */
	_Atomic uint64_t staged; /* bytes in memory now */
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
	c->stage_max = STAGE_DEF;
	atomic_init(&c->refs, 1);
	c->size = size;
	c->chunk = chunk;
	/*
	 * The unit copied aside: 4K (a 4K guest write copies 4K, not the
	 * whole tracking chunk), larger only where the map would pass
	 * UNITS_MAX bits, never larger than the chunk.
	 */
	c->unit = GW_MIN(chunk, UNIT_MIN);
	while (c->unit < chunk && (size + c->unit - 1) / c->unit > UNITS_MAX)
		c->unit *= 2;
	c->per = chunk / c->unit;
	c->nunits = (size + c->unit - 1) / c->unit;
	c->copied = calloc((c->nunits + 63) / 64 + 1, sizeof(*c->copied));
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
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&c->wb_cv, &ca);
		pthread_condattr_destroy(&ca);
	}
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

/*
 * Read n bytes at off; past the file's end reads zeros. 0 or -errno;
 * flags RWF_NOWAIT: -EAGAIN where the read would have to wait (the data
 * is not in the page cache).
 */
static int pread_flags(int fd, char *p, uint64_t n, uint64_t off, int flags)
{
	while (n) {
		struct iovec v = { p, n };
		ssize_t r = flags ? preadv2(fd, &v, 1, (off_t)off, flags)
				  : pread(fd, p, n, (off_t)off);

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

static int pread_full(int fd, char *p, uint64_t n, uint64_t off)
{
	return pread_flags(fd, p, n, off, 0);
}

/* Drop the first n bytes of v[*k..cnt). */
static void iov_skip(struct iovec *v, unsigned cnt, unsigned *k, size_t n)
{
	while (n && *k < cnt) {
		size_t t = GW_MIN(n, v[*k].iov_len);

		v[*k].iov_base = (char *)v[*k].iov_base + t;
		v[*k].iov_len -= t;
		n -= t;
		if (!v[*k].iov_len)
			(*k)++;
	}
}

/* Fill v[0..cnt) from off; past the file's end with zeros. 0 or -errno. */
static int preadv_full(int fd, struct iovec *v, unsigned cnt, uint64_t off)
{
	unsigned k = 0;

	while (k < cnt) {
		ssize_t r = preadv(fd, v + k, (int)GW_MIN(cnt - k, 1024u), (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) { /* past the file's end: zeros */
			for (; k < cnt; k++)
				memset(v[k].iov_base, 0, v[k].iov_len);
			return 0;
		}
		off += (uint64_t)r;
		iov_skip(v, cnt, &k, (size_t)r);
	}
	return 0;
}

/* Write all of v[0..cnt) at off. 0 or -errno. */
static int pwritev_full(int fd, struct iovec *v, unsigned cnt, uint64_t off)
{
	unsigned k = 0;

	while (k < cnt) {
		ssize_t r = pwritev(fd, v + k, (int)GW_MIN(cnt - k, 1024u), (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		off += (uint64_t)r;
		iov_skip(v, cnt, &k, (size_t)r);
	}
	return 0;
}

/* ---- staged copies: the table unit -> slot, all under q_mu ---- */

#define NO_UNIT UINT64_MAX

static uint32_t ht_home(const struct gw_cbw *c, uint64_t unit)
{
	return (uint32_t)((unit * 0x9E3779B97F4A7C15ull) >> 32) & c->htmask;
}

static uint32_t stage_find(const struct gw_cbw *c, uint64_t unit)
{
	for (uint32_t h = ht_home(c, unit);; h = (h + 1) & c->htmask) {
		uint32_t s = c->ht[h];

		if (s == NO_SLOT || c->slot_unit[s] == unit)
			return s;
	}
}

static void stage_insert(struct gw_cbw *c, uint64_t unit, uint32_t slot)
{
	uint32_t h = ht_home(c, unit);

	while (c->ht[h] != NO_SLOT)
		h = (h + 1) & c->htmask;
	c->ht[h] = slot;
	c->slot_unit[slot] = unit;
}

/* Out of the table and free (linear probing: later entries of the cluster move back). */
static void stage_remove(struct gw_cbw *c, uint32_t slot)
{
	uint32_t h = ht_home(c, c->slot_unit[slot]);

	while (c->ht[h] != slot)
		h = (h + 1) & c->htmask;
	for (uint32_t j = (h + 1) & c->htmask; c->ht[j] != NO_SLOT; j = (j + 1) & c->htmask) {
		uint32_t home = ht_home(c, c->slot_unit[c->ht[j]]);

		/* j's entry may fill the hole if the hole lies between its home and j */
		if (((j - home) & c->htmask) >= ((j - h) & c->htmask)) {
			c->ht[h] = c->ht[j];
			h = j;
		}
	}
	c->ht[h] = NO_SLOT;
	c->slot_unit[slot] = NO_UNIT;
	c->freel[c->nfree++] = slot;
}

static bool stage_init(struct gw_cbw *c)
{
	uint32_t n, hs = 1;

	if (c->smem)
		return true;
	if (c->stage_max < c->unit)
		return false;
	n = (uint32_t)GW_MIN(c->stage_max / c->unit, 1u << 20);
	while (hs < 2 * n)
		hs <<= 1;
	c->smem = malloc((size_t)n * c->unit);
	c->slot_unit = malloc(n * sizeof(*c->slot_unit));
	c->freel = malloc(n * sizeof(*c->freel));
	c->ready = malloc(n * sizeof(*c->ready));
	c->ht = malloc(hs * sizeof(*c->ht));
	if (!c->smem || !c->slot_unit || !c->freel || !c->ready || !c->ht) {
		free(c->smem);
		free(c->slot_unit);
		free(c->freel);
		free(c->ready);
		free(c->ht);
		c->smem = NULL;
		c->stage_max = 0; /* copies go straight to the aside file */
		return false;
	}
	memset(c->ht, 0xff, hs * sizeof(*c->ht));
	for (uint32_t i = 0; i < n; i++) {
		c->slot_unit[i] = NO_UNIT;
		c->freel[i] = n - 1 - i;
	}
	c->nslots = c->nfree = n;
	c->htmask = hs - 1;
	return true;
}

static bool wb_start(struct gw_cbw *c);

/*
 * Under q_mu: n more bytes are in the aside file. Every WB_KICK of them,
 * the writer thread starts their writeback, so the aside file's dirty
 * pages never pile up to where the kernel throttles the guest's writes
 * (and the copies) to let writeback catch up.
 */
static void wb_account(struct gw_cbw *c, uint64_t n)
{
	c->wb_pending += n;
	if (c->wb_pending >= WB_KICK && !c->q_exit) {
		c->wb_pending = 0;
		c->wb_kick = wb_start(c);
		pthread_cond_signal(&c->wb_cv);
	}
}

/*
 * Write the oldest staged copies to the aside file, then drop them from
 * memory (a reader that then misses the table finds them in the file).
 * Called and returns with q_mu held.
 */
static void write_out(struct gw_cbw *c)
{
	uint32_t b[STAGE_BATCH], n = 0;
	uint64_t done = 0, bytes = 0;
	int rc = 0;

	while (n < STAGE_BATCH && c->nready) {
		b[n++] = c->ready[c->rhead];
		c->rhead = (c->rhead + 1) % c->nslots;
		c->nready--;
	}
	c->writing = true;
	pthread_mutex_unlock(&c->q_mu);
	pthread_rwlock_rdlock(&c->fds);
	for (uint32_t k = 0; k < n;) {
		/* A slot is this thread's until removed: its unit does not change. */
		uint64_t u = c->slot_unit[b[k]], at = u * c->unit, len = 0;
		struct iovec v[STAGE_BATCH];
		unsigned m = 0;

		/* Units next to each other in the file (a run copied at once) go out in one write.
		 */
		do {
			uint64_t l = GW_MIN(c->unit, c->size - (u + m) * c->unit);

			v[m] = (struct iovec){ c->smem + (size_t)b[k + m] * c->unit, l };
			len += l;
			m++;
		} while (k + m < n && c->slot_unit[b[k + m]] == u + m);
		k += m;
		bytes += len;
		if (rc < 0 || atomic_load(&c->stopped))
			continue;
		rc = pwritev_full(c->aside, v, m, at);
		if (rc < 0)
			broke(c, "writing %llu bytes at %llu to %s: %s", (unsigned long long)len,
			      (unsigned long long)at, c->aside_path, strerror(-rc));
		else
			done += len;
	}
	pthread_rwlock_unlock(&c->fds);
	pthread_mutex_lock(&c->q_mu);
	for (uint32_t k = 0; k < n; k++)
		stage_remove(c, b[k]);
	atomic_fetch_sub(&c->staged, bytes);
	c->writing = false;
	wb_account(c, done);
	if (!c->nready)
		c->flush_now = false;
	pthread_cond_broadcast(&c->wb_cv); /* gw_cbw_flush() waits on it too */
}

/* Has the writer thread work now? Under q_mu. */
static bool wb_due(const struct gw_cbw *c)
{
	return c->wb_kick || c->q_exit || (c->nready && c->flush_now) ||
	       (uint64_t)c->nready * c->unit >= STAGE_WAKE;
}

/*
 * The view's writer thread (nice 19): writes staged copies to the aside
 * file (at once from STAGE_WAKE bytes on, a smaller backlog within
 * STAGE_LAG_MS) and starts the aside file's writeback every WB_KICK bytes.
 */
static void *writeback_main(void *arg)
{
	struct gw_cbw *c = arg;

	gw_log_set_thread_name("cbw-wb");
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) < 0)
		gw_debug("cbw: cannot lower the writer thread's priority: %s", strerror(errno));
	pthread_mutex_lock(&c->q_mu);
	for (;;) {
		while (!wb_due(c)) {
			struct timespec t;

			if (!c->nready) {
				pthread_cond_wait(&c->wb_cv, &c->q_mu);
				continue;
			}
			clock_gettime(CLOCK_MONOTONIC, &t);
			t.tv_nsec += STAGE_LAG_MS * 1000000L;
			t.tv_sec += t.tv_nsec / 1000000000L;
			t.tv_nsec %= 1000000000L;
			if (pthread_cond_timedwait(&c->wb_cv, &c->q_mu, &t) == ETIMEDOUT)
				break;
		}
		if (c->q_exit)
			break;
		if (c->nready) {
			write_out(c);
			continue;
		}
		if (!c->wb_kick)
			continue;
		c->wb_kick = false;
		pthread_mutex_unlock(&c->q_mu);
		pthread_rwlock_rdlock(&c->fds);
		/* Start writeback of what is dirty, without waiting for it. */
		if (c->aside >= 0 && sync_file_range(c->aside, 0, 0, SYNC_FILE_RANGE_WRITE) < 0)
			gw_debug("cbw: sync_file_range: %s", strerror(errno));
		pthread_rwlock_unlock(&c->fds);
		pthread_mutex_lock(&c->q_mu);
	}
	pthread_mutex_unlock(&c->q_mu);
	return NULL;
}

/* Under q_mu: the writer thread runs (started at the first copy that needs it). */
static bool wb_start(struct gw_cbw *c)
{
	if (!c->wb_started && !c->q_exit)
		c->wb_started = pthread_create(&c->wb, NULL, writeback_main, c) == 0;
	return c->wb_started;
}

/*
 * Copy units i..j (n bytes at `at`) into memory for the writer thread to
 * write aside: 1 when done, 0 when staging is off or full (the caller
 * copies to the file itself), -errno when the read failed.
 */
static int copy_staged(struct gw_cbw *c, uint64_t i, uint64_t j, uint64_t at, uint64_t n)
{
	uint32_t slots[COPY_MAX / UNIT_MIN];
	struct iovec v[COPY_MAX / UNIT_MIN];
	unsigned cnt = (unsigned)(j + 1 - i);
	bool ok, wake;
	int rc;

	pthread_mutex_lock(&c->q_mu);
	ok = c->stage_max && stage_init(c) && c->nfree >= cnt && wb_start(c);
	for (unsigned k = 0; ok && k < cnt; k++) {
		slots[k] = c->freel[--c->nfree];
		/* In the table before the unit is marked: a reader that sees the mark finds it. */
		stage_insert(c, i + k, slots[k]);
	}
	pthread_mutex_unlock(&c->q_mu);
	if (!ok)
		return 0;
	for (unsigned k = 0; k < cnt; k++) /* n: whole units, the last one maybe short */
		v[k] = (struct iovec){ c->smem + (size_t)slots[k] * c->unit,
				       GW_MIN(c->unit, n - (uint64_t)k * c->unit) };
	rc = preadv_full(c->src, v, cnt, at);
	if (rc < 0)
		return rc; /* the slots stay taken: the view breaks */
	pthread_mutex_lock(&c->q_mu);
	wake = !c->nready; /* the writer thread may be asleep without a timeout */
	for (unsigned k = 0; k < cnt; k++)
		c->ready[(c->rhead + c->nready++) % c->nslots] = slots[k];
	atomic_fetch_add(&c->staged, n);
	if (wake || (uint64_t)c->nready * c->unit >= STAGE_WAKE)
		pthread_cond_signal(&c->wb_cv);
	pthread_mutex_unlock(&c->q_mu);
	return 1;
}

void gw_cbw_before_write(struct gw_cbw *c, uint64_t off, uint64_t len)
{
	uint64_t first, last, m, total = 0;
	char *buf = NULL;

	if (!len || off >= c->size || atomic_load(&c->stopped) || atomic_load(&c->broken))
		return;
	first = off / c->unit;
	last = GW_MIN((off + len - 1) / c->unit, c->nunits - 1);
	for (uint64_t i = first;; i++) {
		if (!is_copied(c, i))
			break;
		if (i == last)
			return; /* the usual case: nothing left to copy, no lock */
	}
	m = stripes(first, last);
	lock_all(c, m);
	/*
	 * Each run of units not copied yet goes aside with one read and one
	 * write (at most COPY_MAX at a time): a 4K write copies 4K.
	 */
	for (uint64_t i = first; i <= last;) {
		uint64_t j = i, at, n;
		int rc;

		if (atomic_load(&c->stopped) || atomic_load(&c->broken))
			break;
		if (is_copied(c, i)) {
			i++;
			continue;
		}
		while (j + 1 <= last && !is_copied(c, j + 1) &&
		       (j + 2 - i) * (uint64_t)c->unit <= COPY_MAX)
			j++;
		at = i * c->unit;
		n = GW_MIN((j + 1 - i) * (uint64_t)c->unit, c->size - at);
		rc = copy_staged(c, i, j, at, n);
		if (rc < 0) {
			broke(c, "copying %llu bytes at %llu aside: %s", (unsigned long long)n,
			      (unsigned long long)at, strerror(-rc));
			break;
		}
		if (rc > 0)
			goto copied;
		if (!buf)
			buf = malloc(GW_MIN((last + 1 - first) * (uint64_t)c->unit, COPY_MAX));
		if (!buf) {
			broke(c, "out of memory copying %llu bytes aside", (unsigned long long)n);
			break;
		}
		rc = pread_full(c->src, buf, n, at);
		if (rc == 0)
			rc = pwritev_full(c->aside, &(struct iovec){ buf, n }, 1, at);
		if (rc < 0) {
			broke(c, "copying %llu bytes at %llu aside to %s: %s",
			      (unsigned long long)n, (unsigned long long)at, c->aside_path,
			      strerror(-rc));
			break;
		}
		total += n; /* counts toward the writeback start */
copied:
		for (uint64_t k = i; k <= j; k++)
			atomic_fetch_or_explicit(&c->copied[k >> 6], 1ull << (k & 63),
						 memory_order_release);
		atomic_fetch_add(&c->bytes, n);
		i = j + 1;
	}
	free(buf);
	unlock_all(c, m);
	if (total) {
		pthread_mutex_lock(&c->q_mu);
		wb_account(c, total);
		pthread_mutex_unlock(&c->q_mu);
	}
}

/* Read [skip, skip+n) of the iovec's bytes from fd at off. */
static int read_into(int fd, const struct iovec *iov, unsigned iovcnt, uint64_t skip, uint64_t n,
		     uint64_t off, int flags)
{
	for (unsigned k = 0; k < iovcnt && n; k++) {
		uint64_t l = iov[k].iov_len, take;
		int rc;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		take = GW_MIN(l - skip, n);
		rc = pread_flags(fd, (char *)iov[k].iov_base + skip, take, off, flags);
		if (rc < 0)
			return rc;
		skip = 0;
		n -= take;
		off += take;
	}
	return n ? -EINVAL : 0;
}

/*
 * Read [off, off+n) of units already copied into the iovec's bytes from
 * skip on: from memory where they are still staged, from the aside file
 * where they are not (a copied unit leaves the table only once it is in
 * the file, and never goes back). The lock is held for a few units at a
 * time, so a guest's copy never waits long on a reader.
 */
static int read_aside(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t skip,
		      uint64_t n, uint64_t off, int flags)
{
	uint64_t pos = off, end = off + n;

	/* Nothing staged: every copied unit is in the file. Something staged: the table exists. */
	if (!atomic_load(&c->staged))
		return read_into(c->aside, iov, iovcnt, skip, n, off, flags);
	while (pos < end) {
		uint64_t miss;
		unsigned looked = 0;

		pthread_mutex_lock(&c->q_mu);
		while (pos < end && looked++ < 16) {
			uint64_t u = pos / c->unit, ue = GW_MIN((u + 1) * c->unit, end);
			uint32_t s = stage_find(c, u);

			if (s == NO_SLOT)
				break;
			gw_iov_from_buf(iov, iovcnt, skip + (pos - off),
					c->smem + (size_t)s * c->unit + (pos - u * c->unit),
					ue - pos);
			pos = ue;
		}
		for (miss = pos; miss < end && looked++ < 64;) {
			uint64_t u = miss / c->unit;

			if (stage_find(c, u) != NO_SLOT)
				break;
			miss = GW_MIN((u + 1) * c->unit, end);
		}
		pthread_mutex_unlock(&c->q_mu);
		if (miss > pos) {
			int rc = read_into(c->aside, iov, iovcnt, skip + (pos - off), miss - pos,
					   pos, flags);

			if (rc < 0)
				return rc;
			pos = miss;
		}
	}
	return 0;
}

/* The first unit in [i, end) whose copied bit is `want`, or end. */
static uint64_t find_unit(const struct gw_cbw *c, uint64_t i, uint64_t end, bool want)
{
	while (i < end) {
		uint64_t w = atomic_load_explicit(&c->copied[i >> 6], memory_order_acquire);

		w = (want ? w : ~w) >> (i & 63);
		if (w)
			return GW_MIN(i + (uint64_t)__builtin_ctzll(w), end);
		i = (i | 63) + 1;
	}
	return end;
}

static int view_read(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		     uint64_t len, int flags)
{
	uint64_t pos = off, end = off + len;
	int rc = 0;

	if (end > c->size || end < off)
		return -EINVAL;
	pthread_rwlock_rdlock(&c->fds); /* against gw_cbw_stop() closing them */
	if (atomic_load(&c->stopped) || atomic_load(&c->broken))
		rc = -EIO;
	/*
	 * No unit lock: a reader never holds up a writer (nor waits on one).
	 * A run of units not copied is read from the live image with one read
	 * and then checked again: a write to a unit is handed to the backend
	 * only after the unit is marked copied, so a unit whose mark is still
	 * clear after the read was read as it was; a unit marked by now has
	 * its old data in the aside file and is read again from there. A run
	 * already copied is read from the aside file.
	 */
	while (rc == 0 && pos < end) {
		uint64_t i = pos / c->unit, last = (end - 1) / c->unit + 1, j, stop;
		bool copied = is_copied(c, i);

		j = find_unit(c, i + 1, last, !copied);
		stop = GW_MIN(j * c->unit, end);
		rc = copied ? read_aside(c, iov, iovcnt, pos - off, stop - pos, pos, flags)
			    : read_into(c->src, iov, iovcnt, pos - off, stop - pos, pos, flags);
		atomic_thread_fence(memory_order_seq_cst);
		for (uint64_t k = i; rc == 0 && !copied && k < j;) {
			uint64_t a = find_unit(c, k, j, true), b, from, to;

			if (a == j)
				break;
			b = find_unit(c, a + 1, j, false);
			from = GW_MAX(a * c->unit, pos);
			to = GW_MIN(b * c->unit, stop);
			rc = read_aside(c, iov, iovcnt, from - off, to - from, from, flags);
			k = b;
		}
		pos = stop;
	}
	if (rc == 0 && atomic_load(&c->broken))
		rc = -EIO; /* a copy this read may have needed did not happen */
	pthread_rwlock_unlock(&c->fds);
	return rc;
}

int gw_cbw_read(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		uint64_t len)
{
	return view_read(c, iov, iovcnt, off, len, 0);
}

int gw_cbw_read_cached(struct gw_cbw *c, const struct iovec *iov, unsigned iovcnt, uint64_t off,
		       uint64_t len)
{
	int rc = view_read(c, iov, iovcnt, off, len, RWF_NOWAIT);

	/* A kernel or file system without RWF_NOWAIT reads: the caller's threads do. */
	return rc == -EOPNOTSUPP ? -EAGAIN : rc;
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

/* Chunk i counts as copied when any of its units is (its data then is the view's own). */
static bool copied_bit(const void *arg, uint64_t i)
{
	const struct gw_cbw *c = arg;
	uint64_t a = i * c->per, end = GW_MIN(a + c->per, c->nunits);

	return find_unit(c, a, end, true) < end;
}

uint64_t gw_cbw_copied_run(struct gw_cbw *c, uint64_t off, uint64_t len, bool *copied)
{
	uint64_t nchunks = (c->size + c->chunk - 1) / c->chunk;

	return gw_chunk_run(copied_bit, c, nchunks, c->chunk, c->size, off, len, copied);
}

uint32_t gw_cbw_unit(const struct gw_cbw *c)
{
	return c->unit;
}

uint64_t gw_cbw_copied(const struct gw_cbw *c)
{
	return atomic_load(&c->bytes);
}

uint64_t gw_cbw_staged(const struct gw_cbw *c)
{
	return atomic_load(&c->staged);
}

void gw_cbw_set_stage(struct gw_cbw *c, uint64_t bytes)
{
	pthread_mutex_lock(&c->q_mu);
	if (!c->smem)
		c->stage_max = bytes;
	pthread_mutex_unlock(&c->q_mu);
}

void gw_cbw_flush(struct gw_cbw *c)
{
	pthread_mutex_lock(&c->q_mu);
	c->flush_now = true;
	pthread_cond_broadcast(&c->wb_cv);
	while ((c->nready || c->writing) && c->wb_started && !c->q_exit)
		pthread_cond_wait(&c->wb_cv, &c->q_mu);
	pthread_mutex_unlock(&c->q_mu);
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
	pthread_cond_broadcast(&c->wb_cv);
	pthread_mutex_unlock(&c->q_mu);
	for (unsigned i = 0; i < c->nreaders; i++)
		pthread_join(c->readers[i], NULL);
	if (c->wb_started)
		pthread_join(c->wb, NULL);
	pthread_mutex_destroy(&c->q_mu);
	pthread_cond_destroy(&c->q_cv);
	pthread_cond_destroy(&c->wb_cv);
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_destroy(&c->lock[i]);
	pthread_mutex_destroy(&c->why_mu);
	pthread_rwlock_destroy(&c->fds);
	free(c->aside_path);
	free((void *)c->copied);
	free(c->smem);
	free(c->slot_unit);
	free(c->freel);
	free(c->ready);
	free(c->ht);
	free(c);
}
