/* SPDX-License-Identifier: MIT */
/*
 * fio external ioengine: drive a vhost-user-blk backend from the host,
 * without a VM, through blkgw's own frontend library (vu_client).
 *
 *   fio --thread --ioengine=external:/path/fio-vhost-user-blk.so \
 *       --vhost_socket=/run/vu.sock --name=j --rw=randread --bs=4k ...
 *
 * A vhost-user-blk backend serves one frontend connection, so every job
 * that names the same socket shares one connection (and one shared memory
 * region), and each job drives its own virtqueue. Sharing a connection
 * needs the jobs to be threads of one process (--thread); a single job
 * also works in fio's default process mode.
 *
 * Life cycle, in fio's order:
 *   setup()        main thread: connect (once per socket), GET_CONFIG for the
 *                  size, register the job and its shared-memory needs.
 *   init()         job thread: start the connection (SET_FEATURES and
 *                  SET_MEM_TABLE, once), claim and enable a virtqueue.
 *   iomem_alloc()  job thread: the job's I/O buffers, from the shared memory.
 *   queue/commit/getevents/event: the data path, on the job's queue only.
 *   cleanup()      job thread: stop the queue (GET_VRING_BASE); the last job
 *                  on a socket closes the connection.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fio.h"
#include "optgroup.h"

#include "vu_client.h"

#define VHOST_DEFAULT_TIMEOUT_S   60
#define VHOST_MAX_AUTO_QUEUE_SIZE 1024u

enum vhost_trim_mode {
	VHOST_TRIM_DISCARD = 0,
	VHOST_TRIM_ZEROES = 1,
	VHOST_TRIM_ZEROES_UNMAP = 2,
};

struct vhost_options {
	void *pad; /* fio stores the thread_data pointer here */
	char *socket;
	unsigned int queues;
	int queue;
	unsigned long long mem;
	unsigned int queue_size;
	unsigned int poll;
	unsigned int spin_us;
	unsigned int trim_mode;
	unsigned int timeout;
	unsigned int connect_timeout;
	unsigned int trace;
	unsigned int no_event_idx;
	unsigned int no_flush;
};

static struct fio_option options[] = {
	{
		.name = "vhost_socket",
		.lname = "vhost-user socket",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct vhost_options, socket),
		.help = "Path of the vhost-user-blk backend's unix socket",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_queues",
		.lname = "vhost-user queues",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct vhost_options, queues),
		.def = "0",
		.help = "Virtqueues jobs may use on the connection (0: all the "
			"backend offers); each job needs its own",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_queue",
		.lname = "vhost-user queue index",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct vhost_options, queue),
		.def = "-1",
		.minval = -1,
		.maxval = 65535,
		.help = "Virtqueue index for this job (-1: first free one)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_mem",
		.lname = "vhost-user shared memory size",
		.type = FIO_OPT_STR_VAL,
		.off1 = offsetof(struct vhost_options, mem),
		.def = "0",
		.help = "Size of the shared memory region for rings and buffers of "
			"all jobs on the socket (0: computed from the jobs)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_queue_size",
		.lname = "vhost-user queue size",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct vhost_options, queue_size),
		.def = "0",
		.help = "Virtqueue size, a power of two (0: fit iodepth, max 1024)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_poll",
		.lname = "vhost-user poll completions",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct vhost_options, poll),
		.def = "0",
		.help = "Busy-poll the used ring instead of sleeping on the call "
			"eventfd (lower latency, burns a CPU)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_spin_us",
		.lname = "vhost-user spin before sleeping",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct vhost_options, spin_us),
		.def = "0",
		.maxval = 1000000,
		.help = "Look at the used ring for up to this many microseconds "
			"before sleeping on the call eventfd (0: sleep at once)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_trim",
		.lname = "vhost-user trim mapping",
		.type = FIO_OPT_STR,
		.off1 = offsetof(struct vhost_options, trim_mode),
		.def = "discard",
		.help = "Which virtio-blk request a fio trim becomes",
		.posval = {
			{ .ival = "discard", .oval = VHOST_TRIM_DISCARD,
			  .help = "VIRTIO_BLK_T_DISCARD" },
			{ .ival = "write_zeroes", .oval = VHOST_TRIM_ZEROES,
			  .help = "VIRTIO_BLK_T_WRITE_ZEROES" },
			{ .ival = "write_zeroes_unmap", .oval = VHOST_TRIM_ZEROES_UNMAP,
			  .help = "VIRTIO_BLK_T_WRITE_ZEROES with the UNMAP flag" },
		},
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_timeout",
		.lname = "vhost-user completion timeout",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct vhost_options, timeout),
		.def = "60",
		.help = "Fail the job when the backend completes nothing for this "
			"many seconds while requests are in flight (0: wait forever)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_connect_timeout",
		.lname = "vhost-user connect timeout",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct vhost_options, connect_timeout),
		.def = "0",
		.help = "Keep retrying to connect for this many seconds while the "
			"socket does not exist or refuses",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_trace",
		.lname = "vhost-user message trace",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct vhost_options, trace),
		.def = "0",
		.help = "Log vhost-user messages and per-queue statistics to stderr",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_no_event_idx",
		.lname = "vhost-user without EVENT_IDX",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct vhost_options, no_event_idx),
		.def = "0",
		.help = "Do not negotiate VIRTIO_RING_F_EVENT_IDX",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "vhost_no_flush",
		.lname = "vhost-user without FLUSH",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct vhost_options, no_flush),
		.def = "0",
		.help = "Do not negotiate VIRTIO_BLK_F_FLUSH (syncs become no-ops)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = NULL,
	},
};

