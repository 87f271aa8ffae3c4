/*
 * Shared by the libFuzzer targets (tests/fuzz/fuzz_*.c). Each target
 * defines LLVMFuzzerTestOneInput(); it is linked either with libFuzzer
 * (-DBLKGW_FUZZ=ON, clang) or with replay.c, which runs it over the files
 * and folders given on the command line (the committed corpus and the
 * regression inputs, in the normal test run).
 */
#pragma once

#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "backends/backend.h"
#include "gateway/export.h"
#include "lib/log.h"
#include "lib/worker.h"

/* A server that neither answers nor closes for this long hangs: abort. */
#define FUZZ_HANG_MS 10000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline void fuzz_set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* The next n bytes of the input, little-endian; zeros once it ran out. */
static inline uint64_t fuzz_get(const uint8_t **p, size_t *left, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t b = *left ? **p : 0;

		v |= b << (8 * i);
		if (*left) {
			(*p)++;
			(*left)--;
		}
	}
	return v;
}

/*
 * What most targets start from, once: the log at error level (debug with
 * FUZZ_VERBOSE), with `workers` the main mailbox and one worker, and an
 * export "mem0" of a memory image of `size` bytes. Aborts on failure.
 */
static inline struct gw_export *fuzz_memory_export(const char *who, uint64_t size, bool workers)
{
	struct {
		uint64_t size;
	} mo = { size };
	char err[256];
	struct gw_backend *b;

	gw_log_set_level(getenv("FUZZ_VERBOSE") ? GW_LOG_DEBUG : GW_LOG_ERR);
	if (workers) {
		gw_main_init(EV_DEFAULT);
		if (gw_workers_start(1, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s: workers: %s\n", who, err);
			abort();
		}
	}
	b = gw_backend_open(gw_backend_find("memory"), "mem0", &mo, err, sizeof(err));
	if (!b) {
		fprintf(stderr, "%s: memory backend: %s\n", who, err);
		abort();
	}
	return gw_export_new("mem0", b, false, 0);
}
