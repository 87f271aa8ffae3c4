#include "gateway/transport.h"

#include <string.h>

#include "gw_config.h"
#include "lib/util.h"

extern const struct gw_transport_ops gw_nbd_transport;
extern const struct gw_transport_ops gw_vhost_transport;
extern const struct gw_transport_ops gw_fuse_transport;
extern const struct gw_transport_ops gw_ublk_transport;
extern const struct gw_transport_ops gw_vduse_transport;

/* Order is only the listing order; exports choose by name. */
static const struct gw_transport_ops *const transports[] = {
#if BLKGW_WITH_NBD
	&gw_nbd_transport,
#endif
#if BLKGW_WITH_VHOST
	&gw_vhost_transport,
#endif
#if BLKGW_WITH_FUSE
	&gw_fuse_transport,
#endif
#if BLKGW_WITH_UBLK
	&gw_ublk_transport,
#endif
#if BLKGW_WITH_VDUSE
	&gw_vduse_transport,
#endif
};

const struct gw_transport_ops *gw_transport_find(const char *name)
{
	for (size_t i = 0; i < GW_ARRAY_SIZE(transports); i++)
		if (strcmp(transports[i]->name, name) == 0)
			return transports[i];
	return NULL;
}

const struct gw_transport_ops *const *gw_transport_list(size_t *n)
{
	*n = GW_ARRAY_SIZE(transports);
	return transports;
}
