/* Copying between iovecs and flat buffers: backends, transports and lib/cbw.c. */
#pragma once

#include <stddef.h>
#include <sys/uio.h>

void gw_iov_zero(const struct iovec *iov, unsigned iovcnt);
/* Copy between a flat buffer and an iovec, starting at byte `skip` of the iovec. */
void gw_iov_to_buf(void *dst, const struct iovec *iov, unsigned iovcnt, size_t skip, size_t len);
void gw_iov_from_buf(const struct iovec *iov, unsigned iovcnt, size_t skip, const void *src,
		     size_t len);
