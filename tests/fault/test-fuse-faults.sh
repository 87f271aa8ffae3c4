#!/bin/sh
# The fault layer (an image's `fault:` mapping) seen through the FUSE
# export, in one mode: test-fuse-faults.sh read|uring. Injected EIO and
# ENOSPC reach read(2)/write(2) on the mounted files as those errnos, direct
# and buffered, while other ranges keep working, and so does each other
# errno the layer offers; a read held by `delay`
# holds up neither another read of the same file nor another export; the
# errors are counted and the daemon stops cleanly.
. "$(dirname "$0")/../lib.sh"
mode=${1:?read or uring}
[ -c /dev/fuse ] || skip "no /dev/fuse on this host"
[ "$(id -u)" = 0 ] || skip "mounting FUSE needs root"
uring_opt=off
if [ "$mode" = uring ]; then
  p=/sys/module/fuse/parameters/enable_uring
  [ -e $p ] || skip "this kernel ($(uname -r)) has no FUSE over io_uring (6.14+)"
  if [ "$(cat $p)" != Y ]; then
    echo Y >$p 2>/dev/null || skip "FUSE over io_uring is off ($p = N) and cannot be turned on"
    on_exit "echo N > $p"
  fi
  uring_opt=on
fi

run=$T/run
mnt=$T/files
mkdir -p "$run" "$mnt"
# The fault layer's other errnos, each on an image of its own.
others="EPERM EROFS ENOMEM EINVAL ETIMEDOUT EDQUOT"
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  eio: { backend: memory, size: 4M, fault: { errno: EIO, ranges: 1M-2M } }
  nospc: { backend: memory, size: 4M, fault: { errno: ENOSPC, ops: write, ranges: 2M-3M } }
  slow: { backend: memory, size: 4M, fault: { delay: 5s, ops: read, ranges: 0-4K } }
$(for e in $others; do echo "  $e: { backend: memory, size: 1M, fault: { errno: $e, ranges: 64K-128K } }"; done)
exports:
  - { image: eio, transports: [fuse], fuse: { path: $mnt/eio, io-uring: $uring_opt } }
  - { image: nospc, transports: [fuse], fuse: { path: $mnt/nospc, io-uring: $uring_opt } }
  - { image: slow, transports: [fuse], fuse: { path: $mnt/slow, io-uring: $uring_opt } }
$(for e in $others; do echo "  - { image: $e, transports: [fuse], fuse: { path: $mnt/$e, io-uring: $uring_opt } }"; done)
YAML
for f in eio nospc slow $others; do
  on_exit "umount -l $mnt/$f 2>/dev/null"
done
start_blkgw "$T/m.yaml"
py() { MNT=$mnt /usr/bin/python3 "$(dirname "$0")/fuse-faults.py" "$@"; }
py errors || fail "injected errors through FUSE"
py errnos $others || fail "the fault layer's other errnos through FUSE"
py delay || fail "a delayed read held up others"
# What a shell user sees: dd names the error.
if dd if="$mnt/eio" of=/dev/null bs=4k skip=256 count=1 iflag=direct 2>"$T/err"; then
  fail "dd read the faulted range"
fi
grep -q 'Input/output error' "$T/err" || fail "dd in the faulted range: $(cat "$T/err")"
dd if="$mnt/eio" of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null || fail "dd outside the faulted range"
"$BLKGW" status --json >"$T/status.json"
# eio: 3 direct + 2 buffered + 1 again + dd = 7 errors at least (the kernel
# may split or retry a buffered read); nospc: 2.
jq -e '.exports[] | select(.id == "eio") | .counters.errors >= 7' "$T/status.json" >/dev/null ||
  { jq '.exports[] | select(.id == "eio") | .counters' "$T/status.json"; fail "eio: errors not counted"; }
jq -e '.exports[] | select(.id == "nospc") | .counters.errors == 2' "$T/status.json" >/dev/null ||
  { jq '.exports[] | select(.id == "nospc") | .counters' "$T/status.json"; fail "nospc: errors not counted as 2"; }
stop_blkgw
for f in eio nospc slow $others; do
  ! grep -qF " $mnt/$f " /proc/self/mounts || fail "$mnt/$f still mounted after SIGTERM"
done
echo "PASS fault.fuse ($mode)"
