#!/bin/bash
# blkgw's VDUSE export against qemu-storage-daemon's vduse-blk export (and
# the kernel's null_blk), inside the project's 6.12 test VM (QEMU TCG), fio
# in the guest on the /dev/vdX each makes; backends null, memory and file.
# Now a shorthand for the unified harness (bench/run, bench/README.md),
# which writes the tables, CSV, plots and raw fio JSON into DIR.
#
#   bench/vduse/run.sh [--build DIR] [--runtime S] [--out DIR] [bench/run options]
#
# TCG makes every number relative: compare the two daemons with each other
# only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../run" --vm-only --columns vm/blkgw/vduse,vm/qsd/vduse,vm/null_blk \
	--repeat 1 --runtime 5 --out /tmp/blkgw-bench-vduse "$@"
