# shellcheck shell=dash
# vm-vhost-user-qsd: a vhost-user-blk disk (served on the host, here by
# qemu-storage-daemon) shows up as /dev/vda with two queues; data written by
# the guest lands in the host's file (the host side compares it afterwards).
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

size_mib=$(vm_arg size_mib 64)
queues=$(vm_arg queues 2)

require "load virtio_blk" load_modules virtio_blk
require "/dev/vda appears" wait_for 10 test -b /dev/vda
check_eq "/dev/vda is ${size_mib} MiB" $((size_mib * 2048)) "$(cat /sys/block/vda/size)"
check_eq "/dev/vda has $queues hardware queues" "$queues" "$(find /sys/block/vda/mq -mindepth 1 -maxdepth 1 -type d | wc -l)"
yes blkgw-vm-pattern | head -c 4194304 >/tmp/pattern
check "dd writes a 4 MiB pattern at offset 0 (O_DIRECT)" \
	dd if=/tmp/pattern of=/dev/vda bs=64k oflag=direct
check "it reads back the same" \
	sh -c "dd if=/dev/vda of=/tmp/readback bs=64k count=64 iflag=direct && cmp /tmp/pattern /tmp/readback"
check "fio randwrite 8 MiB with crc32c verify at 16 MiB" \
	fio --name=vu --filename=/dev/vda --direct=1 --ioengine=io_uring --rw=randwrite \
	--bs=4k --offset=16M --size=8M --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --serialize_overlap=1
check "sync" sync
