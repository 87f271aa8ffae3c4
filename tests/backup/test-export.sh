#!/bin/sh
# Backup exports (docs/backup.md), Vitastor's documented procedure over NBD
# with real clients: a full qemu-img convert of disk@c1 while the live disk
# is written (the copy is the disk as it was at c1), checkpoint c2, the layer
# since c1 (--only-changed) converted with -B into a 4k-cluster qcow2 that
# holds exactly the changed clusters; the chain equals the c2 view and the
# live disk. nbdinfo and qemu-img map read qemu:dirty-bitmap:c1 exactly. A
# checkpoint without a view is refused unless --inconsistent. fio --verify
# writes to the live disk through a whole backup.
#   test-export.sh reflink   the image and run dir on an XFS file system the
#                            test loop-mounts: views are reflink copies
#   test-export.sh cbw       on the temp dir's file system (ext4 here, no
#                            reflink): views are copy-before-write
. "$(dirname "$0")/../lib.sh"
mode=${1:?usage: test-export.sh reflink|cbw}
requires jq qemu-img qemu-io nbdinfo fio

if [ "$mode" = reflink ]; then
  requires mkfs.xfs
  [ "$(id -u)" = 0 ] || skip "loop-mounting an XFS file system needs root"
  mnt=$T/xfs
  truncate -s 512M "$T/xfs.img"
  mkfs.xfs -q "$T/xfs.img" || fail "mkfs.xfs"
  mkdir "$mnt"
  mount -o loop "$T/xfs.img" "$mnt" || skip "cannot loop-mount (no loop devices here?)"
  # After lib.sh's kill -9 of blkgw: wait for it to let go of the mount.
  on_exit "[ -z \"\$BLKGW_PID\" ] || wait \$BLKGW_PID 2>/dev/null; umount $mnt || umount -l $mnt"
else
  mnt=$T/plain
  mkdir "$mnt"
  cp --reflink=always /dev/null "$mnt/probe" 2>/dev/null &&
    skip "$mnt can reflink: copy-before-write would not be used"
fi
run=$mnt/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  disk: { backend: file, path: $mnt/disk.img, size: 64M, track-changes: true, change-granularity: 64K }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $T/disk.sock } }
YAML
live="nbd+unix:///disk?socket=$T/disk.sock"
start_blkgw "$T/m.yaml"
io() { qemu-io -f raw "$@" "$live" >/dev/null || fail "qemu-io $*"; }

io -c 'write -P 1 0 8M' -c 'write -P 9 20M 1M' -c 'write -P 5 63M 1M'
cp "$mnt/disk.img" "$T/c1.raw"
if [ "$mode" = reflink ]; then
  "$BLKGW" checkpoint create disk c1 || fail "checkpoint create c1"
  "$BLKGW" checkpoint list disk --json | jq -e '.checkpoints[0].snapshot == true' >/dev/null ||
    fail "checkpoint c1 has no point-in-time view on XFS"
fi
# reflink: a backup of c1; cbw: c1 is made by backup start, with its view.
url=$("$BLKGW" backup start disk c1 --socket "$T/b1.sock") || fail "backup start disk c1"
echo "backup c1 at $url"
[ "$url" = "nbd+unix:///disk%40c1?socket=$T/b1.sock" ] || fail "backup start printed '$url'"

# The live disk changes while the full backup is read: the copy must not see it.
io -c 'write -P 2 1M 4k' -c 'write -P 3 2044k 8k' -c 'write -z 8M 128k' -c 'discard 20M 64k'
qemu-img convert -f raw -O qcow2 -o cluster_size=4k "$url" "$T/full.qcow2" ||
  fail "qemu-img convert of disk@c1"
io -c 'write -P 4 30M 512'
grep -q "blkgw\[worker-bg\].*on export 'disk@c1'" "$T/blkgw.log" ||
  fail "the backup export's client was not served by the background worker"
grep -q "blkgw\[worker-bg\].*on export 'disk'" "$T/blkgw.log" &&
  fail "the live disk's client was served by the background worker"
