/*
 * systemd's readiness protocol (sd_notify(3)): when $NOTIFY_SOCKET names a
 * unix datagram socket, send it "READY=1", "RELOADING=1", "STOPPING=1" and
 * "STATUS=..." lines. Without $NOTIFY_SOCKET every call does nothing. The
 * datagram protocol is documented and stable; libsystemd is not needed.
 */
#pragma once

#include "lib/util.h"

/* Send one message (several "KEY=value" lines). 0, or -errno (also logged at debug). */
int gw_notify(const char *fmt, ...) GW_PRINTF(1, 2);
