#!/bin/bash
# bench/ublk/run.sh: blkgw's ublk transport against blkgw's attached NBD
# (and the kernel's null_blk) in the 6.12 test VM (QEMU TCG), backends null,
# memory and file, fio inside the guest. Now a shorthand for the unified
# harness (bench/run, bench/README.md), which writes the tables, CSV, plots
# and raw fio JSON into DIR.
#
#   bench/ublk/run.sh [--out DIR] [--runtime SECONDS] [--blkgw PATH] [bench/run options]
#
# Benchmarks are measurements, never tests. Under TCG every guest
# instruction is emulated: compare the columns with each other only.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../run" --vm-only --columns vm/blkgw/ublk,vm/blkgw/nbd-attach,vm/null_blk \
	--repeat 1 --out /tmp/blkgw-bench-ublk "$@"
