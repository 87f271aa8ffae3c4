#!/bin/sh
# make test-valgrind: the host-side integration tests in which NBD clients
# talk to a daemon that runs under valgrind's memcheck (the tests
# start it through tests/lib.sh's start_blkgw, which puts BLKGW_WRAP in
# front of it). Uses the normal build (default build/); no rebuild with
# special flags.
#
#   scripts/test-valgrind.sh [BUILD_DIR]   (JOBS; CTEST_ARGS replaces the selection)
#
# Selection (ctest -R): nbd.* but hostile_clients, and fault.nbd: real
# NBD clients (nbdsh, nbdinfo, qemu-img, qemu-io, nbdcopy, fio --verify)
# against memory and file images, with SIGTERM under load. Left out:
#   nbd.hostile_clients and the limits label: they bound the daemon's RSS
#          and stalls, which valgrind's slowdown and shadow memory break
#          without any fault of the code;
#   fuse.*, fault.fuse*: under valgrind the daemon takes longer than the
#          tests' 30 s to stop; the test then kills it (SIGKILL) while its
#          main thread flushes its own mount on the way out (unmount's
#          syncfs and close), and that close waits for an answer from the
#          FUSE threads the kill has ended: an unkillable process, until the
#          connection is aborted (/sys/fs/fuse/connections/N/abort);
#   fault.memory_limit: a tight RLIMIT_AS valgrind cannot start under;
#   vm, vhost: QEMU guests, whose timeouts toward the daemon do not survive
#          its slowdown; unit tests: make test-asan runs them.
#
# Any error memcheck reports (invalid access, uninitialised value used,
# definitely lost memory at exit) fails the daemon (exit 99: the test fails
# in stop_blkgw) and the run: every log is in BUILD_DIR/valgrind-logs and
# any log with an error is printed. What is suppressed, and why:
# scripts/valgrind.supp.
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
build=${1:-build}
# A build directory is relative to the source tree; never the tree itself.
[ "$(cd "$build" 2>/dev/null && pwd)" != "$src" ] || { echo "test-valgrind: $build is the source tree" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "test-valgrind: valgrind is missing: scripts/deps.sh test installs it" >&2; exit 1; }
if [ ! -f "$build/CMakeCache.txt" ]; then
	cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build "$build" -j "${JOBS:-$(nproc)}"

logs=$(cd "$build" && pwd)/valgrind-logs
rm -rf "$logs"
mkdir -p "$logs"
BLKGW_WRAP="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
--show-leak-kinds=definite --num-callers=30 --suppressions=$src/scripts/valgrind.supp \
--log-file=$logs/blkgw.%p.log"
export BLKGW_WRAP

rc=0
# shellcheck disable=SC2086
(cd "$build" && ctest --output-on-failure --timeout 900 -j "${JOBS:-$(nproc)}" \
	${CTEST_ARGS:--R '^(nbd\.|fault\.nbd$)' -E '^nbd\.hostile_clients$'}) || rc=$?

found=0 n=0
for f in "$logs"/*.log; do
	[ -f "$f" ] || continue
	n=$((n + 1))
	if ! grep -q 'ERROR SUMMARY: 0 errors' "$f"; then
		found=1
		echo "==== valgrind report: $f"
		cat "$f"
	fi
done
echo "test-valgrind: $n daemon runs under valgrind"
if [ "$n" -eq 0 ]; then
	echo "test-valgrind: no daemon ran under valgrind: nothing was checked" >&2
	exit 1
fi
if [ "$found" -eq 1 ]; then
	echo "test-valgrind: valgrind errors above (logs in $logs)" >&2
	exit 1
fi
[ "$rc" -eq 0 ] && echo "test-valgrind: no valgrind error"
exit "$rc"
