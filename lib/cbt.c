#include "lib/cbt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/sockets.h"
#include "lib/util.h"

#define CBT_MAGIC   "BLKGWCBT"
#define CBT_VERSION 1
#define HDR_SIZE    4096u
#define MAX_RECORDS 1024

/* The record file's header (little-endian host layout; the file is local state). */
struct cbt_hdr {
	char magic[8];
	uint32_t version;
	uint32_t granularity;
	uint64_t image_size;
	uint64_t nbits;
	uint64_t seq;     /* order of records: higher is newer */
	int64_t created;  /* unix seconds: began (active) or ended (checkpoint) */
	uint32_t open;    /* a daemon has it open (0 after a clean close) */
	uint32_t pending; /* marks may exist that are not durable */
	uint32_t untrusted;
	uint32_t stamp_known;
	uint64_t stamp_size;
	int64_t stamp_mtime_ns;
	char boot_id[40];
	char name[GW_CBT_NAME_MAX + 1];
	char why[256];
};

struct rec {
	int fd;
	struct cbt_hdr *h; /* the mapping starts with the header */
	uint64_t *bits;
	size_t maplen;
};

struct gw_cbt {
	char *dir;
	uint64_t size;
	uint32_t granularity;
	unsigned shift;
	uint64_t nbits, nwords;
	pthread_rwlock_t lock; /* marks: read; checkpoints: write */
	struct rec *active;
	struct rec *ckpt[MAX_RECORDS]; /* oldest first */
	size_t nckpt;
	pthread_mutex_t mu; /* the pending protocol */
	uint64_t nset;      /* new marks so far */
	uint64_t nsynced;   /* nset as of the last complete sync */
	bool pending_durable;
};

uint64_t gw_chunk_run(bool (*bit)(const void *arg, uint64_t i), const void *arg, uint64_t nchunks,
		      uint32_t gran, uint64_t size, uint64_t off, uint64_t len, bool *set)
{
	uint64_t i = off / gran, end;

	*set = false;
	if (off >= size || !len)
		return 0;
	len = GW_MIN(len, size - off);
	*set = i < nchunks && bit(arg, i);
	end = (i + 1) * gran;
	while (end < off + len && ++i < nchunks && bit(arg, i) == *set)
		end += gran;
	return GW_MIN(end, off + len) - off;
}