/* One connection per socket path, shared by every job of this process. */
struct vhost_conn {
	struct vhost_conn *next;
	char *path;
	struct vu_client *c;
	unsigned int jobs;       /* jobs registered in setup() */
	unsigned int refs;       /* jobs that have not cleaned up yet */
	uint64_t mem_need;       /* sum of the jobs' shared-memory estimates */
	uint64_t mem_size;       /* what the connection was started with */
	uint64_t first_features; /* to refuse mixing feature choices */
};

static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vhost_conn *conns;

struct vhost_td {
	struct vhost_conn *conn;
	struct vu_queue *q;
	struct vu_blk_cpl *cpl;
	struct io_u **events;
	unsigned int nevents;
	unsigned int qsize;
	bool registered;
	bool reported_proto;
};

static uint64_t want_features(const struct vhost_options *o)
{
	uint64_t f = VU_BLK_SUPPORTED_FEATURES;

	if (o->no_event_idx)
		f &= ~VU_BIT(VU_F_EVENT_IDX);
	if (o->no_flush)
		f &= ~(VU_BIT(VU_BLK_F_FLUSH) | VU_BIT(VU_BLK_F_CONFIG_WCE));
	return f;
}

static unsigned int roundup_pow2(unsigned long long v)
{
	unsigned int p = 1;

	while (p < v && p < (1u << 15))
		p <<= 1;
	return p;
}

/* Descriptors one request of max_bs bytes takes: header, data, status. */
static unsigned long long descs_per_io(const struct vu_client_info *in, unsigned long long max_bs)
{
	unsigned long long seg = in->cfg.size_max >= 512 ? in->cfg.size_max & ~511ULL : 1ULL << 30;

	return 2 + (max_bs + seg - 1) / seg;
}

static unsigned int pick_queue_size(struct thread_data *td, const struct vu_client_info *in)
{
	struct vhost_options *o = td->eo;
	unsigned long long need;

	if (o->queue_size)
		return o->queue_size;
	need = (unsigned long long)td->o.iodepth * descs_per_io(in, td_max_bs(td));
	if (need < 16)
		need = 16;
	if (need > VHOST_MAX_AUTO_QUEUE_SIZE) {
		log_info("fio: vhost-user-blk: job %s: iodepth %u needs %llu "
			 "descriptors; the queue size is capped at %u, so at most "
			 "%llu requests will be in flight (vhost_queue_size= raises it)\n",
			 td->o.name, td->o.iodepth, need, VHOST_MAX_AUTO_QUEUE_SIZE,
			 VHOST_MAX_AUTO_QUEUE_SIZE / descs_per_io(in, td_max_bs(td)));
		need = VHOST_MAX_AUTO_QUEUE_SIZE;
	}
	return roundup_pow2(need);
}

