#!/bin/bash
# Boot a guest built by build-guest.sh under QEMU TCG and return the exit
# status of its guest script (read from the marker line on the serial console).
# The console log is kept; a timeout never leaves a QEMU process behind.
set -euo pipefail

me=run-vm

usage() {
	cat <<EOF
usage: $0 --guest DIR [options] [-- EXTRA QEMU ARGS...]

  --guest DIR          use DIR/vmlinuz and DIR/initrd (build-guest.sh --out DIR)
  --kernel FILE        kernel image (overrides DIR/vmlinuz)
  --initrd FILE        initrd (overrides DIR/initrd)
  --smp N              virtual CPUs (default 1; 2 for multi-queue tests)
  -m, --mem MIB        guest memory in MiB (default 1024)
  --timeout SEC        kill QEMU after SEC seconds (default 300)
  --log FILE           console log (default DIR/console.log)
  --append ARGS        extra kernel command line, e.g. 'blkgw.size=64M'
  --vhost-user-blk SOCKET[,num-queues=N][,queue-size=N]
                       add a vhost-user-blk-pci disk backed by the server on
                       the unix socket SOCKET (repeatable; /dev/vda, /dev/vdb...
                       in order). Start the server first. Turns on shared
                       memfd guest memory.
  --mem-path DIR       with --vhost-user-blk: back guest memory with a file
                       QEMU creates in DIR (memory-backend-file, e.g. on
                       /dev/shm or hugetlbfs) instead of a sealed memfd
  --no-retry           do not retry the known TCG int3 oops with --smp > 1
  -q, --quiet          do not copy the console to stdout while it runs
  -h, --help           this text

Exit status: the guest script's exit status; 124 when the timeout hit; 125
when the guest produced no result (kernel panic, QEMU error); 77 is passed
through from the guest (skip). QEMU_SYSTEM overrides the QEMU binary.
EOF
}

die() { echo "$me: error: $*" >&2; exit 125; }

guest="" kernel="" initrd="" smp=1 mem=1024 timeout=300 log="" append="" retry=1 quiet=0 mem_path=""
vhost=() extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--guest) guest=${2:?}; shift 2 ;;
	--kernel) kernel=${2:?}; shift 2 ;;
	--initrd) initrd=${2:?}; shift 2 ;;
	--smp) smp=${2:?}; shift 2 ;;
	-m|--mem) mem=${2:?}; shift 2 ;;
	--timeout) timeout=${2:?}; shift 2 ;;
	--log) log=${2:?}; shift 2 ;;
	--append) append="$append ${2:?}"; shift 2 ;;
	--vhost-user-blk) vhost+=("${2:?}"); shift 2 ;;
	--mem-path) mem_path=${2:?}; shift 2 ;;
	--no-retry) retry=0; shift ;;
	-q|--quiet) quiet=1; shift ;;
	-h|--help) usage; exit 0 ;;
	--) shift; extra=("$@"); break ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
done
[ -n "$kernel" ] || kernel=${guest:+$guest/vmlinuz}
[ -n "$initrd" ] || initrd=${guest:+$guest/initrd}
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
	usage >&2
	die "--guest (or --kernel and --initrd) is required"
fi
[ -f "$kernel" ] || die "no kernel at $kernel (run build-guest.sh first)"
[ -f "$initrd" ] || die "no initrd at $initrd (run build-guest.sh first)"
[ -n "$log" ] || log=${guest:-.}/console.log
case "$smp$mem$timeout" in *[!0-9]*) die "--smp, --mem and --timeout take numbers" ;; esac

qemu=${QEMU_SYSTEM:-qemu-system-x86_64}
command -v "$qemu" >/dev/null 2>&1 || die "$qemu not found (apt-get install qemu-system-x86)"

