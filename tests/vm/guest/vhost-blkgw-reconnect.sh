# shellcheck shell=dash
# vm-vhost-blkgw-reconnect (guest side): fio writes with crc32c verify to a
# vhost-user-blk disk served by blkgw on the host while the host kills blkgw
# with SIGKILL and starts it again (test-vm-blkgw.sh reconnect [--cycles N]). QEMU
# reconnects, the restarted blkgw resubmits what was in flight from the
# inflight region, and fio must see every write it was told completed.
#
# The host watches the console for "BLKGW-FIO-RUNNING" to time its kills.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

size_mib=$(vm_arg size_mib 64)
fio_mib=$(vm_arg fio_mib 48)
stop_mib=$(vm_arg stop_mib $((size_mib - 2)))

require "load virtio_blk" load_modules virtio_blk
require "/dev/vda appears" wait_for 10 test -b /dev/vda
check_eq "/dev/vda is ${size_mib} MiB" $((size_mib * 2048)) "$(cat /sys/block/vda/size)"

# Writes with verification interleaved (verify_backlog) and a full verify
# pass at the end; both run across the restarts. A write acknowledged by the
# backend and then lost, or written twice with older data after newer, fails
# the verify.
# fio passes run back to back until the host, done killing, writes
# BLKGW-SOAK-STOP at stop_mib MiB (outside fio's range); every pass verifies
# what it wrote.
stopped() {
	dd if=/dev/vda bs=4k count=1 skip=$((stop_mib * 256)) iflag=direct 2>/dev/null | grep -q BLKGW-SOAK-STOP
}
vm_log "BLKGW-FIO-RUNNING"
run=1
while :; do
	check "fio randwrite ${fio_mib} MiB (pass $run), crc32c verify, across blkgw kill -9 and restart" \
		fio --name=reconnect --filename=/dev/vda --direct=1 --ioengine=io_uring --rw=randwrite \
		--bs=4k --size=${fio_mib}M --iodepth=16 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_backlog=512 --randrepeat=1 --serialize_overlap=1 || break
	stopped && break
	run=$((run + 1))
done
vm_log "BLKGW-FIO-DONE"
# A pattern written after the last restart lands in the backing file; the host compares.
yes blkgw-vm-pattern | head -c 1048576 >/tmp/pattern
check "dd writes a 1 MiB pattern at the end (O_DIRECT)" \
	dd if=/tmp/pattern of=/dev/vda bs=64k seek=$(((size_mib - 1) * 16)) oflag=direct
check "sync" sync
