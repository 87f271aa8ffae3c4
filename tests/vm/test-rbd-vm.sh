#!/bin/bash
# vm-rbd: the rbd backend over ublk and VDUSE, in the test VM (issue 17).
#
#   test-rbd-vm.sh --workdir DIR [build-guest.sh args...]      (BLKGW set)
#
# The throwaway cluster (tests/rbd/cluster.sh: one mon, one memstore OSD)
# runs on the host inside a network namespace this script makes, bound to
# the host end of a tap link in that namespace (10.77.0.1/30); QEMU, started
# in the same namespace, gives the guest a virtio-net NIC on the tap
# (10.77.0.2). blkgw in the guest serves one image over ublk and one over
# VDUSE and fio verifies them (guest/rbd.sh); afterwards this script reads
# both images back with `rbd export` and compares them with the md5 the
# guest printed. No traffic leaves the namespace, which goes away with its
# last process. Why a tap and not a cluster in the guest or QEMU's user
# networking: tests/vm/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "${1:-}" != --workdir ] || [ -z "${2:-}" ]; then
	echo "usage: $0 --workdir DIR [build-guest.sh args...]" >&2
	exit 2
fi

skip() {
	{
		echo "######################################################################"
		echo "# SKIP: vm-rbd cannot run: $*"
		echo "######################################################################"
	} >&2
	exit 77
}

# Re-run in a network namespace of our own: the tap, the cluster and QEMU
# live there and nothing else does.
if [ -z "${BLKGW_RBD_VM_NETNS:-}" ]; then
	[ "$(id -u)" = 0 ] || skip "it makes a network namespace and a tap device, which needs root"
	for c in unshare ip; do
		command -v "$c" >/dev/null 2>&1 || skip "'$c' is not installed (make test installs util-linux and iproute2)"
	done
	[ -c /dev/net/tun ] || skip "there is no /dev/net/tun for the guest's tap link"
	unshare --net true 2>/dev/null || skip "unshare --net fails here (no CAP_SYS_ADMIN?)"
	BLKGW_RBD_VM_NETNS=1 exec unshare --net -- "$0" "$@"
fi

workdir=$2
shift 2
: "${BLKGW:?set BLKGW to the blkgw binary}"
host_ip=10.77.0.1 guest_ip=10.77.0.2 tap=blkgw-rbd0
size_mib=32

ip link set lo up
ip tuntap add dev $tap mode tap || { echo "vm-rbd: cannot make a tap device" >&2; exit 1; }
ip addr add $host_ip/30 dev $tap
ip link set $tap up

# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
export CEPH_ADDR=$host_ip
# shellcheck source=SCRIPTDIR/../rbd/cluster.sh
. "$here/../rbd/cluster.sh"
on_exit "ip link del $tap 2>/dev/null"

t0=$(date +%s.%N)
ceph_start
rbd_t create --size ${size_mib}M rbd/u || fail "rbd create u"
rbd_t create --size ${size_mib}M rbd/v || fail "rbd create v"
echo "vm-rbd: cluster up at $host_ip in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"

# The guest's client configuration: the monitor and no cephx, nothing else.
fsid=$(sed -n 's/^fsid = //p' "$CEPH_CONF")
mon=$(sed -n 's/^mon host = //p' "$CEPH_CONF")
cat >"$T/guest-ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = $mon
auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
[client]
log file = /dev/null
admin socket =
EOF

mkdir -p "$workdir"
rc=0
"$here/vm-test.sh" --workdir "$workdir" --script "$here/guest/rbd.sh" \
	--bin "$BLKGW" --bin fio --file "$T/guest-ceph.conf:/etc/ceph/ceph.conf" \
	--module virtio_net "$@" -- \
	-m 1024 --timeout 600 \
	--append "blkgw.addr=$guest_ip/30 blkgw.peer=$host_ip blkgw.size_mib=$size_mib" -- \
	-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
	-device virtio-net-pci,netdev=n0 || rc=$?
[ "$rc" = 0 ] || exit "$rc"

# What the cluster holds is what the guest read through blkgw.
for img in u v; do
	want=$(sed -n "s/\r\$//; s/^RBD-VM-MD5 $img \([0-9a-f]*\)\$/\1/p" "$workdir/console.log" | tail -n1)
	[ -n "$want" ] || fail "the guest printed no md5 for $img"
	got=$(rbd_t export "rbd/$img" - 2>/dev/null | md5sum | cut -d' ' -f1)
	[ "$got" = "$want" ] || fail "rbd export rbd/$img (md5 $got) differs from what the guest read ($want)"
	echo "vm-rbd: rbd export rbd/$img matches what the guest read through blkgw ($got)"
done