static int check_options(struct thread_data *td)
{
	struct vhost_options *o = td->eo;

	if (!o->socket || !*o->socket) {
		log_err("fio: vhost-user-blk: vhost_socket= (the backend's unix "
			"socket path) is required\n");
		return 1;
	}
	if (o->queue_size &&
	    (o->queue_size < 2 || o->queue_size > 32768 || (o->queue_size & (o->queue_size - 1)))) {
		log_err("fio: vhost-user-blk: vhost_queue_size=%u must be a power "
			"of two in 2..32768\n",
			o->queue_size);
		return 1;
	}
	if (td->o.nr_files > 1) {
		log_err("fio: vhost-user-blk: one job drives one disk; nrfiles=%u "
			"is not supported\n",
			td->o.nr_files);
		return 1;
	}
	return 0;
}

/* Find or create the connection for o->socket. Call with conns_lock. */
static struct vhost_conn *conn_get(struct thread_data *td)
{
	struct vhost_options *o = td->eo;
	struct vu_client_opts copts = { 0 };
	struct vhost_conn *cn;
	char err[256];
	int r;

	for (cn = conns; cn; cn = cn->next)
		if (!strcmp(cn->path, o->socket))
			break;
	if (cn) {
		if (cn->first_features != want_features(o)) {
			log_err("fio: vhost-user-blk: %s: jobs sharing a socket must "
				"agree on vhost_no_event_idx and vhost_no_flush\n",
				o->socket);
			return NULL;
		}
		return cn;
	}
	cn = calloc(1, sizeof(*cn));
	if (!cn || !(cn->path = strdup(o->socket))) {
		free(cn);
		log_err("fio: vhost-user-blk: out of memory\n");
		return NULL;
	}
	copts.want_features = want_features(o);
	copts.connect_timeout_ms = o->connect_timeout * 1000u;
	copts.trace = o->trace != 0;
	r = vu_client_connect(o->socket, &copts, &cn->c, err, sizeof(err));
	if (r < 0) {
		log_err("fio: vhost-user-blk: %s: %s\n", o->socket, err);
		free(cn->path);
		free(cn);
		return NULL;
	}
	cn->first_features = copts.want_features;
	cn->next = conns;
	conns = cn;
	return cn;
}

/* Drop one job's reference. Call with conns_lock. */
static void conn_put(struct vhost_conn *cn)
{
	struct vhost_conn **pp;

	if (--cn->refs)
		return;
	for (pp = &conns; *pp; pp = &(*pp)->next) {
		if (*pp == cn) {
			*pp = cn->next;
			break;
		}
	}
	vu_client_close(cn->c);
	free(cn->path);
	free(cn);
}

static int vhost_setup(struct thread_data *td)
{
	struct vhost_options *o = td->eo;
	const struct vu_client_info *in;
	struct vhost_td *vd;
	struct vhost_conn *cn;
	struct fio_file *f;
	uint64_t est;

	if (td->io_ops_data)
		return 0;
	if (check_options(td))
		return 1;
	if (!td->files_index) {
		add_file(td, "vhost-user-blk", 0, 0);
		td->o.nr_files = td->o.nr_files ?: 1;
		td->o.open_files++;
	}
	f = td->files[0];

	vd = calloc(1, sizeof(*vd));
	if (!vd) {
		log_err("fio: vhost-user-blk: out of memory\n");
		return 1;
	}

	pthread_mutex_lock(&conns_lock);
	cn = conn_get(td);
	if (!cn) {
		pthread_mutex_unlock(&conns_lock);
		free(vd);
		return 1;
	}
	in = vu_client_info(cn->c);
	cn->jobs++;
	cn->refs++;
	vd->conn = cn;
	vd->registered = true;
	vd->qsize = pick_queue_size(td, in);
	/* Rings + this job's buffers, as fio will size them, plus slack. */
	est = vu_queue_mem_size(vd->qsize) + td_max_bs(td) * (unsigned long long)td->o.iodepth +
	      2 * (uint64_t)page_size + td->o.mem_align + (64u << 10);
	cn->mem_need += est;
	pthread_mutex_unlock(&conns_lock);
	td->io_ops_data = vd;

	f->real_file_size = in->cfg.capacity * 512ULL;
	fio_file_set_size_known(f);

	if (td_write(td) && (in->features & VU_BIT(VU_BLK_F_RO))) {
		log_err("fio: vhost-user-blk: %s: the backend is read-only "
			"(VIRTIO_BLK_F_RO), but job %s writes\n",
			o->socket, td->o.name);
		return 1;
	}
	if (td_trim(td)) {
		unsigned int bit = o->trim_mode == VHOST_TRIM_DISCARD ? VU_BLK_F_DISCARD
								      : VU_BLK_F_WRITE_ZEROES;

		if (!(in->features & VU_BIT(bit))) {
			log_err("fio: vhost-user-blk: %s: trim maps to %s, which the "
				"backend does not offer\n",
				o->socket, vu_blk_feature_name(bit));
			return 1;
		}
	}
	return 0;
}

