#include "gateway/transport.h"

#include <string.h>

#include "gateway/util.h"

extern const struct gw_transport_ops gw_nbd_transport;
extern const struct gw_transport_ops gw_vhost_transport;

/* Order is only the listing order; exports choose by name. */
static const struct gw_transport_ops *const transports[] = {
	&gw_nbd_transport,
	&gw_vhost_transport,
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
