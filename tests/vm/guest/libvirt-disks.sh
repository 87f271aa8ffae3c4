# shellcheck shell=dash
# vm-libvirt (guest side): libvirt started this guest with two disks blkgw
# serves on the host, an NBD disk over a unix socket (16 MiB, the host's
# pattern in its first MiB) and a vhost-user-blk disk (32 MiB); it reads the
# one and writes both, and the host checks the image files afterwards.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

require "load virtio_blk" load_modules virtio_blk
require "two virtio disks appear" wait_for 30 test -b /dev/vdb
nbd="" vu=""
for d in vda vdb; do
	case $(cat /sys/block/$d/size) in
	32768) nbd=$d ;;
	65536) vu=$d ;;
	esac
done
require "the NBD disk (16 MiB) is there" test -n "$nbd"
require "the vhost-user-blk disk (32 MiB) is there" test -n "$vu"
vm_log "NBD disk /dev/$nbd, vhost-user-blk disk /dev/$vu"
want=$(vm_arg md5)
check "the NBD disk holds the host's pattern (md5 $want)" \
	sh -c "dd if=/dev/$nbd bs=1M count=1 2>/dev/null | md5sum | grep -q '^$want '"
yes blkgw-libvirt | head -c 1048576 >/tmp/p
check "1 MiB written to the vhost-user-blk disk" dd if=/tmp/p of="/dev/$vu" bs=64k oflag=direct
check "1 MiB written to the NBD disk at 1 MiB" dd if=/tmp/p of="/dev/$nbd" bs=64k seek=16 oflag=direct
check "sync" sync
