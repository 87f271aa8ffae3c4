#!/bin/bash
# NBD benchmark: blkgw against qemu-storage-daemon, nbdkit and a do-nothing
# floor server, same machine, same run, fio's nbd engine over unix sockets.
# Method and caveats: bench/README.md. Run `bench/nbd/run.sh --help`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib/bench.sh
. "$ROOT/bench/lib/bench.sh"

ORIG_ARGS=("$@")
ALL_SERVERS="floor,blkgw-null,blkgw-mem,qsd-null,qsd-mem,nbdkit-null,nbdkit-mem"
ALL_JOBS="randread-qd32,randwrite-qd32,randread-qd1,seqread-1m"

BLKGW=$ROOT/build/blkgw
FLOOR=""
RUNTIME=10
REPEAT=3
ONLY=$ALL_SERVERS
JOBS=$ALL_JOBS
OUT=""
SIZE=1G
WORKERS=2
PIN=none
RSS_EXPORTS=100
QSD_FILE_OPTS=aio=native,cache.direct=on
QUIET_PCT=15
QUIET_WAIT=120
NOISY_CORES=0.25
NOISY_RETRIES=2
NOTE=""
PY=/usr/bin/python3

usage() {
	cat <<EOF
usage: bench/nbd/run.sh [options]
Start each NBD server in turn, run fio's nbd engine against it, measure the
server's CPU time per request, and write a markdown table and raw JSON.

  --blkgw PATH      blkgw binary (default: build/blkgw)
  --floor PATH      nbd-floor binary (default: build/nbd-floor, else built
                    from bench/floor/nbd-floor.c into the output folder)
  --runtime S       seconds per fio job (default $RUNTIME)
  --repeat N        rounds; every server runs every job once per round, and
                    the report gives the median and the spread (default $REPEAT)
  --only LIST       servers, comma-separated (default: all):
                    $ALL_SERVERS
  --jobs LIST       fio jobs, comma-separated (default: all):
                    $ALL_JOBS
  --out DIR         results folder (default: /tmp/blkgw-bench-nbd.DATE)
  --size SIZE       image size (default $SIZE; memory images are prefilled)
  --workers N       blkgw's gateway.workers (default $WORKERS)
  --pin MODE        none (default): let the scheduler place fio and server;
                    split: fio on CPU 0, the server on every other CPU;
                    same: fio and the server both on CPU 0
  --rss-exports N   exports in the idle-RSS manifest (default $RSS_EXPORTS;
                    0 skips the RSS measurement)
  --qsd-file-opts O options of qsd-mem's file node on /dev/shm
                    (default $QSD_FILE_OPTS, its fastest here)
  --quiet PCT[,S]   before each job wait until the machine is under PCT %
                    busy for a second, at most S s (default $QUIET_PCT,$QUIET_WAIT;
                    0 disables); the busy % and the CPU others used during
                    each job are recorded
  --retry-noisy C[,N]  rerun a job (at most N times, default $NOISY_CORES,$NOISY_RETRIES)
                    when other processes used more than C cores during it;
                    the noisy attempt is kept as JOB.noisyK.*; 0 disables
  --note TEXT       recorded with the results, e.g. which commit --blkgw is
  -h, --help        this help
EOF
}

while [ $# -gt 0 ]; do
	case $1 in
	--blkgw) BLKGW=$2; shift ;;
	--floor) FLOOR=$2; shift ;;
	--runtime) RUNTIME=$2; shift ;;
	--repeat) REPEAT=$2; shift ;;
	--only) ONLY=$2; shift ;;
	--jobs) JOBS=$2; shift ;;
	--out) OUT=$2; shift ;;
	--size) SIZE=$2; shift ;;
	--workers) WORKERS=$2; shift ;;
	--pin) PIN=$2; shift ;;
	--rss-exports) RSS_EXPORTS=$2; shift ;;
	--qsd-file-opts) QSD_FILE_OPTS=$2; shift ;;
	--note) NOTE=$2; shift ;;
	--retry-noisy) NOISY_CORES=${2%%,*}; case $2 in *,*) NOISY_RETRIES=${2#*,} ;; esac; shift ;;
	--quiet) QUIET_PCT=${2%%,*}; case $2 in *,*) QUIET_WAIT=${2#*,} ;; esac; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

case $RUNTIME in '' | *[!0-9]* | 0) bench_die "--runtime wants whole seconds > 0" ;; esac
case $REPEAT in '' | *[!0-9]* | 0) bench_die "--repeat wants a count > 0" ;; esac
case $RSS_EXPORTS in '' | *[!0-9]*) bench_die "--rss-exports wants a count" ;; esac
case $QUIET_PCT$QUIET_WAIT in '' | *[!0-9]*) bench_die "--quiet wants PCT[,SECONDS]" ;; esac
case $NOISY_CORES in '' | *[!0-9.]*) bench_die "--retry-noisy wants CORES[,N]" ;; esac
case $NOISY_RETRIES in '' | *[!0-9]*) bench_die "--retry-noisy wants CORES[,N]" ;; esac
case $PIN in none | split | same) ;; *) bench_die "--pin is none, split or same" ;; esac
for s in ${ONLY//,/ }; do
	case ",$ALL_SERVERS," in *",$s,"*) ;; *) bench_die "unknown server '$s'" ;; esac