bool gw_cbt_valid_name(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > GW_CBT_NAME_MAX || name[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static void boot_id(char *out, size_t len)
{
	FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");

	out[0] = '\0';
	if (f) {
		if (fgets(out, (int)len, f))
			out[strcspn(out, "\n")] = '\0';
		fclose(f);
	}
}

static size_t map_len(uint64_t nwords)
{
	return HDR_SIZE + ((nwords * 8 + 4095) & ~(size_t)4095);
}

static void rec_close(struct rec *r)
{
	if (!r)
		return;
	if (r->h)
		munmap(r->h, r->maplen);
	if (r->fd >= 0)
		close(r->fd);
	free(r);
}

static int sync_hdr(struct rec *r)
{
	return msync(r->h, HDR_SIZE, MS_SYNC) < 0 ? -errno : 0;
}

static int sync_all(struct rec *r)
{
	return msync(r->h, r->maplen, MS_SYNC) < 0 ? -errno : 0;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Map an existing record file, or create it (create: the file must not exist). */
static struct rec *rec_map(struct gw_cbt *t, const char *path, bool create, int *err)
{
	struct rec *r = calloc(1, sizeof(*r));
	struct stat st;
	size_t len = map_len(t->nwords);

	if (!r) {
		*err = -ENOMEM;
		return NULL;
	}
	r->fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0600);
	if (r->fd < 0)
		goto fail;
	if (fstat(r->fd, &st) < 0)
		goto fail;
	if (create) {
		if (ftruncate(r->fd, (off_t)len) < 0)
			goto fail;
	} else if ((uint64_t)st.st_size < HDR_SIZE) {
		errno = EBADMSG;
		goto fail;
	} else {
		len = (size_t)st.st_size;
	}
	r->maplen = len;
	r->h = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	if (r->h == MAP_FAILED) {
		r->h = NULL;
		goto fail;
	}
	r->bits = (uint64_t *)((char *)r->h + HDR_SIZE);
	if (create) {
		memcpy(r->h->magic, CBT_MAGIC, 8);
		r->h->version = CBT_VERSION;
		r->h->granularity = t->granularity;
		r->h->image_size = t->size;
		r->h->nbits = t->nbits;
		r->h->created = (int64_t)time(NULL);
	} else if (memcmp(r->h->magic, CBT_MAGIC, 8) != 0 || r->h->version != CBT_VERSION) {
		errno = EBADMSG;
		goto fail;
	} else if (r->h->granularity != t->granularity || r->h->image_size != t->size ||
		   r->h->nbits != t->nbits || map_len(t->nwords) > len) {
		/* Another geometry: the bits mean nothing now. */
		errno = ERANGE;
		goto fail;
	}
	return r;
fail:
	*err = -errno;
	rec_close(r);
	return NULL;
}

static void untrust(struct rec *r, const char *why)
{
	if (r->h->untrusted)
		return;
	r->h->untrusted = 1;
	snprintf(r->h->why, sizeof(r->h->why), "%s", why);
}

static int by_seq(const void *a, const void *b)
{
	const struct rec *x = *(struct rec *const *)a, *y = *(struct rec *const *)b;

	return x->h->seq < y->h->seq ? -1 : x->h->seq > y->h->seq;
}

static char *path_of(const struct gw_cbt *t, const char *file)
{
	char *p;

	return asprintf(&p, "%s/%s", t->dir, file) < 0 ? NULL : p;
}

static char *ckpt_path(const struct gw_cbt *t, const char *name)
{
	char *p;

	return asprintf(&p, "%s/ckpt.%s.rec", t->dir, name) < 0 ? NULL : p;
}

/* Load the checkpoints' records. Records of another geometry are dropped (renamed aside). */
static int load_ckpts(struct gw_cbt *t, char *err, size_t errlen)
{
	DIR *d = opendir(t->dir);
	struct dirent *de;

	if (!d) {
		gw_seterr(err, errlen, "cannot read %s: %s", t->dir, strerror(errno));
		return -errno;
	}
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		char *p;
		struct rec *r;
		int rc = 0;

		if (n < 10 || strncmp(de->d_name, "ckpt.", 5) != 0 ||
		    strcmp(de->d_name + n - 4, ".rec") != 0)
			continue;
		if (t->nckpt == MAX_RECORDS)
			break;
		p = path_of(t, de->d_name);
		r = p ? rec_map(t, p, false, &rc) : NULL;
		if (!r) {
			gw_warn("change tracking: ignoring %s: %s", p ? p : de->d_name,
				strerror(-rc));
			free(p);
			continue;
		}
		free(p);
		t->ckpt[t->nckpt++] = r;
	}
	closedir(d);
	qsort(t->ckpt, t->nckpt, sizeof(t->ckpt[0]), by_seq);
	return 0;
}

static uint64_t next_seq(const struct gw_cbt *t)
{
	uint64_t s = t->active ? t->active->h->seq : 0;

	for (size_t i = 0; i < t->nckpt; i++)
		s = GW_MAX(s, t->ckpt[i]->h->seq);
	return s + 1;
}

int gw_cbt_open(struct gw_cbt **out, const char *dir, uint64_t size, uint32_t granularity,
		const struct gw_cbt_stamp *now, char *err, size_t errlen)
{
	struct gw_cbt *t;
	char *ap = NULL, *np = NULL, bid[40];
	int rc;

	*out = NULL;
	if (!gw_is_pow2(granularity) || granularity < 512 || size == 0) {
		gw_seterr(err, errlen, "bad change granularity %u", granularity);
		return -EINVAL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->dir = strdup(dir);
	t->size = size;
	t->granularity = granularity;
	t->shift = (unsigned)__builtin_ctz(granularity);
	t->nbits = (size + granularity - 1) >> t->shift;
	t->nwords = (t->nbits + 63) / 64;
	pthread_rwlock_init(&t->lock, NULL);
	pthread_mutex_init(&t->mu, NULL);
	rc = t->dir ? gw_mkdir_parents(dir) : -ENOMEM; /* DIR itself is 0700 */
	if (rc == 0 && mkdir(dir, 0700) < 0 && errno != EEXIST)
		rc = -errno;
	if (rc < 0) {
		gw_seterr(err, errlen, "cannot create %s: %s", dir, strerror(-rc));
		goto fail;
	}
	rc = load_ckpts(t, err, errlen);
	if (rc < 0)
		goto fail;
	ap = path_of(t, "active.rec");
	np = path_of(t, "active.new");
	if (!ap || !np) {
		rc = -ENOMEM;
		goto fail;
	}
	/* A checkpoint interrupted after its new record was made: finish it. */
	if (access(ap, F_OK) < 0 && access(np, F_OK) == 0)
		rename(np, ap);
	unlink(np);
	boot_id(bid, sizeof(bid));
	rc = 0;
	t->active = rec_map(t, ap, false, &rc);
	if (!t->active) {
		bool lost = rc == -ENOENT && t->nckpt > 0, bad = rc != -ENOENT;
		char why[256];

		if (rc == -ENOENT)
			snprintf(why, sizeof(why),
				 "the record of changes since checkpoint %s was lost",
				 t->nckpt ? t->ckpt[t->nckpt - 1]->h->name : "?");
		else if (rc == -ERANGE)
			snprintf(why, sizeof(why),
				 "the record was made for another image size or granularity");
		else
			snprintf(why, sizeof(why), "the record %s was unreadable (%s)", ap,
				 strerror(-rc));
		if (rc != -ENOENT) {
			char *aside = NULL;

			if (asprintf(&aside, "%s.bad", ap) >= 0) {
				rename(ap, aside);
				free(aside);
			}
		}
		t->active = rec_map(t, ap, true, &rc);
		if (!t->active) {
			gw_seterr(err, errlen, "cannot create %s: %s", ap, strerror(-rc));
			goto fail;
		}
		t->active->h->seq = next_seq(t);
		if (lost || bad)
			untrust(t->active, why);
		if (now && now->known) {
			t->active->h->stamp_known = 1;
			t->active->h->stamp_size = now->size;
			t->active->h->stamp_mtime_ns = now->mtime_ns;
		}
	} else {
		struct cbt_hdr *h = t->active->h;

		if (h->open && h->pending && strcmp(h->boot_id, bid) != 0)
			untrust(t->active, "the host restarted while changes were being tracked, "
					   "before the record was durable");
		if (h->stamp_known && now && now->known &&
		    (h->stamp_size != now->size ||
		     (!h->open && h->stamp_mtime_ns != now->mtime_ns)))
			untrust(t->active, "the image changed while blkgw was not serving it "
					   "(size or modification time differ)");
	}
	t->active->h->open = 1;
	t->active->h->pending = 0;
	snprintf(t->active->h->boot_id, sizeof(t->active->h->boot_id), "%s", bid);
	rc = sync_all(t->active);
	if (rc == 0)
		rc = fsync_dir(dir);
	if (rc < 0) {
		gw_seterr(err, errlen, "cannot sync %s: %s", ap, strerror(-rc));
		goto fail;
	}
	free(ap);
	free(np);
	*out = t;
	return 0;
fail:
	free(ap);
	free(np);
	gw_cbt_close(t, NULL);
	return rc < 0 ? rc : -EIO;
}

void gw_cbt_close(struct gw_cbt *t, const struct gw_cbt_stamp *now)
{
	if (!t)
		return;
	if (t->active && t->active->h) {
		sync_all(t->active);
		if (now && now->known) {
			t->active->h->stamp_known = 1;
			t->active->h->stamp_size = now->size;
			t->active->h->stamp_mtime_ns = now->mtime_ns;
		}
		t->active->h->pending = 0;
		t->active->h->open = 0;
		sync_hdr(t->active);
	}
	rec_close(t->active);
	for (size_t i = 0; i < t->nckpt; i++)
		rec_close(t->ckpt[i]);
	pthread_rwlock_destroy(&t->lock);
	pthread_mutex_destroy(&t->mu);
	free(t->dir);
	free(t);
}

uint32_t gw_cbt_granularity(const struct gw_cbt *t)
{
	return t->granularity;
}

uint64_t gw_cbt_chunks(const struct gw_cbt *t)
{
	return t->nbits;
}

/* Set bits [a, b] of w; true when any was clear. Atomic per word; a set word costs a load. */
static bool set_range(uint64_t *w, uint64_t a, uint64_t b)
{
	bool fresh = false;

	for (uint64_t i = a >> 6; i <= b >> 6; i++) {
		uint64_t lo = i == a >> 6 ? a & 63 : 0, hi = i == b >> 6 ? b & 63 : 63;
		uint64_t m = (hi == 63 ? ~0ull : ((1ull << (hi + 1)) - 1)) & ~((1ull << lo) - 1);

		if ((__atomic_load_n(&w[i], __ATOMIC_RELAXED) & m) == m)
			continue;
		if ((__atomic_fetch_or(&w[i], m, __ATOMIC_RELAXED) & m) != m)
			fresh = true;
	}
	return fresh;
}

void gw_cbt_mark(struct gw_cbt *t, uint64_t off, uint64_t len)
{
	uint64_t a, b;

	if (!len || off >= t->size)
		return;
	if (len > t->size - off)
		len = t->size - off;
	a = off >> t->shift;
	b = (off + len - 1) >> t->shift;
	pthread_rwlock_rdlock(&t->lock);
	if (set_range(t->active->bits, a, b)) {
		pthread_mutex_lock(&t->mu);
		t->nset++;
		if (!t->pending_durable) {
			/* Before any write of a chunk not yet durable reaches the image. */
			t->active->h->pending = 1;
			if (sync_hdr(t->active) == 0)
				t->pending_durable = true;
		}
		pthread_mutex_unlock(&t->mu);
	}
	pthread_rwlock_unlock(&t->lock);
}

int gw_cbt_sync(struct gw_cbt *t)
{
	uint64_t n0;
	int rc;

	pthread_mutex_lock(&t->mu);
	n0 = t->nset;
	if (n0 == t->nsynced) {
		pthread_mutex_unlock(&t->mu);
		return 0;
	}
	pthread_mutex_unlock(&t->mu);
	pthread_rwlock_rdlock(&t->lock);
	rc = sync_all(t->active);
	if (rc == 0) {
		pthread_mutex_lock(&t->mu);
		if (n0 > t->nsynced)
			t->nsynced = n0;
		if (t->nset == n0 && t->pending_durable) {
			t->active->h->pending = 0; /* written back whenever: it is true now */
			t->pending_durable = false;
		}
		pthread_mutex_unlock(&t->mu);
	}
	pthread_rwlock_unlock(&t->lock);
	return rc;
}

static ssize_t find(const struct gw_cbt *t, const char *name)
{
	for (size_t i = 0; i < t->nckpt; i++)
		if (strcmp(t->ckpt[i]->h->name, name) == 0)
			return (ssize_t)i;
	return -1;
}

bool gw_cbt_has(struct gw_cbt *t, const char *name)
{
	bool r;

	pthread_rwlock_rdlock(&t->lock);
	r = find(t, name) >= 0;
	pthread_rwlock_unlock(&t->lock);
	return r;
}

int gw_cbt_checkpoint(struct gw_cbt *t, const char *name, char *err, size_t errlen)
{
	char *ap = path_of(t, "active.rec"), *np = path_of(t, "active.new"),
	     *cp = ckpt_path(t, name);
	struct rec *fresh = NULL, *old;
	int rc = 0;

	if (!ap || !np || !cp) {
		rc = -ENOMEM;
		goto out;
	}
	if (!gw_cbt_valid_name(name)) {
		gw_seterr(err, errlen,
			  "checkpoint name '%s' is not valid: use 1 to 64 letters, digits, '.', "
			  "'_' or '-', not starting with '.'",
			  name);
		rc = -EINVAL;
		goto out;
	}
	pthread_rwlock_wrlock(&t->lock);
	if (find(t, name) >= 0) {
		gw_seterr(err, errlen, "checkpoint '%s' exists already", name);
		rc = -EEXIST;
		goto unlock;
	}
	if (t->nckpt == MAX_RECORDS) {
		gw_seterr(err, errlen, "too many checkpoints (%d): delete old ones first",
			  MAX_RECORDS);
		rc = -ENOSPC;
		goto unlock;
	}
	unlink(np);
	fresh = rec_map(t, np, true, &rc);
	if (!fresh) {
		gw_seterr(err, errlen, "cannot create %s: %s", np, strerror(-rc));
		goto unlock;
	}
	old = t->active;
	fresh->h->seq = old->h->seq + 1;
	fresh->h->open = 1;
	memcpy(fresh->h->boot_id, old->h->boot_id, sizeof(fresh->h->boot_id));
	/* The old record, complete and durable, becomes the checkpoint's. */
	snprintf(old->h->name, sizeof(old->h->name), "%s", name);
	old->h->created = (int64_t)time(NULL);
	old->h->open = 0;
	old->h->pending = 0;
	if ((rc = sync_all(fresh)) < 0 || (rc = sync_all(old)) < 0) {
		gw_seterr(err, errlen, "cannot sync the change records: %s", strerror(-rc));
		goto undo;
	}
	if (rename(ap, cp) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "cannot rename %s: %s", ap, strerror(-rc));
		goto undo;
	}
	if (rename(np, ap) < 0) {
		rc = -errno;
		/* Reopening finishes this (active.new becomes active.rec). */
		gw_seterr(err, errlen, "cannot rename %s: %s", np, strerror(-rc));
		rename(cp, ap);
		goto undo;
	}
	fsync_dir(t->dir);
	t->ckpt[t->nckpt++] = old;
	t->active = fresh;
	pthread_mutex_lock(&t->mu);
	t->pending_durable = false;
	t->nsynced = t->nset;
	pthread_mutex_unlock(&t->mu);
	pthread_rwlock_unlock(&t->lock);
	goto out;
undo:
	old->h->name[0] = '\0';
	old->h->open = 1;
	rec_close(fresh);
	unlink(np);
unlock:
	pthread_rwlock_unlock(&t->lock);
out:
	free(ap);
	free(np);
	free(cp);
	return rc;
}

int gw_cbt_delete(struct gw_cbt *t, const char *name, char *err, size_t errlen)
{
	ssize_t i;
	struct rec *r, *next;
	char *cp = ckpt_path(t, name);
	int rc = 0;

	if (!cp)
		return -ENOMEM;
	pthread_rwlock_wrlock(&t->lock);
	i = find(t, name);
	if (i < 0) {
		gw_seterr(err, errlen, "no checkpoint '%s'", name);
		rc = -ENOENT;
		goto out;
	}
	r = t->ckpt[i];
	next = (size_t)i + 1 < t->nckpt ? t->ckpt[i + 1] : t->active;
	/* Merge forward: the next record then holds the changes since the one before. */
	for (uint64_t w = 0; w < t->nwords; w++)
		if (r->bits[w])
			__atomic_fetch_or(&next->bits[w], r->bits[w], __ATOMIC_RELAXED);
	if (r->h->untrusted)
		untrust(next, r->h->why);
	rc = sync_all(next);
	if (rc < 0) {
		gw_seterr(err, errlen, "cannot sync the change record: %s", strerror(-rc));
		goto out;
	}
	if (unlink(cp) < 0) {
		rc = -errno;
		gw_seterr(err, errlen, "cannot remove %s: %s", cp, strerror(-rc));
		goto out;
	}
	fsync_dir(t->dir);
	rec_close(r);
	memmove(&t->ckpt[i], &t->ckpt[i + 1], (t->nckpt - (size_t)i - 1) * sizeof(t->ckpt[0]));
	t->nckpt--;
out:
	pthread_rwlock_unlock(&t->lock);
	free(cp);
	return rc;
}

static uint64_t popcount(const struct rec *r, uint64_t nwords)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < nwords; w++)
		n += (uint64_t)__builtin_popcountll(__atomic_load_n(&r->bits[w], __ATOMIC_RELAXED));
	return n;
}

