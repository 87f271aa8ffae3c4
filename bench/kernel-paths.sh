# shellcheck shell=dash
# The kernel paths of bench/run (bench/lib/vmbench.py): blkgw's NBD attached,
# ublk and VDUSE devices, nbd-client in front of blkgw and of
# qemu-storage-daemon, qsd's vduse-blk, the kernel's null_blk as the ceiling
# and, in the VM only, the vhost-user-blk disks of host daemons and fio on a
# guest file. It runs in one of two places:
# - in the 6.12 test VM (QEMU TCG), as the guest script: no argument; the
#   host wrote /test/config and /test/workloads (columns vm/...);
# - on the host, when its kernel has the modules (bench/run --kernel-paths):
#   `sh kernel-paths.sh CONFIG`, as root (columns kernel/...).
# The config sets RT (seconds per run), REPS, SIZE, BACKENDS, COLUMNS,
# VHOST_DISKS and ONLY (empty: every cell; else the cells to run, as
# BACKEND:COLUMN:WORKLOAD:ROUND words: a rerun of noisy cells); on the host
# also ON_HOST=1, LIB (tests/vm/guest-lib.sh), WORKLOADS, BLKGW, WORKERS,
# RAMP (fio's ramp_time, as the host's other cells), T (a scratch folder),
# IMG_FILE (the file backend's image, not on tmpfs) and IMG_MEM (qsd's
# "memory" image, on tmpfs). On the host it exits 1 when a check failed. The workloads file holds
# "NAME FIO-ARGS..." lines. For every round, backend and column it sets the
# device up, prefills it (memory, file), runs each workload with fio
# (io_uring, O_DIRECT) and prints
#   BENCH-CMD <fio command line>
#   BENCH-T0 <n> and BENCH-T1 <n> around the fio run (the harness measures
#   the load of other processes in between)
#   BENCH-BEGIN <backend> <column> <workload> <round> <server ticks|host|-> <ticks/s> <n>
#   <fio JSON>
#   BENCH-END
# A manifest or server command line is printed between BENCH-FILE-BEGIN NAME
# and BENCH-FILE-END. For a server on the host (vhost-user-blk guest disks)
# BENCH-HOST-START/STOP ID bracket the run: the host reads the daemon's CPU.
# shellcheck source=/dev/null
. "${1:-/test/config}"
ON_HOST=${ON_HOST:-}
if [ -n "$ON_HOST" ]; then
	VM_STATE=$T/state VM_LOGS=$T/logs
	mkdir -p "$VM_STATE" "$VM_LOGS"
	# shellcheck source=SCRIPTDIR/../tests/vm/guest-lib.sh
	. "$LIB"
	# A host loads its own modules; a test guest that runs this in host
	# mode has them loaded already (guest-lib's load_module otherwise).
	load_module() { [ -d "/sys/module/$1" ] || modprobe "$@"; }
else
	T=/tmp WORKLOADS=/test/workloads BLKGW=/usr/local/bin/blkgw WORKERS=1
	IMG_FILE=/tmp/img.raw IMG_MEM=/tmp/img.raw
	# shellcheck source=SCRIPTDIR/../tests/vm/guest-lib.sh
	. /lib/blkgw-vm/guest-lib.sh
	# first, so that the vhost-user-blk disks QEMU gives the guest are
	# vda, vdb, ... in run-vm.sh's order (vhost_dev below)
	require "load virtio_blk" load_module virtio_blk
fi
RAMP=${RAMP:-0}

B=$BLKGW
RUN=$T/run
SOCK=$T/nbd.sock
HZ=100 # USER_HZ on x86
SEQ=0
CELL=0
ONLY=${ONLY:-}
# Device names of this run: a host may have others.
GWNAME=bgw$$ QSDNAME=bqsd$$
mkdir -p "$RUN"
DEV="" PID="" HOSTID="" SRV="" NBD="" CUR="" FIO=""
# Stopped on the host (bench/run interrupted or out of time): stop fio and
# take the column's device down before leaving. fio runs in the background
# (interruptible, below) so that the trap runs at once, not when fio is done.
stopped() {
	if [ -n "$FIO" ]; then
		kill "$FIO" 2>/dev/null
		wait "$FIO" 2>/dev/null
	fi
	[ -n "$CUR" ] && teardown "$CUR"
	exit 143
}
if [ -n "$ON_HOST" ]; then
	trap stopped TERM INT HUP
