#!/bin/sh
# blkgw takes QEMU's image locks: QEMU (qemu-io, qemu-nbd, a qemu-system-x86_64
# guest drive) refuses an image blkgw serves writable, blkgw refuses one a QEMU
# holds for writing, readers that share coexist, and 'locking: off' opts out.
. "$(dirname "$0")/../lib.sh"
requires qemu-io qemu-nbd qemu-system-x86_64 nbdinfo

run=$T/run
img=$T/d.raw
truncate -s 64M "$img"
manifest() { # NAME READ-ONLY [EXTRA]
  cat >"$T/$1.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  d: { backend: file, path: $img ${3:-}}
exports:
  - { image: d, transports: [nbd], read-only: $2, nbd: { socket: $run/d.sock } }
YAML
}
manifest rw false
manifest ro true
manifest nolock false ", locking: off "

# expect_qemu_io NAME RC ARGS...: qemu-io exits RC (0 or 1) on the image.
expect_qemu_io() {
  name=$1 want=$2; shift 2
  rc=0; qemu-io -f raw "$@" "$img" >"$T/qio" 2>&1 || rc=$?
  [ $rc -eq "$want" ] || fail "$name: qemu-io $* exited $rc, expected $want: $(cat "$T/qio")"
  [ "$want" -eq 0 ] || grep -q 'Failed to get .* lock' "$T/qio" ||
    fail "$name: qemu-io failed, but not on a lock: $(cat "$T/qio")"
  echo "ok - $name"
}

# check cannot know who will hold the image when serving, and says so; with
# locking off there is nothing to say.
"$BLKGW" check "$T/rw.yaml" >"$T/chk" 2>&1 || fail "check refused the manifest: $(cat "$T/chk")"
grep -q "^not checked: whether another program .* holds image 'd'" "$T/chk" ||
  fail "check does not say it left image locks unchecked: $(cat "$T/chk")"
"$BLKGW" check "$T/nolock.yaml" >"$T/chk" 2>&1 || fail "check refused locking: off: $(cat "$T/chk")"
! grep -q "holds image" "$T/chk" || fail "check mentions locks with locking: off: $(cat "$T/chk")"
echo "ok - check says image locks are not checked"

# blkgw serves it writable: QEMU's writers are refused, its readers are not.
start_blkgw "$T/rw.yaml"
expect_qemu_io "qemu-io cannot write an image blkgw serves writable" 1 -c 'write -P 0xab 0 4k'
expect_qemu_io "qemu-io -r reads it (QEMU's readers share writing)" 0 -r -c 'read 0 4k'
rc=0; timeout 30 qemu-nbd -f raw -k "$T/qnbd.sock" "$img" >"$T/qnbd" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q 'Failed to get .* lock' "$T/qnbd" ||
  fail "qemu-nbd served an image blkgw serves writable (rc $rc): $(cat "$T/qnbd")"
echo "ok - qemu-nbd refuses it too"
sed "s|$run|$T/run2|g" "$T/rw.yaml" >"$T/second.yaml"
rc=0; "$BLKGW" serve "$T/second.yaml" >"$T/out" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "is in use" "$T/out" || fail "a second blkgw served it (rc $rc): $(cat "$T/out")"
echo "ok - a second blkgw refuses it"
stop_blkgw
[ "$(od -An -tx1 -N1 "$img" | tr -d ' ')" = 00 ] || fail "the refused writer changed the image"

# blkgw serves it read-only: nobody may write under it, readers coexist.
start_blkgw "$T/ro.yaml"
expect_qemu_io "qemu-io cannot write an image blkgw exports read-only" 1 -c 'write 0 4k'
expect_qemu_io "qemu-io -r reads beside a read-only blkgw" 0 -r -c 'read 0 4k'
stop_blkgw

# A QEMU guest holds the drive writable: blkgw refuses it, read-only too.
qemu() { # OPTS LOCKED: a stopped (-S) TCG machine holding the image as a drive
  opts=$1 locked=$2
  qemu-system-x86_64 -machine accel=tcg -S -display none -nodefaults -monitor none \
    -drive "file=$img,format=raw,if=virtio$opts" >"$T/qemu.log" 2>&1 &
  QEMU_PID=$!
  on_exit "kill $QEMU_PID 2>/dev/null"
  # Wait until it holds the image as it will (it takes its locks in steps):
  # LOCKED are the byte ranges /proc/locks then shows, "100 101 201 201".
  ino=$(stat -c %i "$img") i=0
  until held "$ino" $locked; do
    kill -0 $QEMU_PID 2>/dev/null || fail "qemu-system-x86_64 exited: $(cat "$T/qemu.log")"
    i=$((i + 1)); [ $i -lt 600 ] || fail "qemu-system-x86_64 did not open the image within 60 s"
    sleep 0.1
  done
}
held() { # INO FIRST LAST [FIRST LAST...]: every range is locked
  ino=$1; shift
  while [ $# -ge 2 ]; do
    grep -q "OFDLCK.*:$ino $1 $2\$" /proc/locks || return 1
    shift 2
  done
}
unqemu() { kill $QEMU_PID; wait $QEMU_PID 2>/dev/null || true; }
refused() { # NAME MANIFEST PATTERN
  rc=0; timeout 60 "$BLKGW" serve "$2" >"$T/out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || fail "$1: serve exited $rc: $(cat "$T/out")"
  grep -q "^$2:4:3: image 'd': $img is in use: $3" "$T/out" || fail "$1: $(cat "$T/out")"
  echo "ok - $1"
}
qemu "" "100 101 201 201"
refused "blkgw refuses an image a QEMU guest writes" "$T/rw.yaml" \
  "another process holds it.*'write' permission"
refused "blkgw read-only refuses it too (it would read under a writer)" "$T/ro.yaml" \
  "another process holds it with 'write' permission"
start_blkgw "$T/nolock.yaml"
echo "ok - locking: off serves it anyway"
stop_blkgw
unqemu

# A QEMU guest holds the drive read-only: blkgw reads beside it, cannot write.
qemu ",readonly=on" "100 100 201 201"
refused "blkgw refuses to write an image a QEMU guest reads" "$T/rw.yaml" \
  "another process holds it and does not let others have 'write' permission"
start_blkgw "$T/ro.yaml"
nbdinfo --size "nbd+unix:///d?socket=$run/d.sock" >/dev/null || fail "nbdinfo on the read-only export"
echo "ok - blkgw read-only serves beside a read-only QEMU guest"
stop_blkgw
unqemu
