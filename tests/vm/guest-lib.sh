# shellcheck shell=dash
# blkgw test-guest library: sourced by /init and by guest scripts
# (". /lib/blkgw-vm/guest-lib.sh"). Runs under busybox ash in the guest.
#
# Checks print one line each ("PASS: ..." / "FAIL: ..." with the command's
# output); the run fails if any check failed, even when the script exits 0.
# See tests/vm/README.md for the whole interface.

VM_LIB_DIR=/lib/blkgw-vm
VM_MOD_DIR=$VM_LIB_DIR/modules
# A script that runs outside the guest too (bench/kernel-paths.sh on a host)
# sets its own state and log folders before sourcing this.
VM_STATE=${VM_STATE:-/run/blkgw-vm}
VM_LOGS=${VM_LOGS:-/tmp/logs}
VM_RESULT_MARKER=BLKGW-VM-RESULT

# --- logging -------------------------------------------------------------

vm_uptime() { cut -d' ' -f1 /proc/uptime 2>/dev/null || echo '?'; }

# vm_log MSG...: a timestamped line on the console
vm_log() { echo "[$(vm_uptime)] $*"; }

# vm_dump FILE [TITLE]: print a file (a log) between marker lines
vm_dump() {
	local f="$1" t="${2:-$1}"
	echo "----- begin $t -----"
	if [ -f "$f" ]; then cat "$f"; else echo "(no such file: $f)"; fi
	echo "----- end $t -----"
}

# --- checks --------------------------------------------------------------

_vm_count() {
	local n=0
	[ -f "$VM_STATE/$1" ] && n=$(cat "$VM_STATE/$1")
	echo $((n + 1)) >"$VM_STATE/$1"
}

# check DESC CMD [ARGS...]: run CMD, record PASS or FAIL; on failure print its
# output and exit status. Returns CMD's status, so "check ... || return" works.
check() {
	local desc="$1" rc n log
	shift
	n=$(($(cat "$VM_STATE/seq" 2>/dev/null || echo 0) + 1))
	echo "$n" >"$VM_STATE/seq"
	log="$VM_LOGS/check-$n.log"
	"$@" >"$log" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ]; then
		_vm_count pass
		vm_log "PASS: $desc"
	else
		_vm_count fail
		vm_log "FAIL: $desc (exit $rc: $*)"
		sed 's/^/    | /' "$log" | tail -n 60
	fi
	return "$rc"
}

# require DESC CMD [ARGS...]: like check, but ends the test when it fails
require() {
	check "$@" || vm_exit 1
}

# check_eq DESC EXPECTED ACTUAL
check_eq() {
	check "$1" _vm_eq "$2" "$3"
}
_vm_eq() {
	[ "$1" = "$2" ] && return 0
	echo "expected '$1', got '$2'"
	return 1
}

# fail DESC: record a failure without a command
fail() {
	_vm_count fail
	vm_log "FAIL: $*"
}

# vm_skip REASON: end the whole test as skipped (exit 77). Use only when the
# guest truly cannot run the test; it is reported as SKIP, never as a pass.
vm_skip() {
	vm_log "SKIP: $*"
	echo "$*" >"$VM_STATE/skip"
	vm_exit 77
}

# vm_exit [STATUS]: end the guest script (same as exit, kept for readability)
vm_exit() { exit "${1:-0}"; }

# --- waiting and background processes -------------------------------------

# wait_for SECONDS CMD [ARGS...]: poll CMD every 0.1 s until it succeeds
wait_for() {
	local limit=$(($1 * 10)) i=0
	shift
	while ! "$@" >/dev/null 2>&1; do
		i=$((i + 1))
		[ "$i" -ge "$limit" ] && return 1
		sleep 0.1
	done
	return 0
}

# wait_for_file SECONDS PATH: wait until PATH exists and is not empty
wait_for_file() { wait_for "$1" test -s "$2"; }

# bg_start NAME CMD [ARGS...]: start CMD in the background, output in
# $VM_LOGS/NAME.log, pid in $VM_STATE/NAME.pid. Its log is printed at the end
# of a failed run.
bg_start() {
	local name="$1"
	shift
	"$@" >"$VM_LOGS/$name.log" 2>&1 &
	echo $! >"$VM_STATE/$name.pid"
	echo "$name" >>"$VM_STATE/bg"
	vm_log "started $name (pid $!): $*"
}

# bg_pid NAME
bg_pid() { cat "$VM_STATE/$1.pid"; }

# bg_running NAME: true while NAME has not exited
bg_running() { ! _vm_gone "$(bg_pid "$1")"; }

# bg_wait_for NAME SECONDS CMD [ARGS...]: like wait_for, but give up at once
# (printing NAME's log) when NAME exits before CMD succeeds
bg_wait_for() {
	local name="$1" limit=$(($2 * 10)) i=0
	shift 2
	while ! "$@" >/dev/null 2>&1; do
		if ! bg_running "$name"; then
			"$@" >/dev/null 2>&1 && return 0
			echo "$name exited before: $*"
			cat "$VM_LOGS/$name.log"
			return 1
		fi
		i=$((i + 1))
		[ "$i" -ge "$limit" ] && { echo "timed out after $((limit / 10))s: $*"; return 1; }
		sleep 0.1
	done
	return 0
}

