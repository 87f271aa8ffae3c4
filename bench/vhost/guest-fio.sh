# shellcheck shell=dash
# bench/vhost/vm.sh, guest side: fio on /dev/vda (a vhost-user-blk disk)
# under TCG. Prints "BENCH job iops lat_us irqs_per_req" lines for the host
# to collect (the disk's request-queue interrupts per completed request,
# both counted over the whole job, its ramp included).
# shellcheck source=/dev/null
. /lib/blkgw-vm/guest-lib.sh

runtime=$(vm_arg runtime 8)
jobs=$(vm_arg jobs qd1-randread,qd32-randread,qd32-randwrite)
require "load virtio_blk" load_modules virtio_blk
require "/dev/vda appears" wait_for 10 test -b /dev/vda
# Interrupts so far on the disk's request queues (virtioN-req.M, all CPUs).
req_irqs() {
	awk '/virtio[0-9]+-req/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i } END { print n + 0 }' /proc/interrupts
}
# Requests /dev/vda completed so far (reads + writes, /sys/block/vda/stat).
disk_ios() {
	awk '{ print $1 + $5 }' /sys/block/vda/stat
}
for name in $(echo "$jobs" | tr , ' '); do
	case "$name" in
	qd*-randread | qd*-randwrite) ;;
	*) echo "unknown job $name (qdN-randread, qdN-randwrite)"; vm_exit 1 ;;
	esac
	qd=${name%%-*}
	qd=${qd#qd}
	rw=${name#*-}
	irq0=$(req_irqs)
	ios0=$(disk_ios)
	fio --name="$name" --filename=/dev/vda --direct=1 --ioengine=io_uring --rw="$rw" --bs=4k \
		--iodepth="$qd" --size=512M --time_based --runtime="$runtime" --ramp_time=1 \
		--output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
		{ cat /tmp/err; vm_exit 1; }
	irqs=$(($(req_irqs) - irq0))
	ios=$(($(disk_ios) - ios0))
	# terse v3: read iops field 8, read lat mean 40; write iops 49, write lat mean 81 (usec)
	awk -F';' -v n="$name" -v irqs="$irqs" -v ios="$ios" '{
		if ($8 > 0) { iops = $8; lat = $40 } else { iops = $49; lat = $81 }
		printf "BENCH %s %s %s %.3f\n", n, iops, lat, (ios > 0 ? irqs / ios : 0) }' /tmp/out
done
