# shellcheck shell=dash
# vm-bench-kernel-host: bench/run on a machine whose kernel has the kernel
# transports runs them there (kernel/... columns, labelled host), not in a
# test VM. The guest is that machine: bench/run, its library and
# bench/kernel-paths.sh are copied in (/src), with Debian's python3.
# - before vduse is loaded, --kernel-paths host refuses and names the
#   missing module (blkgw's own probe);
# - with every module loaded, --columns kernel (auto) runs every kernel
#   path here, memory backend, two workloads, 1 s runs; the report has each
#   column with a figure (check_report.py) and no column from the VM.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

export PYTHONDONTWRITEBYTECODE=1
RUN="python3 /src/bench/run --blkgw /usr/local/bin/blkgw --backends memory
	--workloads randread-4k-qd1,write-1m-qd8 --runtime 1 --ramp 0 --repeat 1 --size 64M
	--quiet 0 --retry-noisy 0 --file-dir /tmp"

require "python3 runs" python3 -c 'import json, subprocess, statistics, csv'
require "nbd, ublk_drv, null_blk load" sh -c '
	. /lib/blkgw-vm/guest-lib.sh
	load_modules ublk_drv virtio_blk && load_module nbd nbds_max=8 &&
	load_module null_blk nr_devices=1 gb=1 irqmode=0 hw_queue_depth=128'

# Without vduse: --kernel-paths host fails and says why (busybox's modprobe
# cannot load modules here, so the probe's own loading does nothing).
# shellcheck disable=SC2086
$RUN --columns kernel --kernel-paths host --out /tmp/no-vduse >/tmp/no-vduse.log 2>&1
check_eq "--kernel-paths host without vduse exits 1" 1 "$?"
check "... naming the vduse paths and the missing module" \
	grep -q 'kernel/blkgw/vduse: the vduse kernel module is not loaded' /tmp/no-vduse.log
check "... and not the ublk path" sh -c '! grep -q "kernel/blkgw/ublk:" /tmp/no-vduse.log'

require "vduse, virtio_vdpa load" load_modules vduse virtio_vdpa

# shellcheck disable=SC2086
check "bench/run --columns kernel (auto) runs" $RUN --columns kernel --out /tmp/out
check "the report has every column, workload and figure" \
	python3 /src/bench/lib/check_report.py /tmp/out --no-plots
cols=$(python3 -c 'import json; print(" ".join(json.load(open("/tmp/out/results.json"))["options"]["columns"]))')
check_eq "every kernel path ran here, none in a VM" \
	"kernel/blkgw/nbd-attach kernel/blkgw/ublk kernel/blkgw/vduse kernel/blkgw/nbd-client kernel/qsd/vduse kernel/qsd/nbd-client kernel/null_blk" \
	"$cols"
check "every cell is labelled host" python3 -c '
import json, sys
cells = json.load(open("/tmp/out/results.json"))["cells"]
bad = [c["column"] for c in cells if c["where"] != "host" or c["iops"] <= 0]
sys.exit(f"cells not on the host or without IOPS: {bad}" if bad or len(cells) != 14 else 0)'
check "no table heading says TCG" sh -c '! grep -q "^|.*(TCG)" /tmp/out/results.md'
check "blkgw's ublk manifest is kept with its figures" \
	sh -c 'ls /tmp/out/raw/kernel/memory/kernel_blkgw_ublk/ | grep -q manifest.yaml'
check "the images and scratch files are gone" sh -c '! ls /tmp/blkgw-bench-kernel-* /dev/shm/blkgw-bench-kernel-* 2>/dev/null | grep -q .'

# Interrupted while qsd's vduse-blk device is up: SIGTERM to bench/run's
# whole process group, as timeout(1) or a CI runner sends it (a ctrl-c
# would be SIGINT, which a background job of this non-interactive shell
# ignores; bench/run is in a session of its own here, so its pid is the
# group's). The device, the vdpa device and the daemon go with it, in
# order: qsd must not see the signal before its vdpa device is gone.
# shellcheck disable=SC2086
setsid $RUN --columns kernel/qsd/vduse --runtime 30 --out /tmp/int >/tmp/int.log 2>&1 &
BR=$!
check "qsd's vduse-blk device comes up" wait_for 120 sh -c 'ls -d /sys/bus/vdpa/devices/bqsd* >/dev/null 2>&1'
sleep 2
kill -TERM "-$BR"
# well before its 30 s fio run would have ended by itself
check "interrupted bench/run exits within 20 s" wait_for 20 sh -c "! kill -0 $BR 2>/dev/null"
wait "$BR"
check_eq "... with the status of SIGTERM (143)" 143 "$?"
check "no vdpa device is left" sh -c '! ls -d /sys/bus/vdpa/devices/bqsd* 2>/dev/null | grep -q .'
check "no VDUSE device is left" wait_for 10 sh -c '! ls /dev/vduse/ | grep -q bqsd'
check "no qemu-storage-daemon or fio is left" wait_for 10 sh -c '! pidof qemu-storage-daemon fio >/dev/null'
