# shellcheck shell=dash
# vm-vhost-blkgw (guest side): four vhost-user-blk disks served by blkgw on
# the host (tests/vhost/test-vm-blkgw.sh), two vCPUs, two queues each (vdc,
# vdd: one).
#   /dev/vda: fio crc32c verify on both queues, flushes, discard and
#             write-zeroes, a pattern the host finds in the backing file;
#   /dev/vdb: mkfs.ext4, mount, files, fstrim, remount and re-check; the host
#             runs e2fsck and reads a file back with debugfs.
#   /dev/vdc: a memory image with a fault layer (EIO in 4M-5M): direct I/O
#             there fails with EIO and the kernel logs it; the rest works.
#   /dev/vdd: a read held 3 s by a fault layer holds up no other read.
# Markers for the host: "BLKGW-MD5 <md5>" of /mnt/big.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

size_mib=$(vm_arg size_mib 128)
queues=$(vm_arg queues 2)
MiB=1048576

require "load virtio_blk" load_modules virtio_blk
require "/dev/vda appears" wait_for 10 test -b /dev/vda
require "/dev/vdb appears" wait_for 10 test -b /dev/vdb
check_eq "/dev/vda is ${size_mib} MiB" $((size_mib * 2048)) "$(cat /sys/block/vda/size)"
check_eq "/dev/vda has $queues queues" "$queues" "$(find /sys/block/vda/mq -mindepth 1 -maxdepth 1 -type d | wc -l)"
check_eq "serial (GET_ID) is the manifest's" "blkgw-vda" "$(cat /sys/block/vda/serial)"
check_eq "serial of vdb defaults to the image name" "fsdisk" "$(cat /sys/block/vdb/serial)"
check "discard is offered" test "$(cat /sys/block/vda/queue/discard_max_bytes)" -gt 0
check "write zeroes is offered" test "$(cat /sys/block/vda/queue/write_zeroes_max_bytes)" -gt 0
check_eq "a volatile write cache (flushes sent)" "write back" "$(cat /sys/block/vda/queue/write_cache)"

# irqs QUEUE: interrupts of vda's virtqueue QUEUE so far, all CPUs (each one
# is blkgw signalling that queue's call eventfd)
vda_dev=$(basename "$(readlink /sys/block/vda/device)")
irqs() {
	awk -v n="$vda_dev-req.$1" '$NF == n { s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break; print s }' /proc/interrupts
}

# --- vda: fio verify over both queues -------------------------------------
irq0=$(irqs 0)
irq1=$(irqs 1)
check "fio: 2 jobs, one per CPU, 4k randwrite QD16, crc32c verify" \
	fio --name=v --filename=/dev/vda --direct=1 --ioengine=io_uring --rw=randwrite \
	--bs=4k --size=16M --offset_increment=16M --numjobs=2 --cpus_allowed=0-1 \
	--cpus_allowed_policy=split --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --verify_backlog=512 --randrepeat=1 --serialize_overlap=1
check "queue 0 completed requests ($irq0 -> $(irqs 0) interrupts)" test "$(irqs 0)" -gt "$irq0"
check "queue 1 completed requests ($irq1 -> $(irqs 1) interrupts)" test "$(irqs 1)" -gt "$irq1"
check "fio: 64k writes with a flush after every 4, verified" \
	fio --name=f --filename=/dev/vda --direct=1 --ioengine=io_uring --rw=write --bs=64k \
	--offset=32M --size=8M --iodepth=4 --fsync=4 --verify=crc32c --do_verify=1 --verify_fatal=1

# --- vda: discard and write zeroes ------------------------------------------
yes blkgw-discard | head -c $((4 * MiB)) >/tmp/fill
check "fill 40-44 MiB" dd if=/tmp/fill of=/dev/vda bs=64k seek=640 oflag=direct
check "blkdiscard 40-42 MiB" blkdiscard -f -o $((40 * MiB)) -l $((2 * MiB)) /dev/vda
check "blkdiscard -z 42-43 MiB (write zeroes)" blkdiscard -f -z -o $((42 * MiB)) -l $((1 * MiB)) /dev/vda
check "40-43 MiB reads back as zeros" \
	sh -c "dd if=/dev/vda bs=64k skip=640 count=48 iflag=direct 2>/dev/null | cmp -n $((3 * MiB)) - /dev/zero"
dd if=/tmp/fill of=/tmp/fill4 bs=64k skip=48 count=16 2>/dev/null
check "43-44 MiB still holds the fill" \
	sh -c "dd if=/dev/vda bs=64k skip=688 count=16 iflag=direct 2>/dev/null | cmp - /tmp/fill4"
