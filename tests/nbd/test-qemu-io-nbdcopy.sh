#!/bin/sh
# qemu-io: aio reads/writes, write -z (with and without unmap), discard,
# flush; nbdcopy both ways. Checked against the backing file.
. "$(dirname "$0")/../lib.sh"
requires qemu-io nbdcopy nbdinfo

run=$T/run
truncate -s 128M "$T/disk.raw"
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  disk: { backend: file, path: $T/disk.raw }
  mem: { backend: memory, size: 128M }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
u="nbd+unix:///disk?socket=$run/nbd.sock"

qemu-io -f raw \
  -c 'aio_write -P 0xa1 0 1M' -c 'aio_write -P 0xa2 1M 1M' -c 'aio_write -P 0xa3 8M 64k' -c 'aio_flush' \
  -c 'aio_read -P 0xa1 0 1M' -c 'aio_read -P 0xa2 1M 1M' -c 'aio_read -P 0xa3 8M 64k' -c 'aio_flush' \
  -c 'write -P 0xff 16M 2M' -c 'write -z 16M 1M' -c 'write -z -u 17M 1M' \
  -c 'read -P 0 16M 2M' \
  -c 'write -P 0xee 32M 4M' -c 'discard 32M 4M' -c 'read -P 0 32M 4M' \
  -c 'write -P 0x5a 100M 512' -c 'read -P 0x5a 100M 512' -c 'flush' \
  "$u" >"$T/qemu-io.out" 2>&1 || { cat "$T/qemu-io.out"; fail "qemu-io failed"; }
if grep -qiE "pattern verification failed|error|failed" "$T/qemu-io.out"; then
  cat "$T/qemu-io.out"; fail "qemu-io reported a problem"
fi

# A write larger than the per-client buffer cap (client-buffer, 16M) but
# within NBD's 32M request limit completes: its payload is always read.
for x in disk mem; do
  timeout 120 qemu-io -f raw -c 'write -P 0x3c 40M 30M' -c 'read -P 0x3c 40M 30M' \
    "nbd+unix:///$x?socket=$run/nbd.sock" >"$T/big.out" 2>&1 ||
    { cat "$T/big.out"; fail "$x: a 30 MiB write did not complete"; }
  ! grep -qiE "verification failed|error" "$T/big.out" || { cat "$T/big.out"; fail "$x: 30 MiB write"; }
done
qemu-io -f raw -c 'write -P 0 40M 30M' "$u" >/dev/null 2>&1 || fail "could not clear the 30 MiB range"
echo "ok - 30 MiB writes, over the client buffer cap, complete"

# The backing file holds the same bytes.
python3 - "$T/disk.raw" <<'PY' || fail "backing file content is wrong"
import sys
f = open(sys.argv[1], "rb").read()
M = 1 << 20
def want(off, n, b):
    got = f[off:off+n]
    if got != bytes([b]) * n:
        sys.exit("at %d+%d: expected 0x%02x" % (off, n, b))
want(0, M, 0xa1); want(M, M, 0xa2); want(8*M, 65536, 0xa3)
want(16*M, 2*M, 0); want(32*M, 4*M, 0); want(100*M, 512, 0x5a)
PY
# write -z -u and discard may deallocate: the file reports holes there.
nbdinfo --map "$u" | awk '$1 == 17825792 || $1 == 33554432 {print $4}' | grep -q hole || fail "unmapping zero/discard left no hole"

# nbdcopy both ways: export -> file -> other export, all equal.
nbdcopy "$u" "$T/copy.raw" || fail "nbdcopy out failed"
cmp "$T/disk.raw" "$T/copy.raw" || fail "nbdcopy out differs"
nbdcopy "$T/copy.raw" "nbd+unix:///mem?socket=$run/nbd.sock" || fail "nbdcopy in failed"
nbdcopy "nbd+unix:///mem?socket=$run/nbd.sock" "$T/copy2.raw" || fail "nbdcopy out of mem failed"
cmp "$T/disk.raw" "$T/copy2.raw" || fail "nbdcopy via memory differs"
# nbdcopy between two exports (several connections each: CAN_MULTI_CONN).
head -c 128M /dev/urandom >"$T/rand.raw"
nbdcopy --connections=4 "$T/rand.raw" "$u" || fail "nbdcopy 4 connections in failed"
nbdcopy --connections=4 "$u" "nbd+unix:///mem?socket=$run/nbd.sock" || fail "nbdcopy export to export failed"
nbdcopy "nbd+unix:///mem?socket=$run/nbd.sock" "$T/copy3.raw"
cmp "$T/rand.raw" "$T/copy3.raw" || fail "export to export copy differs"
stop_blkgw
cmp "$T/rand.raw" "$T/disk.raw" || fail "backing file does not hold the copy"
echo "qemu-io and nbdcopy agree with the backing file"