qemu-img compare -q -f qcow2 -F raw "$T/full.qcow2" "$T/c1.raw" ||
  fail "the full backup is not the disk as it was at c1"
qemu-io -f raw -r -c 'write -P 7 0 4k' "$url" 2>"$T/err" && fail "a backup export took a write"
if [ "$mode" = cbw ]; then
  # Copied aside in 4K units, as much as each change covers: 4k at 1M, 8k at
  # 2044k, 128k at 8M, 64k at 20M, and 4k for the 512 bytes at 30M: 208k.
  "$BLKGW" status --json | jq -e '.exports[] | select(.id == "disk") |
    .tracking.copy_before_write | .checkpoint == "c1" and .copied_bytes == 212992 and
      (.staged_bytes | type == "number") and .staged_bytes <= .copied_bytes' >/dev/null ||
    { "$BLKGW" status --json | jq '.exports[0].tracking'; fail "status does not show the copy-before-write view"; }
  [ -f "$run/cbt/disk/cbw.c1" ] || fail "no aside file for c1's view"
fi
"$BLKGW" backup stop disk@c1 || fail "backup stop"
[ ! -e "$run/cbt/disk/cbw.c1" ] || fail "the aside file outlived its backup"
"$BLKGW" status --json | jq -e '[.exports[].id] == ["disk"]' >/dev/null ||
  fail "disk@c1 is still exported after backup stop"

cp "$mnt/disk.img" "$T/c2.raw"
# c2 made by backup start (reflink: with a reflink view; cbw: copy-before-write).
url=$("$BLKGW" backup start disk c2 --since c1 --only-changed --socket "$T/b2.sock") ||
  fail "backup start disk c2 --since c1 --only-changed"
io -c 'write -P 6 40M 64k'  # after c2: in neither backup

# The changes c1..c2, rounded out to 64K: 1M, 2044k+8k (two chunks), 8M+128k, 20M, 30M.
want='[[1048576,65536,1],[2031616,131072,1],[8388608,131072,1],[20971520,65536,1],[31457280,65536,1]]'
/usr/bin/env PATH="/usr/bin:$PATH" nbdinfo --map=qemu:dirty-bitmap:c1 --json "$url" >"$T/map.json" ||
  fail "nbdinfo --map=qemu:dirty-bitmap:c1"
got=$(jq -c '[.[] | select(.type == 1) | [.offset, .length, .type]]' "$T/map.json")
[ "$got" = "$want" ] || { cat "$T/map.json"; fail "qemu:dirty-bitmap:c1 is $got, not $want"; }
# qemu:allocation-depth of the layer: 1 where changed, 0 elsewhere; base:allocation
# reports the unchanged chunks as holes that do not read as zeros (type 1).
nbdinfo --map=qemu:allocation-depth --json "$url" >"$T/depth.json" || fail "nbdinfo depth map"
got=$(jq -c '[.[] | select(.type == 1) | [.offset, .length, .type]]' "$T/depth.json")
[ "$got" = "$want" ] || { cat "$T/depth.json"; fail "qemu:allocation-depth is $got, not $want"; }
jq -e 'all(.[]; .type == 0 or .type == 1)' "$T/depth.json" >/dev/null || fail "depths other than 0, 1"
nbdinfo --map --json "$url" >"$T/alloc.json" || fail "nbdinfo --map"
jq -e '.[] | select(.offset == 0) | .type == 1' "$T/alloc.json" >/dev/null ||
  { cat "$T/alloc.json"; fail "base:allocation: unchanged chunk 0 is not an unallocated hole"; }
nbdinfo --list --json "nbd+unix://?socket=$T/b2.sock" >"$T/list.json" ||
  fail "nbdinfo --list of the backup socket"
jq -e '.exports[0] | .["export-name"] == "disk@c2" and
  (.contexts | index("qemu:dirty-bitmap:c1") and index("base:allocation") and index("qemu:allocation-depth"))' \
  "$T/list.json" >/dev/null || { cat "$T/list.json"; fail "the backup export lists the wrong contexts"; }
