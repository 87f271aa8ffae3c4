#!/bin/sh
# ctest bench.quick: `bench/run --quick` (what `make bench-quick` runs), then
# check_report.py: every backend's tables have every column and workload row
# and a figure in each IOPS cell, the CSV, raw fio JSON with its command line,
# blkgw's manifests and the plots are there. It never judges speed.
#   quick-smoke.sh BUILD_DIR OUT_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: quick-smoke.sh BUILD_DIR OUT_DIR}
out=${2:?usage: quick-smoke.sh BUILD_DIR OUT_DIR}
rm -rf "$out"
plots=""
command -v gnuplot >/dev/null || {
	echo "quick-smoke: gnuplot is missing (scripts/deps.sh test): plots not checked" >&2
	plots=--no-plots
}
timeout 540 "$here/run" --quick --build "$build" --out "$out" >/dev/null
/usr/bin/python3 "$here/lib/check_report.py" "$out" $plots