done
for j in ${JOBS//,/ }; do
	[ -f "$HERE/jobs/$j.fio" ] || bench_die "unknown job '$j'"
done
SIZE_BYTES=$(bench_size_bytes "$SIZE")

for c in fio nbdinfo setpriv taskset "$PY"; do
	command -v "$c" >/dev/null || bench_die "'$c' is missing (scripts/deps.sh test installs it)"
done
case ",$ONLY," in *,qsd-*) command -v qemu-storage-daemon >/dev/null ||
	bench_die "qemu-storage-daemon is missing" ;; esac
case ",$ONLY," in *,nbdkit-*) command -v nbdkit >/dev/null ||
	bench_die "nbdkit is missing" ;; esac

[ -n "$OUT" ] || OUT=${TMPDIR:-/tmp}/blkgw-bench-nbd.$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/raw" # a previous run's, which the report would mix in
RUN=$(mktemp -d "${TMPDIR:-/tmp}/blkgw-bench-run.XXXXXX")
SHM=/dev/shm/blkgw-bench-$$.img

cleanup() {
	bench_cleanup
	rm -f "$SHM"
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

case ",$ONLY," in *,blkgw-*)
	[ -x "$BLKGW" ] || bench_die "no blkgw at $BLKGW (build it, or pass --blkgw)" ;;
esac
if case ",$ONLY," in *,floor,*) true ;; *) false ;; esac; then
	if [ -z "$FLOOR" ]; then
		FLOOR=$ROOT/build/nbd-floor
		if [ ! -x "$FLOOR" ]; then
			FLOOR=$OUT/nbd-floor
			bench_log "building nbd-floor into $FLOOR"
			cc -O2 -g -Wall -Wextra -pthread -I "$ROOT" -o "$FLOOR" \
				"$ROOT/bench/floor/nbd-floor.c" || bench_die "cannot build nbd-floor"
		fi
	fi
	[ -x "$FLOOR" ] || bench_die "no nbd-floor at $FLOOR"
fi

# CPU placement. split: fio alone on CPU 0, the server on the others;
# same: both on CPU 0.
NCPU=$(nproc)
if [ "$PIN" = split ]; then
	[ "$NCPU" -ge 2 ] || bench_die "--pin split needs 2 CPUs"
	FIO_PIN=(taskset -c 0)
	SRV_PIN=(taskset -c "1-$((NCPU - 1))")
elif [ "$PIN" = same ]; then
	FIO_PIN=(taskset -c 0)
	SRV_PIN=(taskset -c 0)
else
	FIO_PIN=()
	SRV_PIN=()
fi

# Every server serves one export named "bench" on $sock.
blkgw_manifest() { # NAME BACKEND-LINE
	cat >"$RUN/$1.yaml" <<EOF
version: 1
gateway: { run-dir: $RUN/$1.d, workers: $WORKERS, log-level: warn }
images:
  bench: $2
exports:
  - { image: bench, transports: [nbd], nbd: { socket: $RUN/$1.sock, name: bench } }
EOF
}