"$BLKGW" status --json | jq -e '.exports[] | select(.id == "disk@c2") | .read_only == true' \
  >/dev/null || fail "disk@c2 is not exported read-only"

# qemu-img map with x-dirty-bitmap: QEMU reports dirty blocks as "data": false.
qemu-img map --output=json --image-opts \
  "driver=nbd,server.type=unix,server.path=$T/b2.sock,export=disk@c2,x-dirty-bitmap=qemu:dirty-bitmap:c1" \
  >"$T/qmap.json" || fail "qemu-img map with x-dirty-bitmap"
got=$(jq -c '[.[] | select(.data == false) | [.start, .length, 1]]' "$T/qmap.json")
[ "$got" = "$want" ] || { cat "$T/qmap.json"; fail "qemu-img map x-dirty-bitmap: $got, not $want"; }

# Vitastor's increment: the layer over c1 into a 4k-cluster qcow2 backed by the full one.
qemu-img convert -f raw -O qcow2 -o cluster_size=4k -B "$T/full.qcow2" -F qcow2 "$url" \
  "$T/inc.qcow2" || fail "qemu-img convert -B of the layer since c1"
qemu-img map --output=json "$T/inc.qcow2" >"$T/imap.json" || fail "qemu-img map of the increment"
# Every cluster in the increment lies inside a changed chunk, and the increment is small.
jq -e --argjson w "$want" '[.[] | select(.depth == 0 and (.data or .zero)) as $e |
    select([$w[] | select(.[0] <= $e.start and $e.start + $e.length <= .[0] + .[1])] | length == 0)]
  | length == 0' "$T/imap.json" >/dev/null ||
  { cat "$T/imap.json"; fail "the increment holds clusters outside the changed chunks"; }
size=$(qemu-img info --output=json "$T/inc.qcow2" | jq '."actual-size"')
[ "$size" -lt $((4 << 20)) ] || fail "the increment is $size bytes: more than the changes"
qemu-img compare -q -f qcow2 -F raw "$T/inc.qcow2" "$T/c2.raw" ||
  fail "full + increment is not the disk as it was at c2"
# A backup export is part of the state: save-manifest writes it, serve brings it back.
"$BLKGW" save-manifest "$T/saved.yaml" || fail "save-manifest"
grep -q "backup: { of: \"*disk\"*, checkpoint: \"*c2\"*, since: \"*c1\"*, only-changed: true" \
  "$T/saved.yaml" || { cat "$T/saved.yaml"; fail "save-manifest lost the backup image"; }
"$BLKGW" apply "$T/saved.yaml" >"$T/apply.out" 2>&1 || { cat "$T/apply.out"; fail "apply the saved state"; }
grep -q "^keep disk@c2: unchanged" "$T/apply.out" ||
  { cat "$T/apply.out"; fail "re-applying the saved state did not keep disk@c2"; }
