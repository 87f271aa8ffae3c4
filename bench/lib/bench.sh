# shellcheck shell=bash
# Shared helpers for blkgw's benchmark scripts (bash). Source it:
#   . "$ROOT/bench/lib/bench.sh"
#
#   bench_die MSG            print MSG and exit 1
#   bench_log MSG            print a time-stamped progress line to stderr
#   bench_spawn LOG CMD...   start a server in the background with SIGKILL as
#                            its parent-death signal; sets BENCH_PID and
#                            remembers it for bench_cleanup
#   bench_stop PID           SIGTERM, wait up to 10 s, then SIGKILL
#   bench_track PID, bench_forget PID  (un)register a background process
#   bench_cleanup            stop every spawned server, remove registered paths
#   bench_rm_on_exit PATH    remove PATH (file or socket) in bench_cleanup
#   bench_wait_nbd PID URI [S]  wait until an NBD server answers on URI
#   bench_cpu_snapshot PID OUT  write the process's and each thread's CPU time
#                            (clock ticks) from /proc to OUT
#   bench_size_bytes SIZE    1G -> 1073741824 (K/M/G/T, binary)
#   bench_sys_cpu            "BUSY TOTAL" clock ticks of all CPUs from /proc/stat
#   bench_wait_quiet PCT S   wait (at most S seconds) until the machine is
#                            less than PCT % busy over one second; prints the
#                            last busy % seen
#
# Servers must never outlive the script: bench_spawn runs them under
# `setpriv --pdeathsig KILL`, and the caller traps EXIT to run bench_cleanup.

BENCH_PIDS=""
BENCH_PATHS=""

bench_die() {
	echo "error: $*" >&2
	exit 1
}

bench_log() {
	printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

bench_rm_on_exit() {
	BENCH_PATHS="$BENCH_PATHS $1"
}

# bench_spawn LOG CMD... ; the command's stdout and stderr go to LOG.
bench_spawn() {
	local log=$1
	shift
	setpriv --pdeathsig KILL -- "$@" >"$log" 2>&1 </dev/null &
	BENCH_PID=$!
	bench_track "$BENCH_PID"
}

bench_stop() {
	local pid=$1 i=0
	kill -TERM "$pid" 2>/dev/null || true
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -ge 100 ]; then
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	wait "$pid" 2>/dev/null || true
	bench_forget "$pid"
}

# bench_track PID / bench_forget PID: add to / remove from what
# bench_cleanup stops.
bench_track() {
	BENCH_PIDS="$BENCH_PIDS $1"
}

bench_forget() {
	local p keep=""
	for p in $BENCH_PIDS; do
		[ "$p" = "$1" ] || keep="$keep $p"
	done
	BENCH_PIDS=$keep
}

bench_cleanup() {
	local pid p
	for pid in $BENCH_PIDS; do
		bench_stop "$pid"
	done
	for p in $BENCH_PATHS; do
		rm -f "$p"
	done
}

# bench_wait_nbd PID URI [SECONDS]: 0 once nbdinfo gets an answer, 1 when the
# server died or did not answer in time.
bench_wait_nbd() {
	local pid=$1 uri=$2 limit=${3:-30} i=0
	while ! nbdinfo --size "$uri" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || return 1
		i=$((i + 1))
		[ $i -lt $((limit * 10)) ] || return 1
		sleep 0.1
	done
	return 0
}

# One /proc/.../stat line -> "ID COMM UTIME STIME" (comm may hold spaces and
# parentheses: everything after the last ") " is numeric).
_bench_stat_line() {
	local id=$1 file=$2 s comm rest
	s=$(cat "$file" 2>/dev/null) || return 0
	comm=${s#*(}
	comm=${comm%)*}
	rest=${s##*) }
	# shellcheck disable=SC2086
	set -- $rest
	# fields after comm: 3 state ... 14 utime 15 stime -> $12 $13 here
	echo "$id ${comm// /_} ${12} ${13}"
}

# The process line (id "total") counts every thread, exited ones too; the
# per-thread lines cover live threads only.
bench_cpu_snapshot() {
	local pid=$1 out=$2 t
	{
		_bench_stat_line total "/proc/$pid/stat"
		for t in /proc/"$pid"/task/*; do
			_bench_stat_line "${t##*/}" "$t/stat"
		done
	} >"$out"
}

bench_size_bytes() {
	local s=$1 n m=1
	case $s in
	*[kK]) m=1024 ;;
	*[mM]) m=$((1024 * 1024)) ;;
	*[gG]) m=$((1024 * 1024 * 1024)) ;;
	*[tT]) m=$((1024 * 1024 * 1024 * 1024)) ;;
	esac
	n=${s%[kKmMgGtT]}
	case $n in
	'' | *[!0-9]*) bench_die "bad size '$s'" ;;
	esac
	echo $((n * m))
}

# "BUSY TOTAL" in clock ticks, all CPUs (idle and iowait count as not busy).
bench_sys_cpu() {
	local _cpu user nice sys idle iowait irq softirq steal rest
	read -r _cpu user nice sys idle iowait irq softirq steal rest </proc/stat
	echo "$((user + nice + sys + irq + softirq + steal)) $((user + nice + sys + idle + iowait + irq + softirq + steal))"
}

bench_wait_quiet() {
	local pct=$1 limit=$2 t0 b0 n0 b1 n1 busy
	t0=$SECONDS
	while :; do
		read -r b0 n0 <<<"$(bench_sys_cpu)"
		sleep 1
		read -r b1 n1 <<<"$(bench_sys_cpu)"
		busy=$(((b1 - b0) * 100 / (n1 - n0 > 0 ? n1 - n0 : 1)))
		if [ "$busy" -lt "$pct" ] || [ $((SECONDS - t0)) -ge "$limit" ]; then
			echo "$busy"
			return 0
		fi
	done
}