# QEMU >= 9.2 wants reconnect-ms= for socket chardevs; 7.2 (bookworm) wants reconnect=.
qemu_ver=$("$qemu" --version | sed -n '1s/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
reconnect="reconnect=1"
read -r qmaj qmin <<<"${qemu_ver:-0 0}"
if [ "$qmaj" -gt 9 ] || { [ "$qmaj" -eq 9 ] && [ "$qmin" -ge 2 ]; }; then
	reconnect="reconnect-ms=1000"
fi

machine="pc"
args=(-accel tcg -cpu max -smp "$smp" -m "$mem" -nodefaults -no-user-config
	-display none -no-reboot -serial "file:$log")
if [ "${#vhost[@]}" -gt 0 ]; then
	if [ -n "$mem_path" ]; then
		[ -d "$mem_path" ] || die "--mem-path $mem_path is not a directory"
		args+=(-object "memory-backend-file,id=blkgw-mem,size=${mem}M,mem-path=$mem_path,share=on")
	else
		args+=(-object "memory-backend-memfd,id=blkgw-mem,size=${mem}M,share=on")
	fi
	machine="$machine,memory-backend=blkgw-mem"
	i=0
	for spec in "${vhost[@]}"; do
		sock=${spec%%,*}
		opts=""
		[ "$sock" != "$spec" ] && opts=",${spec#*,}"
		[ -S "$sock" ] || echo "$me: warning: $sock is not a socket yet; QEMU will wait for it" >&2
		args+=(-chardev "socket,id=blkgw-vu$i,path=$sock,$reconnect"
			-device "vhost-user-blk-pci,chardev=blkgw-vu$i$opts")
		i=$((i + 1))
	done
fi
# no_timer_check: on a loaded host, TCG can run the guest too slowly for the
# kernel's IO-APIC timer self-test, which then panics at boot ("IO-APIC +
# timer doesn't work"); the emulated timer works, only the check is skipped.
args+=(-machine "$machine" -kernel "$kernel" -initrd "$initrd"
	-append "console=ttyS0 quiet panic=-1 oops=panic no_timer_check$append")
args+=("${extra[@]}")

qpid="" wpid="" tpid=""
# shellcheck disable=SC2317  # called through trap
stop_all() {
	# each runs in its own process group (set -m), so this reaches everything
	local p
	for p in $tpid $wpid; do kill -TERM -- "-$p" 2>/dev/null || true; done
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill -TERM -- "-$qpid" 2>/dev/null || true
		sleep 0.5
		kill -KILL -- "-$qpid" 2>/dev/null || true
	fi
	qpid="" wpid="" tpid=""
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# boot_once LOG: run QEMU to completion or timeout; sets qemu_rc, timed_out
boot_once() {
	local clog=$1 stderr_log="$1.qemu-stderr"
	: >"$clog"
	timed_out=0
	set -m
	# --pdeathsig: QEMU dies with this script even if the script is SIGKILLed
	setpriv --pdeathsig KILL -- "$qemu" "${args[@]}" \
		</dev/null >"$stderr_log" 2>&1 &
	qpid=$!
	(sleep "$timeout"; echo timeout >"$clog.timeout"; kill -TERM -- "-$qpid" 2>/dev/null
		sleep 5; kill -KILL -- "-$qpid" 2>/dev/null) >/dev/null 2>&1 &
	wpid=$!
	if [ "$quiet" = 0 ]; then
		(tail -n +1 -F "$clog" 2>/dev/null | sed -u 's/\r$//') &
		tpid=$!
	fi
	set +m
	qemu_rc=0
	wait "$qpid" || qemu_rc=$?
	qpid=""
	kill -TERM -- "-$wpid" 2>/dev/null || true
	wait "$wpid" 2>/dev/null || true
	wpid=""
	if [ -n "$tpid" ]; then
		sleep 0.2
		kill -TERM -- "-$tpid" 2>/dev/null || true
		wait "$tpid" 2>/dev/null || true
		tpid=""
	fi
	if [ -f "$clog.timeout" ]; then
		timed_out=1
		rm -f "$clog.timeout"
	fi
	if [ -s "$stderr_log" ]; then
		sed 's/^/qemu: /' "$stderr_log" >&2
	fi
	rm -f "$stderr_log"
}

result_of() {
	sed -n 's/\r$//; s/^BLKGW-VM-RESULT: \([0-9][0-9]*\)$/\1/p' "$1" | tail -n1
}

# the early TCG code-patching race (test-vm.md): int3 oops in sched_clock_cpu
known_oops() {
	grep -q 'int3' "$1" && grep -q 'sched_clock_cpu' "$1"
}

attempt=1
while :; do
	t0=$(now)
	boot_once "$log"
	rc=$(result_of "$log")
	secs=$(elapsed "$t0")
	if [ -z "$rc" ] && [ "$retry" = 1 ] && [ "$attempt" = 1 ] && [ "$smp" -gt 1 ] && known_oops "$log"; then
		echo "$me: known TCG int3 oops in sched_clock_cpu (smp=$smp); retrying once, first log kept in $log.try1" >&2
		mv -f "$log" "$log.try1"
		attempt=2
		continue
	fi
	break
done

if [ "$timed_out" = 1 ]; then
	echo "$me: TIMEOUT after ${timeout}s; console log: $log" >&2
	[ "$quiet" = 1 ] && tail -n 60 "$log" >&2
	exit 124
fi
if [ -z "$rc" ]; then
	echo "$me: the guest produced no result (QEMU exit $qemu_rc after ${secs}s); console log: $log" >&2
	[ "$quiet" = 1 ] && tail -n 60 "$log" >&2
	exit 125
fi
if [ "$rc" = 0 ]; then
	echo "$me: guest passed in ${secs}s (console log: $log)"
else
	echo "$me: guest script exited $rc after ${secs}s; console log: $log" >&2
	[ "$quiet" = 1 ] && tail -n 80 "$log" >&2
fi
exit "$rc"
