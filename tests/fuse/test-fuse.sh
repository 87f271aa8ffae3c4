#!/bin/sh
# The FUSE export against real tools, in one mode: test-fuse.sh read|uring.
# One daemon serves an image as a file (and the same image over NBD) plus a
# read-only image; then: qemu-img compare (file vs image vs NBD), fio
# --verify=crc32c (psync, libaio, io_uring; direct and buffered; QD1 and
# QD32), punch hole, zero range, lseek holes through cp --sparse=always,
# misaligned buffered writes, truncate refused, read-only refused and
# unchanged, losetup + mkfs.ext4 + mount, kill -9 under I/O and restart
# (stale mount cleaned), SIGTERM unmounts.
. "$(dirname "$0")/../lib.sh"
mode=${1:?read or uring}
requires qemu-img fio losetup mkfs.ext4 du cmp fallocate
[ -c /dev/fuse ] || skip "no /dev/fuse on this host"
[ "$(id -u)" = 0 ] || skip "mounting FUSE needs root"

uring_opt="off"
if [ "$mode" = uring ]; then
  p=/sys/module/fuse/parameters/enable_uring
  [ -e $p ] || skip "this kernel ($(uname -r)) has no FUSE over io_uring (6.14+): the io_uring half cannot run"
  if [ "$(cat $p)" != Y ]; then
    # The host allows it but has it off: turn it on for this test, restore after.
    echo Y >$p 2>/dev/null || skip "FUSE over io_uring is off ($p = N) and cannot be turned on"
    on_exit "echo N > $p"
  fi
  uring_opt="on"
fi

run=$T/run
mkdir -p "$run"
file=$T/disk.raw
rofile=$T/ro.raw
truncate -s 64M "$T/img.raw"
# Some data so comparisons mean something, and holes so sparseness does.
dd if=/dev/urandom of="$T/img.raw" bs=1M count=2 seek=4 conv=notrunc status=none
truncate -s 16M "$T/ro.img"
dd if=/dev/urandom of="$T/ro.img" bs=1M count=1 seek=1 conv=notrunc status=none
ro_sum=$(md5sum <"$T/ro.img")

cat >"$T/m.yaml" <<EOM
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  d0: { backend: file, path: $T/img.raw }
  ro: { backend: file, path: $T/ro.img }
exports:
  - { image: d0, transports: [fuse], fuse: { path: $file, io-uring: $uring_opt } }
  - { image: d0, transports: [nbd], nbd: { socket: $run/d0.sock } }
  - { image: ro, read-only: true, transports: [fuse], fuse: { path: $rofile, io-uring: $uring_opt } }
EOM
on_exit "umount -l $file 2>/dev/null; umount -l $rofile 2>/dev/null"
start_blkgw "$T/m.yaml"
want=$([ "$mode" = uring ] && echo io_uring || echo "read loop")
"$BLKGW" status | grep -F "$file ($want" || fail "status does not show $file in mode '$want'"

echo "== qemu-img compare"
qemu-img compare -f raw -F raw "$file" "$T/img.raw" || fail "FUSE file differs from the image"
qemu-img compare -f raw "$file" "nbd+unix:///d0?socket=$run/d0.sock" || fail "FUSE file differs from the NBD export"
[ "$(stat -c %s "$file")" = 67108864 ] || fail "size is $(stat -c %s "$file"), not 64 MiB"

echo "== fio --verify=crc32c"
for eng in psync libaio io_uring; do
  for direct in 1 0; do
    for qd in 1 32; do
      [ $eng = psync ] && [ $qd = 32 ] && continue
      fio --name=v --filename="$file" --ioengine=$eng --direct=$direct --iodepth=$qd \
        --rw=randwrite --bs=4k --offset=32M --size=8M --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --output="$T/fio.out" || { cat "$T/fio.out"; fail "fio $eng direct=$direct QD$qd"; }
      echo "fio $eng direct=$direct QD$qd: verified"
    done
  done
done
fio --name=big --filename="$file" --ioengine=libaio --direct=1 --iodepth=8 --rw=write --bs=1M \
  --offset=40M --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$T/fio.out" ||
  { cat "$T/fio.out"; fail "fio 1 MiB writes"; }
qemu-img compare -f raw -F raw "$file" "$T/img.raw" || fail "after fio, FUSE file differs from the image"
"$BLKGW" status | grep -F "$file" >"$T/st"
ring=$(sed -n 's/.*requests: \([0-9]*\) over io_uring.*/\1/p' "$T/st")
if [ "$mode" = uring ]; then
  [ "${ring:-0}" -gt 1000 ] || fail "only ${ring:-0} requests went over io_uring: $(cat "$T/st")"
else
  [ "${ring:-0}" = 0 ] || fail "read loop mode, yet requests over io_uring: $(cat "$T/st")"
fi

echo "== punch hole and zero range"
dd if=/dev/urandom of="$file" bs=1M count=4 seek=8 conv=notrunc,fsync status=none
before=$(du -k "$T/img.raw" | cut -f1)
fallocate --punch-hole -o 8M -l 2M "$file" || fail "fallocate --punch-hole"
after=$(du -k "$T/img.raw" | cut -f1)
[ $((before - after)) -ge 2000 ] || fail "punch hole freed $((before - after)) KiB of the backing file, not about 2048"
cmp -n 2097152 -i 8M:0 "$file" /dev/zero || fail "punched range does not read as zeros"
fallocate --zero-range -o 10M -l 1M "$file" || fail "fallocate --zero-range"
cmp -n 1048576 -i 10M:0 "$file" /dev/zero || fail "zeroed range does not read as zeros"
cmp -n 1048576 -i 10M:0 "$T/img.raw" /dev/zero || fail "zeroed range not zero in the image"
cmp -n 1048576 -i 11M:11M "$file" "$T/img.raw" || fail "data after the zeroed range differs"
[ "$(od -An -tx1 -j $((11 * 1048576)) -N 16 "$file" | tr -d ' \n')" != 00000000000000000000000000000000 ] ||
  fail "zero range spilled past its end"