static void info_of(const struct gw_cbt *t, const struct rec *r, struct gw_cbt_info *o)
{
	memset(o, 0, sizeof(*o));
	snprintf(o->name, sizeof(o->name), "%s", r == t->active ? "" : r->h->name);
	o->created = r->h->created;
	o->dirty_chunks = popcount(r, t->nwords);
	o->trusted = !r->h->untrusted;
	snprintf(o->why, sizeof(o->why), "%s", r->h->untrusted ? r->h->why : "");
}

size_t gw_cbt_list(struct gw_cbt *t, struct gw_cbt_info *v, size_t cap)
{
	size_t n;

	pthread_rwlock_rdlock(&t->lock);
	n = t->nckpt + 1;
	for (size_t i = 0; i < t->nckpt && i < cap; i++)
		info_of(t, t->ckpt[i], &v[i]);
	if (t->nckpt < cap)
		info_of(t, t->active, &v[t->nckpt]);
	pthread_rwlock_unlock(&t->lock);
	return n;
}

int gw_cbt_changes(struct gw_cbt *t, const char *since, const char *upto, uint64_t **bits,
		   char *why, size_t whylen)
{
	ssize_t a, b;
	uint64_t *u;
	int rc = 0;

	*bits = NULL;
	u = calloc(t->nwords ? t->nwords : 1, 8);
	if (!u)
		return -ENOMEM;
	pthread_rwlock_rdlock(&t->lock);
	a = find(t, since);
	b = upto ? find(t, upto) : (ssize_t)t->nckpt;
	if (a < 0 || b < 0) {
		gw_seterr(why, whylen, "no checkpoint '%s'", a < 0 ? since : upto);
		rc = -ENOENT;
		goto out;
	}
	if (b <= a) {
		gw_seterr(why, whylen, "checkpoint '%s' is not older than '%s'", since,
			  upto ? upto : "now");
		rc = -EINVAL;
		goto out;
	}
	for (ssize_t i = a + 1; i <= b; i++) {
		struct rec *r = (size_t)i == t->nckpt ? t->active : t->ckpt[i];

		for (uint64_t w = 0; w < t->nwords; w++)
			u[w] |= __atomic_load_n(&r->bits[w], __ATOMIC_RELAXED);
		if (r->h->untrusted && rc == 0) {
			gw_seterr(why, whylen, "the record %s%s%s is not trusted: %s",
				  r == t->active ? "since the last checkpoint" : "of checkpoint '",
				  r == t->active ? "" : r->h->name, r == t->active ? "" : "'",
				  r->h->why);
			rc = 1;
		}
	}
out:
	pthread_rwlock_unlock(&t->lock);
	if (rc < 0)
		free(u);
	else
		*bits = u;
	return rc;
}
