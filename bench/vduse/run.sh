#!/bin/bash
# blkgw's VDUSE export against qemu-storage-daemon's vduse-blk export, both
# inside the project's 6.12 test VM (QEMU TCG, tests/vm), fio in the same
# guest on the /dev/vdX each makes; backends null, memory and a file on the
# guest's tmpfs (qsd has no memory driver: its "memory" is that file too).
# TCG makes every number relative: compare the two daemons with each other
# only.
#
#   bench/vduse/run.sh [--build DIR] [--runtime S] [--jobs qd1-randread,...]
#
# Prints a table: IOPS, mean latency (us) and blkgw/qsd ratios. The daemon
# CPU per request the guest script tries to print comes out empty so far
# (not yet debugged): the table leaves it out. Also checks, in passing, that fio verifies on qsd's disk
# (the harness is sound).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
runtime=5
jobs=qd1-randread,qd32-randread,qd1-randwrite,qd32-randwrite,seq-read
while [ $# -gt 0 ]; do
	case "$1" in
	--build) build=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	--jobs) jobs=${2:?}; shift 2 ;;
	*) echo "usage: $0 [--build DIR] [--runtime S] [--jobs LIST]" >&2; exit 2 ;;
	esac
done
work=$(mktemp -d "${TMPDIR:-/tmp}/vduse-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$root/tests/vm/build-guest.sh" -q --out "$work/guest" --script "$here/guest-bench.sh" \
	--bin "$build/blkgw" --bin fio --bin qemu-storage-daemon --bin vdpa
"$root/tests/vm/run-vm.sh" -q --guest "$work/guest" --log "$work/console.log" --smp 2 -m 2048 \
	--timeout 1800 --append "blkgw.bench_runtime=$runtime blkgw.bench_jobs=$jobs" ||
	{ tail -n 40 "$work/console.log"; exit 1; }
grep -E 'PASS|FAIL' "$work/console.log" | sed 's/\r$//' || true
sed -n 's/\r$//; s/^\[[0-9.]*\] //; s/^BENCH //p' "$work/console.log" | tee "$work/raw" >&2
/usr/bin/python3 -c '
import sys
rows = {}
for line in sys.stdin:
    f = line.rstrip("\n").split(" ")
    if len(f) != 6:
        continue
    d, b, j, iops, lat, cpu = f
    num = lambda v: float(v) if v.replace(".", "", 1).isdigit() else 0.0
    rows[(d, b, j)] = (num(iops), num(lat), num(cpu))
print("| backend | job | blkgw IOPS | qsd IOPS | ratio | blkgw lat us | qsd lat us |")
print("|---|---|---|---|---|---|---|")
keys = sorted({(b, j) for (_, b, j) in rows}, key=lambda k: (k[0], k[1]))
for b, j in keys:
    g = rows.get(("blkgw", b, j), (0, 0, 0)); q = rows.get(("qsd", b, j), (0, 0, 0))
    r = g[0] / q[0] if q[0] else 0
    print(f"| {b} | {j} | {g[0]:.0f} | {q[0]:.0f} | {r:.2f} | {g[1]:.0f} | {q[1]:.0f} |")
' <"$work/raw"
