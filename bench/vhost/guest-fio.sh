# shellcheck shell=dash
# bench/vhost/vm.sh, guest side: fio on /dev/vda (a vhost-user-blk disk)
# under TCG. Prints "BENCH job iops lat_us" lines for the host to collect.
# shellcheck source=/dev/null
. /lib/blkgw-vm/guest-lib.sh

runtime=$(vm_arg runtime 8)
require "load virtio_blk" load_modules virtio_blk
require "/dev/vda appears" wait_for 10 test -b /dev/vda
for job in qd1-randread:randread:1 qd32-randread:randread:32 qd32-randwrite:randwrite:32; do
	name=${job%%:*}
	rest=${job#*:}
	rw=${rest%%:*}
	qd=${rest#*:}
	fio --name="$name" --filename=/dev/vda --direct=1 --ioengine=io_uring --rw="$rw" --bs=4k \
		--iodepth="$qd" --size=512M --time_based --runtime="$runtime" --ramp_time=1 \
		--output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
		{ cat /tmp/err; vm_exit 1; }
	# terse v3: read iops field 8, read lat mean 40; write iops 49, write lat mean 81 (usec)
	awk -F';' -v n="$name" '{ if ($8 > 0) print "BENCH", n, $8, $40; else print "BENCH", n, $49, $81 }' /tmp/out
done
