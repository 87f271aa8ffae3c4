# shellcheck shell=dash
# vm-smoke: the guest boots, every module loads, the device nodes appear.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

check_eq "kernel is the 6.12 test kernel" "$(cat /lib/blkgw-vm/kernel-version)" "$(uname -r)"
check "loopback is up" sh -c 'ip link show lo | grep -q "UP"'
check "/dev/nbd0 absent before loading nbd" test ! -e /dev/nbd0

for m in virtio_blk nbd ublk_drv vhost_iotlb vdpa vduse virtio_vdpa; do
	check "load module $m" load_modules "$m"
	check "$m shows in /sys/module" test -d "/sys/module/$m"
done

check "/dev/nbd0 is a block device" wait_for 5 test -b /dev/nbd0
check "/dev/ublk-control is a char device" wait_for 5 test -c /dev/ublk-control
check "/dev/vduse/control is a char device" wait_for 5 test -c /dev/vduse/control
check "virtio_vdpa driver is on the vdpa bus" wait_for 5 test -d /sys/bus/vdpa/drivers/virtio_vdpa
check_eq "nbd0 is not connected (size 0)" 0 "$(cat /sys/block/nbd0/size)"
echo hi >/tmp/x
check_eq "/tmp is a writable tmpfs" hi "$(cat /tmp/x)"
