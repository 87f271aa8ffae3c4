# shellcheck shell=dash
# Guest side of bench/vduse/counts.sh: blkgw's VDUSE export against
# qemu-storage-daemon's vduse-blk, one queue each, in the 6.12 test VM (QEMU
# TCG), with what each request costs in counts that survive a loaded host.
# /test/config (written by the host) sets CONFIGS, WORKLOADS, REPS, RT,
# SIZE_MB, TRACE.
#
# A config is [m|f|u]DAEMON-qN[-local|-remote]: m for the memory backend (qsd: a
# tmpfs file) instead of null; f for a file on the guest's tmpfs opened
# O_DIRECT, as bench/run's file column has it (blkgw: file backend, direct:
# true, through io_uring; qsd: cache.direct=on, aio=native); u the same file
# with qsd on aio=io_uring (blkgw as f); DAEMON blkgw or qsd (VDUSE), or ublk (blkgw's
# ublk export, depth 128, for comparison), N queues; -local and -remote pin
# fio to CPU 0 and the queue's completion interrupt
# (/sys/class/vduse/NAME/vq0/irq_cb_affinity) to CPU 0 or CPU 1. A workload
# is NAME:RW:QD (4k requests), e.g. qd1:randread:1.
#
# Per cell (config, workload, round) it prints, between DIAG-* markers, the
# server's threads (context switches, CPU ticks, last CPU), /proc/stat and
# the IPI lines of /proc/interrupts before and after fio, blkgw's worker
# counters (status --json) and fio's JSON. With TRACE=1 the first round also
# records one second of ftrace (scheduler, workqueue, block and the daemon's
# syscalls) under a QD1 read for each config. bench/vduse/counts.py reads
# the console log.
# shellcheck source=SCRIPTDIR/../../tests/vm/guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh
# shellcheck source=/dev/null
. /test/config

B=/usr/local/bin/blkgw
RUN=/tmp/run
T=/sys/kernel/tracing
require "modules" load_modules vduse virtio_vdpa virtio_blk ublk_drv
mkdir -p $RUN
SIZE=${SIZE_MB}M
mount -t tracefs nodev $T 2>/dev/null

start_cfg() { # CONFIG: sets DEV, PID, FIOCPU
	local c="$1" nq bk node img
	DEV="" PID="" FIOCPU=""
	nq=${c#*-q}
	nq=${nq%%-*}
	bk=null
	case $c in m*) bk=memory ;; f*) bk="file" ;; u*) bk=file-uring ;; esac
	rm -f /tmp/img.raw
	case $bk in memory | file*) truncate -s "$SIZE" /tmp/img.raw ;; esac
	case $c in
	*qsd*)
		case $bk in
		memory) node=driver=file,node-name=n0,filename=/tmp/img.raw,cache.direct=on,aio=native ;;
		file) node=driver=file,node-name=n0,filename=/tmp/img.raw,cache.direct=on,aio=native ;;
		file-uring) node=driver=file,node-name=n0,filename=/tmp/img.raw,cache.direct=on,aio=io_uring ;;
		*) node=driver=null-co,node-name=n0,size=$((SIZE_MB * 1048576)),read-zeroes=on ;;
		esac
		qemu-storage-daemon --blockdev "$node" --export \
			"type=vduse-blk,id=e0,node-name=n0,name=dev0,writable=on,num-queues=$nq,queue-size=128" \
			>/tmp/srv.log 2>&1 &
		PID=$!
		wait_for 30 test -e /dev/vduse/dev0 || return 1
		vdpa dev add name dev0 mgmtdev vduse || return 1
		wait_for 20 vdpa_disk dev0 || return 1
		DEV=$(vdpa_disk dev0) ;;
	*blkgw* | *ublk*)
		tr="transports: [vduse], vduse: { name: dev0, queues: $nq }"
		img="backend: $bk, size: $SIZE"
		case $bk in file*) img="backend: file, path: /tmp/img.raw, direct: true" ;; esac
		case $c in *ublk*) tr="transports: [ublk], ublk: { queues: $nq, depth: 128 }" ;; esac
		cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1, log-level: warn }
images:
  x: { $img }
exports:
  - { image: x, $tr }
