#!/bin/bash
# FUSE benchmark: blkgw's FUSE export with io_uring and with the read loop,
# against qemu-storage-daemon's FUSE export; same run, same backends (null,
# memory, file), fio on the mounted file on the host (io_uring engine,
# O_DIRECT). Reports IOPS or MiB/s, mean latency at QD1, and the daemon's
# CPU time per request (utime+stime from /proc over the job) and its
# threads' voluntary context switches (sleeps) per request. Needs root.
#
#   bench/fuse/run.sh [--runtime S] [--size BYTES] [--only LIST] [--backends LIST]
#                     [--jobs LIST] [--rounds N] [--out DIR]
#
# Servers: blkgw-uring, blkgw-uring-nopoll (poll-us: 0), blkgw-read, qsd.
# Backends: null, memory, file. Jobs: randread-qd1, randwrite-qd1,
# randread-qd32, randwrite-qd32, seqread-1m, seqwrite-1m. --rounds N runs
# every server N times, interleaved (round 1 of each, then round 2...), for
# A/B pairs taken under the same conditions; with N > 1, summary.md has the
# median of each row and, for each pair of servers, the median over the
# rounds of their ratio in the same round.
# Measurements, never tests: nothing here fails because something is slow.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BLKGW=${BLKGW:-$ROOT/build/blkgw}
RUNTIME=5
SIZE=$((1024 * 1024 * 1024))
ONLY="blkgw-uring,blkgw-read,qsd"
BACKENDS="null,memory,file"
JOBLIST=""
ROUNDS=1
OUT=""
while [ $# -gt 0 ]; do
	case $1 in
	--runtime) RUNTIME=$2; shift 2 ;;
	--size) SIZE=$2; shift 2 ;;
	--only) ONLY=$2; shift 2 ;;
	--backends) BACKENDS=$2; shift 2 ;;
	--jobs) JOBLIST=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	-h | --help) sed -n 2,20p "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench/fuse needs root (FUSE mounts)" >&2; exit 1; }
OUT=${OUT:-/tmp/blkgw-bench-fuse.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
W=$(mktemp -d /tmp/blkgw-bench-fuse-w.XXXXXX)
uring_param=/sys/module/fuse/parameters/enable_uring
uring_was=$(cat $uring_param 2>/dev/null || echo "")
SPID=""
cleanup() {
	[ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
	umount -l "$W/disk.raw" 2>/dev/null || true
	[ "$uring_was" = N ] && echo N >$uring_param
	rm -rf "$W"
}
trap cleanup EXIT

JOBS="randread-qd1:randread:4k:1 randwrite-qd1:randwrite:4k:1 randread-qd32:randread:4k:32 randwrite-qd32:randwrite:4k:32 seqread-1m:read:1M:4 seqwrite-1m:write:1M:4"
if [ -n "$JOBLIST" ]; then
	sel=""
	for j in ${JOBLIST//,/ }; do
		k=$(tr ' ' '\n' <<<"$JOBS" | grep "^$j:") || { echo "unknown job $j" >&2; exit 2; }
		sel="$sel $k"
	done
	JOBS=$sel
fi
case $ROUNDS in '' | *[!0-9]* | 0) echo "--rounds takes a number of rounds (1 or more)" >&2; exit 2 ;; esac

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Voluntary context switches of every thread of the process (each one a sleep).
vol_ctx() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {n += $2} END {print n + 0}'; }

start_server() { # server backend
	local s=$1 b=$2 img="$W/img.raw"
	: >"$W/disk.raw"
	case $b in
	file) rm -f "$img"; truncate -s "$SIZE" "$img" ;;
	memory) rm -f /dev/shm/blkgw-bench-fuse.raw; truncate -s "$SIZE" /dev/shm/blkgw-bench-fuse.raw ;;
	esac
	case $s in
	blkgw-*)
		local mode=on imgdef poll=""
		[ "$s" = blkgw-read ] && mode=off
		[ "$s" = blkgw-uring-nopoll ] && poll=", poll-us: 0"
		case $b in
		null) imgdef="{ backend: null, size: $SIZE }" ;;
		memory) imgdef="{ backend: memory, size: $SIZE }" ;;
		file) imgdef="{ backend: file, path: $img, direct: true }" ;;
		esac
		cat >"$W/m.yaml" <<EOM
version: 1
gateway: { run-dir: $W/run, workers: 2 }
images:
  d0: $imgdef
exports:
  - { image: d0, transports: [fuse], fuse: { path: $W/disk.raw, io-uring: $mode$poll } }
EOM
		mkdir -p "$W/run"
		[ "$mode" = on ] && echo Y >$uring_param
		"$BLKGW" serve "$W/m.yaml" 2>>"$OUT/blkgw.log" &
		SPID=$!
		;;
	qsd)
		local bd
		case $b in
		null) bd="driver=null-co,node-name=n0,size=$SIZE,read-zeroes=on" ;;
		memory) bd="driver=file,node-name=n0,filename=/dev/shm/blkgw-bench-fuse.raw,cache.direct=on,aio=native" ;;
		file) bd="driver=file,node-name=n0,filename=$img,cache.direct=on,aio=native" ;;
		esac
		qemu-storage-daemon --blockdev "$bd" \
			--export "type=fuse,id=e0,node-name=n0,mountpoint=$W/disk.raw,writable=on" 2>>"$OUT/qsd.log" &
		SPID=$!
		;;
	esac
	for _ in $(seq 100); do
		[ "$(stat -c %s "$W/disk.raw" 2>/dev/null)" = "$SIZE" ] && return 0
		sleep 0.1
	done
	echo "$s/$b did not mount" >&2
	return 1
}