if [ "$mode" = reflink ]; then
  stop_blkgw
  start_blkgw "$T/saved.yaml"
  nbdinfo --map=qemu:dirty-bitmap:c1 --json "$url" >"$T/map.json" || fail "dirty map after restart"
  got=$(jq -c '[.[] | select(.type == 1) | [.offset, .length, .type]]' "$T/map.json")
  [ "$got" = "$want" ] || fail "after a restart from the saved manifest, the dirty map is $got"
  # The checkpoint as a read-only file too, for backup tools that read files
  # (docs/transports/fuse.md): a FUSE export of disk@c2 added by apply.
  if [ -c /dev/fuse ]; then
    : >"$T/c2.file"
    sed "/^exports:/a\\  - { image: disk@c2, transports: [fuse], fuse: { path: $T/c2.file } }" \
      "$T/saved.yaml" >"$T/fuse.yaml"
    grep -q "c2.file" "$T/fuse.yaml" || { cat "$T/saved.yaml"; fail "no exports: list in the saved manifest"; }
    "$BLKGW" apply "$T/fuse.yaml" >"$T/apply2.out" 2>&1 ||
      { cat "$T/apply2.out"; fail "apply a FUSE export of disk@c2"; }
    cmp "$T/c2.file" "$T/c2.raw" || fail "the FUSE file of disk@c2 is not the disk as it was at c2"
    dd if=/dev/zero of="$T/c2.file" bs=4k count=1 conv=notrunc 2>"$T/dd.err" &&
      fail "the FUSE file of a checkpoint took a write"
    grep -q "Read-only file system" "$T/dd.err" || { cat "$T/dd.err"; fail "a write to the checkpoint's file: not EROFS"; }
    cmp "$T/c2.file" "$T/c2.raw" || fail "the FUSE file of disk@c2 changed after a refused write"
    "$BLKGW" apply "$T/saved.yaml" >"$T/apply3.out" 2>&1 ||
      { cat "$T/apply3.out"; fail "apply without the FUSE export"; }
  else
    echo "SKIP: no /dev/fuse: the checkpoint as a FUSE file is not tested" >&2
  fi
  "$BLKGW" backup stop disk@c2 || fail "backup stop disk@c2"
else
  # A copy-before-write view lives as long as the daemon: a restart cannot bring
  # it back, and says so rather than serve the live disk as the past.
  # kill -9 while the view is open: its aside file is left, and the next start removes it.
  [ -f "$run/cbt/disk/cbw.c2" ] || fail "no aside file for c2's view"
  kill -KILL "$BLKGW_PID"; wait "$BLKGW_PID" 2>/dev/null || true; BLKGW_PID=
  start_blkgw "$T/saved.yaml"
  grep -q "image disk@c2: its copy-before-write view ended with the daemon that kept it; not served" \
    "$T/blkgw.log" || fail "serve of a saved manifest with a lost view: no warning"
  "$BLKGW" status --json | jq -e '[.exports[].id] == ["disk"]' >/dev/null ||
    fail "a lost copy-before-write view was served, or the disk was not"
  [ ! -e "$run/cbt/disk/cbw.c2" ] || fail "a dead daemon's aside file was not removed"
fi
io -c 'write -z 40M 64k'  # undo the write after c2 (zeros before): live equals c2 again
qemu-img compare -q -f qcow2 -F raw "$T/inc.qcow2" "$live" ||
  fail "full + increment is not the live disk once writes stop"

# Without a view: refused, with the way out named; --inconsistent reads the live disk.
"$BLKGW" checkpoint create disk c3 --no-snapshot || fail "checkpoint create --no-snapshot"
"$BLKGW" backup start disk c3 --socket "$T/b3.sock" 2>"$T/err" &&
  fail "a backup of a live disk without a view was accepted"
grep -q "no point-in-time view.*--inconsistent" "$T/err" || fail "refusal: $(cat "$T/err")"
url=$("$BLKGW" backup start disk c3 --inconsistent --socket "$T/b3.sock") ||
  fail "backup start --inconsistent"
qemu-img compare -q -f raw -F raw "$url" "$live" || fail "the --inconsistent view is not the live disk"
"$BLKGW" backup stop disk@c3 || fail "backup stop disk@c3"

# A rate cap holds a backup's reads back: 16 reads of 1M at --rate 8M take
# 15/8 s at least (load only makes them slower; without the cap they take a
# few ms); save-manifest keeps it; a rate of 0 is refused with the reason.
"$BLKGW" backup start disk c3 --inconsistent --rate 0 2>"$T/err" && fail "--rate 0 was accepted"
grep -q "such as 200M" "$T/err" || fail "--rate 0: $(cat "$T/err")"
url=$("$BLKGW" backup start disk c3 --inconsistent --rate 8M --socket "$T/b3.sock") ||
  fail "backup start --rate 8M"