# The host compares this with its file.
yes blkgw-vm-pattern | head -c $((4 * MiB)) >/tmp/pattern
check "dd a 4 MiB pattern at 100 MiB" dd if=/tmp/pattern of=/dev/vda bs=64k seek=1600 oflag=direct
check "sync" sync

# --- vdb: a file system -----------------------------------------------------
require "load ext4 (and crc32c)" load_modules crc32c_generic ext4
require "mkfs.ext4 /dev/vdb" mkfs.ext4 -q -F /dev/vdb
mkdir -p /mnt
require "mount /dev/vdb" mount -t ext4 -o discard /dev/vdb /mnt
check "write an 8 MiB file" dd if=/dev/urandom of=/mnt/big bs=64k count=128
mkdir -p /mnt/many
i=0
while [ $i -lt 200 ]; do
	echo "file $i $(cat /proc/sys/kernel/random/uuid)" >/mnt/many/f$i
	i=$((i + 1))
done
check "200 small files" test "$(find /mnt/many -type f | wc -l)" -eq 200
(cd /mnt && md5sum big many/* >/tmp/sums)
check "a file to delete (discard on delete)" dd if=/dev/urandom of=/mnt/gone bs=64k count=64
check "rm + sync" sh -c "rm /mnt/gone && sync"
check "fstrim" /usr/local/bin/fstrim -v /mnt
check "umount" umount /mnt
check "mount again" mount -t ext4 /dev/vdb /mnt
check "every file reads back the same" sh -c "cd /mnt && md5sum -c /tmp/sums >/dev/null"
vm_log "BLKGW-MD5 $(md5sum </mnt/big | cut -d' ' -f1)"
check "umount" umount /mnt
check "sync" sync

# --- vdc: a fault layer (EIO in 4M-5M) -------------------------------------
# blkgw answers a backend error with VIRTIO_BLK_S_IOERR: direct I/O in the
# range fails with EIO, the kernel logs the I/O error, the rest of the disk
# and the disk itself keep working. The host counts 3 errors.
require "/dev/vdc appears" wait_for 10 test -b /dev/vdc
# io_error DD-ARGS...: dd fails, and says Input/output error
io_error() {
	! dd "$@" bs=4k count=1 2>/tmp/dderr || return 1
	cat /tmp/dderr
	grep -q 'Input/output error' /tmp/dderr
}
check "vdc: a direct read in the faulted range fails with EIO" \
	io_error if=/dev/vdc of=/dev/null skip=1024 iflag=direct
check "vdc: a direct write in the faulted range fails with EIO" \
	io_error if=/dev/zero of=/dev/vdc seek=1100 oflag=direct
check "vdc: the guest kernel logged the I/O error" \
	sh -c "dmesg | grep -E 'I/O error, dev vdc, sector (8192|8800) '"
yes blkgw-fault | head -c 8192 >/tmp/f8k
check "vdc: writes either side of the range succeed" \
	sh -c "dd if=/tmp/f8k of=/dev/vdc bs=4k seek=1023 count=1 oflag=direct && dd if=/tmp/f8k of=/dev/vdc bs=4k skip=1 seek=1280 count=1 oflag=direct"
check "vdc: and read back" \
	sh -c "{ dd if=/dev/vdc bs=4k skip=1023 count=1 iflag=direct; dd if=/dev/vdc bs=4k skip=1280 count=1 iflag=direct; } 2>/dev/null | cmp - /tmp/f8k"
check "vdc: the disk keeps serving (fio verify 1 MiB outside the range)" \
	fio --name=f --filename=/dev/vdc --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
	--offset=8M --size=1M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1
check "vdc: the faulted range still fails (the layer, not a dead device)" \
	io_error if=/dev/vdc of=/dev/null skip=1024 iflag=direct
check "vdc: still there" test -b /dev/vdc -a "$(cat /sys/block/vdc/size)" = 32768

# --- vdd: a read held 3 s by the fault layer (8M-8M+4K) ----------------------
# It holds up neither a read of another range on the same queue nor another
# disk, and then completes without an error.
require "/dev/vdd appears" wait_for 10 test -b /dev/vdd
dd if=/dev/vdd of=/dev/null bs=4k skip=2048 count=1 iflag=direct 2>/tmp/held.err &
held=$!
vdd_reading() { read -r r w </sys/block/vdd/inflight && [ "$r" -ge 1 ]; }
check "vdd: the held read is in flight" wait_for 5 vdd_reading
check "vdd: meanwhile a read of another range of vdd completes" \
	dd if=/dev/vdd of=/dev/null bs=4k skip=16 count=1 iflag=direct
check "vdd: and a read of another disk" dd if=/dev/vda of=/dev/null bs=4k count=1 iflag=direct
check "vdd: the held read was still held all that time" kill -0 $held
check "vdd: then it completes without an error" wait $held
