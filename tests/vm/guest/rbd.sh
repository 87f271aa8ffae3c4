# shellcheck shell=dash
# vm-rbd: two rbd images on a throwaway Ceph cluster that the host side
# (test-rbd-vm.sh) runs inside a network namespace of its own, reached over a
# tap link: blkgw in the guest serves one image over ublk (/dev/ublkbN) and
# the other over VDUSE (/dev/vdX); fio --verify=crc32c at 4k random QD1 and
# QD32 and 1 MiB sequential on each; a second blkgw asking for the same image
# is refused with the lock's owner named; SIGTERM releases the devices. The
# last lines print the md5 of each device for the host to compare with what
# `rbd export` reads from the cluster.
#
# Kernel arguments (run-vm.sh --append): blkgw.addr (the guest's address/prefix),
# blkgw.peer (the host's address, where the monitor is), blkgw.size_mib (each
# image's size).
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RUN=/tmp/run
CONF=/etc/ceph/ceph.conf
addr=$(vm_arg addr)
peer=$(vm_arg peer)
size_mib=$(vm_arg size_mib 32)
if [ -z "$addr" ] || [ -z "$peer" ]; then
	fail "run-vm.sh --append must give blkgw.addr and blkgw.peer"
	vm_exit 1
fi

require "load virtio_net" load_module virtio_net
require "eth0 up at $addr" sh -c "ip addr add $addr dev eth0 && ip link set eth0 up"
require "load ublk_drv" load_module ublk_drv
# vhost_vdpa is not in this initrd, so virtio_vdpa takes the VDUSE device.
require "load vduse, virtio_vdpa, virtio_blk" load_modules vduse virtio_vdpa virtio_blk
require "the client's ceph.conf is in the initrd" test -s $CONF

mkdir -p $RUN
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  u: { backend: rbd, image: u, conf: $CONF, connect-timeout: 30 }
  v: { backend: rbd, pool: rbd, image: v, conf: $CONF, connect-timeout: 30 }
exports:
  - { image: u, transports: [ublk] }
  - { image: v, transports: [vduse] }
YAML
# The first contact over the link: the monitor at $peer answers, both
# images exist and their locks are free.
require "blkgw check reaches the cluster at $peer and opens both images" $B check /tmp/m.yaml

start_gw() {
	bg_start gw $B serve /tmp/m.yaml --log-level debug
	bg_wait_for gw 120 test -L $RUN/dev/u && bg_wait_for gw 120 test -L $RUN/dev/v
}
stop_gw() {
	kill -TERM "$(bg_pid gw)" && bg_wait gw 60
}
require "blkgw serves rbd/u over ublk and rbd/v over VDUSE" start_gw
udev=$(readlink $RUN/dev/u)
vdev=$(readlink $RUN/dev/v)
vm_log "rbd/u at $udev, rbd/v at $vdev"
check "u is a ublk disk" sh -c "case $udev in /dev/ublkb*) test -b $udev ;; *) false ;; esac"
check "v is a VDUSE virtio disk" sh -c "[ \"$(vdpa_disk v)\" = $vdev ] && test -b $vdev"
check_eq "u has the image's size" $((size_mib * 2048)) "$(cat /sys/block/"${udev#/dev/}"/size)"
check_eq "v has the image's size" $((size_mib * 2048)) "$(cat /sys/block/"${vdev#/dev/}"/size)"
check "status: both rbd images with their exclusive locks, on ublk and vduse" \
	sh -c "$B status --control $RUN/control.sock >/tmp/st; cat /tmp/st; grep -q 'rbd rbd/u (exclusive lock)' /tmp/st && grep -q 'rbd rbd/v (exclusive lock)' /tmp/st && grep -q ublk /tmp/st && grep -q vduse /tmp/st"

fio_verify() { # DESC DEV RW BS QD SIZE
	check "$1" fio --name=v --filename="$2" --direct=1 --ioengine=io_uring --rw="$3" --bs="$4" \
		--iodepth="$5" --size="$6" --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--randrepeat=0 --group_reporting
}
for d in u v; do
	dev=$(readlink $RUN/dev/$d)
	t=ublk
	[ $d = v ] && t=VDUSE
	fio_verify "$t: fio 4k randwrite QD1, crc32c verify" "$dev" randwrite 4k 1 2M
	fio_verify "$t: fio 4k randwrite QD32, crc32c verify" "$dev" randwrite 4k 32 8M
	fio_verify "$t: fio 1 MiB write QD4, crc32c verify (the whole image)" "$dev" write 1M 4 "${size_mib}M"
done

# The exclusive lock: a second blkgw in the guest asking for rbd/u is refused
# at start with the owner (this blkgw's librbd client) named.
mkdir -p /tmp/run2
cat >/tmp/m2.yaml <<YAML
version: 1
gateway: { run-dir: /tmp/run2 }
images:
  u: { backend: rbd, image: u, conf: $CONF }
exports:
  - { image: u, transports: [ublk] }
YAML
check "a second blkgw serving rbd/u is refused: the lock's owner is named (exit 1)" \
	sh -c "! timeout 120 $B serve /tmp/m2.yaml 2>/tmp/err; cat /tmp/err; grep -q 'cannot take the exclusive lock: held by another client client\.[0-9]' /tmp/err"
check "the refused blkgw left no ublk device" sh -c "[ \"\$(ls /dev/ublkb*)\" = $udev ]"
check "the first blkgw still serves u (a 4k read)" dd if="$udev" of=/dev/null bs=4k count=1 iflag=direct

# What the host compares with rbd export: the whole of each device, read
# through blkgw's transports.
for d in u v; do
	dev=$(readlink $RUN/dev/$d)
	sum=$(dd if="$dev" bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
	check "read all of $d back ($dev)" test -n "$sum"
	echo "RBD-VM-MD5 $d $sum"
done

check "SIGTERM: blkgw exits 0" stop_gw
check "no ublk device, no vdpa device, no link left" \
	sh -c "! ls /dev/ublkb* 2>/dev/null && [ -z \"\$(ls /sys/bus/vdpa/devices)\" ] && [ -z \"\$(ls $RUN/dev 2>/dev/null)\" ]"