# server_cmd NAME SOCK: the command line, one word per line in SRV_CMD.
server_cmd() {
	local name=$1 sock=$2
	case $name in
	floor)
		SRV_CMD=("$FLOOR" -s "$SIZE_BYTES" "$sock") ;;
	blkgw-null)
		blkgw_manifest "$name" "{ backend: null, size: $SIZE_BYTES }"
		SRV_CMD=("$BLKGW" serve "$RUN/$name.yaml") ;;
	blkgw-mem)
		blkgw_manifest "$name" "{ backend: memory, size: $SIZE_BYTES }"
		SRV_CMD=("$BLKGW" serve "$RUN/$name.yaml") ;;
	qsd-null)
		SRV_CMD=(qemu-storage-daemon
			--blockdev "driver=null-co,node-name=bench,size=$SIZE_BYTES,read-zeroes=on"
			--nbd-server "addr.type=unix,addr.path=$sock"
			--export "type=nbd,id=exp0,node-name=bench,name=bench,writable=on") ;;
	qsd-mem)
		rm -f "$SHM"
		truncate -s "$SIZE_BYTES" "$SHM"
		SRV_CMD=(qemu-storage-daemon
			--blockdev "driver=file,node-name=bench,filename=$SHM,$QSD_FILE_OPTS"
			--nbd-server "addr.type=unix,addr.path=$sock"
			--export "type=nbd,id=exp0,node-name=bench,name=bench,writable=on") ;;
	nbdkit-null)
		SRV_CMD=(nbdkit -f --exit-with-parent -U "$sock" null "size=$SIZE_BYTES") ;;
	nbdkit-mem)
		SRV_CMD=(nbdkit -f --exit-with-parent -U "$sock" memory "size=$SIZE_BYTES") ;;
	esac
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# run_fio JOB URI OUTJSON. In the background with `wait`, so that a signal
# stops the script (and fio, through bench_cleanup) at once.
run_fio() {
	local rc=0 fpid
	BENCH_URI=$2 BENCH_SIZE=$SIZE_BYTES BENCH_RUNTIME=$RUNTIME \
		setpriv --pdeathsig KILL -- "${FIO_PIN[@]}" fio --output-format=json \
		--output="$3" "$HERE/jobs/$1.fio" >/dev/null 2>"$3.stderr" </dev/null &
	fpid=$!
	bench_track "$fpid"
	wait "$fpid" || rc=$?
	bench_forget "$fpid"
	[ "$rc" = 0 ] || bench_die "fio $1 failed: $(tail -n 5 "$3.stderr")"
}

# measure_job JOB URI DIR PID: one fio run, with the server's CPU time, the
# machine's CPU time and the load average around it.
measure_job() {
	local job=$1 uri=$2 dir=$3 pid=$4
	if [ "$QUIET_PCT" -gt 0 ]; then
		bench_wait_quiet "$QUIET_PCT" "$QUIET_WAIT" >"$dir/$job.busy0"
	fi
	loadavg >"$dir/$job.load0"
	bench_sys_cpu >"$dir/$job.sys0"
	bench_cpu_snapshot "$pid" "$dir/$job.cpu0"
	run_fio "$job" "$uri" "$dir/$job.json"
	bench_cpu_snapshot "$pid" "$dir/$job.cpu1"
	bench_sys_cpu >"$dir/$job.sys1"
	loadavg >"$dir/$job.load1"
}

# bench_server ROUND NAME: start, prefill if it stores data, run every job
# measuring the server's CPU over each, stop.
bench_server() {
	local round=$1 name=$2 sock dir uri pid job
	sock=$RUN/$name.sock
	dir=$OUT/raw/round$round/$name
	uri="nbd+unix:///bench?socket=$sock"
	mkdir -p "$dir"
	server_cmd "$name" "$sock"
	printf '%s\n' "${SRV_PIN[@]}" "${SRV_CMD[@]}" >"$dir/cmdline"
	if [ -f "$RUN/$name.yaml" ]; then cp "$RUN/$name.yaml" "$dir/manifest.yaml"; fi
	bench_spawn "$dir/server.log" "${SRV_PIN[@]}" "${SRV_CMD[@]}"
	pid=$BENCH_PID
	bench_rm_on_exit "$sock"
	bench_wait_nbd "$pid" "$uri" 60 ||
		bench_die "$name did not come up: $(tail -n 5 "$dir/server.log")"
	# qsd holds its image open: unlinked now, /dev/shm is freed whenever it
	# exits, even if this script is killed.
	rm -f "$SHM"
	case $name in *-mem)
		bench_log "round $round: $name: prefilling $SIZE"
		run_fio prefill "$uri" "$dir/prefill.json"
		nbdinfo --map --totals "$uri" >"$dir/map-totals.txt" 2>&1 || true
		;;
	esac
	for job in ${JOBS//,/ }; do
		local try=0 foreign f
		while :; do
			bench_log "round $round: $name: $job (${RUNTIME}s)"
			measure_job "$job" "$uri" "$dir" "$pid"
			kill -0 "$pid" 2>/dev/null || bench_die "$name died during $job"
			foreign=$("$PY" "$ROOT/bench/lib/nbd_report.py" --foreign "$dir" "$job")
			if [ "$NOISY_CORES" = 0 ] || [ "$try" -ge "$NOISY_RETRIES" ] ||
				! "$PY" -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" \
					"$foreign" "$NOISY_CORES"; then
				break
			fi
			try=$((try + 1))
			bench_log "round $round: $name: $job: others used $foreign cores meanwhile; again"
			for f in "$dir/$job".*; do
				case $f in *.noisy*) ;; *) mv "$f" "${f/"$dir/$job."/"$dir/$job.noisy$try."}" ;; esac
			done
		done
	done
	grep -E '^(VmHWM|VmRSS|Threads):' "/proc/$pid/status" >"$dir/status" || true
	bench_stop "$pid"
	rm -f "$sock" "$SHM"
}

