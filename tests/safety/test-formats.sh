#!/bin/sh
# A container image (qcow2, qcow, vmdk, vhdx, vdi, vpc, qed, LUKS) under
# backend: file is refused by check and by serve, with a message naming the
# format and the fix, and the image is left untouched; format: raw serves it
# as is. Images made by a real qemu-img, as regular files and, through a loop
# device, as a block device.
. "$(dirname "$0")/../lib.sh"
requires qemu-img nbdinfo cryptsetup

run=$T/run
manifest() { # NAME PATH [EXTRA]: one writable NBD export of PATH
  cat >"$T/$1.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  d: { backend: file, path: $2 ${3:-}}
exports:
  - { image: d, transports: [nbd], nbd: { socket: $run/d.sock } }
YAML
}

# refused NAME PATH FORMAT: check and serve exit 1 naming FORMAT and the fix.
refused() {
  name=$1 path=$2 fmt=$3
  manifest "$name" "$path"
  sum=$(sha256sum "$path" | cut -d' ' -f1)
  rc=0; "$BLKGW" check "$T/$name.yaml" >"$T/out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || fail "$name: check exited $rc on a $fmt image: $(cat "$T/out")"
  grep -q "^$T/$name.yaml:4:.*$path is a $fmt image, not a raw disk" "$T/out" ||
    fail "$name: check does not name the format $fmt: $(cat "$T/out")"
  grep -q "qemu-img convert -f $fmt -O raw" "$T/out" && grep -q "'format: raw'" "$T/out" ||
    fail "$name: check does not name the fix: $(cat "$T/out")"
  rc=0; "$BLKGW" serve "$T/$name.yaml" >"$T/out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || fail "$name: serve exited $rc on a $fmt image: $(cat "$T/out")"
  grep -q "$path is a $fmt image" "$T/out" || fail "$name: serve does not name the format: $(cat "$T/out")"
  [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$sum" ] || fail "$name: the $fmt image changed"
  echo "ok - $name: $fmt refused by check and serve"
}

for fmt in qcow2 qcow vmdk vhdx vdi vpc qed; do
  qemu-img create -q -f $fmt "$T/img.$fmt" 16M
  refused "$fmt" "$T/img.$fmt" "$fmt"
done
# LUKS 1 and 2 by cryptsetup (qemu-img's own LUKS takes seconds to make).
printf 'secret' >"$T/key"
for v in 1 2; do
  truncate -s 32M "$T/img.luks$v"
  cryptsetup luksFormat -q --type luks$v --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "$T/img.luks$v" "$T/key" ||
    fail "cryptsetup luksFormat"
  refused luks$v "$T/img.luks$v" luks
done
# A fixed VHD: raw data and a footer at the end only.
qemu-img create -q -f vpc -o subformat=fixed "$T/fixed.vpc" 16M
refused vpc-fixed "$T/fixed.vpc" vpc
# A VMDK whose descriptor is a text file beside its extents.
qemu-img create -q -f vmdk -o subformat=monolithicFlat "$T/flat.vmdk" 16M
refused vmdk-text "$T/flat.vmdk" vmdk

# A raw image is served; so is a qcow2 when the manifest says format: raw.
truncate -s 16M "$T/plain.raw"
manifest plain "$T/plain.raw"
"$BLKGW" check "$T/plain.yaml" >"$T/out" 2>&1 || fail "a raw image is refused: $(cat "$T/out")"
manifest forced "$T/img.qcow2" ", format: raw "
"$BLKGW" check "$T/forced.yaml" >"$T/out" 2>&1 || fail "format: raw is refused: $(cat "$T/out")"
start_blkgw "$T/forced.yaml"
nbdinfo --size "nbd+unix:///d?socket=$run/d.sock" >"$T/size" || fail "nbdinfo on the forced export"
[ "$(cat "$T/size")" = "$(stat -c %s "$T/img.qcow2")" ] || fail "the forced export has the wrong size"
stop_blkgw
echo "ok - format: raw serves a qcow2 file as it is"
manifest bad-format "$T/plain.raw" ", format: qcow2 "
rc=0; "$BLKGW" check "$T/bad-format.yaml" >"$T/out" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "format" "$T/out" || fail "format: qcow2 is accepted: $(cat "$T/out")"
echo "ok - format: qcow2 is a manifest error"

# A block device holding a qcow2 image (a loop device over the file).
if [ "$(id -u)" -eq 0 ] && [ -e /dev/loop-control ] && command -v losetup >/dev/null; then
  qemu-img create -q -f qcow2 "$T/dev.qcow2" 16M
  truncate -s 16M "$T/dev.qcow2"
  dev=$(losetup -f --show "$T/dev.qcow2") || fail "losetup"
  on_exit "losetup -d $dev"
  refused blockdev "$dev" qcow2
else
  echo "SKIP (loudly): the block-device case needs root and loop devices" >&2
  exit 77
fi