static int vhost_init(struct thread_data *td)
{
	struct vhost_options *o = td->eo;
	struct vhost_td *vd = td->io_ops_data;
	const struct vu_client_info *in;
	struct vhost_conn *cn;
	unsigned int nq, i, flags = o->poll ? VU_QUEUE_POLL : 0;
	int r = -EBUSY;

	if (!vd || !vd->conn) {
		log_err("fio: vhost-user-blk: init without setup\n");
		return 1;
	}
	cn = vd->conn;
	in = vu_client_info(cn->c);

	if (!td->o.use_thread && cn->jobs > 1) {
		log_err("fio: vhost-user-blk: %u jobs use the socket %s, and a "
			"vhost-user-blk backend accepts only one frontend "
			"connection, so they must share one: run fio with --thread "
			"(or thread=1 in the job file)\n",
			cn->jobs, o->socket);
		return 1;
	}

	nq = in->max_queues;
	if (o->queues) {
		if (o->queues > in->max_queues) {
			log_err("fio: vhost-user-blk: vhost_queues=%u, but the "
				"backend at %s has only %u queue%s\n",
				o->queues, o->socket, in->max_queues,
				in->max_queues == 1 ? "" : "s");
			return 1;
		}
		nq = o->queues;
	}

	pthread_mutex_lock(&conns_lock);
	if (!vu_client_started(cn->c)) {
		uint64_t mem = o->mem ? o->mem : cn->mem_need + (1u << 20);

		r = vu_client_start(cn->c, mem);
		if (r < 0) {
			log_err("fio: vhost-user-blk: %s: starting the device: %s\n", o->socket,
				vu_client_errmsg(cn->c));
			pthread_mutex_unlock(&conns_lock);
			return 1;
		}
		cn->mem_size = mem;
	}
	if (o->queue >= 0) {
		if ((unsigned int)o->queue >= nq) {
			log_err("fio: vhost-user-blk: vhost_queue=%d is out of range: "
				"%u queue%s usable on %s\n",
				o->queue, nq, nq == 1 ? "" : "s", o->socket);
			pthread_mutex_unlock(&conns_lock);
			return 1;
		}
		r = vu_queue_open(cn->c, (unsigned int)o->queue, vd->qsize, flags, &vd->q);
	} else {
		for (i = 0; i < nq; i++) {
			r = vu_queue_open(cn->c, i, vd->qsize, flags, &vd->q);
			if (r != -EBUSY)
				break;
		}
	}
	pthread_mutex_unlock(&conns_lock);
	if (r == -EBUSY && o->queue < 0) {
		log_err("fio: vhost-user-blk: job %s: all %u virtqueue%s usable on "
			"%s are taken by other jobs; each job needs its own queue. "
			"Run at most %u concurrent job%s on this socket, or give the "
			"backend more queues (qemu-storage-daemon: num-queues=)\n",
			td->o.name, nq, nq == 1 ? "" : "s", o->socket, nq, nq == 1 ? "" : "s");
		return 1;
	}
	if (r < 0) {
		log_err("fio: vhost-user-blk: job %s: %s: %s%s\n", td->o.name, o->socket,
			vu_client_errmsg(cn->c), r == -ENOMEM ? " (raise vhost_mem=)" : "");
		return 1;
	}
	vu_queue_set_spin(vd->q, o->spin_us);

	vd->cpl = calloc(td->o.iodepth, sizeof(*vd->cpl));
	vd->events = calloc(td->o.iodepth, sizeof(*vd->events));
	if (!vd->cpl || !vd->events) {
		log_err("fio: vhost-user-blk: out of memory\n");
		return 1;
	}
	if (o->trace)
		log_info("fio: vhost-user-blk: job %s uses queue %u (size %u) of "
			 "%s\n",
			 td->o.name, vu_queue_index(vd->q), vd->qsize, o->socket);
	return 0;
}

