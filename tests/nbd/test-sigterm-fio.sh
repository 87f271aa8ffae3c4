#!/bin/sh
# SIGTERM while fio writes: blkgw finishes in-flight requests, flushes and
# exits 0, and every write fio saw acknowledged is in the backing file.
# fio records what completed (--verify_state_save); a second fio, reading
# the backing file directly (no blkgw), verifies exactly those blocks.
. "$(dirname "$0")/../lib.sh"
requires fio

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  disk: { backend: file, path: $T/disk.raw, size: 1G }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
cd "$T"
job="--name=w --rw=randwrite --bs=4k --size=512M --offset_increment=512M --numjobs=2 --verify=crc32c --randrepeat=1"
# shellcheck disable=SC2086
fio $job --ioengine=nbd --uri="nbd+unix:///disk?socket=$run/nbd.sock" --iodepth=32 \
  --do_verify=0 --verify_state_save=1 >"$T/write.out" 2>&1 &
fio_pid=$!
on_exit "kill $fio_pid 2>/dev/null"
# Let it write for a while (but not finish: 1 GiB takes several seconds here).
sleep 1.5
kill -0 "$fio_pid" 2>/dev/null || fail "fio finished before the signal; the test needs it mid-run"
stop_blkgw TERM
wait "$fio_pid" || true    # fio fails: its server went away
grep -q "Terminated: stopping" "$T/blkgw.log" || fail "blkgw did not log a clean stop"
[ ! -e "$run/nbd.sock" ] || fail "the socket was left behind"
[ -f "$T/local-w-0-verify.state" ] && [ -f "$T/local-w-1-verify.state" ] || fail "fio saved no verify state"

# Verify what fio saw completed, straight from the backing file.
# shellcheck disable=SC2086
fio $job --ioengine=psync --filename="$T/disk.raw" --verify_only --verify_state_load=1 \
  --output-format=json --output="$T/verify.json" >"$T/verify.out" 2>&1 ||
  { cat "$T/verify.out"; fail "acknowledged writes are missing or wrong in the backing file"; }
bytes=$(sed -n '/^{/,$p' "$T/verify.json" | jq '[.jobs[].read.io_bytes] | add')
[ "$bytes" -gt 16777216 ] || fail "only $bytes bytes verified; expected a substantial part of the run"
[ "$bytes" -lt 1073741824 ] || fail "all of it verified: fio was not interrupted"
echo "SIGTERM mid-run: $bytes acknowledged bytes verified in the backing file"
