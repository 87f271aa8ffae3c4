/*
 * libFuzzer target: the manifest loader (config/), YAML parsing through
 * every option schema and cross-check, from a file holding the input.
 * Sources are not checked (check_sources = false: no filesystem access
 * beyond reading the manifest).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/manifest.h"
#include "fuzz.h"
#include "lib/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	char path[64];
	struct gw_manifest *m = NULL;
	struct gw_diags d = { 0 };

	if (fd < 0) {
		gw_log_set_level(GW_LOG_ERR);
		fd = memfd_create("manifest", MFD_CLOEXEC);
		if (fd < 0)
			abort();
	}
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (gw_manifest_load(path, false, &m, &d) == 0) {
		if (!m)
			abort(); /* success must hand out a manifest */
		gw_manifest_free(m);
	} else {
		FILE *null = fopen("/dev/null", "w");

		if (m || d.n == 0)
			abort(); /* a failure must say why */
		gw_diags_print(&d, path, null);
		fclose(null);
	}
	gw_diags_free(&d);
	return 0;
}
