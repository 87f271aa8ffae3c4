/*
 * Shared by the libFuzzer targets (tests/fuzz/fuzz_*.c). Each target
 * defines LLVMFuzzerTestOneInput(); it is linked either with libFuzzer
 * (-DBLKGW_FUZZ=ON, clang) or with replay.c, which runs it over the files
 * and folders given on the command line (the committed corpus and the
 * regression inputs, in the normal test run).
 */
#pragma once

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>

/* A server that neither answers nor closes for this long hangs: abort. */
#define FUZZ_HANG_MS 10000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline void fuzz_set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}
