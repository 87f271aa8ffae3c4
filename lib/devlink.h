/*
 * Stable device links: RUN-DIR/dev/EXPORT-ID -> /dev/nbdN, /dev/vdX,
 * /dev/ublkbN. Users and tools point at the link; the transport moves it when
 * the device changes. Main thread.
 */
#pragma once

/*
 * Point RUN-DIR/dev/ID at target, replacing any old link. Returns the link's
 * path (malloc'd, for gw_devlink_remove), or NULL after logging why not.
 */
char *gw_devlink_set(const char *run_dir, const char *id, const char *target);

/* Remove the link made by gw_devlink_set and free *path (NULL is fine). */
void gw_devlink_remove(char **path);
