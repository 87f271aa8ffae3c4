# shellcheck shell=dash
# Guest side of bench/run --vm (bench/lib/vmbench.py): the kernel paths in
# the 6.12 test VM (QEMU TCG). /test/config (written by the host) sets
# RT (seconds per run), REPS, SIZE, BACKENDS, COLUMNS, VHOST_DISKS and
# ONLY (empty: every cell; else the cells to run, as
# BACKEND:COLUMN:WORKLOAD:ROUND words: a rerun of noisy cells), and
# /test/workloads holds "NAME FIO-ARGS..." lines. For every round, backend
# and column it sets the device up, prefills it (memory, file), runs each
# workload with fio (io_uring, O_DIRECT) and prints
#   BENCH-CMD <fio command line>
#   BENCH-T0 <n> and BENCH-T1 <n> around the fio run (the host measures the
#   load of other processes in between)
#   BENCH-BEGIN <backend> <column> <workload> <round> <server ticks|host|-> <ticks/s> <n>
#   <fio JSON>
#   BENCH-END
# A manifest or server command line is printed between BENCH-FILE-BEGIN NAME
# and BENCH-FILE-END. For a server on the host (vhost-user-blk guest disks)
# BENCH-HOST-START/STOP ID bracket the run: the host reads the daemon's CPU.
# shellcheck source=SCRIPTDIR/../tests/vm/guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh
# shellcheck source=/dev/null
. /test/config

B=/usr/local/bin/blkgw
RUN=/tmp/run
HZ=100 # USER_HZ on x86
SEQ=0
CELL=0
ONLY=${ONLY:-}
require "modules" load_modules vduse virtio_vdpa virtio_blk ublk_drv
require "load nbd" load_module nbd nbds_max=8
require "load null_blk" load_module null_blk nr_devices=1 gb=1 irqmode=0 hw_queue_depth=128
mkdir -p $RUN

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
	file) rm -f /tmp/img.raw; truncate -s "$SIZE" /tmp/img.raw
		echo "{ backend: file, path: /tmp/img.raw, direct: true }" ;;
	esac
}

qsd_node() { # BACKEND
	case $1 in
	null) echo "driver=null-co,node-name=n0,size=$SIZE_BYTES,read-zeroes=on" ;;
	memory) rm -f /tmp/img.raw; truncate -s "$SIZE" /tmp/img.raw
		echo "driver=file,node-name=n0,filename=/tmp/img.raw,cache.direct=on,aio=native" ;;
	file) rm -f /tmp/img.raw; truncate -s "$SIZE" /tmp/img.raw
		echo "driver=file,node-name=n0,filename=/tmp/img.raw,cache.direct=on,aio=native" ;;
	esac
}

start_blkgw() { # BACKEND TRANSPORT-YAML
	cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1, log-level: warn }
images:
  x: $(blkgw_image "$1")
exports:
  - { image: x, $2 }
YAML
	show_file manifest.yaml /tmp/m.yaml
	bg_start srv $B serve /tmp/m.yaml
	PID=$(bg_pid srv)
}

