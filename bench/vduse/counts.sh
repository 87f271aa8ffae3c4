#!/bin/bash
# blkgw's VDUSE export against qemu-storage-daemon's vduse-blk in the 6.12
# test VM (QEMU TCG), in counts per request that survive a loaded host: the
# daemon's context switches and CPU, the guest's IPIs and context switches,
# blkgw's worker counters (sleeps, kicks, held signals), and, from one
# second of ftrace per config, where a QD1 request's time goes (issue, the
# daemon's VQ_INJECT_IRQ, the vduse irq work, completion) and on which vCPU
# the kernel ran its completion. 4k random read at QD1 and QD32 by default,
# configs interleaved round by round (bench/vduse/counts-guest.sh says what a config
# name means). It prints bench/vduse/counts.py's summary and keeps the
# console log in DIR.
#
#   bench/vduse/counts.sh [--build DIR] [--reps N] [--runtime S] [--no-trace]
#                         [--configs 'blkgw-q1 qsd-q1 mblkgw-q1 mqsd-q1']
#                         [--workloads 'qd1:randread:1 qd32:randread:32'] [--out DIR]
#
# TCG makes every absolute figure relative; latencies in ms mostly measure
# how the host schedules the two vCPU threads. Compare counts and the ratios
# taken within a round.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
reps=5
runtime=3
trace=1
configs="blkgw-q1 qsd-q1 mblkgw-q1 mqsd-q1"
workloads="qd1:randread:1 qd32:randread:32"
out=""
usage="usage: $0 [--build DIR] [--reps N] [--runtime S] [--no-trace] [--configs LIST] [--workloads LIST] [--out DIR]"
while [ $# -gt 0 ]; do
	case "$1" in
	--build) build=${2:?}; shift 2 ;;
	--reps) reps=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	--no-trace) trace=0; shift ;;
	--configs) configs=${2:?}; shift 2 ;;
	--workloads) workloads=${2:?}; shift 2 ;;
	--out) out=${2:?}; shift 2 ;;
	-h|--help) echo "$usage"; exit 0 ;;
	*) echo "$usage" >&2; exit 2 ;;
	esac
done
for c in $configs; do
	[[ $c =~ ^[mfu]?(blkgw|qsd|ublk)-q[1-9][0-9]*(-local|-remote)?$ ]] || {
		echo "$0: bad config '$c' (want [m|f|u]blkgw-qN, [m|f|u]qsd-qN or [m|f|u]ublk-qN; VDUSE ones optionally -local or -remote)" >&2
		exit 2
	}
	[[ ! $c =~ ublk.*-(local|remote)$ ]] || { echo "$0: -local/-remote are for VDUSE configs: '$c'" >&2; exit 2; }
done
for w in $workloads; do
	[[ $w =~ ^[A-Za-z0-9_-]+:(randread|randwrite|read|write):[1-9][0-9]*$ ]] || {
		echo "$0: bad workload '$w' (want NAME:randread|randwrite|read|write:QD)" >&2
		exit 2
	}
done
[[ $reps =~ ^[1-9][0-9]*$ && $runtime =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }
[ -x "$build/blkgw" ] || { echo "$0: no $build/blkgw (build first, or --build DIR)" >&2; exit 2; }
for t in qemu-system-x86_64 qemu-storage-daemon fio vdpa; do
	command -v "$t" >/dev/null || { echo "$0: $t is not installed (scripts/deps.sh test)" >&2; exit 2; }
done
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/blkgw-vduse-counts.XXXXXX")
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/vduse-counts.XXXXXX")
trap 'rm -rf "$work"' EXIT

cat >"$work/config" <<EOF
CONFIGS="$configs"
WORKLOADS="$workloads"
REPS=$reps
RT=$runtime
SIZE_MB=256
TRACE=$trace
EOF
PATH=/usr/bin:$PATH "$root/tests/vm/build-guest.sh" -q --out "$work/guest" --script "$here/counts-guest.sh" \
	--bin "$build/blkgw" --bin fio --bin qemu-storage-daemon --bin vdpa \
	--file "$work/config:/test/config"
ncfg=$(wc -w <<<"$configs")
nwl=$(wc -w <<<"$workloads")
timeout=$((reps * ncfg * (nwl * (runtime + 15) + 30) * 3 + 600))
echo "VM: $reps round(s) of $ncfg config(s) x $nwl workload(s), about $((reps * ncfg * (nwl * (runtime + 4) + 8) / 60 + 1)) min; console: $out/console.log" >&2
rc=0
"$root/tests/vm/run-vm.sh" -q --guest "$work/guest" --log "$out/console.log" --smp 2 -m 2048 \
	--timeout "$timeout" || rc=$?
{
	echo "host: $(uname -r), $(nproc) CPUs, load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
	/usr/bin/python3 "$here/counts.py" "$out/console.log"
} | tee "$out/summary.txt"
[ "$rc" = 0 ] || echo "$0: the VM run failed (exit $rc); see $out/console.log" >&2
exit "$rc"
