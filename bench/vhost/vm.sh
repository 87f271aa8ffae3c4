#!/bin/bash
# blkgw vs qemu-storage-daemon as the vhost-user-blk back-end of a QEMU TCG
# guest (tests/vm): guest fio, 4k, QD1 randread and QD32 randread/randwrite,
# one vCPU, one queue. TCG makes the guest the bottleneck: compare the two
# daemons with each other, never with bench/vhost/run.sh's host numbers.
#
#   bench/vhost/vm.sh [--build DIR] [--reps N] [--runtime S] [--no-pin]
#                     [--backends null,memory] [--jobs qd1-randread,qd32-randread,...]
#                     [--blkgw-opts 'poll-us: 0, ...']
#
# Jobs are qdN-randread or qdN-randwrite. Besides IOPS and latency it
# reports the guest's interrupts per request on the disk's queue (irq/req).
# --blkgw-opts adds keys to blkgw's vhost-user-blk export options, to
# compare settings (blkgw/qsd ratios then belong to those settings).
#
# Pinning (default, on 2+ CPUs): QEMU (the TCG vCPU and its other threads)
# on CPU 0, the daemon on CPU 1, so the two never fight over a CPU; without
# it single runs of one job varied up to 2x here.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
reps=2
runtime=8
pin=1
backends="null memory"
jobs=qd1-randread,qd32-randread,qd32-randwrite
blkgw_opts=""
usage="usage: $0 [--build DIR] [--reps N] [--runtime S] [--no-pin] [--backends null,memory] [--jobs LIST] [--blkgw-opts YAML]"
while [ $# -gt 0 ]; do
	case "$1" in
	--build) build=${2:?}; shift 2 ;;
	--reps) reps=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	--no-pin) pin=0; shift ;;
	--backends) backends=${2:?}; backends=${backends//,/ }; shift 2 ;;
	--jobs) jobs=${2:?}; shift 2 ;;
	--blkgw-opts) blkgw_opts=", ${2:?}"; shift 2 ;;
	*) echo "$usage" >&2; exit 2 ;;
	esac
done
vm_cpu=() daemon_cpu=()
if [ "$pin" = 1 ] && [ "$(nproc)" -ge 2 ]; then
	vm_cpu=(taskset -c 0)
	daemon_cpu=(taskset -c 1)
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/vhost-vmbench.XXXXXX")
pid=""
cleanup() {
	[ -z "$pid" ] || kill "$pid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$work" /dev/shm/vhost-vmbench-$$.img
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$root/tests/vm/build-guest.sh" -q --out "$work/guest" --script "$here/guest-fio.sh" --bin fio

start() { # start DAEMON BACKEND; sets pid, sock
	local d=$1 b=$2
	sock=$work/$d-$b.sock
	rm -f "$sock"
	if [ "$d" = blkgw ]; then
		local img
		if [ "$b" = null ]; then img="{ backend: null, size: 1G }"; else img="{ backend: memory, size: 1G }"; fi
		cat >"$work/m.yaml" <<YAML
version: 1
gateway: { run-dir: $work/run, log-level: warn }
images:
  disk: $img
exports:
  - { image: disk, transports: [vhost-user-blk], vhost-user-blk: { socket: $sock, queues: 1$blkgw_opts } }
YAML
		setpriv --pdeathsig KILL -- "${daemon_cpu[@]}" "$build/blkgw" serve "$work/m.yaml" >"$work/$d.log" 2>&1 &
	else
		local node
		if [ "$b" = null ]; then
			node="driver=null-co,node-name=n0,size=1073741824,read-zeroes=on"
		else
			truncate -s 1G /dev/shm/vhost-vmbench-$$.img
			node="driver=file,node-name=n0,filename=/dev/shm/vhost-vmbench-$$.img,cache.direct=on,aio=native"
		fi
		setpriv --pdeathsig KILL -- "${daemon_cpu[@]}" qemu-storage-daemon --blockdev "$node" \
			--export "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1" \
			>"$work/$d.log" 2>&1 &
	fi
	pid=$!
	for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.1; done
	cat "$work/$d.log" >&2
	exit 1
}

echo "daemon,backend,job,rep,iops,lat_us,irq_per_req" >"$work/vm.csv"
for rep in $(seq "$reps"); do
	for b in $backends; do
		# Alternate which daemon goes first: the machine drifts from run to run.
		if [ $((rep % 2)) = 1 ]; then order="blkgw qsd"; else order="qsd blkgw"; fi
		for d in $order; do
			start "$d" "$b"
			"${vm_cpu[@]}" "$root/tests/vm/run-vm.sh" -q --guest "$work/guest" --log "$work/console.log" \
				--vhost-user-blk "$sock,num-queues=1" --append "blkgw.runtime=$runtime blkgw.jobs=$jobs" --timeout 300 >/dev/null ||
				{ tail -n 30 "$work/console.log"; exit 1; }
			kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
			sed -n 's/\r$//; s/^\[[0-9.]*\] //; s/^BENCH \([^ ]*\) \([0-9.]*\) \([0-9.]*\) \([0-9.]*\)$/\1 \2 \3 \4/p' "$work/console.log" |
				while read -r job iops lat irq; do
					echo "$d,$b,$job,$rep,$iops,$lat,$irq" >>"$work/vm.csv"
					echo "$d $b $job rep $rep: $iops IOPS, $lat us, $irq irq/req" >&2
				done
		done
	done
done
python3 - "$work/vm.csv" <<'PY'
import csv, statistics, sys
from collections import defaultdict
v = defaultdict(dict)
for r in csv.DictReader(open(sys.argv[1])):
    v[(r["backend"], r["job"], r["daemon"])][r["rep"]] = (float(r["iops"]), float(r["lat_us"]), float(r["irq_per_req"]))
# The ratio is taken rep by rep (the two daemons ran back to back), then the median.
print(f"{'backend':8} {'job':15} {'blkgw IOPS':>11} {'qsd IOPS':>9} {'ratio':>6} {'ratio range':>12} {'blkgw lat':>10} {'qsd lat':>8} {'blkgw irq/req':>13} {'qsd irq/req':>11}")
for b, j in sorted({(b, j) for b, j, _ in v}):
    g, q = v[(b, j, "blkgw")], v[(b, j, "qsd")]
    ratios = [g[k][0] / q[k][0] for k in g if k in q and q[k][0] > 0]
    bi = statistics.median(x[0] for x in g.values()); qi = statistics.median(x[0] for x in q.values())
    bl = statistics.median(x[1] for x in g.values()); ql = statistics.median(x[1] for x in q.values())
    bq = statistics.median(x[2] for x in g.values()); qq = statistics.median(x[2] for x in q.values())
    rng = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
    print(f"{b:8} {j:15} {bi:11.0f} {qi:9.0f} {statistics.median(ratios):5.2f}x {rng:>12} {bl:9.1f}us {ql:7.1f}us {bq:13.2f} {qq:11.2f}")
PY
