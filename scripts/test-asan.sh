#!/bin/sh
# make test-asan: build the tree once more with AddressSanitizer (with
# LeakSanitizer) and UBSan in its own build directory, run the host-side
# suite there, and fail on any sanitizer report.
#
#   scripts/test-asan.sh [BUILD_DIR]      (default build-asan; JOBS, CTEST_ARGS)
#
# Skipped labels, and why:
#   vm     the kernel transports run inside a QEMU TCG guest; the guest's
#          binaries are not instrumented, and the boots would double the
#          suite's time for little sanitizer coverage.
#   bench  harness smoke runs; they time things and compare against other
#          servers, which a sanitized daemon only makes noisy.
#   lint   scripts, no C code; already run by make test.
#   limits the hostile-client scenarios assert bounds on the daemon's RSS and
#          stalls; ASan's shadow memory and quarantine (hundreds of MiB) and
#          its slowdown break those bounds without any fault of the code.
#          make test runs them on the normal build.
#   fault.memory_limit  starts the daemon under a tight RLIMIT_AS, which
#          ASan's shadow mappings cannot fit in by design.
#
# Every process of ours writes its reports to BUILD_DIR/sanitizer-logs (a
# daemon's stderr is often a test's private log), and any file there fails
# the run and is printed, whatever ctest said. Deliberate process-lifetime
# allocations are suppressed, with the reason, in scripts/lsan.supp.
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
build=${1:-build-asan}
jobs=${JOBS:-$(nproc)}

if [ ! -f "$build/CMakeCache.txt" ]; then
	cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_SANITIZE=ON
fi
cmake --build "$build" -j "$jobs"

logs=$(cd "$build" && pwd)/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"
# halt_on_error: the first report ends the process, so a test fails at it.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:log_path=$logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
export LSAN_OPTIONS="suppressions=$src/scripts/lsan.supp:print_suppressions=0"

rc=0
# shellcheck disable=SC2086
(cd "$build" && ctest --output-on-failure --timeout 900 -LE 'vm|bench|lint|limits' -E '^fault.memory_limit$' ${CTEST_ARGS:-}) || rc=$?

found=0
for f in "$logs"/*; do
	[ -f "$f" ] || continue
	found=1
	echo "==== sanitizer report: $f"
	cat "$f"
done
if [ "$found" -eq 1 ]; then
	echo "test-asan: sanitizer reports above (also in $logs)" >&2
	exit 1
fi
[ "$rc" -eq 0 ] && echo "test-asan: no sanitizer report"
exit "$rc"
