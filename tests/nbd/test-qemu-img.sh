#!/bin/sh
# qemu-img convert a 64 MiB random raw image into exports (file and memory)
# and back out: cmp equal, and qemu-img compare against the backing file.
. "$(dirname "$0")/../lib.sh"
requires qemu-img

run=$T/run
port=$(free_port)
head -c 64M /dev/urandom >"$T/src.raw"
truncate -s 64M "$T/backing.raw"
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  file: { backend: file, path: $T/backing.raw }
  mem: { backend: memory, size: 64M }
exports:
  - { image: file, transports: [nbd], nbd: { socket: $run/file.sock } }
  - { image: mem, transports: [nbd], nbd: { listen: "127.0.0.1:$port" } }
YAML
start_blkgw "$T/m.yaml"

for exp in file mem; do
  u="nbd+unix:///$exp?socket=$run/$exp.sock"
  [ $exp = mem ] && u="nbd://127.0.0.1:$port/mem"   # TCP
  qemu-img convert -n -f raw -O raw "$T/src.raw" "$u" || fail "convert into $exp failed"
  qemu-img compare -f raw -F raw "$T/src.raw" "$u" || fail "compare $exp with the source failed"
  qemu-img convert -f raw -O raw "$u" "$T/out-$exp.raw" || fail "convert out of $exp failed"
  cmp "$T/src.raw" "$T/out-$exp.raw" || fail "$exp round trip differs"
  qemu-img info "$u" | grep -q "virtual size: 64 MiB" || fail "qemu-img info $exp: wrong size"
done
# What went through the file export is in the backing file itself.
qemu-img compare -f raw -F raw "$T/backing.raw" "nbd+unix:///file?socket=$run/file.sock" || fail "backing file differs from the export"
cmp "$T/src.raw" "$T/backing.raw" || fail "backing file does not hold the converted image"
stop_blkgw
cmp "$T/src.raw" "$T/backing.raw" || fail "backing file changed after shutdown"
echo "qemu-img round trips are exact"
