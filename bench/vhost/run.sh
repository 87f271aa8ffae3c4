#!/bin/bash
# blkgw's vhost-user-blk export against qemu-storage-daemon's, driven by the
# same client (the fio engine from bench/vhost-client) on the same host,
# interleaved run by run. A benchmark, not a test.
#
#   bench/vhost/run.sh [--build DIR] [--runtime S] [--reps N] [--out DIR] [--quick]
#                      [--no-pin] [--backends null,memory] [--jobs LIST] [--no-wait]
#                      [--fio-defaults] [--client-spin US]
#
# Backends (same for both daemons as far as each can):
#   null     blkgw: null (reads zero-filled)     qsd: null-co, read-zeroes=on
#   memory   blkgw: memory (sparse RAM)          qsd: a file on /dev/shm
#            (tmpfs), cache.direct=on, aio=native - the closest it has to
#            a RAM disk (Linux AIO copies tmpfs data inside io_submit;
#            io_uring would hand each request to an io-wq thread);
#            both images are written in full before the first run
# Jobs: QD1 4k randread (mean latency), QD32 4k randread and randwrite
# (IOPS); one fio job, one virtqueue, interrupts. Before it sleeps on its
# call eventfd the client looks at the used ring for up to --client-spin
# microseconds (default 200: what a KVM guest's vCPU thread does on the
# host, halt-polling up to halt_poll_ns, 200 us by default, before it
# really sleeps). With 0 the client sleeps at once, and whether a fast
# daemon's answer lands before the client is asleep is a race that makes
# QD1 bimodal from run to run (issue 23, docs/performance.md).
# CPU per request: the daemon's utime+stime from /proc/PID/stat over the
# run, divided by the requests fio completed; so are its threads' context
# switches and, for blkgw, its workers' loop counters (status --json
# worker_loops: turns, sleeps, kicks, polling slices and those that found
# requests, held signals), which say which mode each run ran in (issue 23);
# and fio's own context switches per request (the client sleeping on its
# call eventfd: what decides blkgw's QD1 mode, docs/performance.md).
#
# The client is one fio thread, and at QD32 on the null backend it is the
# limit: both daemons poll, so each is charged 1/IOPS per request and the
# CPU ratio is fio's noise. So fio is kept lean, the same for both daemons:
# every job norandommap=1 and randrepeat=0 (as bench/nbd), and the QD32
# jobs, which report IOPS only, gtod_reduce=1 (no per-request clock reads
# or latency statistics). --fio-defaults runs fio with its defaults instead.
#
# Pinning (default): each daemon runs on CPU 0 and fio on CPU 1, as a
# guest's vCPUs never share a CPU with the back-end. Unpinned, the
# scheduler sometimes puts both on one CPU, where a wake-up is a cheap
# context switch instead of an IPI to a halted CPU, and the same job
# swings between ~8 and ~40 us at QD1 from run to run (seen in a VM).
#
# Before each run it waits (up to 60 s) for the machine to be below 15%
# busy and records what it saw; --no-wait skips that (smoke tests). When
# pinned it also records how long one cache line takes to go from CPU 0 to
# CPU 1 and back (BUILD/cpu-pingpong): every request crosses between the
# two through the rings, and in a VM that cost moves with where the
# hypervisor runs the vCPUs.
#
#
# Output: a table on stdout, raw fio JSON and a results.csv in --out.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
runtime=10
reps=3
out=""
pin=1
wait=1
lean=1
spin=200
backends="null memory"
jobs="qd1-randread qd32-randread qd32-randwrite"
usage="usage: $0 [--build DIR] [--runtime S] [--reps N] [--out DIR] [--quick] [--no-pin] [--backends null,memory] [--jobs qd1-randread,qd32-randread,qd32-randwrite] [--no-wait] [--fio-defaults] [--client-spin US]"
while [ $# -gt 0 ]; do
	case "$1" in
	--no-pin) pin=0; shift ;;
	--no-wait) wait=0; shift ;;
	--fio-defaults) lean=0; shift ;;
	--build) build=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	--client-spin) spin=${2:?}; shift 2 ;;
	--reps) reps=${2:?}; shift 2 ;;
	--out) out=${2:?}; shift 2 ;;
	--quick) runtime=3; reps=1; shift ;;
	--backends) backends=${2:?}; backends=${backends//,/ }; shift 2 ;;
	--jobs) jobs=${2:?}; jobs=${jobs//,/ }; shift 2 ;;
	*) echo "$usage" >&2; exit 2 ;;
	esac
