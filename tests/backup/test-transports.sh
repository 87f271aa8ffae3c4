#!/bin/sh
# Changed-block tracking whatever the transport (docs/backup.md): one tracked
# image exported over NBD, FUSE and vhost-user-blk at once; writes through
# each (qemu-io over NBD, dd into the FUSE file, fio's vhost-user-blk engine)
# and a discard through FUSE (fallocate --punch-hole) all land in the record,
# rounded to the granularity.
#   test-transports.sh FIO_VHOST_ENGINE_SO
. "$(dirname "$0")/../lib.sh"
engine=${1:?usage: $0 FIO_VHOST_ENGINE_SO}
requires qemu-io qemu-img fio fallocate
[ -c /dev/fuse ] || skip "no /dev/fuse on this host"
[ "$(id -u)" = 0 ] || skip "mounting FUSE needs root"

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  disk: { backend: file, path: $T/disk.img, size: 64M, track-changes: true, change-granularity: 64K }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $T/disk.sock } }
  - { image: disk, transports: [fuse], fuse: { path: $T/disk.fuse } }
  - { image: disk, transports: [vhost-user-blk], vhost-user-blk: { socket: $T/disk.vhost, queues: 2 } }
YAML
on_exit "umount -l $T/disk.fuse 2>/dev/null"
start_blkgw "$T/m.yaml"
"$BLKGW" checkpoint create disk c1 --no-snapshot || fail "checkpoint create c1"

qemu-io -f raw -c 'write -P 1 1M 4k' "nbd+unix:///disk?socket=$T/disk.sock" >/dev/null ||
  fail "write over NBD"
dd if=/dev/urandom of="$T/disk.fuse" bs=4k count=1 seek=$((4 << 8)) conv=notrunc,fsync \
  status=none || fail "write through the FUSE file"
fallocate --punch-hole --keep-size --offset $((12 << 20)) --length 65536 "$T/disk.fuse" ||
  fail "punch a hole through the FUSE file"
fio --thread --ioengine="external:$engine" --vhost_socket="$T/disk.vhost" --name=w \
  --rw=write --bs=4k --offset=8M --size=8k --output="$T/fio.out" >/dev/null 2>&1 ||
  { cat "$T/fio.out"; fail "write over vhost-user-blk"; }

"$BLKGW" checkpoint changes disk c1 >"$T/ch" || fail "checkpoint changes c1"
printf '%s\n' "1048576 65536" "4194304 65536" "8388608 65536" "12582912 65536" >"$T/want"
diff -u "$T/want" "$T/ch" || fail "the record misses a write of some transport (NBD 1M, FUSE 4M, vhost 8M, FUSE discard 12M)"
echo "NBD, FUSE (write and discard) and vhost-user-blk writes all recorded"
stop_blkgw
