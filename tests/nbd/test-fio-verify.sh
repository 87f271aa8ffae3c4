#!/bin/sh
# fio's nbd engine (libnbd) with --verify=crc32c, 4 jobs at iodepth 32, on
# memory and on file images (O_DIRECT and buffered): 4k random writes and
# 1 MiB sequential writes, every block read back and checked.
. "$(dirname "$0")/../lib.sh"
# fio writes its verify state files into the current folder: keep them in $T.
cd "$T"
requires fio
fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*nbd' || skip "this fio has no nbd engine"

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  mem: { backend: memory, size: 512M }
  direct: { backend: file, path: $T/direct.raw, size: 512M, direct: true }
  buffered: { backend: file, path: $T/buffered.raw, size: 512M }
exports:
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: direct, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: buffered, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"

for exp in mem direct buffered; do
  for job in "randwrite 4k" "write 1M"; do
    set -- $job
    fio --name="$exp-$1" --ioengine=nbd --uri="nbd+unix:///$exp?socket=$run/nbd.sock" \
      --rw="$1" --bs="$2" --size=128M --offset_increment=128M --numjobs=4 --iodepth=32 \
      --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=4096 \
      --randrepeat=0 --group_reporting --output-format=json --output="$T/fio.json" >"$T/fio.err" 2>&1 ||
      { cat "$T/fio.err"; fail "fio $1 $2 on $exp failed"; }
    jq -e '.jobs[0].error == 0 and .jobs[0].write.io_bytes == 536870912 and .jobs[0].read.io_bytes == 536870912' "$T/fio.json" >/dev/null ||
      { jq '.jobs[0] | {error, w: .write.io_bytes, r: .read.io_bytes}' "$T/fio.json"; fail "fio $1 $2 on $exp did not write and verify 512 MiB"; }
  done
done
"$BLKGW" status --json | jq -e '[.exports[].counters.errors] | add == 0' >/dev/null || fail "the server counted errors"
stop_blkgw
echo "fio verified 4 x 128 MiB per export and pattern"