done
blkgw=$build/blkgw
engine=$build/fio-vhost-user-blk.so
for f in "$blkgw" "$engine"; do
	[ -e "$f" ] || { echo "missing $f: build first (cmake --build $build)" >&2; exit 1; }
done
for c in fio qemu-storage-daemon jq python3; do
	command -v "$c" >/dev/null || { echo "missing $c (scripts/deps.sh test)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vhost-bench.XXXXXX")
out=${out:-$work/results}
mkdir -p "$out"
shm=/dev/shm/vhost-bench-$$.img
pids=""
cleanup() {
	local p
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work" "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

daemon_cpu=() client_cpu=()
if [ "$pin" = 1 ] && [ "$(nproc)" -ge 2 ]; then
	daemon_cpu=(taskset -c 0)
	client_cpu=(taskset -c 1)
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
hz=$(getconf CLK_TCK)

# busy% of all CPUs over one second
busy() {
	local a b
	a=$(awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat)
	sleep 1
	b=$(awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat)
	echo "$a $b" | awk '{ d = $4 - $2; printf "%d", d ? 100 * ($3 - $1) / d : 0 }'
}

# Wait (at most 120 s) until the machine is quiet; record what we saw.
wait_quiet() {
	local b i
	[ "$wait" = 1 ] || { echo -1; return; }
	for i in $(seq 60); do
		b=$(busy)
		[ "$b" -lt 15 ] && break
		sleep 1
	done
	echo "$b"
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Context switches of all of a daemon's threads (voluntary and not).
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'; }
# blkgw's pool workers' loop counters (status --json worker_loops), summed.
loop_counters() {
	"$blkgw" status --manifest "$work/m.yaml" --json | jq -c '[.worker_loops[] | select(.background | not)]
		| { turns: (map(.turns) | add), sleeps: (map(.sleeps) | add), kicks: (map(.kicks) | add),
		    polls: (map(.ring_polls) | add), polls_found: (map(.ring_polls_with_work) | add),
		    held: (map(.held_signals) | add), spin: (map(.spin_turns) | add) }'
}

start_blkgw() {
	cat >"$work/m.yaml" <<YAML
version: 1
gateway: { run-dir: $work/run, workers: 2, log-level: warn }
images:
  null: { backend: null, size: 1G }
  memory: { backend: memory, size: 1G }
exports:
  - { image: null, transports: [vhost-user-blk], vhost-user-blk: { socket: $work/blkgw-null.sock, queues: 1 } }
  - { image: memory, transports: [vhost-user-blk], vhost-user-blk: { socket: $work/blkgw-memory.sock, queues: 1 } }
YAML
	setpriv --pdeathsig KILL -- "${daemon_cpu[@]}" "$blkgw" serve "$work/m.yaml" >"$work/blkgw.log" 2>&1 &
	blkgw_pid=$!
	pids="$pids $blkgw_pid"
}

start_qsd() {
	truncate -s 1G "$shm"
	setpriv --pdeathsig KILL -- "${daemon_cpu[@]}" qemu-storage-daemon \
		--blockdev driver=null-co,node-name=null0,size=1073741824,read-zeroes=on \
		--blockdev "driver=file,node-name=mem0,filename=$shm,cache.direct=on,aio=native" \
		--export "type=vhost-user-blk,id=e0,node-name=null0,addr.type=unix,addr.path=$work/qsd-null.sock,writable=on,num-queues=1" \
		--export "type=vhost-user-blk,id=e1,node-name=mem0,addr.type=unix,addr.path=$work/qsd-memory.sock,writable=on,num-queues=1" \
		>"$work/qsd.log" 2>&1 &
	qsd_pid=$!
	pids="$pids $qsd_pid"
}

wait_sockets() {
	local s i
	for s in "$@"; do
		for i in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
		[ -S "$s" ] || { cat "$work"/*.log >&2; echo "no socket $s" >&2; exit 1; }
	done
}

# run DAEMON PID BACKEND JOB REP
run() {
	local daemon=$1 pid=$2 backend=$3 job=$4 rep=$5 rw qd c0 c1 x0 x1 l0='{}' l1='{}' j quiet
	local -a lean_opts=()
	case "$job" in
	qd1-randread) rw=randread qd=1 ;;
	qd32-randread) rw=randread qd=32 ;;
	qd32-randwrite) rw=randwrite qd=32 ;;
	*) echo "unknown job '$job' (qd1-randread, qd32-randread, qd32-randwrite)" >&2; exit 2 ;;
	esac
	if [ "$lean" = 1 ]; then
		lean_opts=(--norandommap --randrepeat=0)
		[ "$qd" = 1 ] || lean_opts+=(--gtod_reduce=1)
	fi
	quiet=$(wait_quiet)
	pp=""
	[ "${#client_cpu[@]}" = 0 ] || [ ! -x "$build/cpu-pingpong" ] || pp=$("$build/cpu-pingpong" 0 1 50000 2>/dev/null) || pp=""
	j=$out/$daemon-$backend-$job-$rep.json
	[ "$daemon" != blkgw ] || l0=$(loop_counters)
	x0=$(ctx_switches "$pid")
	c0=$(cpu_ticks "$pid")
	"${client_cpu[@]}" fio --thread --ioengine="external:$engine" --vhost_socket="$work/$daemon-$backend.sock" \
		--vhost_spin_us="$spin" --name="$job" --rw=$rw --bs=4k --iodepth=$qd --size=1G --time_based --runtime="$runtime" \
		"${lean_opts[@]}" --output-format=json --output="$j" >/dev/null
	c1=$(cpu_ticks "$pid")
	x1=$(ctx_switches "$pid")
	[ "$daemon" != blkgw ] || l1=$(loop_counters)
	jq -r --arg d "$daemon" --arg b "$backend" --arg j "$job" --arg r "$rep" --arg c "$((c1 - c0))" \
		--arg hz "$hz" --arg q "$quiet" --arg cs "$((x1 - x0))" --arg pp "$pp" --argjson l0 "$l0" --argjson l1 "$l1" \
		'.jobs[0] as $x | ($x.read.total_ios + $x.write.total_ios) as $n |
		 def per($k): if $l1[$k] == null then "" else ($l1[$k] - $l0[$k]) / $n end;
		 [$d, $b, $j, $r, ($x.read.iops + $x.write.iops),
		  ((if $x.read.total_ios > 0 then $x.read.lat_ns.mean else $x.write.lat_ns.mean end) / 1000
		   | if . == 0 then "" else . end),
		  (($c | tonumber) / ($hz | tonumber) * 1e6 / $n), $q, (($cs | tonumber) / $n),
		  per("turns"), per("sleeps"), per("kicks"), per("polls"), per("polls_found"), per("held"),
		  per("spin"), ($x.ctx / $n), $pp] | @csv' "$j" >>"$out/results.csv"
	log "$(tail -n1 "$out/results.csv")"
}

log "load before: $(uptime); pinning: ${daemon_cpu[*]:-none} (daemons) ${client_cpu[*]:-none} (fio); client spin ${spin} us"
start_blkgw
start_qsd
wait_sockets "$work/blkgw-null.sock" "$work/blkgw-memory.sock" "$work/qsd-null.sock" "$work/qsd-memory.sock"
# Fill the memory images first, so that reads carry data in every run
# (unwritten space reads as zeros, cheaper for both daemons than real data).
case " $backends " in
*" memory "*)
	for d in blkgw qsd; do
		log "prefilling $d's memory image (1 GiB, fio's random data)"
		"${client_cpu[@]}" fio --thread --ioengine="external:$engine" --vhost_socket="$work/$d-memory.sock" \
			--name=prefill --rw=write --bs=1M --iodepth=8 --size=1G --output="$work/prefill-$d.txt" >/dev/null
	done
	;;
esac
echo '"daemon","backend","job","rep","iops","lat_us","cpu_us_per_req","busy_pct_before","ctxsw_per_req","turns_per_req","sleeps_per_req","kicks_per_req","polls_per_req","polls_found_per_req","held_per_req","spin_turns_per_req","client_ctxsw_per_req","pingpong_ns"' >"$out/results.csv"
for rep in $(seq "$reps"); do
	for backend in $backends; do
		for job in $jobs; do
			# Alternate which daemon goes first, so drift hits both alike.
			if [ $((rep % 2)) = 1 ]; then order="blkgw qsd"; else order="qsd blkgw"; fi
			for d in $order; do
				if [ "$d" = blkgw ]; then run blkgw "$blkgw_pid" $backend $job "$rep"; else run qsd "$qsd_pid" $backend $job "$rep"; fi
			done
		done
	done
done
log "load after: $(uptime)"
python3 "$here/report.py" "$out/results.csv"
echo "raw results: $out"
[ "$out" != "$work/results" ] || { rm -rf "${TMPDIR:-/tmp}/vhost-bench-last"; cp -r "$out" "${TMPDIR:-/tmp}/vhost-bench-last"; echo "(copied to ${TMPDIR:-/tmp}/vhost-bench-last)"; }
