#!/bin/bash
# vm-vhost-user-qsd: run-vm.sh --vhost-user-blk against qemu-storage-daemon's
# vhost-user-blk export (the reference peer), with two vCPUs and two queues.
# The template for blkgw's own vhost-user-blk guest tests.
#
#   test-vhost-user-qsd.sh --workdir DIR [vm-test.sh build args...]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workdir=${2:?usage: $0 --workdir DIR [build args...]}
[ "$1" = --workdir ] || { echo "usage: $0 --workdir DIR [build args...]" >&2; exit 2; }
shift 2
qsd=${QEMU_STORAGE_DAEMON:-qemu-storage-daemon}
size_mib=64

mkdir -p "$workdir"
rm -f "$workdir/disk.raw" "$workdir/vu.sock"
truncate -s "${size_mib}M" "$workdir/disk.raw"

qsd_pid=""
cleanup() {
	if [ -n "$qsd_pid" ]; then
		kill "$qsd_pid" 2>/dev/null || true
		wait "$qsd_pid" 2>/dev/null || true
	fi
}
trap cleanup EXIT

if command -v "$qsd" >/dev/null 2>&1; then
	"$qsd" --blockdev "driver=file,filename=$workdir/disk.raw,node-name=disk0,cache.direct=off" \
		--export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$workdir/vu.sock,writable=on,num-queues=2" \
		>"$workdir/qsd.log" 2>&1 &
	qsd_pid=$!
	for _ in $(seq 100); do
		[ -S "$workdir/vu.sock" ] && break
		kill -0 "$qsd_pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ ! -S "$workdir/vu.sock" ]; then
		cat "$workdir/qsd.log" >&2
		echo "test-vhost-user-qsd: qemu-storage-daemon did not create its socket" >&2
		exit 1
	fi
fi
# vm-test.sh installs QEMU (which brings qemu-storage-daemon) or skips
rc=0
"$here/vm-test.sh" --workdir "$workdir" --script "$here/guest/vhost-user-blk.sh" --bin fio "$@" -- \
	--smp 2 --vhost-user-blk "$workdir/vu.sock,num-queues=2" \
	--append "blkgw.size_mib=$size_mib blkgw.queues=2" --timeout 240 || rc=$?
[ "$rc" = 0 ] || exit "$rc"
[ -n "$qsd_pid" ] || { echo "test-vhost-user-qsd: no qemu-storage-daemon" >&2; exit 1; }
cleanup
qsd_pid=""
(set +o pipefail; yes blkgw-vm-pattern | head -c 4194304) >"$workdir/pattern"
if ! cmp -n 4194304 "$workdir/pattern" "$workdir/disk.raw"; then
	echo "test-vhost-user-qsd: the host file does not hold what the guest wrote" >&2
	exit 1
fi
echo "test-vhost-user-qsd: the host file holds the guest's pattern"
