#!/bin/sh
# The rbd backend against a real throwaway Ceph cluster (one mon, one memstore
# OSD, started once here and shared by every check), with real NBD clients:
#   - qemu-img convert a random image in and out; qemu-img compare against
#     rbd:rbd/img read by QEMU's own rbd driver; nbdcopy out; cmp
#   - nbdinfo --map reports the written objects as data, the rest as holes;
#     so do lseek SEEK_DATA/SEEK_HOLE and stat's block count on a FUSE file
#     of the same image (the map asked of the cluster without blocking)
#   - fio verify (nbd engine) at QD32 from 2 jobs
#   - write-zeroes and trim through qemu-io read back as zeros
#   - exclusive lock: a second blkgw on the same image, and an image locked
#     with `rbd lock add`, are refused with a message naming the holder
#   - a snapshot export is read-only and serves the snapshot's data; without
#     read-only: true the manifest is refused
#   - plain messages for no such pool, no such image, an unreachable cluster
#     (bounded by connect-timeout)
#   - the OSD SIGSTOPped mid-run: I/O stalls, the daemon and another export
#     carry on, and after SIGCONT the stalled I/O completes correctly
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/cluster.sh"
cd "$T"
requires qemu-img qemu-io nbdinfo nbdcopy fio jq

t0=$(date +%s)
ceph_start
rbd_t create --size 64M rbd/img || fail "rbd create img"
rbd_t create --size 64M rbd/sparse || fail "rbd create sparse"
rbd_t create --size 16M rbd/locked || fail "rbd create locked"
rbd_t create --size 16M rbd/timed || fail "rbd create timed"
echo "cluster up in $(($(date +%s) - t0)) s"

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  img: { backend: rbd, pool: rbd, image: img, conf: $CEPH_CONF }
  sparse: { backend: rbd, image: sparse, conf: $CEPH_CONF }
  timed: { backend: rbd, image: timed, conf: $CEPH_CONF, io-timeout: 3 }
  mem: { backend: memory, size: 16M }