fi

# interruptible CMD...: run CMD and wait for it (the trap can run meanwhile)
interruptible() {
	local rc
	"$@" &
	FIO=$!
	wait "$FIO"
	rc=$?
	FIO=""
	return "$rc"
}

# need_modules COLUMN: load what the column's device needs (once)
need_modules() {
	case ${1#*/} in
	*/ublk) load_module ublk_drv ;;
	*/vduse) load_modules vduse virtio_vdpa virtio_blk ;;
	*/vhost-guest) load_module virtio_blk ;;
	*/nbd-attach | */nbd-client) load_module nbd nbds_max=8 ;;
	null_blk) load_module null_blk nr_devices=1 gb=1 irqmode=0 hw_queue_depth=128 ;;
	esac
}

# free_nbd: an /dev/nbdN nobody uses (no pid, no size)
free_nbd() {
	local d
	for d in /sys/block/nbd*; do
		[ -e "$d/pid" ] && continue
		[ "$(cat "$d/size" 2>/dev/null)" = 0 ] || continue
		echo "/dev/${d##*/}"
		return 0
	done
	return 1
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

show_file() { # NAME FILE
	echo "BENCH-FILE-BEGIN $1"
	cat "$2"
	echo "BENCH-FILE-END"
}

# The vhost-user-blk disks of the host daemons, in run-vm.sh's order, are
# the first vdX; VDUSE disks come later.
vhost_dev() { # DAEMON BACKEND
	local i=0 d want
	want="$1:$2"
	for d in $VHOST_DISKS; do
		if [ "$d" = "$want" ]; then
			# vda, vdb, ...: the i-th letter
			echo "/dev/vd$(echo abcdefghijklmnop | cut -c$((i + 1)))"
			return 0
		fi
		i=$((i + 1))
	done
	return 1
}

disk_of() { # vdpa device NAME -> its /dev/vdX
	local v
	for v in /sys/bus/vdpa/devices/"$1"/virtio*/block/vd*; do
		[ -e "$v" ] && { echo "/dev/${v##*/}"; return 0; }
	done
	return 1
}

blkgw_image() { # BACKEND
	case $1 in
	null) echo "{ backend: null, size: $SIZE }" ;;
	memory) echo "{ backend: memory, size: $SIZE }" ;;
	file) rm -f "$IMG_FILE"; truncate -s "$SIZE" "$IMG_FILE"
		echo "{ backend: file, path: $IMG_FILE, direct: true }" ;;
	esac
}

qsd_node() { # BACKEND
	case $1 in
	null) echo "driver=null-co,node-name=n0,size=$SIZE_BYTES,read-zeroes=on" ;;
	memory) rm -f "$IMG_MEM"; truncate -s "$SIZE" "$IMG_MEM"
		echo "driver=file,node-name=n0,filename=$IMG_MEM,cache.direct=on,aio=native" ;;
	file) rm -f "$IMG_FILE"; truncate -s "$SIZE" "$IMG_FILE"
		echo "driver=file,node-name=n0,filename=$IMG_FILE,cache.direct=on,aio=native" ;;
	esac
}

start_blkgw() { # BACKEND TRANSPORT-YAML
	cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $RUN, workers: $WORKERS, log-level: warn }
images:
  x: $(blkgw_image "$1")
exports:
  - { image: x, $2 }
YAML
	show_file manifest.yaml "$T/m.yaml"
	bg_start srv "$B" serve "$T/m.yaml"
	PID=$(bg_pid srv)
}

