/*
 * The Prometheus endpoint (gateway.metrics): HTTP GET on a TCP address or a
 * unix socket answers the text exposition format (version 0.0.4) that the
 * gateway writes. One request per connection, answered at once on the main
 * loop; the text is made when asked, from the same counters status reads.
 */
#pragma once

#include <stddef.h>
#include <stdio.h>

/* Write every metric to f. */
typedef void (*gw_metrics_fill)(FILE *f, void *arg);

/* where: "HOST:PORT" or an absolute socket path. 0, or -errno with a message. */
int gw_metrics_start(const char *where, gw_metrics_fill fill, void *arg, char *err, size_t len);
void gw_metrics_stop(void);
