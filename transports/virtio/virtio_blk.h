/*
 * virtio-blk, transport-neutral: the feature set and config space of a
 * block device backed by a gw_export, and the request handler that turns a
 * popped descriptor chain into checked gw_io submissions and writes the
 * status byte. vhost-user-blk and VDUSE both use it (through vblk_queue).
 *
 * Requests: IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES (up to
 * VBLK_MAX_SEGS segments, UNMAP honoured); anything else is UNSUPP. The
 * 16-byte header is gathered from however many readable buffers hold it and
 * copied once; sectors are always 512 bytes; every range is checked against
 * the capacity (overflow included) before the export's checked layer sees
 * it; lengths are bounded by the export's max_xfer.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "gateway/export.h"
#include "transports/virtio/virtio_defs.h"
#include "transports/virtio/vq.h"

#define VBLK_MAX_SEGS        16         /* DISCARD / WRITE_ZEROES segments per request */
#define VBLK_MAX_SEG_SECTORS (1u << 21) /* 1 GiB per segment */

/* The device model of one export; read-only once set up, shared by its queues. */
struct vblk_dev {
	struct gw_export *exp;
	char serial[VIRTIO_BLK_ID_BYTES]; /* NUL-padded, unterminated when 20 long */
	uint64_t features;                /* offered: ring + blk bits (a transport adds its own) */
	uint64_t capacity;                /* 512-byte sectors */
	uint32_t blk_size;                /* logical block, a power of two >= 512 */
	uint8_t phys_exp;                 /* physical block = blk_size << phys_exp */
	uint32_t seg_max;                 /* data segments per request */
	uint32_t max_data;                /* bytes of data per request */
	uint16_t num_queues;
	unsigned iov_max; /* iovecs a request has room for */
	/*
	 * Answer every request IOERR without reaching the export (exp may be
	 * NULL): a device being torn down whose data is gone.
	 */
	bool fail_io;
};

/*
 * Set up d for export e: queue_size bounds seg_max (queue_size - 2); serial
 * NULL uses the image name. 0 or -EINVAL.
 */
int vblk_dev_init(struct vblk_dev *d, struct gw_export *e, const char *serial, uint16_t num_queues,
		  uint16_t queue_size);

/*
 * A device model without an export, for tearing down a device whose data is
 * gone: fail_io set, every request answered IOERR. 0 or -EINVAL.
 */
int vblk_dev_init_dead(struct vblk_dev *d, uint16_t num_queues, uint16_t queue_size);

/* The 96-byte little-endian config space. */
void vblk_config(const struct vblk_dev *d, uint8_t cfg[VBLK_CONFIG_SIZE]);

struct vblk_seg {
	uint64_t offset, len; /* bytes */
	uint32_t flags;
};

struct vblk_req {
	struct gw_io io;
	void (*done)(struct vblk_req *r); /* set by the owner; called once per started request */
	void *owner;
	struct gw_ioq *ioq;        /* the thread's ring, set by the owner */
	struct virtio_memmap *mem; /* the map the iovecs point into (owner's business) */
	unsigned long faults;      /* gw_guard_faults() when it started (owner's business) */
	struct vq_elem elem;
	uint32_t used_len; /* out: bytes written into the writable buffers */
	uint8_t status;    /* out: VIRTIO_BLK_S_* */

	/* Private to virtio_blk.c. */
	const struct vblk_dev *dev;
	uint32_t type;
	uint16_t nseg, seg;
	struct vblk_seg segs[VBLK_MAX_SEGS];
	struct vblk_req *next; /* free list, owner's use */
	unsigned iov_cap;
	struct iovec iov[]; /* iov_cap entries; the chain's buffers */
};

/*
 * Start the request in r->elem / r->iov (as vq_pop filled them). r->done runs
 * exactly once, possibly before this returns, with status written into the
 * chain's status byte and used_len set. Returns 0, or -EPROTO when the
 * request cannot even be answered (no writable status byte): done is not
 * called and the queue must be treated as broken.
 */
int vblk_req_start(const struct vblk_dev *d, struct vblk_req *r);

/* A result (0 / -errno) as a virtio-blk status. */
uint8_t vblk_status(int result);