stop_server() {
	kill "$SPID" 2>/dev/null || true
	wait "$SPID" 2>/dev/null || true
	SPID=""
	umount -l "$W/disk.raw" 2>/dev/null || true
	rm -f /dev/shm/blkgw-bench-fuse.raw
}

echo "| round | server | backend | job | IOPS | MiB/s | mean lat (us) | server CPU per request (us) | server sleeps per request |" >"$OUT/results.md"
echo "|---|---|---|---|---|---|---|---|---|" >>"$OUT/results.md"
for round in $(seq "$ROUNDS"); do
for b in ${BACKENDS//,/ }; do
	for s in ${ONLY//,/ }; do
		start_server "$s" "$b" || continue
		# Prefill so reads read data (a null backend has nothing to fill).
		[ "$b" = null ] || fio --name=fill --filename="$W/disk.raw" --ioengine=io_uring --direct=1 \
			--rw=write --bs=1M --iodepth=4 --size=256M --output=/dev/null
		for j in $JOBS; do
			IFS=: read -r name rw bs qd <<<"$j"
			t0=$(cpu_ticks "$SPID")
			v0=$(vol_ctx "$SPID")
			fio --name="$name" --filename="$W/disk.raw" --ioengine=io_uring --direct=1 --rw="$rw" \
				--bs="$bs" --iodepth="$qd" --size=256M --time_based --runtime="$RUNTIME" \
				--output-format=json --output="$OUT/$s-$b-$name-r$round.json"
			t1=$(cpu_ticks "$SPID")
			v1=$(vol_ctx "$SPID")
			/usr/bin/python3 - "$OUT/$s-$b-$name-r$round.json" "$s" "$b" "$name" $((t1 - t0)) "$(getconf CLK_TCK)" $((v1 - v0)) "$round" >>"$OUT/results.md" <<'PY'
import json, sys
f, s, b, name, ticks, hz, vol, rnd = sys.argv[1:9]
j = json.load(open(f))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
ios = d["total_ios"] or 1
cpu_us = int(ticks) / int(hz) * 1e6 / ios
print(f"| {rnd} | {s} | {b} | {name} | {d['iops']:.0f} | {d['bw'] / 1024:.0f} | {d['lat_ns']['mean'] / 1000:.1f} | {cpu_us:.1f} | {int(vol) / ios:.2f} |")
PY
		done
		case $s in blkgw-*) "$BLKGW" status --control "$W/run/control.sock" 2>/dev/null |
			grep -F "$W/disk.raw" | sed "s|^|round $round $s $b: |" >>"$OUT/status.log" || true ;; esac
		stop_server
	done
done
done
cat "$OUT/results.md"
[ "$ROUNDS" -gt 1 ] || exit 0
/usr/bin/python3 - "$OUT/results.md" >"$OUT/summary.md" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    c = [x.strip() for x in line.strip().strip("|").split("|")]
    if len(c) != 9 or not c[0].isdigit():
        continue
    rnd, srv, bk, job = int(c[0]), c[1], c[2], c[3]
    # QD1: mean latency (lower is better); otherwise IOPS or MiB/s.
    val = float(c[6]) if job.endswith("qd1") else float(c[4] if "qd32" in job else c[5])
    rows.setdefault((bk, job), {}).setdefault(srv, {})[rnd] = (val, float(c[7]), float(c[8]))
print("| backend | job | server | median (µs at QD1, else IOPS or MiB/s) | range | CPU/req (µs) | sleeps/req |")
print("|---|---|---|---|---|---|---|")
for (bk, job), srvs in rows.items():
    for srv, r in srvs.items():
        v = [x[0] for x in r.values()]
        print(f"| {bk} | {job} | {srv} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} | "
              f"{statistics.median(x[1] for x in r.values()):.1f} | {statistics.median(x[2] for x in r.values()):.2f} |")
print()
print("Ratios of two servers in the same round (median over rounds; at QD1 the ratio of mean latencies, else of IOPS or MiB/s):")
print()
print("| backend | job | A / B | median | per round |")
print("|---|---|---|---|---|")
for (bk, job), srvs in rows.items():
    names = list(srvs)
    for i, a in enumerate(names):
        for bname in names[i + 1:]:
            common = sorted(set(srvs[a]) & set(srvs[bname]))
            rs = [srvs[a][k][0] / srvs[bname][k][0] for k in common if srvs[bname][k][0]]
            if rs:
                print(f"| {bk} | {job} | {a} / {bname} | {statistics.median(rs):.2f} | {' '.join(f'{x:.2f}' for x in rs)} |")
PY
cat "$OUT/summary.md"