YAML
		$B serve /tmp/m.yaml >/tmp/srv.log 2>&1 &
		PID=$!
		wait_for 60 test -L $RUN/dev/x || return 1
		DEV=$(readlink $RUN/dev/x) ;;
	*) return 1 ;;
	esac
	case $c in
	*-local) echo 1 >/sys/class/vduse/dev0/vq0/irq_cb_affinity && FIOCPU=--cpus_allowed=0 ;;
	*-remote) echo 2 >/sys/class/vduse/dev0/vq0/irq_cb_affinity && FIOCPU=--cpus_allowed=0 ;;
	esac
	if [ $bk != null ]; then
		fio --name=prefill --ioengine=io_uring --direct=1 --filename="$DEV" --size="$SIZE" \
			--rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
	fi
	for f in /sys/class/vduse/dev0/vq*/irq_cb_affinity; do
		[ -e "$f" ] && echo "DIAG-SYSFS $c $f $(cat "$f")"
	done
	return 0
}

stop_cfg() { # CONFIG
	case $1 in *qsd*) vdpa dev del dev0 ;; esac
	kill -TERM "$PID" 2>/dev/null
	wait "$PID" 2>/dev/null
	rm -f /tmp/img.raw
}

snap() { # TAG
	local t
	echo "DIAG-SNAP-BEGIN $1"
	for t in /proc/"$PID"/task/*; do
		echo "task ${t##*/} $(tr ' ' _ <"$t/comm") $(grep ctxt_switches "$t/status" | awk '{printf "%s ", $2}') $(awk '{print $14, $15, $39}' "$t/stat")"
	done
	grep -E '^(ctxt|intr) ' /proc/stat | cut -d' ' -f1,2
	grep -E '^cpu[0-9]' /proc/stat | sed 's/^/cpu /'
	grep -E '^ *(LOC|RES|CAL|TLB):' /proc/interrupts
	echo "DIAG-SNAP-END"
}

cell() { # CONFIG WORKLOAD ROUND FIO-ARGS...
	local c="$1" wl="$2" r="$3"
	shift 3
	vm_log "cell $c $wl $r"
	snap "$c $wl $r pre"
	# shellcheck disable=SC2086  # FIOCPU: one word or none
	fio --output-format=json --time_based --runtime="$RT" --ramp_time=1 --ioengine=io_uring \
		--direct=1 --filename="$DEV" --size="$SIZE" --name="$wl" $FIOCPU "$@" \
		>/tmp/out.json 2>/tmp/fio.err || fail "$c $wl: fio: $(tail -n 3 /tmp/fio.err)"
	snap "$c $wl $r post"
	case $c in
	*blkgw* | *ublk*)
		echo "DIAG-STATUS-BEGIN $c $wl $r"
		$B status --control $RUN/control.sock --json | tr -d '\n'
		echo
		echo "DIAG-STATUS-END" ;;
	esac
	echo "DIAG-FIO-BEGIN $c $wl $r"
	cat /tmp/out.json
	echo "DIAG-FIO-END"
}

trace_cell() { # CONFIG
	local fp
	[ -d $T/events ] || { vm_log "no tracefs: no trace"; return 0; }
	echo 0 >$T/tracing_on
	echo >$T/trace
	echo 8192 >$T/buffer_size_kb
	for e in sched:sched_switch sched:sched_wakeup sched:sched_waking \
		workqueue:workqueue_queue_work workqueue:workqueue_execute_start \
		block:block_rq_issue block:block_rq_complete \
		syscalls:sys_enter_ioctl syscalls:sys_enter_epoll_wait syscalls:sys_enter_io_uring_enter; do
		echo "$e" >>$T/set_event 2>/dev/null || vm_log "no event $e"
	done
	# shellcheck disable=SC2086
	fio --time_based --runtime=4 --ioengine=io_uring --direct=1 --filename="$DEV" --size="$SIZE" \
		--name=trace $FIOCPU --rw=randread --bs=4k --iodepth=1 >/dev/null 2>&1 &
	fp=$!
	sleep 2
	echo 1 >$T/tracing_on
	sleep 1
	echo 0 >$T/tracing_on
	wait $fp
	echo "DIAG-TRACE-BEGIN $1"
	grep -v '^#' $T/trace
	echo "DIAG-TRACE-END"
	echo >$T/set_event
}

for r in $(seq 1 "$REPS"); do
	for c in $CONFIGS; do
		if ! start_cfg "$c"; then
			fail "$c: no device ($(tail -n 3 /tmp/srv.log))"
			stop_cfg "$c"
			continue
		fi
		for w in $WORKLOADS; do
			name=${w%%:*} qd=${w##*:} rw=${w#*:}
			rw=${rw%:*}
			cell "$c" "$name" "$r" --rw="$rw" --bs=4k --iodepth="$qd"
		done
		[ "$r" = 1 ] && [ "$TRACE" = 1 ] && trace_cell "$c"
		stop_cfg "$c"
	done
done
