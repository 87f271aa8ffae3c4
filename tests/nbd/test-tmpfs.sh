#!/bin/sh
# A file image on a memory filesystem (tmpfs) is read, written and flushed
# in the worker's thread (backends/file.c): io_uring would hand each such
# request to one of its io-wq kernel threads, as shmem has no nowait I/O.
# fio's nbd engine with --verify=crc32c on an O_DIRECT and a buffered file
# under /dev/shm; status says how each file is served; and the daemon's
# io-wq threads switched far fewer times than there were requests (each
# request handed to io-wq costs at least one switch of one of them).
. "$(dirname "$0")/../lib.sh"
# fio writes its verify state files into the current folder: keep them in $T.
cd "$T"
requires fio jq
fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*nbd' || skip "this fio has no nbd engine"
[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] || skip "/dev/shm is not a tmpfs on this host"
S=$(mktemp -d /dev/shm/blkgw-test.XXXXXX)
on_exit "rm -rf '$S'"

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  direct: { backend: file, path: $S/direct.raw, size: 256M, direct: true }
  buffered: { backend: file, path: $S/buffered.raw, size: 256M }
  disk: { backend: file, path: $T/disk.raw, size: 16M }
exports:
  - { image: direct, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: buffered, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: disk, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"

backend() { "$BLKGW" status --json | jq -r --arg i "$1" '.exports[] | select(.image == $i) | .backend'; }
for i in direct buffered; do
  backend $i | grep -q 'memory filesystem' || fail "status does not say $i is on a memory filesystem: $(backend $i)"
done
case $(stat -f -c %T "$T") in
tmpfs | ramfs) ;;
*) ! backend disk | grep -q 'memory filesystem' || fail "status says $T is a memory filesystem: $(backend disk)" ;;
esac

# Context switches, so far, of the daemon's io-wq threads alive now (they
# end after some seconds idle, so read this right after the load).
wq_switches() {
  n=0
  for t in /proc/"$BLKGW_PID"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in
    iou-wrk*) n=$((n + $(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t/status" 2>/dev/null || echo 0))) ;;
    esac
  done
  echo "$n"
}

for exp in direct buffered; do
  for job in "randwrite 4k" "write 1M"; do
    set -- $job
    fio --name="$exp-$1" --ioengine=nbd --uri="nbd+unix:///$exp?socket=$run/nbd.sock" \
      --rw="$1" --bs="$2" --size=64M --offset_increment=64M --numjobs=2 --iodepth=32 \
      --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=4096 \
      --randrepeat=0 --group_reporting --output-format=json --output="$T/fio.json" >"$T/fio.err" 2>&1 ||
      { cat "$T/fio.err"; fail "fio $1 $2 on $exp failed"; }
    wq=$(wq_switches)
    jq -e '.jobs[0].error == 0 and .jobs[0].write.io_bytes == 134217728 and .jobs[0].read.io_bytes == 134217728' "$T/fio.json" >/dev/null ||
      { jq '.jobs[0] | {error, w: .write.io_bytes, r: .read.io_bytes}' "$T/fio.json"; fail "fio $1 $2 on $exp did not write and verify 128 MiB"; }
    ios=$(jq '.jobs[0].write.total_ios + .jobs[0].read.total_ios' "$T/fio.json")
    echo "$exp $1 $2: $ios requests, the daemon's io-wq threads switched $wq times"
    [ "$wq" -lt $((ios / 20)) ] || fail "$exp $1 $2: the daemon's io-wq threads switched $wq times for $ios requests: its I/O went through io_uring's workers"
  done
done
# The file on tmpfs holds what was written: compare a region with a read through NBD.
PATH="/usr/bin:$PATH" nbdcopy "nbd+unix:///direct?socket=$run/nbd.sock" "$T/copy.raw" ||
  fail "nbdcopy of the direct export failed"
cmp "$T/copy.raw" "$S/direct.raw" || fail "the tmpfs file and a read through NBD differ"
"$BLKGW" status --json | jq -e '[.exports[].counters.errors] | add == 0' >/dev/null || fail "the server counted errors"
stop_blkgw
echo "tmpfs files served in the worker: verified, and io_uring's workers stayed out of it"