# setup COLUMN BACKEND: sets DEV (block device, or "" for fio's null
# engine), PID (server in the guest) or HOSTID (server on the host); returns
# non-zero when the device did not appear.
setup() {
	local col="$1" b="$2"
	DEV="" PID="" HOSTID="" SRV=""
	case $col in
	vm/direct)
		if [ "$b" != null ]; then
			rm -f /tmp/img.raw; truncate -s "$SIZE" /tmp/img.raw; DEV=/tmp/img.raw
		fi ;;
	vm/null_blk) DEV=/dev/nullb0 ;;
	vm/blkgw/nbd-attach | vm/blkgw/ublk | vm/blkgw/vduse)
		case $col in
		*nbd-attach) start_blkgw "$b" "transports: [nbd], nbd: { attach: true, connections: 1 }" ;;
		*ublk) start_blkgw "$b" "transports: [ublk], ublk: { queues: 1, depth: 128 }" ;;
		*vduse) start_blkgw "$b" "transports: [vduse], vduse: { name: gw0, queues: 1 }" ;;
		esac
		SRV=srv
		bg_wait_for srv 60 test -L $RUN/dev/x || return 1
		DEV=$(readlink $RUN/dev/x) ;;
	vm/blkgw/nbd-client)
		start_blkgw "$b" "transports: [nbd], nbd: { socket: /tmp/nbd.sock, name: bench }"
		SRV=srv
		bg_wait_for srv 60 test -S /tmp/nbd.sock || return 1
		nbd-client -N bench -u /tmp/nbd.sock /dev/nbd6 -b 4096 || return 1
		DEV=/dev/nbd6 ;;
	vm/qsd/nbd-client)
		echo "qemu-storage-daemon --blockdev $(qsd_node "$b") --nbd-server addr.type=unix,addr.path=/tmp/nbd.sock --export type=nbd,id=e0,node-name=n0,name=bench,writable=on" >/tmp/qsd.cmd
		show_file server.cmd /tmp/qsd.cmd
		# shellcheck disable=SC2046
		bg_start srv $(cat /tmp/qsd.cmd)
		SRV=srv PID=$(bg_pid srv)
		bg_wait_for srv 60 test -S /tmp/nbd.sock || return 1
		nbd-client -N bench -u /tmp/nbd.sock /dev/nbd6 -b 4096 || return 1
		DEV=/dev/nbd6 ;;
	vm/qsd/vduse)
		echo "qemu-storage-daemon --blockdev $(qsd_node "$b") --export type=vduse-blk,id=e0,node-name=n0,name=qsd0,writable=on,num-queues=1,queue-size=128" >/tmp/qsd.cmd
		show_file server.cmd /tmp/qsd.cmd
		# shellcheck disable=SC2046
		bg_start srv $(cat /tmp/qsd.cmd)
		SRV=srv PID=$(bg_pid srv)
		bg_wait_for srv 60 test -e /dev/vduse/qsd0 || return 1
		vdpa dev add name qsd0 mgmtdev vduse || return 1
		wait_for 20 disk_of qsd0 || return 1
		DEV=$(disk_of qsd0) ;;
	vm/blkgw/vhost-guest) DEV=$(vhost_dev blkgw "$b") && HOSTID=blkgw:$b ;;
	vm/qsd/vhost-guest) DEV=$(vhost_dev qsd "$b") && HOSTID=qsd:$b ;;
	*) return 1 ;;
	esac
	[ -z "$DEV" ] || test -e "$DEV"
}

teardown() {
	local col="$1"
	case $col in
	*nbd-client) nbd-client -d /dev/nbd6 >/dev/null 2>&1 ;;
	vm/qsd/vduse) vdpa dev del qsd0 ;;
	esac
	if [ -n "$SRV" ]; then
		kill -TERM "$(bg_pid "$SRV")" 2>/dev/null
		bg_wait "$SRV" 60
		rm -f /tmp/nbd.sock
	fi
	rm -f /tmp/img.raw
}

target() { # BACKEND: fio's target options
	if [ -z "$DEV" ]; then
		echo "--ioengine=null --size=$SIZE"
	elif [ "$DEV" = /tmp/img.raw ]; then
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
	cmd="fio --output-format=json --time_based --runtime=$RT $(target "$b") $*"
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
	$cmd >/tmp/out.json 2>/tmp/fio.err || { fail "$col/$b/$wl: fio: $(tail -n 3 /tmp/fio.err)"; return; }
	echo "BENCH-T1 $CELL"
	[ -n "$HOSTID" ] && echo "BENCH-HOST-STOP $SEQ $HOSTID" && cpu=host:$SEQ
	[ -n "$c0" ] && c1=$(ticks "$PID") && cpu=$((c1 - c0))
	echo "BENCH-BEGIN $b $col $wl $rep $cpu $HZ $CELL"
	cat /tmp/out.json
	echo "BENCH-END"
}

for rep in $(seq 1 "$REPS"); do
	for b in any $BACKENDS; do
		for col in $COLUMNS; do
			if [ "$col" = vm/null_blk ]; then [ "$b" = any ] || continue
			else [ "$b" != any ] || continue; fi
			wanted "$b" "$col" '*' "$rep" || continue
			vm_log "round $rep: $b: $col"
			if ! setup "$col" "$b"; then
				fail "$col ($b): no device"
				teardown "$col"
				continue
			fi
			if [ -n "$DEV" ] && [ "$b" != null ] && [ "$b" != any ]; then
				# shellcheck disable=SC2046
				fio --name=prefill $(target "$b") --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
			fi
			while read -r wl args; do
				# shellcheck disable=SC2086
				run_cell "$b" "$col" "$wl" "$rep" $args
			done </test/workloads
			teardown "$col"
		done
	done
done
