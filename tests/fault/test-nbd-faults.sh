#!/bin/sh
# The fault layer (an image's `fault:` mapping) seen by NBD clients: each
# injected errno reaches the client and the export keeps serving; a delayed
# read holds up neither its connection's other requests nor other exports;
# a file image on a full filesystem answers writes with ENOSPC, keeps
# reading, and writes again once space is freed.
. "$(dirname "$0")/../lib.sh"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
[ "$(id -u)" -eq 0 ] || skip "mounting a small tmpfs for the disk-full case needs root"
py() { SOCK=$run/nbd.sock FAILED_AT=$T/failed /usr/bin/python3 "$(dirname "$0")/faults.py" "$@"; }

run=$T/run
mnt=$T/small
mkdir -p "$mnt"
mount -t tmpfs -o size=6m blkgw-test "$mnt" || skip "cannot mount a tmpfs here"
on_exit "umount -l $mnt"
# 2 MiB that the test deletes to free space again.
dd if=/dev/zero of="$mnt/filler" bs=1M count=2 status=none
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  werr: { backend: memory, size: 4M, fault: { errno: EIO, ops: write, ranges: 1M-2M } }
  rerr: { backend: memory, size: 4M, fault: { errno: ENOSPC, ops: read, every: 2, after: 1 } }
  eperm: { backend: memory, size: 4M, fault: { errno: EPERM } }
  slow: { backend: memory, size: 4M, fault: { delay: 5s, ops: read, ranges: 0-4K } }
  full: { backend: file, path: $mnt/full.raw, size: 16M }
exports:
  - { image: werr, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: rerr, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: eperm, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: slow, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: full, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
py errors || fail "injected errors"
py delay || fail "a delayed request held up others"
py fill || fail "disk full"
rm "$mnt/filler"
py refill || fail "writes after space was freed"
# Every injected error was counted on its export; the daemon still answers.
"$BLKGW" status --json >"$T/status.json"
jq -e '.exports[] | select(.id == "rerr") | .counters.errors == 3' "$T/status.json" >/dev/null ||
  fail "rerr: errors not counted as 3"
jq -e '.exports[] | select(.id == "werr") | .counters.errors == 2' "$T/status.json" >/dev/null ||
  fail "werr: errors not counted as 2"
stop_blkgw

# A stop does not wait out a delay: a read held for an hour is let go at
# SIGTERM (failed with the layer's errno, here EIO), and blkgw exits.
cat >"$T/hold.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  held: { backend: memory, size: 4M, fault: { delay: 3600s, errno: EIO, ops: read } }
exports:
  - { image: held, transports: [nbd], nbd: { socket: $run/held.sock } }
YAML
start_blkgw "$T/hold.yaml"
qemu-io -f raw -c 'read 0 4k' "nbd+unix:///held?socket=$run/held.sock" >"$T/held.out" 2>&1 &
qpid=$!
i=0
until "$BLKGW" status | grep -q "1 hit"; do
  i=$((i + 1)); [ $i -lt 300 ] || fail "the read never reached the fault layer"; sleep 0.1
done
stop_blkgw # at most 30 s, or it fails
wait $qpid || true
grep -q "Input/output error" "$T/held.out" || fail "the held read did not fail with EIO: $(cat "$T/held.out")"
echo "a read held for an hour was let go at SIGTERM (EIO); blkgw exited"

