#!/bin/sh
# ctest bench.quick: `bench/run --quick --columns host` (what `make
# bench-quick` runs on a host without the kernel transports), then
# check_report.py: every backend's tables have every column and workload row
# and a figure in each IOPS cell, the CSV, raw fio JSON with its command line,
# blkgw's manifests and the plots are there. It never judges speed.
# With --vm (ctest bench.vm-quick): every VM column instead, in one boot of
# the test VM, memory backend, two workloads, 1 s runs.
#   quick-smoke.sh BUILD_DIR OUT_DIR [--vm]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: quick-smoke.sh BUILD_DIR OUT_DIR [--vm]}
out=${2:?usage: quick-smoke.sh BUILD_DIR OUT_DIR [--vm]}
rm -rf "$out"
plots=""
command -v gnuplot >/dev/null || {
	echo "quick-smoke: gnuplot is missing (scripts/deps.sh test): plots not checked" >&2
	plots=--no-plots
}
if [ "${3:-}" = --vm ]; then
	for q in qemu-system-x86_64 qemu-storage-daemon; do
		command -v $q >/dev/null || { echo "SKIP: $q is missing (scripts/deps.sh test)"; exit 77; }
	done
	timeout 840 "$here/run" --vm-only --backends memory --workloads randread-4k-qd1,write-1m-qd8 \
		--runtime 1 --repeat 1 --quiet 0 --retry-noisy 0 --build "$build" --out "$out" >/dev/null
else
	# The host's userspace columns only: on a host whose kernel has the kernel
	# transports, `make bench-quick` adds them too (about 4 minutes more);
	# ctest vm-bench-kernel-host covers that part.
	timeout 540 "$here/run" --quick --columns host --build "$build" --out "$out" >/dev/null
fi
/usr/bin/python3 "$here/lib/check_report.py" "$out" $plots