# setup COLUMN BACKEND: sets DEV (block device, or "" for fio's null
# engine), PID (server here) or HOSTID (server on the host, for the guest's
# vhost-user-blk disks); returns non-zero when the device did not appear.
# The column's place (vm/ or kernel/) does not change what runs.
setup() {
	local col="$1" b="$2"
	DEV="" PID="" HOSTID="" SRV="" NBD=""
	need_modules "$col" || return 1
	case ${col#*/} in
	direct)
		if [ "$b" != null ]; then
			rm -f "$IMG_MEM"; truncate -s "$SIZE" "$IMG_MEM"; DEV=$IMG_MEM
		fi ;;
	null_blk)
		# a null_blk loaded before with nr_devices=0 has no device
		[ -b /dev/nullb0 ] || { echo "null_blk is loaded without /dev/nullb0"; return 1; }
		DEV=/dev/nullb0 ;;
	blkgw/nbd-attach | blkgw/ublk | blkgw/vduse)
		case $col in
		*nbd-attach) start_blkgw "$b" "transports: [nbd], nbd: { attach: true, connections: 1 }" ;;
		*ublk) start_blkgw "$b" "transports: [ublk], ublk: { queues: 1, depth: 128 }" ;;
		*vduse) start_blkgw "$b" "transports: [vduse], vduse: { name: $GWNAME, queues: 1 }" ;;
		esac
		SRV=srv
		bg_wait_for srv 60 test -L "$RUN/dev/x" || return 1
		DEV=$(readlink "$RUN/dev/x") ;;
	blkgw/nbd-client)
		NBD=$(free_nbd) || { echo "no free /dev/nbdN"; return 1; }
		start_blkgw "$b" "transports: [nbd], nbd: { socket: $SOCK, name: bench }"
		SRV=srv
		bg_wait_for srv 60 test -S "$SOCK" || return 1
		nbd-client -N bench -u "$SOCK" "$NBD" -b 4096 || return 1
		DEV=$NBD ;;
	qsd/nbd-client)
		NBD=$(free_nbd) || { echo "no free /dev/nbdN"; return 1; }
		echo "qemu-storage-daemon --blockdev $(qsd_node "$b") --nbd-server addr.type=unix,addr.path=$SOCK --export type=nbd,id=e0,node-name=n0,name=bench,writable=on" >"$T/qsd.cmd"
		show_file server.cmd "$T/qsd.cmd"
		# shellcheck disable=SC2046
		bg_start srv $(cat "$T/qsd.cmd")
		SRV=srv PID=$(bg_pid srv)
		bg_wait_for srv 60 test -S "$SOCK" || return 1
		nbd-client -N bench -u "$SOCK" "$NBD" -b 4096 || return 1
		DEV=$NBD ;;
	qsd/vduse)
		echo "qemu-storage-daemon --blockdev $(qsd_node "$b") --export type=vduse-blk,id=e0,node-name=n0,name=$QSDNAME,writable=on,num-queues=1,queue-size=128" >"$T/qsd.cmd"
		show_file server.cmd "$T/qsd.cmd"
		# shellcheck disable=SC2046
		bg_start srv $(cat "$T/qsd.cmd")
		SRV=srv PID=$(bg_pid srv)
		bg_wait_for srv 60 test -e "/dev/vduse/$QSDNAME" || return 1
		vdpa dev add name "$QSDNAME" mgmtdev vduse || return 1
		wait_for 20 disk_of "$QSDNAME" || return 1
		DEV=$(disk_of "$QSDNAME") ;;
	blkgw/vhost-guest) DEV=$(vhost_dev blkgw "$b") && HOSTID=blkgw:$b ;;
	qsd/vhost-guest) DEV=$(vhost_dev qsd "$b") && HOSTID=qsd:$b ;;
	*) return 1 ;;
	esac
	[ -z "$DEV" ] || test -e "$DEV"
}

