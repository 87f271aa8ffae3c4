# shellcheck shell=dash
# Guest side of bench/vduse/run.sh: blkgw's VDUSE export against
# qemu-storage-daemon's vduse-blk export of the same backend, fio in the
# same guest on the /dev/vdX each makes. First a peer check (fio verify on
# qsd's disk: the harness itself is sound), then per backend and daemon the
# jobs; each prints one line
#   BENCH daemon backend job iops lat_us cpu_us_per_req
# (cpu: the daemon's utime + stime from /proc over the job, per request).
# shellcheck source=SCRIPTDIR/../../tests/vm/guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RT=$(vm_arg bench_runtime 5)
JOBS=$(vm_arg bench_jobs qd1-randread,qd32-randread,qd1-randwrite,qd32-randwrite,seq-read | tr , " ")
require "modules" load_modules vduse virtio_vdpa virtio_blk
mkdir -p /tmp/run
HZ=100

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

disk_of() { # NAME: the vdX virtio_blk made of vdpa device NAME
	local v
	for v in /sys/bus/vdpa/devices/"$1"/virtio*/block/vd*; do
		[ -e "$v" ] && { echo "/dev/${v##*/}"; return 0; }
	done
	return 1
}

run_job() { # DAEMON BACKEND JOB DEV PID
	local d="$1" b="$2" j="$3" dev="$4" pid="$5" rw bs qd t0 t1 out iops lat
	case "$j" in
	qd1-randread) rw=randread bs=4k qd=1 ;;
	qd32-randread) rw=randread bs=4k qd=32 ;;
	qd1-randwrite) rw=randwrite bs=4k qd=1 ;;
	qd32-randwrite) rw=randwrite bs=4k qd=32 ;;
	seq-read) rw=read bs=1M qd=4 ;;
	esac
	t0=$(cpu_ticks "$pid")
	out=$(fio --name=b --filename="$dev" --direct=1 --ioengine=io_uring --rw=$rw --bs=$bs \
		--iodepth=$qd --size=64M --time_based --runtime="$RT" --ramp_time=1 \
		--output-format=terse --terse-version=3 2>/dev/null)
	t1=$(cpu_ticks "$pid")
	# terse v3: read iops field 8, read lat mean (us) 40; write iops 49, write lat mean 81
	case $rw in
	*write) iops=$(echo "$out" | cut -d';' -f49) lat=$(echo "$out" | cut -d';' -f81) ;;
	*) iops=$(echo "$out" | cut -d';' -f8) lat=$(echo "$out" | cut -d';' -f40) ;;
	esac
	echo "BENCH $d $b $j $iops $lat $(awk -v c=$((t1 - t0)) -v i="$iops" -v r="$RT" -v hz=$HZ \
		'BEGIN { n = i * (r + 1); printf "%.1f", n > 0 ? c * 1000000 / hz / n : 0 }')"
}

for b in null memory tmpfs; do
	# blkgw
	case $b in
	null) img="{ backend: null, size: 1G }" ;;
	memory) img="{ backend: memory, size: 1G }" ;;
	tmpfs) truncate -s 1G /tmp/img.raw; img="{ backend: file, path: /tmp/img.raw }" ;;
	esac
	cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: /tmp/run, workers: 1 }
images:
  img: $img
exports:
  - { image: img, transports: [vduse], vduse: { name: gw0 } }
YAML
	bg_start gw $B serve /tmp/m.yaml
	if bg_wait_for gw 60 test -L /tmp/run/dev/img; then
		dev=$(readlink /tmp/run/dev/img)
		[ $b = memory ] && dd if=/dev/zero of="$dev" bs=1M count=64 oflag=direct 2>/dev/null
		for j in $JOBS; do run_job blkgw $b "$j" "$dev" "$(bg_pid gw)"; done
	else
		fail "blkgw $b did not start"
	fi
	kill -TERM "$(bg_pid gw)"; bg_wait gw 60
	rm -f /tmp/img.raw

	# qemu-storage-daemon
	case $b in
	null) bd="driver=null-co,node-name=n0,size=1073741824,read-zeroes=on" ;;
	memory | tmpfs) truncate -s 1G /tmp/img.raw; bd="driver=file,node-name=n0,filename=/tmp/img.raw,aio=threads" ;;
	esac
	bg_start qsd qemu-storage-daemon --blockdev "$bd" \
		--export type=vduse-blk,id=e0,node-name=n0,name=qsd0,writable=on,num-queues=1,queue-size=128
	if bg_wait_for qsd 30 test -e /dev/vduse/qsd0 && vdpa dev add name qsd0 mgmtdev vduse &&
		wait_for 10 disk_of qsd0; then
		dev=$(disk_of qsd0)
		if [ $b = null ]; then
			check "peer: fio verify on qemu-storage-daemon's vduse-blk disk (null: reads zeros)" \
				sh -c "dd if=$dev bs=1M count=4 iflag=direct 2>/dev/null | cmp -n 4194304 - /dev/zero"
		else
			[ $b = memory ] && check "peer: fio 4k randwrite QD16 crc32c verify on qemu-storage-daemon's vduse-blk disk" \
				fio --name=p --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
				--size=16M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1
			[ $b = memory ] && dd if=/dev/zero of="$dev" bs=1M count=64 oflag=direct 2>/dev/null
		fi
		for j in $JOBS; do run_job qsd $b "$j" "$dev" "$(bg_pid qsd)"; done
		vdpa dev del qsd0
	else
		fail "qemu-storage-daemon $b did not make a disk"
	fi
	kill -TERM "$(bg_pid qsd)"; bg_wait qsd 30
	rm -f /tmp/img.raw
done
