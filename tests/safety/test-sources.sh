#!/bin/sh
# One source, one image: two images of one file (a symlink, ./x beside /abs/x,
# a file still to be created) or of one device (two nodes of one loop device)
# are refused. Sizes: 'size' on a block device must be the device's; a size
# that is not a whole number of sectors is refused for the transports that
# count sectors; a serve that fails removes the sparse file it created.
. "$(dirname "$0")/../lib.sh"
requires python3

run=$T/run
mkdir -p "$T/sub"
# manifest NAME: images (stdin) and one export of the first, 'a'
manifest() {
  { printf 'version: 1\ngateway: { run-dir: %s }\nimages:\n' "$run"; cat
    echo "exports:"
    echo "  - { image: a, transports: [nbd], nbd: { socket: $run/a.sock } }"; } >"$T/$1.yaml"
}
# refused NAME PATTERN: check and serve exit 1, check's line matches PATTERN
refused() {
  rc=0; "$BLKGW" check "$T/$1.yaml" >"$T/out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || fail "$1: check exited $rc: $(cat "$T/out")"
  grep -q "^$T/$1.yaml:$2" "$T/out" || fail "$1: check does not say '$2': $(cat "$T/out")"
  rc=0; "$BLKGW" serve "$T/$1.yaml" >"$T/out" 2>&1 || rc=$?
  [ $rc -eq 1 ] && grep -q "^$T/$1.yaml:$2" "$T/out" || fail "$1: serve (rc $rc): $(cat "$T/out")"
  echo "ok - $1"
}
passes() {
  "$BLKGW" check "$T/$1.yaml" >"$T/out" 2>&1 || fail "$1 is refused: $(cat "$T/out")"
  echo "ok - $1"
}

truncate -s 16M "$T/x.raw" "$T/y.raw"
ln -s x.raw "$T/link.raw"
manifest symlink <<YAML
  a: { backend: file, path: $T/x.raw }
  b: { backend: file, path: $T/link.raw }
YAML
refused symlink "5:3: image 'b' is the same file as image 'a' (line 4): two images of one source"
manifest relative <<YAML
  a: { backend: file, path: x.raw }
  b: { backend: file, path: $T/sub/../x.raw }
YAML
refused relative "5:3: image 'b' is the same file as image 'a' (line 4)"
manifest to-create <<YAML
  a: { backend: file, path: $T/new.raw, size: 1M }
  b: { backend: file, path: ./sub/../new.raw, size: 1M }
YAML
refused to-create "5:3: image 'b' is the same file as image 'a' (line 4)"
[ ! -e "$T/new.raw" ] || fail "a refused manifest created its file"
manifest distinct <<YAML
  a: { backend: file, path: $T/x.raw }
  b: { backend: file, path: $T/y.raw }
  c: { backend: memory, size: 16M }
  d: { backend: memory, size: 16M }
YAML
passes distinct

# Sectors: 1000 bytes over vhost-user-blk would read as 512 (virtio-blk
# counts 512-byte sectors); over NBD they are served whole.
truncate -s 1000 "$T/odd.raw"
cat >"$T/odd.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  a: { backend: file, path: $T/odd.raw }
  m: { backend: memory, size: 1000 }
exports:
  - { image: a, transports: [nbd], nbd: { socket: $run/a.sock } }
  - { image: m, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/m.sock } }
  - { image: a, transports: [nbd, vhost-user-blk], nbd: { socket: $run/a3.sock },
      vhost-user-blk: { socket: $run/a2.sock } }
YAML
refused odd "8:[0-9]*: export 2: vhost-user-blk: image 'm' is 1000 bytes, not a whole number of 512-byte sectors: vhost-user-blk would hide its last 488 bytes; make the image 512 bytes (or 1024)"
grep -q "odd.yaml:9:[0-9]*: export 3: vhost-user-blk: image 'a' is 1000 bytes" "$T/out" ||
  fail "the second problem is not reported: $(cat "$T/out")"
grep -c "not a whole number" "$T/out" | grep -qx 2 || fail "export 1 (nbd) was refused: $(cat "$T/out")"

# A serve that fails (its TCP port is taken) removes the file it created.
port=$(free_port)
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$port)); s.listen(); time.sleep(120)" &
holder=$!
on_exit "kill $holder 2>/dev/null"
cat >"$T/port.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  a: { backend: file, path: $T/created.raw, size: 64M }
exports:
  - { image: a, transports: [nbd], nbd: { listen: "127.0.0.1:$port" } }
YAML
i=0
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 300 ] || fail "the port holder did not listen"; sleep 0.1
done
rc=0; "$BLKGW" serve "$T/port.yaml" >"$T/out" 2>&1 || rc=$?
[ $rc -eq 1 ] || fail "serve on a taken port exited $rc: $(cat "$T/out")"
[ ! -e "$T/created.raw" ] || fail "the failed serve left $T/created.raw behind: $(cat "$T/out")"
echo "ok - a failed serve removes the file it created"
truncate -s 64M "$T/created.raw"
rc=0; "$BLKGW" serve "$T/port.yaml" >"$T/out" 2>&1 || rc=$?
[ $rc -eq 1 ] && [ -e "$T/created.raw" ] || fail "a failed serve removed a file it did not create"
echo "ok - ... and keeps one it did not create"
kill $holder

# Block devices: two nodes of one loop device; 'size' must be the device's.
[ "$(id -u)" -eq 0 ] && [ -e /dev/loop-control ] && command -v losetup >/dev/null ||
  skip "the block-device cases need root and loop devices"
dev=$(losetup -f --show "$T/y.raw") || fail "losetup"
on_exit "losetup -d $dev"
mknod "$T/node" b "$(stat -c '%t' "$dev" | xargs printf '%d')" "$(stat -c '%T' "$dev" | xargs printf '%d')"
manifest two-nodes <<YAML
  a: { backend: file, path: $dev }
  b: { backend: file, path: $T/node }
YAML
refused two-nodes "5:3: image 'b' is the same .* as image 'a' (line 4)"
manifest backing <<YAML
  a: { backend: file, path: $dev }
  b: { backend: file, path: $T/y.raw }
YAML
refused backing "5:3: image 'b' is the same file as image 'a' (line 4)"
manifest other-loop <<YAML
  a: { backend: file, path: $dev }
  b: { backend: file, path: $T/x.raw }
YAML
passes other-loop
manifest devsize <<YAML
  a: { backend: file, path: $dev, size: 32M }
YAML
refused devsize "4:.*$dev is a device of 16 MiB, but 'size' says 32 MiB: a block device's size is its own (remove 'size')"
manifest devsize-ok <<YAML
  a: { backend: file, path: $dev, size: 16M }
YAML
passes devsize-ok