"$BLKGW" save-manifest | grep -q "disk@c3.*rate: 8388608" || fail "save-manifest lost the rate"
set --
for i in $(seq 48 63); do set -- "$@" -c "read ${i}M 1M"; done
t0=$(date +%s%N)
qemu-io -f raw -r "$@" "$url" >"$T/out" 2>&1 || { cat "$T/out"; fail "reads of the capped backup"; }
ms=$((($(date +%s%N) - t0) / 1000000))
echo "16 MiB read at --rate 8M in $ms ms"
[ "$ms" -ge 1800 ] || fail "16 MiB read in $ms ms: the 8M/s cap did not hold the reads back"
"$BLKGW" backup stop disk@c3 || fail "backup stop disk@c3 (rate)"

# fio --verify goes on writing to the live disk through a whole backup, without
# an error; the backup is the disk as it was at its checkpoint.
cp "$mnt/disk.img" "$T/c4.raw"
url=$("$BLKGW" backup start disk c4) || fail "backup start disk c4"
[ "$url" = "nbd+unix:///disk%40c4?socket=$run/backup.sock" ] || fail "default backup socket: $url"
fio_loop_start --name=live --ioengine=nbd --uri="$live" --rw=randwrite --bs=4k --iodepth=16 \
  --offset=32M --size=16M --verify=crc32c --verify_fatal=1 --randrepeat=0
i=0; while cmp -s "$mnt/disk.img" "$T/c4.raw"; do
  i=$((i + 1)); [ $i -lt 300 ] || fail "fio did not write to the live disk"; sleep 0.1; done
qemu-img convert -f raw -O raw "$url" "$T/c4-backup.raw" || fail "qemu-img convert of disk@c4"
fio_loop_alive || { cat "$T/fio.runs" "$T/fio.err"; fail "fio stopped during the backup"; }
fio_loop_stop "fio --verify on the live disk failed during the backup"
echo "fio --verify: $FIO_RUNS runs on the live disk through the backup of c4"
qemu-img compare -q -f raw -F raw "$T/c4-backup.raw" "$T/c4.raw" ||
  fail "the backup read while fio wrote is not the disk as it was at c4"
cmp -s "$mnt/disk.img" "$T/c4.raw" && fail "the live disk did not change: the test proved nothing"
"$BLKGW" backup stop disk@c4 || fail "backup stop disk@c4"

# A backup whose export cannot start takes back the checkpoint it made.
"$BLKGW" backup start disk c9 --socket "$T/$(printf "%0120d" 0).sock" >"$T/out" 2>&1 &&
  { cat "$T/out"; fail "a backup on an impossible socket started"; }
"$BLKGW" checkpoint list disk --json | jq -e '[.checkpoints[].name] | index("c9") == null' \
  >/dev/null || fail "the checkpoint of a backup that did not start stayed"
[ ! -e "$run/cbt/disk/snap.c9" ] && [ ! -e "$run/cbt/disk/cbw.c9" ] ||
  fail "the view of a backup that did not start stayed"

# Deleting a checkpoint drops its view.
"$BLKGW" checkpoint delete disk c1 || fail "checkpoint delete c1"
if [ "$mode" = reflink ]; then
  [ ! -e "$run/cbt/disk/snap.c1" ] || fail "the view of a deleted checkpoint stayed"
  [ -e "$run/cbt/disk/snap.c2" ] || fail "the view of c2 went with c1"
else
  url=$("$BLKGW" backup start disk c5 --socket "$T/b5.sock") || fail "backup start disk c5"
  io -c 'write -P 3 0 64k'
  [ -f "$run/cbt/disk/cbw.c5" ] || fail "no aside file for c5"
  "$BLKGW" checkpoint delete disk c5 || fail "checkpoint delete c5 (its backup running)"
  [ ! -e "$run/cbt/disk/cbw.c5" ] || fail "deleting c5 left its aside file"
  qemu-img convert -f raw -O raw "$url" "$T/x.raw" 2>/dev/null &&
    fail "the view of a deleted checkpoint still reads"
  "$BLKGW" backup stop disk@c5 || fail "backup stop disk@c5"
fi
stop_blkgw
echo "PASS: backup exports ($mode views)"
