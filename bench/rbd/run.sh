#!/bin/bash
# rbd benchmark: blkgw's rbd backend over NBD against qemu-storage-daemon's
# driver=rbd over NBD, same throwaway Ceph cluster (one mon, one memstore OSD,
# tests/rbd/cluster.sh), same client (fio's nbd engine, bench/nbd/jobs), runs
# interleaved. Also `rbd bench` on the same image: what the cluster itself
# does, the ceiling. CPU per request is the daemon's utime+stime over a job
# divided by the requests fio completed; context switches per request are
# the daemon's (all its threads', voluntary and involuntary) over the same;
# for blkgw, its worker's spin turns per request and how many times the NBD
# connection stopped polling for slow requests (status --json, kept as
# SERVER-JOB-REP.status.json).
#
#   bench/rbd/run.sh [--blkgw PATH] [--runtime S] [--repeat N] [--size SIZE]
#                    [--jobs LIST] [--servers LIST] [--variant NAME:K=V[,K=V...]]...
#                    [--out DIR]
#
# --servers picks among blkgw and qsd (default both). --variant adds a server
# blkgw-NAME: blkgw with librados/librbd settings K=V appended to the
# [client] section of its copy of the cluster's ceph.conf, and keys written
# nbd.KEY set in the export's nbd settings instead (an A/B interleaved with
# the others in every round), e.g. --variant ms1:ms_async_op_threads=1
# --variant nopoll:nbd.poll-us=0 --servers blkgw.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BLKGW=$ROOT/build/blkgw
RUNTIME=10
REPEAT=3
SIZE=256M
JOBS=randread-qd1,randwrite-qd1,randread-qd32,randwrite-qd32,seqread-1m
SERVERS=blkgw,qsd
VARIANTS=()
OUT=""
while [ $# -gt 0 ]; do
	case $1 in
	--blkgw) BLKGW=$2; shift ;;
	--runtime) RUNTIME=$2; shift ;;
	--repeat) REPEAT=$2; shift ;;
	--size) SIZE=$2; shift ;;
	--jobs) JOBS=$2; shift ;;
	--servers) SERVERS=$2; shift ;;
	--variant) VARIANTS+=("$2"); shift ;;
	--out) OUT=$2; shift ;;
	-h | --help) sed -n '2,20p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
[ -n "$OUT" ] || OUT=${TMPDIR:-/tmp}/blkgw-bench-rbd.$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

# tests/rbd/cluster.sh wants tests/lib.sh's helpers: the few it uses.
BLKGW_PID=""
export BLKGW
. "$ROOT/tests/lib.sh"
. "$ROOT/tests/rbd/cluster.sh"
case ",$SERVERS," in *,qsd,*)
	command -v qemu-storage-daemon >/dev/null || skip "qemu-storage-daemon is missing" ;;
esac
for v in "${VARIANTS[@]}"; do
	case $v in
	[A-Za-z0-9]*:*=*) ;;
	*) echo "--variant wants NAME:KEY=VALUE[,KEY=VALUE...], got '$v'" >&2; exit 2 ;;
	esac
	SERVERS="$SERVERS,blkgw-${v%%:*}"
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'; }

ceph_start
rbd_t create --size "$SIZE" rbd/bench || fail "rbd create"
# Fill the image, so reads carry data (memstore: keep SIZE small).
rbd_t bench --io-type write --io-size 4M --io-total "$SIZE" --io-pattern seq rbd/bench >/dev/null
log "cluster up, image filled"

# The ceiling: librbd straight to the cluster, 4k random at 1 and 32 threads.
{
	for t in 1 32; do
		for io in read write; do
			echo "== rbd bench --io-type $io --io-size 4K --io-threads $t --io-pattern rand"
			rbd_t bench --io-type $io --io-size 4K --io-threads $t --io-total 64M \
				--io-pattern rand rbd/bench 2>&1 | tail -1
		done
	done
} >"$OUT/rbd-bench.txt"
cat "$OUT/rbd-bench.txt" >&2

