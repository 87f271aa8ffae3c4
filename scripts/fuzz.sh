#!/bin/sh
# `make fuzz`: build the libFuzzer targets with clang, ASan and UBSan in
# BUILD (default build-fuzz/), then run every target (ctest label fuzz):
# its regression inputs once, then FUZZ_SECONDS of fuzzing (default 60)
# from the seed corpus. FUZZ_PARALLEL targets run at once (default 2).
# tests/fuzz/README.md says how to reproduce a crash and keep its input.
#   scripts/fuzz.sh [BUILD] [ctest args...]
set -eu
cd "$(dirname "$0")/.."
build=${1:-build-fuzz}
[ $# -gt 0 ] && shift
command -v clang >/dev/null || { echo "fuzz: clang is missing: scripts/deps.sh test installs it" >&2; exit 1; }
# Warnings only clang gives must not stop the fuzzing (the gcc build has -Werror).
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBLKGW_FUZZ=ON -DGW_MAN=OFF \
  -DGW_WERROR=OFF >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target fuzzers
cd "$build"
export FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
echo "fuzz: each target for $FUZZ_SECONDS s"
exec ctest -L '^fuzz$' -j "${FUZZ_PARALLEL:-2}" --output-on-failure --timeout $((FUZZ_SECONDS * 3 + 300)) "$@"