echo "== lseek holes: cp --sparse=always and du"
blocks=$(stat -c %b "$file")
# The image's data extents in 512-byte units: its own st_blocks also counts the
# filesystem's extent-tree blocks, which are not data the export holds.
img_blocks=$(/usr/bin/python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
pos = total = 0
while pos < end:
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    hole = os.lseek(fd, data, os.SEEK_HOLE)
    total += hole - data
    pos = hole
print((total + 511) // 512)' "$T/img.raw")
[ "$blocks" = "$img_blocks" ] ||
  fail "st_blocks $blocks differs from the image's data extents, $img_blocks blocks (du would lie)"
cp --sparse=always "$file" "$T/copy.raw"
cmp "$file" "$T/copy.raw" || fail "sparse copy differs"
[ "$(du -k "$T/copy.raw" | cut -f1)" -lt 40000 ] || fail "sparse copy is not sparse: $(du -k "$T/copy.raw")"
qemu-img map --output=json "$file" | grep -q '"data": false' || fail "qemu-img map sees no holes"

echo "== misaligned buffered write, truncate"
printf 'hello, fuse' | dd of="$file" bs=1 seek=1000001 conv=notrunc status=none
[ "$(dd if="$T/img.raw" bs=1 skip=1000001 count=11 status=none)" = "hello, fuse" ] || fail "misaligned write lost"
if truncate -s 1G "$file" 2>"$T/err"; then fail "truncate to another size succeeded"; fi
grep -q 'not permitted' "$T/err" || fail "truncate: $(cat "$T/err")"
truncate -s 64M "$file" || fail "truncate to the same size refused"

echo "== read-only"
if dd if=/dev/zero of="$rofile" bs=4k count=1 conv=notrunc status=none 2>"$T/err"; then fail "write to a read-only export succeeded"; fi
grep -q 'Read-only file system' "$T/err" || fail "read-only write: $(cat "$T/err")"
if fallocate --punch-hole -o 0 -l 4096 "$rofile" 2>/dev/null; then fail "punch hole on a read-only export succeeded"; fi
qemu-img compare -f raw -F raw "$rofile" "$T/ro.img" || fail "read-only file differs from its image"
[ "$(md5sum <"$T/ro.img")" = "$ro_sum" ] || fail "read-only image changed"

echo "== losetup + mkfs.ext4 + mount"
if loop=$(losetup -f --show "$file" 2>"$T/err"); then
  on_exit "umount $T/mnt 2>/dev/null; losetup -d $loop 2>/dev/null"
  mkfs.ext4 -q -F "$loop" || fail "mkfs.ext4 on $loop over the FUSE file"
  mkdir -p "$T/mnt"
  if mount "$loop" "$T/mnt" 2>"$T/err"; then
    cp "$BLKGW" "$T/mnt/blkgw" && echo data >"$T/mnt/a" && sync
    umount "$T/mnt" && mount -o ro "$loop" "$T/mnt" || fail "remount"
    cmp "$BLKGW" "$T/mnt/blkgw" && [ "$(cat "$T/mnt/a")" = data ] || fail "files on ext4 over loop over FUSE differ"
    umount "$T/mnt"
  else
    echo "SKIP (part): mount of ext4 on $loop refused here: $(cat "$T/err")" >&2
  fi
  losetup -d "$loop"
  e2fsck -fn "$T/img.raw" >/dev/null || fail "e2fsck of the image after the ext4 round trip"
else
  echo "SKIP (part): losetup refused on this host: $(cat "$T/err")" >&2
fi

echo "== kill -9 under I/O, restart"
fio --name=bg --filename="$file" --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite \
  --bs=4k --offset=48M --size=8M --time_based --runtime=30 --output="$T/bg.out" >/dev/null 2>&1 &
fio_pid=$!
sleep 2
kill -9 "$BLKGW_PID"
wait "$BLKGW_PID" 2>/dev/null || true
BLKGW_PID=""
wait $fio_pid 2>/dev/null || true
if stat "$file" >/dev/null 2>"$T/err"; then fail "after kill -9 the mount still answers"; fi
grep -q 'not connected' "$T/err" || fail "after kill -9: $(cat "$T/err")"
start_blkgw "$T/m.yaml"
grep -q 'stale FUSE mount' "$T/blkgw.log" || fail "restart did not report cleaning the stale mount"
qemu-img compare -f raw -F raw "$file" "$T/img.raw" || fail "after restart, FUSE file differs from the image"
fio --name=v2 --filename="$file" --ioengine=io_uring --direct=1 --iodepth=32 --rw=randwrite \
  --bs=4k --offset=48M --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$T/fio.out" ||
  { cat "$T/fio.out"; fail "fio after restart"; }

echo "== SIGTERM unmounts"
stop_blkgw TERM
grep -qF " $file " /proc/self/mounts && fail "$file still mounted after SIGTERM"
grep -qF " $rofile " /proc/self/mounts && fail "$rofile still mounted after SIGTERM"
[ -f "$file" ] && [ "$(stat -c %s "$file")" = 0 ] || fail "$file is not the plain empty file again"
echo "PASS fuse ($mode)"