exports:
  - { image: img, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: sparse, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: timed, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
fuse=0
if [ -c /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  fuse=1
  echo "  - { image: sparse, read-only: true, transports: [fuse], fuse: { path: $T/sparse.file } }" >>"$T/m.yaml"
  on_exit "umount -l $T/sparse.file 2>/dev/null"
fi
"$BLKGW" check "$T/m.yaml" >"$T/check.out" 2>&1 || { cat "$T/check.out"; fail "check refused a good rbd manifest"; }
start_blkgw "$T/m.yaml"
uri() { echo "nbd+unix:///$1?socket=$run/nbd.sock"; }
"$BLKGW" status | grep -q "rbd rbd/img (exclusive lock)" || { "$BLKGW" status; fail "status does not describe the rbd image"; }

# Round trips through qemu-img and nbdcopy; QEMU's own rbd driver agrees.
head -c 64M /dev/urandom >"$T/src.raw"
qemu-img convert -n -f raw -O raw "$T/src.raw" "$(uri img)" || fail "qemu-img convert into rbd failed"
qemu-img compare -f raw -F raw "$T/src.raw" "$(uri img)" || fail "compare over NBD failed"
qemu-img compare -f raw -F raw "$T/src.raw" "rbd:rbd/img:conf=$CEPH_CONF" || fail "QEMU's rbd driver reads something else"
nbdcopy "$(uri img)" "$T/out.raw" || fail "nbdcopy out failed"
cmp "$T/src.raw" "$T/out.raw" || fail "nbdcopy round trip differs"
qemu-img info "$(uri img)" | grep -q "virtual size: 64 MiB" || fail "wrong size over NBD"

# Extents: rbd objects are 4 MiB; written objects are data, the rest holes.
qemu-io -f raw -c 'write -P 0x11 8M 1M' -c 'write -P 0x22 33M 4K' "$(uri sparse)" >/dev/null || fail "qemu-io write failed"
nbdinfo --map "$(uri sparse)" | awk '{print $1, $2, $4}' >"$T/map"
cat >"$T/map.expect" <<MAP
0 8388608 hole,zero
8388608 4194304 data
12582912 20971520 hole,zero
33554432 4194304 data
37748736 29360128 hole,zero
MAP
diff -u "$T/map.expect" "$T/map" || fail "nbdinfo --map differs from what was written"
if [ $fuse = 1 ]; then
  /usr/bin/python3 - "$T/sparse.file" <<'PY' || fail "the FUSE file's holes differ from the rbd map"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
M = 1 << 20
got = [os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 8 * M, os.SEEK_HOLE),
       os.lseek(fd, 12 * M, os.SEEK_DATA), os.lseek(fd, 32 * M, os.SEEK_HOLE),
       os.lseek(fd, 40 * M, os.SEEK_HOLE)]
want = [8 * M, 12 * M, 32 * M, 36 * M, 40 * M]
assert got == want, (got, want)
try:
    os.lseek(fd, 40 * M, os.SEEK_DATA)
    raise SystemExit("SEEK_DATA past the last object found data")
except OSError as e:
    assert e.errno == 6, e  # ENXIO
blocks = os.stat(sys.argv[1]).st_blocks
assert blocks * 512 == 8 * M, blocks
print("fuse over rbd: SEEK_DATA/SEEK_HOLE and st_blocks match the objects written")
PY
else
  echo "SKIP: FUSE over rbd (needs /dev/fuse and root)"
fi
qemu-io -f raw -c 'read -P 0x11 8M 1M' -c 'read -P 0 9M 1M' -c 'read -P 0x22 33M 4K' "$(uri sparse)" |
  grep -q "Pattern verification failed" && fail "sparse image reads back wrong"

# Write-zeroes (without, then with unmap) read back as zeros; trim (a hint:
# librbd skips partial-object discards) succeeds.
qemu-io -f raw -c 'write -z 8M 64K' -c 'read -P 0 8M 64K' -c 'write -z -u 8388608 1M' -c 'discard 33M 4K' \
  -c 'read -P 0 8M 1M' "$(uri sparse)" >"$T/zero.out" 2>&1 || { cat "$T/zero.out"; fail "qemu-io zero/discard failed"; }
grep -q "Pattern verification failed" "$T/zero.out" && { cat "$T/zero.out"; fail "zeroed ranges do not read as zeros"; }

# fio's nbd engine, verify, 2 jobs at QD32 on 16 MiB each.
fio --name=rbd --ioengine=nbd --uri="$(uri img)" --rw=randwrite --bs=4k --size=16M \
  --offset_increment=16M --numjobs=2 --iodepth=32 --verify=crc32c --do_verify=1 --verify_fatal=1 \
  --randrepeat=0 --group_reporting --output-format=json --output="$T/fio.json" >"$T/fio.err" 2>&1 ||
  { cat "$T/fio.err"; fail "fio verify over the rbd export failed"; }
jq -e '.jobs[0].error == 0 and .jobs[0].write.io_bytes == 33554432 and .jobs[0].read.io_bytes == 33554432' "$T/fio.json" >/dev/null ||
  fail "fio did not write and verify 32 MiB"

# Exclusive lock: a second blkgw on the same image is refused, naming the owner.
cat >"$T/m2.yaml" <<YAML
version: 1
gateway: { run-dir: $T/run2 }
images:
  img: { backend: rbd, image: img, conf: $CEPH_CONF }
exports:
  - { image: img, transports: [nbd], nbd: { socket: $T/run2/nbd.sock } }
YAML
timeout 120 "$BLKGW" serve "$T/m2.yaml" >"$T/second.out" 2>&1 && fail "a second blkgw served a locked image"
grep -q "cannot take the exclusive lock: held by another client client\.[0-9]" "$T/second.out" ||
  { cat "$T/second.out"; fail "the second blkgw did not name the lock's owner"; }
# A read-only export of the same image takes no lock: it starts beside the
# writer and reads what the writer wrote.
sed -i "s/nbd: { socket/read-only: true, nbd: { socket/" "$T/m2.yaml"
"$BLKGW" serve "$T/m2.yaml" 2>"$T/ro.log" &
ro_pid=$!
on_exit "kill -KILL $ro_pid 2>/dev/null"
i=0
while ! "$BLKGW" status --control "$T/run2/control.sock" >/dev/null 2>&1; do
  kill -0 $ro_pid 2>/dev/null || { cat "$T/ro.log"; fail "a read-only export of a locked image did not start"; }
  i=$((i + 1)); [ $i -lt 300 ] || fail "read-only blkgw did not start"; sleep 0.1
done
"$BLKGW" status --control "$T/run2/control.sock" | grep -q "rbd rbd/img (read-only)" || fail "read-only export not described as such"
qemu-img compare -f raw -F raw "$(uri img)" "nbd+unix:///img?socket=$T/run2/nbd.sock" || fail "read-only export reads something else"
kill -TERM $ro_pid; wait $ro_pid || fail "read-only blkgw did not stop cleanly"
# ... and an `rbd lock add` holder is named too, by check and by serve.
rbd_t lock add rbd/locked mycookie || fail "rbd lock add"
sed "s/image: img,/image: locked,/" "$T/m2.yaml" >"$T/m3.yaml"
timeout 120 "$BLKGW" check "$T/m3.yaml" >"$T/locked.out" 2>&1 && fail "check accepted an image locked with rbd lock"
grep -q "locked by client\.[0-9]* at .* (rbd lock 'mycookie')" "$T/locked.out" || { cat "$T/locked.out"; fail "check did not name the rbd lock"; }

# A snapshot: read-only, its own data, and writes refused.
rbd_t snap create rbd/img@s1 || fail "rbd snap create"
cat >"$T/snap.yaml" <<YAML
version: 1
gateway: { run-dir: $T/run3 }
images:
  snap: { backend: rbd, image: img, snapshot: s1, conf: $CEPH_CONF }
exports:
  - { image: snap, transports: [nbd], nbd: { socket: $T/run3/nbd.sock } }
YAML
timeout 120 "$BLKGW" check "$T/snap.yaml" >"$T/snap.out" 2>&1 && fail "a snapshot export without read-only: true was accepted"
grep -q "read-only" "$T/snap.out" || { cat "$T/snap.out"; fail "no hint to set read-only"; }
qemu-img convert -f raw -O raw "$(uri img)" "$T/at-snap.raw" || fail "reading img before the snapshot export"
sed -i "s/nbd: { socket/read-only: true, nbd: { socket/" "$T/snap.yaml"
"$BLKGW" serve "$T/snap.yaml" 2>"$T/snap.log" &
snap_pid=$!
on_exit "kill -KILL $snap_pid 2>/dev/null"
i=0
while ! "$BLKGW" status --control "$T/run3/control.sock" >/dev/null 2>&1; do
  kill -0 $snap_pid 2>/dev/null || { cat "$T/snap.log"; fail "snapshot blkgw exited"; }
  i=$((i + 1)); [ $i -lt 300 ] || fail "snapshot blkgw did not start"; sleep 0.1
done
su="nbd+unix:///snap?socket=$T/run3/nbd.sock"
qemu-img compare -f raw -F raw "$T/at-snap.raw" "$su" || fail "the snapshot export differs from the image at snapshot time"
qemu-io -f raw -c 'write -P 0x33 0 4K' "$(uri img)" >/dev/null || fail "write after snapshot"
qemu-img compare -f raw -F raw "$T/at-snap.raw" "$su" || fail "the snapshot changed with the image"
qemu-io -f raw -c 'write -P 0x44 0 4K' "$su" >"$T/snapw.out" 2>&1 || true
grep -q "Operation not permitted\|read-only\|Permission denied" "$T/snapw.out" || { cat "$T/snapw.out"; fail "a write to the snapshot export was not refused"; }
kill -TERM $snap_pid; wait $snap_pid || fail "snapshot blkgw did not stop cleanly"

# Plain messages: no such pool, no such image, unreachable cluster.
bad() { # name yaml-image-line expected-regex
  cat >"$T/bad.yaml" <<YAML
version: 1
gateway: { run-dir: $T/run4 }
images:
  x: $2
exports:
  - { image: x, transports: [nbd], nbd: { socket: $T/run4/nbd.sock } }
YAML
  s=$(date +%s)
  timeout 120 "$BLKGW" check "$T/bad.yaml" >"$T/bad.out" 2>&1 && fail "check accepted $1"
  grep -q "$3" "$T/bad.out" || { cat "$T/bad.out"; fail "$1: message does not say '$3'"; }
  echo "$1: $(grep -o "$3.*" "$T/bad.out" | head -1) ($(($(date +%s) - s)) s)"
}
bad "no such pool" "{ backend: rbd, pool: nopool, image: img, conf: $CEPH_CONF }" "no such pool"
bad "no such image" "{ backend: rbd, image: nothere, conf: $CEPH_CONF }" "no such image"
dead=$(free_port)
sed "s/^mon host = .*/mon host = 127.0.0.1:$dead/" "$CEPH_CONF" >"$T/dead.conf"
bad "unreachable cluster" "{ backend: rbd, image: img, conf: $T/dead.conf, connect-timeout: 3 }" "did not answer"

stall_diagnostics() {
  echo "--- qemu-io (the stalled writer):"; cat "$T/stalled.out"
  echo "--- ceph -s:"; timeout 20 ceph -s 2>&1
  for q in dump_ops_in_flight dump_blocked_ops; do
    echo "--- osd.0 $q:"; timeout 20 ceph --admin-daemon "$T/ceph/run/osd.0.asok" $q 2>&1 | head -60
  done
  echo "--- osd.0 log (tail):"; tail -40 "$T/ceph/log/osd.0.log" 2>&1
  echo "--- blkgw status:"; timeout 20 "$BLKGW" status --json 2>&1 | head -80
  echo "--- blkgw threads:"
  timeout 60 gdb -p "$BLKGW_PID" -batch -ex 'thread apply all bt' 2>/dev/null | grep -E '^(Thread|#)' | head -200
}

# The OSD stopped mid-run: writes stall, the daemon and other exports carry
# on; after SIGCONT they complete and the data is right.
head -c 4M /dev/urandom >"$T/late.raw"
kill -STOP "$CEPH_OSD_PID"
qemu-io -f raw -c 'write -P 0x55 20M 4M' "$(uri img)" >"$T/stalled.out" 2>&1 &
writer=$!
sleep 3
kill -0 $writer 2>/dev/null || { cat "$T/stalled.out"; fail "a write completed while the only OSD was stopped"; }
"$BLKGW" status >/dev/null || fail "the control socket stopped answering while the OSD was stopped"
qemu-io -f raw -c 'write -P 0x66 0 1M' -c 'read -P 0x66 0 1M' "$(uri mem)" | grep -q "Pattern verification failed" &&
  fail "the memory export misbehaved while the OSD was stopped"
# With io-timeout: 3 the request fails instead (bounded by 60 s here).
s=$(date +%s)
timeout 60 qemu-io -f raw -c 'write -P 0x77 0 64K' "$(uri timed)" >"$T/timed.out" 2>&1 || true
grep -q "write failed" "$T/timed.out" || { cat "$T/timed.out"; fail "io-timeout: the write did not fail while the only OSD was stopped"; }
echo "io-timeout 3 s: the write failed after $(($(date +%s) - s)) s: $(grep "write failed" "$T/timed.out" | head -1)"
kill -CONT "$CEPH_OSD_PID"
s=$(date +%s)
# Bounded: a write still stalled 180 s after SIGCONT is a failure, reported
# with what the cluster, the OSD and the daemon were doing.
i=0
while kill -0 $writer 2>/dev/null; do
  i=$((i + 1))
  if [ $i -gt 180 ]; then
    stall_diagnostics
    kill $writer 2>/dev/null
    fail "the stalled write had not completed 180 s after the OSD came back"
  fi
  sleep 1
done
wait $writer || { cat "$T/stalled.out"; fail "the stalled write failed after the OSD came back"; }
echo "stalled write completed $(($(date +%s) - s)) s after SIGCONT"
qemu-io -f raw -c 'read -P 0x55 20M 4M' "$(uri img)" | grep -q "Pattern verification failed" && fail "stalled write not on the image"
qemu-img compare -f raw -F raw "$(uri img)" "rbd:rbd/img:conf=$CEPH_CONF" || fail "after the stall QEMU's rbd driver reads something else"
qemu-io -f raw -c 'write -P 0x78 0 64K' -c 'read -P 0x78 0 64K' "$(uri timed)" >"$T/timed2.out" 2>&1 || { cat "$T/timed2.out"; fail "the timed-out image does not work again"; }
grep -q "Pattern verification failed" "$T/timed2.out" && fail "the timed-out image reads back wrong"

"$BLKGW" status --json | jq -e '[.exports[] | select(.id != "timed") | .counters.errors] | add == 0' >/dev/null || fail "the server counted errors"
stop_blkgw

# 20 rbd exports start together (images open in parallel, one connection).
for i in $(seq 1 20); do rbd_t create --size 4M "rbd/many$i" || fail "rbd create many$i"; done
{
  echo "version: 1"; echo "gateway: { run-dir: $T/run5 }"; echo "images:"
  for i in $(seq 1 20); do echo "  many$i: { backend: rbd, image: many$i, conf: $CEPH_CONF }"; done
  echo "exports:"
  for i in $(seq 1 20); do echo "  - { image: many$i, transports: [nbd], nbd: { socket: $T/run5/nbd.sock } }"; done
} >"$T/many.yaml"
s=$(date +%s.%N)
start_blkgw "$T/many.yaml"
echo "20 rbd exports serving $(echo "$(date +%s.%N) - $s" | bc) s after start"
for i in $(seq 1 20); do
  qemu-io -f raw -c "write -P $i 0 4K" -c "read -P $i 0 4K" "nbd+unix:///many$i?socket=$T/run5/nbd.sock" |
    grep -q "Pattern verification failed" && fail "many$i reads back wrong"
done
stop_blkgw
echo "rbd backend: round trips, map, fio verify, lock, snapshot, messages and stall all hold ($(($(date +%s) - t0)) s)"
