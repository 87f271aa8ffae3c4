#include "lib/iov.h"

#include <string.h>

#include "lib/util.h"

void gw_iov_zero(const struct iovec *iov, unsigned iovcnt)
{
	for (unsigned i = 0; i < iovcnt; i++)
		memset(iov[i].iov_base, 0, iov[i].iov_len);
}

void gw_iov_to_buf(void *dst, const struct iovec *iov, unsigned iovcnt, size_t skip, size_t len)
{
	char *d = dst;

	for (unsigned i = 0; i < iovcnt && len; i++) {
		size_t l = iov[i].iov_len;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		l = GW_MIN(l - skip, len);
		memcpy(d, (char *)iov[i].iov_base + skip, l);
		d += l;
		len -= l;
		skip = 0;
	}
}

void gw_iov_from_buf(const struct iovec *iov, unsigned iovcnt, size_t skip, const void *src,
		     size_t len)
{
	const char *s = src;

	for (unsigned i = 0; i < iovcnt && len; i++) {
		size_t l = iov[i].iov_len;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		l = GW_MIN(l - skip, len);
		memcpy((char *)iov[i].iov_base + skip, s, l);
		s += l;
		len -= l;
		skip = 0;
	}
}
