#!/bin/sh
# Backups of an rbd image (docs/backup.md) against a throwaway Ceph cluster:
# a checkpoint's view is the image's own snapshot (blkgw.NAME), the changes
# between two checkpoints come from Ceph's snapshot diff (the cluster is the
# truth: a write from another client, which this host's record never saw,
# is in the increment), and Vitastor's procedure works over NBD: a full
# backup of vm@c1 while the disk is written, an --only-changed increment
# with qemu-img convert -B, the chain equal to the disk at c2. Deleting a
# checkpoint removes its snapshot. qemu-img map (one extent per query) sees
# every written object.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/cluster.sh"
cd "$T"
requires qemu-img qemu-io nbdinfo jq

ceph_start
rbd_t create --size 64M rbd/vm || fail "rbd create vm"
run=$T/run
# exclusive: false lets a second client write the image, as another host would.
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  vm: { backend: rbd, image: vm, conf: $CEPH_CONF, exclusive: false, track-changes: true, change-granularity: 64K }
exports:
  - { image: vm, transports: [nbd], nbd: { socket: $T/vm.sock } }
YAML
live="nbd+unix:///vm?socket=$T/vm.sock"
start_blkgw "$T/m.yaml"
io() { qemu-io -f raw "$@" "$live" >/dev/null || fail "qemu-io $*"; }

io -c 'write -P 1 0 8M' -c 'write -P 9 20M 1M'
# qemu-img asks for one extent at a time (REQ_ONE): the written object at 20M
# must not vanish into the hole before it (it did: the rbd backend's diff walk
# went on past a full extent list and merged the rest into one hole).
qemu-img map --output=json -f raw "$live" >"$T/qmap.json" || fail "qemu-img map of vm"
jq -e '.[] | select(.start <= 20971520 and .start + .length > 20971520) | .data' \
  "$T/qmap.json" >/dev/null || { cat "$T/qmap.json"; fail "qemu-img map hides the data at 20M"; }
qemu-img convert -f raw -O raw "$live" "$T/c1.raw" || fail "reading vm before c1"
"$BLKGW" checkpoint create vm c1 || fail "checkpoint create c1"
rbd_t snap ls rbd/vm | grep -q "blkgw.c1" || fail "no rbd snapshot blkgw.c1"
"$BLKGW" checkpoint list vm --json | jq -e '.checkpoints[0].snapshot == true' >/dev/null ||
  fail "checkpoint c1 shows no view"
url=$("$BLKGW" backup start vm c1 --socket "$T/b1.sock") || fail "backup start vm c1"
io -c 'write -P 2 1M 4k' -c 'write -P 3 2044k 8k' -c 'write -z 8M 128k'
qemu-img convert -f raw -O qcow2 -o cluster_size=4k "$url" "$T/full.qcow2" ||
  fail "qemu-img convert of vm@c1"
qemu-img compare -q -f qcow2 -F raw "$T/full.qcow2" "$T/c1.raw" ||
  fail "the full backup is not the disk as it was at c1"
"$BLKGW" backup stop vm@c1 || fail "backup stop vm@c1"

# Another client writes the image behind this host's back: only Ceph knows.
qemu-io -f raw -c 'write -P 7 40M 64k' "rbd:rbd/vm:conf=$CEPH_CONF" >/dev/null ||
  fail "qemu-io through QEMU's rbd driver"
url=$("$BLKGW" backup start vm c2 --since c1 --only-changed --socket "$T/b2.sock") ||
  fail "backup start vm c2 --since c1 --only-changed"
rbd_t snap ls rbd/vm | grep -q "blkgw.c2" || fail "no rbd snapshot blkgw.c2"
# The disk at c2, as the cluster has it (blkgw's own librbd handle may cache
# around the other client's write: the image is shared without a lock here).
rbd_t export rbd/vm@blkgw.c2 "$T/c2.raw" >/dev/null 2>&1 || fail "rbd export vm@blkgw.c2"
io -c 'write -P 6 50M 64k' # after c2: in neither backup

want='[[1048576,65536,1],[2031616,131072,1],[8388608,131072,1],[41943040,65536,1]]'
nbdinfo --map=qemu:dirty-bitmap:c1 --json "$url" >"$T/map.json" ||
  fail "nbdinfo --map=qemu:dirty-bitmap:c1"
got=$(jq -c '[.[] | select(.type == 1) | [.offset, .length, .type]]' "$T/map.json")
[ "$got" = "$want" ] || { cat "$T/map.json"; fail "qemu:dirty-bitmap:c1 is $got, not $want (Ceph's diff)"; }
# checkpoint changes answers from the cluster too, up to a checkpoint and up to now.
"$BLKGW" checkpoint changes vm c1 c2 >"$T/ch" || fail "checkpoint changes c1 c2"
printf '%s\n' "1048576 65536" "2031616 131072" "8388608 131072" "41943040 65536" >"$T/want"
diff -u "$T/want" "$T/ch" || fail "checkpoint changes c1 c2 is not Ceph's diff"
# Since c2, up to now: the write at 50M, in an object c2 did not have. Ceph
# reports a new object from its start, so the answer may begin at the
# object's 48M; it must cover 50M and stay inside that 4 MiB object.
"$BLKGW" checkpoint changes vm c2 >"$T/ch" || fail "checkpoint changes c2"
awk '$1 <= 52428800 && $1 + $2 >= 52494336 { c = 1 } $1 < 50331648 || $1 + $2 > 54525952 { out = 1 }
  END { exit !(c && !out) }' "$T/ch" || fail "changes since c2 (up to now): $(cat "$T/ch")"

qemu-img convert -f raw -O qcow2 -o cluster_size=4k -B "$T/full.qcow2" -F qcow2 "$url" \
  "$T/inc.qcow2" || fail "qemu-img convert -B of the layer since c1"
qemu-img compare -f qcow2 -F raw "$T/inc.qcow2" "$T/c2.raw" ||
  { qemu-img map --output=json "$T/inc.qcow2" | head -20; nbdinfo --map --json "$url" | head -30; fail "full + increment is not the disk as it was at c2"; }
size=$(qemu-img info --output=json "$T/inc.qcow2" | jq '."actual-size"')
[ "$size" -lt $((4 << 20)) ] || fail "the increment is $size bytes: more than the changes"
"$BLKGW" backup stop vm@c2 || fail "backup stop vm@c2"

"$BLKGW" checkpoint delete vm c1 || fail "checkpoint delete c1"
rbd_t snap ls rbd/vm | grep -q "blkgw.c1" && fail "deleting c1 left its rbd snapshot"
rbd_t snap ls rbd/vm | grep -q "blkgw.c2" || fail "deleting c1 removed c2's snapshot"
stop_blkgw
echo "PASS: rbd backups (snapshot views, Ceph's diff)"