# Idle RSS of one blkgw serving RSS_EXPORTS exports (half memory, half null).
bench_rss() {
	local n=$RSS_EXPORTS dir=$OUT/raw/rss m i pid last
	mkdir -p "$dir" "$RUN/rss.d"
	m=$RUN/rss.yaml
	{
		echo "version: 1"
		echo "gateway: { run-dir: $RUN/rss.d, workers: $WORKERS, log-level: warn }"
		echo "images:"
		for i in $(seq 1 "$n"); do
			if [ $((i % 2)) = 1 ]; then
				echo "  img$i: { backend: memory, size: 1G }"
			else
				echo "  img$i: { backend: null, size: 16G }"
			fi
		done
		echo "exports:"
		for i in $(seq 1 "$n"); do
			echo "  - { image: img$i, transports: [nbd], nbd: { socket: $RUN/rss.d/img$i.sock } }"
		done
	} >"$m"
	cp "$m" "$dir/manifest.yaml"
	bench_spawn "$dir/server.log" "$BLKGW" serve "$m"
	pid=$BENCH_PID
	last="nbd+unix:///img$n?socket=$RUN/rss.d/img$n.sock"
	bench_wait_nbd "$pid" "$last" 60 ||
		bench_die "blkgw with $n exports did not come up: $(tail -n 5 "$dir/server.log")"
	# Touch every export once, as a client would, then let it settle.
	for i in $(seq 1 "$n"); do
		nbdinfo --size "nbd+unix:///img$i?socket=$RUN/rss.d/img$i.sock" >/dev/null ||
			bench_die "export img$i does not answer"
	done
	sleep 2
	grep -E '^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM|VmSize|Threads):' \
		"/proc/$pid/status" >"$dir/status"
	echo "$n" >"$dir/exports"
	bench_stop "$pid"
}

bench_log "results in $OUT"
BO_BLKGW=$BLKGW BO_FLOOR=$FLOOR BO_RUNTIME=$RUNTIME BO_REPEAT=$REPEAT \
BO_ONLY=$ONLY BO_JOBS=$JOBS BO_SIZE=$SIZE_BYTES BO_WORKERS=$WORKERS BO_PIN=$PIN \
BO_RSS=$RSS_EXPORTS BO_QSD_FILE_OPTS=$QSD_FILE_OPTS BO_QUIET="$QUIET_PCT,$QUIET_WAIT" \
BO_NOISY="$NOISY_CORES,$NOISY_RETRIES" BO_NOTE=$NOTE \
	"$PY" - "$OUT/options.json" "$0" "${ORIG_ARGS[@]+"${ORIG_ARGS[@]}"}" <<'EOF'
import json, os, shlex, sys
e = os.environ
json.dump({
    "command": " ".join(shlex.quote(a) for a in sys.argv[2:]),
    "blkgw": e["BO_BLKGW"], "floor": e["BO_FLOOR"],
    "runtime_s": int(e["BO_RUNTIME"]), "repeat": int(e["BO_REPEAT"]),
    "servers": e["BO_ONLY"].split(","), "jobs": e["BO_JOBS"].split(","),
    "size_bytes": int(e["BO_SIZE"]), "workers": int(e["BO_WORKERS"]),
    "pin": e["BO_PIN"], "rss_exports": int(e["BO_RSS"]),
    "qsd_file_opts": e["BO_QSD_FILE_OPTS"],
    "quiet": e["BO_QUIET"],
    "retry_noisy": e["BO_NOISY"], "note": e["BO_NOTE"],
}, open(sys.argv[1], "w"), indent=1)
EOF
"$PY" "$ROOT/bench/lib/nbd_report.py" --machine "$OUT" "$BLKGW"
loadavg >"$OUT/load.start"
date -Iseconds >"$OUT/date.start"

for round in $(seq 1 "$REPEAT"); do
	for name in ${ONLY//,/ }; do
		bench_server "$round" "$name"
	done
done
if [ "$RSS_EXPORTS" -gt 0 ] && [ -x "$BLKGW" ]; then
	bench_log "idle RSS with $RSS_EXPORTS exports"
	bench_rss
fi

loadavg >"$OUT/load.end"
date -Iseconds >"$OUT/date.end"
"$PY" "$ROOT/bench/lib/nbd_report.py" "$OUT"
bench_log "wrote $OUT/results.md and $OUT/results.json"
