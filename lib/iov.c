#include "lib/iov.h"

#include <stdbool.h>
#include <string.h>

#include "lib/util.h"

void gw_iov_zero(const struct iovec *iov, unsigned iovcnt)
{
	for (unsigned i = 0; i < iovcnt; i++)
		memset(iov[i].iov_base, 0, iov[i].iov_len);
}

/* Copy len bytes between buf and the iovec's bytes from skip on: into the iovec if in. */
static void iov_copy(const struct iovec *iov, unsigned iovcnt, size_t skip, char *buf, size_t len,
		     bool in)
{
	for (unsigned i = 0; i < iovcnt && len; i++) {
		size_t l = iov[i].iov_len;
		char *p;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		p = (char *)iov[i].iov_base + skip;
		l = GW_MIN(l - skip, len);
		if (in)
			memcpy(p, buf, l);
		else
			memcpy(buf, p, l);
		buf += l;
		len -= l;
		skip = 0;
	}
}

void gw_iov_to_buf(void *dst, const struct iovec *iov, unsigned iovcnt, size_t skip, size_t len)
{
	iov_copy(iov, iovcnt, skip, dst, len, false);
}

void gw_iov_from_buf(const struct iovec *iov, unsigned iovcnt, size_t skip, const void *src,
		     size_t len)
{
	iov_copy(iov, iovcnt, skip, (char *)src, len, true); /* src is only read */
}