sock=$T/bench.sock
start_server() { # NAME -> PID in SRV
	rm -f "$sock"
	case $1 in
	blkgw*)
		conf=$CEPH_CONF
		nbd_extra=""
		if [ "$1" != blkgw ]; then
			conf=$T/$1.conf
			cp "$CEPH_CONF" "$conf"
			for v in "${VARIANTS[@]}"; do
				[ "blkgw-${v%%:*}" = "$1" ] || continue
				# the conf ends with its [client] section (tests/rbd/cluster.sh)
				tr ',' '\n' <<<"${v#*:}" | grep -v '^nbd\.' | sed 's/=/ = /' >>"$conf" || true
				nbd_extra=$(tr ',' '\n' <<<"${v#*:}" | sed -n 's/^nbd\.\([^=]*\)=\(.*\)/, \1: \2/p' | tr -d '\n')
			done
		fi
		cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $T/run, workers: 1, log-level: warn }
images:
  bench: { backend: rbd, image: bench, conf: $conf }
exports:
  - { image: bench, transports: [nbd], nbd: { socket: $sock, name: bench$nbd_extra } }
YAML
		"$BLKGW" serve "$T/m.yaml" 2>"$OUT/$1.log" &
		;;
	qsd)
		qemu-storage-daemon --blockdev "driver=rbd,pool=rbd,image=bench,conf=$CEPH_CONF,node-name=bench" \
			--nbd-server "addr.type=unix,addr.path=$sock" \
			--export "type=nbd,id=e,node-name=bench,name=bench,writable=on" 2>"$OUT/qsd.log" &
		;;
	esac
	SRV=$!
	for _ in $(seq 300); do
		nbdinfo --size "nbd+unix:///bench?socket=$sock" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	fail "$1 did not start"
}

job_args() {
	case $1 in
	randread-qd1) echo "--rw=randread --bs=4k --iodepth=1" ;;
	randwrite-qd1) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
	randread-qd32) echo "--rw=randread --bs=4k --iodepth=32" ;;
	randwrite-qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
	seqread-1m) echo "--rw=read --bs=1M --iodepth=4" ;;
	esac
}

echo "server job rep iops lat_us cpu_us_per_req ctxsw_per_req spin_per_req poll_slow_stops" >"$OUT/results.txt"
for rep in $(seq "$REPEAT"); do
	for job in ${JOBS//,/ }; do
		for srv in ${SERVERS//,/ }; do
			start_server "$srv"
			c0=$(cpu_ticks $SRV)
			x0=$(ctx_switches $SRV)
			# shellcheck disable=SC2046
			fio --name="$job" --ioengine=nbd --uri="nbd+unix:///bench?socket=$sock" \
				--size="$SIZE" --time_based=1 --runtime="$RUNTIME" --norandommap=1 \
				--randrepeat=0 $(job_args "$job") --output-format=json \
				--output="$OUT/$srv-$job-$rep.json" >/dev/null 2>&1 || fail "fio $job on $srv"
			c1=$(cpu_ticks $SRV)
			x1=$(ctx_switches $SRV)
			st=$OUT/$srv-$job-$rep.status.json
			echo '{}' >"$st"
			case $srv in blkgw*) "$BLKGW" status --control "$T/run/control.sock" --json >"$st" 2>/dev/null || true ;; esac
			kill -TERM $SRV; wait $SRV 2>/dev/null || true
			/usr/bin/python3 - "$OUT/$srv-$job-$rep.json" $((c1 - c0)) "$(getconf CLK_TCK)" "$srv" "$job" "$rep" $((x1 - x0)) "$st" >>"$OUT/results.txt" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
st = json.load(open(sys.argv[8]))
ticks, hz, ctx = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[7])
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
d = j["read"] if j["read"]["total_ios"] else j["write"]
lat = d["clat_ns"]["mean"] / 1000 if "clat_ns" in d else 0
# blkgw only: its worker's spin turns per request, and whether the NBD
# connection stopped polling for slow requests (docs/transports/nbd.md)
spin = sum(w["spin_turns"] for w in st.get("worker_loops", []))
poll = st["exports"][0].get("socket_poll", {}) if st.get("exports") else {}
print(sys.argv[4], sys.argv[5], sys.argv[6], round(iops), round(lat, 1), round(ticks / hz * 1e6 / max(ios, 1), 1),
      round(ctx / max(ios, 1), 2), round(spin / max(ios, 1), 2) if st.get("worker_loops") else "-",
      poll.get("stopped_slow", "-"))
PY
			tail -1 "$OUT/results.txt" >&2
		done
	done
done
column -t "$OUT/results.txt"
echo "results in $OUT"