# bg_wait NAME [SECONDS]: wait for NAME to exit (default 30 s); returns its
# exit status, or 124 after killing it when it did not exit in time
bg_wait() {
	local name="$1" limit="${2:-30}" pid rc
	pid=$(bg_pid "$name")
	if ! wait_for "$limit" _vm_gone "$pid"; then
		vm_log "$name (pid $pid) still running after ${limit}s, killing it"
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		return 124
	fi
	wait "$pid"
	rc=$?
	return "$rc"
}
_vm_gone() { ! kill -0 "$1" 2>/dev/null || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# --- host binaries -------------------------------------------------------------

# Debian's busybox sh runs its own applet for a bare command name even when
# PATH has a real binary first (FEATURE_PREFER_APPLETS). For each binary that
# build-guest.sh added to /usr/local/bin under an applet's name (blkdiscard,
# losetup, ...), define a function so a bare name runs the added binary in
# this shell. Child shells (sh -c) need the full path /usr/local/bin/NAME.
_vm_shadow_applets() {
	local f n
	for f in /usr/local/bin/*; do
		[ -x "$f" ] || continue
		n=${f##*/}
		case "$n" in *[!A-Za-z0-9_]*|[0-9]*) continue ;; esac
		/bin/busybox --list 2>/dev/null | /bin/busybox grep -qx "$n" || continue
		eval "$n() { $f \"\$@\"; }"
	done
}
if [ -d "$VM_LIB_DIR" ]; then _vm_shadow_applets; fi

# --- kernel modules --------------------------------------------------------

# load_module NAME [PARAM=VALUE...]: insmod NAME after its dependencies
load_module() {
	local name="$1" line deps d
	shift
	[ -d "/sys/module/$name" ] && return 0
	line=$(grep "^$name:" "$VM_MOD_DIR/modules.dep")
	if [ -z "$line" ]; then
		echo "module $name is not in this initrd (build-guest.sh --module $name)" >&2
		return 1
	fi
	deps=${line#*:}
	[ "$deps" = builtin ] && return 0
	for d in $deps; do
		load_module "$d" || return 1
	done
	insmod "$VM_MOD_DIR/$name.ko" "$@" || {
		echo "insmod $name failed; dmesg:" >&2
		dmesg | tail -n 5 >&2
		return 1
	}
}

# load_modules NAME...: load each module (and its dependencies) in order
load_modules() {
	local m
	for m in "$@"; do
		load_module "$m" || return 1
	done
}

# vm_modules: the names of all modules in this initrd
vm_modules() { cut -d: -f1 "$VM_MOD_DIR/modules.dep"; }

# vdpa_disk NAME: the /dev/vdX virtio_blk made of vdpa device NAME (fails if none)
vdpa_disk() {
	local v
	for v in /sys/bus/vdpa/devices/"$1"/virtio*/block/vd*; do
		[ -e "$v" ] && { echo "/dev/${v##*/}"; return 0; }
	done
	return 1
}

# --- kernel command line ---------------------------------------------------

# vm_arg NAME [DEFAULT]: value of blkgw.NAME=VALUE from the kernel command line
# (run-vm.sh --append 'blkgw.NAME=VALUE')
vm_arg() {
	local w
	# shellcheck disable=SC2013  # words, not lines
	for w in $(cat /proc/cmdline); do
		case "$w" in
		"blkgw.$1="*) echo "${w#*=}"; return 0 ;;
		esac
	done
	echo "${2:-}"
}

# --- /init -----------------------------------------------------------------

_vm_mount_all() {
	/bin/busybox mount -t proc proc /proc
	/bin/busybox --install -s 2>/dev/null
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev 2>/dev/null
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts
	mount -t tmpfs -o mode=1777 tmpfs /dev/shm
	mount -t tmpfs -o mode=755 tmpfs /run
	mount -t tmpfs -o mode=1777 tmpfs /tmp
	mkdir -p /run/lock "$VM_STATE" "$VM_LOGS"
	[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	[ -d /sys/kernel/config ] && mount -t configfs configfs /sys/kernel/config 2>/dev/null
	return 0
}

# vm_init_main SCRIPT: what /init does
vm_init_main() {
	local script="$1" rc pass fail
	export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	export HOME=/root TERM=dumb LANG=C
	umask 022
	_vm_mount_all
	hostname blkgw-vm
	ip link set lo up
	echo 0 >"$VM_STATE/seq"
	vm_log "guest up: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
	vm_log "running $script"
	(cd /test && sh "$script")
	rc=$?
	pass=$(cat "$VM_STATE/pass" 2>/dev/null || echo 0)
	fail=$(cat "$VM_STATE/fail" 2>/dev/null || echo 0)
	if [ "$rc" -eq 0 ] && [ "$fail" -gt 0 ]; then
		vm_log "script exited 0 but $fail check(s) failed"
		rc=1
	fi
	vm_log "script finished: exit $rc, checks passed=$pass failed=$fail"
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
		local b
		# shellcheck disable=SC2013  # one name per line, no blanks
		for b in $(cat "$VM_STATE/bg" 2>/dev/null); do
			vm_dump "$VM_LOGS/$b.log" "log of $b"
		done
		dmesg >"$VM_LOGS/dmesg.txt" 2>&1
		echo "----- last kernel messages -----"
		tail -n 40 "$VM_LOGS/dmesg.txt"
	fi
	sync
	echo "$VM_RESULT_MARKER: $rc"
	poweroff -f
	sleep 10
}
