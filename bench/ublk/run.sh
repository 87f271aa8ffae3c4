#!/bin/bash
# bench/ublk/run.sh: blkgw's ublk transport against blkgw's attached NBD in
# the 6.12 test VM (QEMU TCG), backends null, memory and file (guest tmpfs),
# fio inside the guest. Prints a markdown table; raw fio JSON stays in DIR.
#
#   bench/ublk/run.sh [--out DIR] [--runtime SECONDS] [--blkgw PATH]
#
# Benchmarks are measurements, never tests. Under TCG every guest
# instruction is emulated: absolute numbers are meaningless, and even ratios
# are distorted (see docs/performance.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${BLKGW_ROOT:-$(cd "$here/../.." && pwd)}
out=/tmp/blkgw-bench-ublk runtime=10 blkgw=$root/build/blkgw
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	--blkgw) blkgw=${2:?}; shift 2 ;;
	*) echo "usage: $0 [--out DIR] [--runtime SECONDS] [--blkgw PATH]" >&2; exit 2 ;;
	esac
done
mkdir -p "$out"
echo "$runtime" >"$out/runtime"
"$root/tests/vm/build-guest.sh" -q --out "$out/guest" --script "$here/guest.sh" \
	--bin "$blkgw" --bin fio --file "$out/runtime:/test/runtime"
# One vCPU: the guest's fio and blkgw share it, as they would share a core.
"$root/tests/vm/run-vm.sh" --guest "$out/guest" --log "$out/console.log" -m 2048 \
	--timeout $((runtime * 80 + 600))
/usr/bin/python3 "$here/report.py" "$out/console.log" | tee "$out/results.md"