static int vhost_iomem_alloc(struct thread_data *td, size_t total_mem)
{
	struct vhost_options *o = td->eo;
	struct vhost_td *vd = td->io_ops_data;
	void *p;

	p = vu_client_alloc(vd->conn->c, total_mem, (size_t)page_size);
	if (!p) {
		log_err("fio: vhost-user-blk: job %s: %s; raise vhost_mem= (now "
			"%llu bytes for all jobs on %s)\n",
			td->o.name, vu_client_errmsg(vd->conn->c),
			(unsigned long long)vd->conn->mem_size, o->socket);
		return 1;
	}
	td->orig_buffer = p;
	return 0;
}

static void vhost_iomem_free(struct thread_data *td)
{
	/* The shared region is released with the connection. */
	td->orig_buffer = NULL;
}

static enum fio_q_status vhost_queue(struct thread_data *td, struct io_u *io_u)
{
	struct vhost_options *o = td->eo;
	struct vhost_td *vd = td->io_ops_data;
	struct vu_blk_req rq = { .cookie = io_u };
	int r;

	fio_ro_check(td, io_u);
	rq.offset = io_u->offset;
	rq.len = io_u->xfer_buflen;
	rq.buf = io_u->xfer_buf;
	switch (io_u->ddir) {
	case DDIR_READ:
		rq.op = VU_BLK_READ;
		break;
	case DDIR_WRITE:
		rq.op = VU_BLK_WRITE;
		break;
	case DDIR_TRIM:
		if (o->trim_mode == VHOST_TRIM_DISCARD) {
			rq.op = VU_BLK_DISCARD;
		} else {
			rq.op = VU_BLK_WRITE_ZEROES;
			if (o->trim_mode == VHOST_TRIM_ZEROES_UNMAP)
				rq.flags |= VU_REQ_UNMAP;
		}
		break;
	case DDIR_SYNC:
	case DDIR_DATASYNC:
	case DDIR_SYNC_FILE_RANGE:
		if (!(vu_client_info(vd->conn->c)->features & VU_BIT(VU_BLK_F_FLUSH))) {
			/* No FLUSH: the device has no volatile write cache. */
			io_u->error = 0;
			return FIO_Q_COMPLETED;
		}
		rq.op = VU_BLK_FLUSH;
		break;
	default:
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	r = vu_queue_submit(vd->q, &rq);
	if (r == 0)
		return FIO_Q_QUEUED;
	if (r == -EAGAIN && vu_queue_inflight(vd->q))
		return FIO_Q_BUSY;
	if (r == -EAGAIN)
		log_err("fio: vhost-user-blk: job %s: a %llu-byte request does not "
			"fit in a queue of %u entries; raise vhost_queue_size=\n",
			td->o.name, io_u->xfer_buflen, vd->qsize);
	else
		log_err("fio: vhost-user-blk: job %s: %s\n", td->o.name, vu_queue_errmsg(vd->q));
	io_u->error = -r;
	return FIO_Q_COMPLETED;
}

static int vhost_commit(struct thread_data *td)
{
	struct vhost_td *vd = td->io_ops_data;
	int r;

	r = vu_queue_kick(vd->q);
	if (r < 0) {
		log_err("fio: vhost-user-blk: job %s: %s\n", td->o.name, vu_queue_errmsg(vd->q));
		return r;
	}
	return 0;
}

static int ts_to_ms(const struct timespec *t)
{
	long long ms = (long long)t->tv_sec * 1000 + (t->tv_nsec + 999999) / 1000000;

	return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static int vhost_getevents(struct thread_data *td, unsigned int min, unsigned int max,
			   const struct timespec *t)
{
	struct vhost_options *o = td->eo;
	struct vhost_td *vd = td->io_ops_data;
	unsigned int n = 0, i;
	int r, timeout;

	if (max > td->o.iodepth)
		max = td->o.iodepth;
	for (;;) {
		r = vu_queue_reap(vd->q, vd->cpl + n, max - n);
		if (r < 0)
			goto fail;
		for (i = n; i < n + (unsigned int)r; i++) {
			struct io_u *io_u = vd->cpl[i].cookie;

			io_u->error = vd->cpl[i].result < 0 ? -vd->cpl[i].result : 0;
			if (vd->cpl[i].result == -EPROTO && !vd->reported_proto) {
				vd->reported_proto = true;
				log_err("fio: vhost-user-blk: job %s: %s\n", td->o.name,
					vu_queue_errmsg(vd->q));
			}
			vd->events[i] = io_u;
		}
		n += (unsigned int)r;
		if (n >= min || n >= max)
			break;
		if (t)
			timeout = ts_to_ms(t);
		else
			timeout = o->timeout ? (int)(o->timeout * 1000u) : -1;
		r = vu_queue_wait(vd->q, timeout);
		if (r == -ETIMEDOUT && t)
			break;
		if (r < 0)
			goto fail;
	}
	vd->nevents = n;
	return (int)n;

fail:
	log_err("fio: vhost-user-blk: job %s: %s\n", td->o.name, vu_queue_errmsg(vd->q));
	return r;
}

static struct io_u *vhost_event(struct thread_data *td, int event)
{
	struct vhost_td *vd = td->io_ops_data;

	return vd->events[event];
}

static void vhost_cleanup(struct thread_data *td)
{
	struct vhost_options *o = td->eo;
	struct vhost_td *vd = td->io_ops_data;
	int r;

	if (!vd)
		return;
	if (vd->q) {
		struct vu_queue_stats st;
		unsigned int idx = vu_queue_index(vd->q);

		vu_queue_get_stats(vd->q, &st);
		if (o->trace || st.len_mismatch)
			log_info("fio: vhost-user-blk: queue %u: %" PRIu64 " submitted, "
				 "%" PRIu64 " completed, %" PRIu64 " kicks (%" PRIu64
				 " suppressed), %" PRIu64 " waits, %" PRIu64 " wakeups, "
				 "%" PRIu64 " spins (%" PRIu64 " answered), "
				 "%" PRIu64 " used.len different from expected\n",
				 idx, st.submitted, st.completed, st.kicks, st.kicks_suppressed,
				 st.waits, st.wakeups, st.spins, st.spin_hits, st.len_mismatch);
		r = vu_queue_close(vd->q);
		if (r < 0)
			log_err("fio: vhost-user-blk: job %s: stopping queue %u: %s\n", td->o.name,
				idx, vu_client_errmsg(vd->conn->c));
		vd->q = NULL;
	}
	if (vd->registered) {
		pthread_mutex_lock(&conns_lock);
		conn_put(vd->conn);
		pthread_mutex_unlock(&conns_lock);
	}
	free(vd->cpl);
	free(vd->events);
	free(vd);
	td->io_ops_data = NULL;
}

static int vhost_open_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static int vhost_close_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static int vhost_invalidate(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

FIO_STATIC struct ioengine_ops ioengine = {
	.name = "vhost-user-blk",
	.version = FIO_IOOPS_VERSION,
	.flags = FIO_DISKLESSIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_RAWIO | FIO_MEMALIGN,
	.setup = vhost_setup,
	.init = vhost_init,
	.queue = vhost_queue,
	.commit = vhost_commit,
	.getevents = vhost_getevents,
	.event = vhost_event,
	.cleanup = vhost_cleanup,
	.open_file = vhost_open_file,
	.close_file = vhost_close_file,
	.invalidate = vhost_invalidate,
	.iomem_alloc = vhost_iomem_alloc,
	.iomem_free = vhost_iomem_free,
	.option_struct_size = sizeof(struct vhost_options),
	.options = options,
};

/* fio looks this symbol up in external engines. */
void get_ioengine(struct ioengine_ops **ioengine_ptr);
void get_ioengine(struct ioengine_ops **ioengine_ptr)
{
	*ioengine_ptr = &ioengine;
}