teardown() {
	local col="$1"
	[ -n "$NBD" ] && nbd-client -d "$NBD" >/dev/null 2>&1
	case $col in
	*/qsd/vduse) vdpa dev del "$QSDNAME" 2>/dev/null ;;
	esac
	if [ -n "$SRV" ]; then
		kill -TERM "$(bg_pid "$SRV")" 2>/dev/null
		bg_wait "$SRV" 60
		rm -f "$SOCK"
	fi
	rm -f "$IMG_FILE" "$IMG_MEM"
}

target() { # BACKEND: fio's target options
	if [ -z "$DEV" ]; then
		echo "--ioengine=null --size=$SIZE"
	elif [ "$DEV" = "$IMG_MEM" ]; then
		# The direct column's file is on the guest's tmpfs, where io_uring
		# hands every request to an io-wq thread; Linux AIO copies inline.
		echo "--ioengine=libaio --direct=1 --filename=$DEV --size=$SIZE"
	else
		echo "--ioengine=io_uring --direct=1 --filename=$DEV --size=$SIZE"
	fi
}

# Whether ONLY asks for a cell (BACKEND COLUMN WORKLOAD ROUND; WORKLOAD may
# be '*': any of the column's).
wanted() {
	local w
	[ -z "$ONLY" ] && return 0
	for w in $ONLY; do
		[ "$w" = "$1:$2:$3:$4" ] && return 0
		if [ "$3" = '*' ]; then
			case $w in
			"$1:$2:"*":$4") return 0 ;;
			esac
		fi
	done
	return 1
}

run_cell() { # BACKEND COLUMN WORKLOAD ROUND ARGS...
	local b="$1" col="$2" wl="$3" rep="$4" c0 c1 cpu cmd
	shift 4
	wanted "$b" "$col" "$wl" "$rep" || return 0
	CELL=$((CELL + 1))
	cmd="fio --output-format=json --time_based --runtime=$RT --ramp_time=$RAMP $(target "$b") $*"
	echo "BENCH-CMD $cmd"
	c0="" cpu=-
	[ -n "$PID" ] && c0=$(ticks "$PID")
	if [ -n "$HOSTID" ]; then
		SEQ=$((SEQ + 1))
		echo "BENCH-HOST-START $SEQ $HOSTID"
		sleep 0.3
	fi
	echo "BENCH-T0 $CELL"
	# shellcheck disable=SC2086
	interruptible $cmd >"$T/out.json" 2>"$T/fio.err" || { fail "$col/$b/$wl: fio: $(tail -n 3 "$T/fio.err")"; return; }
	echo "BENCH-T1 $CELL"
	[ -n "$HOSTID" ] && echo "BENCH-HOST-STOP $SEQ $HOSTID" && cpu=host:$SEQ
	[ -n "$c0" ] && c1=$(ticks "$PID") && cpu=$((c1 - c0))
	echo "BENCH-BEGIN $b $col $wl $rep $cpu $HZ $CELL"
	cat "$T/out.json"
	echo "BENCH-END"
}

for rep in $(seq 1 "$REPS"); do
	for b in any $BACKENDS; do
		for col in $COLUMNS; do
			if [ "${col#*/}" = null_blk ]; then [ "$b" = any ] || continue
			else [ "$b" != any ] || continue; fi
			wanted "$b" "$col" '*' "$rep" || continue
			vm_log "round $rep: $b: $col"
			CUR=$col
			if ! setup "$col" "$b"; then
				fail "$col ($b): no device"
				teardown "$col"
				CUR=""
				continue
			fi
			if [ -n "$DEV" ] && [ "$b" != null ] && [ "$b" != any ]; then
				# shellcheck disable=SC2046
				interruptible fio --name=prefill $(target "$b") --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
			fi
			while read -r wl args; do
				# shellcheck disable=SC2086
				run_cell "$b" "$col" "$wl" "$rep" $args
			done <"$WORKLOADS"
			teardown "$col"
			CUR=""
		done
	done
done
# On the host nobody counts the checks (the guest's /init does): say it here.
if [ -n "$ON_HOST" ] && [ -s "$VM_STATE/fail" ]; then
	vm_log "$(cat "$VM_STATE/fail") check(s) failed"
	exit 1
fi
