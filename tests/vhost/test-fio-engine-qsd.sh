#!/bin/bash
# blkgw's vhost-user-blk fio engine and vu-blk-probe against
# qemu-storage-daemon's vhost-user-blk export.
#
#   test-fio-engine-qsd.sh ENGINE_SO PROBE [CASE...]
#
# With no CASE every case runs. Each case starts its own qemu-storage-daemon
# (a sparse file node and a null-co node, each exported over vhost-user-blk)
# and stops it afterwards. Exit status: 0 when every case passed, 1 otherwise.
# ok/bad only print, so "check && ok ... || bad ..." is a safe if/else.
# shellcheck disable=SC2015
set -u

engine=${1:?usage: $0 ENGINE_SO PROBE [CASE...]}
probe=${2:?usage: $0 ENGINE_SO PROBE [CASE...]}
shift 2

all_cases="probe randwrite_verify seq1m_verify trim_flush backing_file
  read_placement corrupt_detected wrong_seed_detected zeroes_mode
  jobs_vs_queues stonewall_reuse no_thread null_poll"
cases=${*:-$all_cases}

QUEUES=4
DISK_MB=256
pass=0
fail=0

die() { echo "FATAL: $*" >&2; exit 1; }

for bin in qemu-storage-daemon fio cmp jq; do
  command -v "$bin" >/dev/null 2>&1 ||
    die "$bin not found: run scripts/deps.sh test (packages qemu-system-x86/qemu-utils, fio, jq)"
done
[ -f "$engine" ] || die "engine $engine not built"
[ -x "$probe" ] || die "probe $probe not built"

work=$(mktemp -d "${TMPDIR:-/tmp}/vu-fio-test.XXXXXX") || die "mktemp failed"
cd "$work" || die "cannot enter $work"   # fio writes its verify state files here
qsd_pid=""

stop_qsd() {
  if [ -n "$qsd_pid" ] && kill -0 "$qsd_pid" 2>/dev/null; then
    kill "$qsd_pid" 2>/dev/null
    for _ in $(seq 100); do
      kill -0 "$qsd_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$qsd_pid" 2>/dev/null && kill -9 "$qsd_pid" 2>/dev/null
  fi
  qsd_pid=""
}

cleanup() {
  stop_qsd
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start qemu-storage-daemon with two vhost-user-blk exports:
#   $work/disk.sock  a sparse file ($work/disk.img), discard=unmap
#   $work/null.sock  null-co, 1 GiB, reads return zeroes
start_qsd() {
  stop_qsd
  rm -f "$work/disk.img" "$work"/*.sock "$work/qsd.pid"
  truncate -s "${DISK_MB}M" "$work/disk.img"
  qemu-storage-daemon \
    --blockdev "driver=file,node-name=file0,filename=$work/disk.img,discard=unmap" \
    --blockdev driver=null-co,node-name=null0,size=1073741824,read-zeroes=on \
    --export "type=vhost-user-blk,id=e0,node-name=file0,addr.type=unix,addr.path=$work/disk.sock,num-queues=$QUEUES,writable=on" \
    --export "type=vhost-user-blk,id=e1,node-name=null0,addr.type=unix,addr.path=$work/null.sock,num-queues=2,writable=on" \
    --pidfile "$work/qsd.pid" --daemonize >"$work/qsd.log" 2>&1 ||
    { cat "$work/qsd.log" >&2; die "qemu-storage-daemon did not start"; }
  # --daemonize returns once the exports listen.
  qsd_pid=$(cat "$work/qsd.pid")
  [ -S "$work/disk.sock" ] && [ -S "$work/null.sock" ] || die "export sockets missing"
}

# fio through the engine on the file export. Extra arguments follow.
vfio() {
  fio --thread --ioengine="external:$engine" --vhost_socket="$work/disk.sock" "$@"
}

ok() { echo "ok - $current: $*"; }
bad() { echo "not ok - $current: $*"; case_failed=1; }

# Block size 4k, 16 MiB per job, job k at offset 16 MiB * k.
case_randwrite_verify() {
  vfio --name=rw --rw=randwrite --bs=4k --iodepth=32 --numjobs=$QUEUES \
    --size=16M --offset_increment=16M --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --verify_backlog=1024 --randrepeat=1 --serialize_overlap=1 \
    --group_reporting --output-format=json >"$work/out.json" 2>"$work/err" ||
    { cat "$work/err"; bad "fio failed"; return; }
  local w r
  w=$(jq '[.jobs[].write.total_ios] | add' "$work/out.json")
  r=$(jq '[.jobs[].read.total_ios] | add' "$work/out.json")
  [ "$w" -eq $((QUEUES * 4096)) ] && [ "$r" -ge $((QUEUES * 4096)) ] &&
    ok "$QUEUES jobs x iodepth 32: $w 4k writes, $r verified reads" ||
    bad "unexpected I/O counts: writes $w reads $r"
}

case_seq1m_verify() {
  vfio --name=seq --rw=write --bs=1M --iodepth=32 --numjobs=2 --size=64M \
    --offset_increment=64M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --group_reporting --output-format=json >"$work/out.json" 2>"$work/err" ||
    { cat "$work/err"; bad "fio failed"; return; }
  local w
  w=$(jq '[.jobs[].write.total_ios] | add' "$work/out.json")
  [ "$w" -eq 128 ] && ok "2 jobs x iodepth 32: 128 x 1 MiB written and verified" ||
    bad "expected 128 writes, got $w"
}

# Writes with a FLUSH every 8 writes, then DISCARD of the middle, then reads:
# the discarded range must read as zeroes through the engine and in the file.
case_trim_flush() {
  local base=$((32 << 20)) len=$((8 << 20)) toff=$((34 << 20)) tlen=$((2 << 20))
  vfio --name=w --rw=randwrite --bs=4k --iodepth=16 --size=$len --offset=$base \
    --verify=pattern --verify_pattern=0x5a%o --do_verify=1 --verify_fatal=1 \
    --fsync=8 --output-format=json >"$work/out.json" 2>"$work/err" ||
    { cat "$work/err"; bad "write+verify failed"; return; }
  local syncs
  syncs=$(jq '.jobs[0].sync.total_ios' "$work/out.json")
  [ "$syncs" -ge 256 ] && ok "$syncs flushes completed" ||
    bad "expected at least 256 flushes, fio reports $syncs"
  vfio --name=t --rw=trim --bs=64k --iodepth=8 --size=$tlen --offset=$toff \
    --output-format=json >"$work/out.json" 2>"$work/err" ||
    { cat "$work/err"; bad "trim failed"; return; }
  [ "$(jq '.jobs[0].trim.total_ios' "$work/out.json")" -eq 32 ] &&
    ok "32 x 64k discards completed" || bad "trim count wrong"
  vfio --name=z --rw=write --bs=4k --size=$tlen --offset=$toff --verify_only \
    --verify=pattern --verify_pattern=0 --verify_fatal=1 >"$work/out" 2>&1 &&
    ok "discarded range reads back as zeroes" ||
    { cat "$work/out"; bad "discarded range does not read as zeroes"; }
  cmp -s -n $tlen -i $toff:0 "$work/disk.img" /dev/zero &&
    ok "discarded range is zero in the backing file" ||
    bad "discarded range is not zero in the backing file"
  # The rest of the written range still holds the pattern.
  vfio --name=v --rw=write --bs=4k --size=$((toff - base)) --offset=$base \
    --verify_only --verify=pattern --verify_pattern=0x5a%o --verify_fatal=1 \
    >"$work/out" 2>&1 && ok "data before the discarded range intact" ||
    { cat "$work/out"; bad "data before the discarded range damaged"; }
}

# What the engine wrote must be what the same fio job writes to a plain file.
# verify_pattern %o makes each block hold its own offset, so misplaced
# blocks are caught too.
case_backing_file() {
  local off=$((100 << 20)) len=$((24 << 20))
  vfio --name=b --rw=randwrite --bs=4k --bsrange=4k-64k --iodepth=32 \
    --size=$len --offset=$off --verify=pattern --verify_pattern=0xc3%o \
    --do_verify=0 --fsync=64 >"$work/out" 2>&1 ||
    { cat "$work/out"; bad "fio failed"; return; }
  fio --name=ref --ioengine=psync --filename="$work/ref.img" --rw=randwrite \
    --bs=4k --bsrange=4k-64k --size=$len --offset=$off --verify=pattern \
    --verify_pattern=0xc3%o --do_verify=0 >"$work/out" 2>&1 ||
    { cat "$work/out"; bad "reference fio failed"; return; }
  cmp -n $len -i $off:$off "$work/disk.img" "$work/ref.img" &&
    ok "backing file matches the reference written with psync (24 MiB)" ||
    bad "backing file differs from the reference"
  cmp -s -n $off "$work/disk.img" /dev/zero &&
    ok "nothing written before the target range" ||
    bad "bytes changed before the target range"
}

# The other direction: data put into the backing file directly must be read
# by the engine at the right offsets.
case_read_placement() {
  local off=$((40 << 20)) len=$((16 << 20))
  fio --name=ref --ioengine=psync --filename="$work/disk.img" --rw=write \
    --bs=4k --size=$len --offset=$off --verify=pattern \
    --verify_pattern=0x77%o --do_verify=0 >"$work/out" 2>&1 ||
    { cat "$work/out"; bad "psync writer failed"; return; }
  sync "$work/disk.img"
  vfio --name=r --rw=randwrite --bs=4k --iodepth=32 --size=$len --offset=$off \
    --verify_only --verify=pattern --verify_pattern=0x77%o --verify_fatal=1 \
    >"$work/out" 2>&1 && ok "engine reads what was written to the file" ||
    { tail -5 "$work/out"; bad "engine read wrong data"; }
}

# Negative: corrupt the backing file behind the engine's back; verify must fail.
case_corrupt_detected() {
  local off=$((8 << 20))
  vfio --name=c --rw=randwrite --bs=4k --iodepth=32 --size=4M --offset=$off \
    --verify=crc32c --do_verify=0 --randrepeat=1 >"$work/out" 2>&1 ||
    { cat "$work/out"; bad "writer failed"; return; }
  vfio --name=c --rw=randwrite --bs=4k --iodepth=32 --size=4M --offset=$off \
    --verify=crc32c --verify_only --verify_fatal=1 --randrepeat=1 \
    >"$work/out" 2>&1 && ok "clean data verifies" ||
    { cat "$work/out"; bad "clean data failed to verify"; return; }
  # Flip 16 bytes inside block 100 (past its verify header).
  printf '%016d' 0 | dd of="$work/disk.img" bs=1 seek=$((off + 100 * 4096 + 2000)) \
    conv=notrunc status=none
  if vfio --name=c --rw=randwrite --bs=4k --iodepth=32 --size=4M --offset=$off \
      --verify=crc32c --verify_only --verify_fatal=1 --randrepeat=1 \
      >"$work/out" 2>&1; then
    bad "verify passed on corrupted data"
  elif grep -q 'crc32c: verify failed' "$work/out"; then
    ok "corruption detected ($(grep -m1 -o 'offset [0-9]*' "$work/out"))"
  else
    cat "$work/out"; bad "fio failed, but not with a verify error"
  fi
}

# Negative: data written with one seed does not verify with another. fio
# 3.33 checks the seed stored in each block's header only for read+write
# jobs, hence randrw with 0% reads.
case_wrong_seed_detected() {
  local job="--name=s --rw=randrw --rwmixread=0 --bs=4k --iodepth=16 --size=4M --offset=0 --verify=crc32c"
  # shellcheck disable=SC2086
  vfio $job --do_verify=0 --randseed=1111 >"$work/out" 2>&1 ||
    { cat "$work/out"; bad "writer failed"; return; }
  # shellcheck disable=SC2086
  if vfio $job --verify_only --verify_fatal=1 --randseed=2222 >"$work/out" 2>&1; then
    bad "verify with a different seed passed"
  elif grep -q 'verify: bad header rand_seed' "$work/out"; then
    ok "verify with a different seed fails (bad header rand_seed)"
  else
    cat "$work/out"; bad "fio failed, but not with a verify error"
  fi
  # shellcheck disable=SC2086
  vfio $job --verify_only --verify_fatal=1 --randseed=1111 >"$work/out" 2>&1 &&
    ok "verify with the right seed passes" ||
    { cat "$work/out"; bad "verify with the right seed failed"; }
}

# fio trims as WRITE_ZEROES (with and without UNMAP).
case_zeroes_mode() {
  local mode off=$((200 << 20)) len=$((4 << 20))
  for mode in write_zeroes write_zeroes_unmap; do
    vfio --name=w --rw=write --bs=64k --size=$len --offset=$off \
      --verify=pattern --verify_pattern=0xee --do_verify=0 >"$work/out" 2>&1 ||
      { cat "$work/out"; bad "writer failed"; return; }
    cmp -s -n $len -i $off:0 "$work/disk.img" /dev/zero &&
      { bad "pattern did not reach the file"; return; }
    vfio --name=z --rw=trim --vhost_trim=$mode --bs=256k --size=$len \
      --offset=$off >"$work/out" 2>&1 || { cat "$work/out"; bad "$mode failed"; return; }
    cmp -s -n $len -i $off:0 "$work/disk.img" /dev/zero &&
      ok "$mode zeroed the range in the backing file" ||
      bad "$mode left data in the backing file"
  done
}

case_jobs_vs_queues() {
  if vfio --name=q --rw=randread --bs=4k --iodepth=4 --numjobs=$((QUEUES + 1)) \
      --size=4M --offset_increment=4M >"$work/out" 2>&1; then
    bad "$((QUEUES + 1)) jobs on $QUEUES queues did not fail"
  elif grep -q "all $QUEUES virtqueues usable on .* are taken" "$work/out"; then
    ok "more jobs than queues fails with a clear message"
  else
    cat "$work/out"; bad "failed without the expected message"
  fi
  vfio --name=q --rw=randread --bs=4k --iodepth=4 --numjobs=2 --vhost_queue=1 \
    --size=4M --offset_increment=4M >"$work/out" 2>&1 &&
    { bad "two jobs pinned to one queue did not fail"; return; }
  grep -q 'queue 1 is already in use' "$work/out" &&
    ok "two jobs pinned to one queue fail clearly" ||
    { cat "$work/out"; bad "pinned queue conflict without the expected message"; }
  vfio --name=q --rw=randread --bs=4k --iodepth=4 --vhost_queue=3 --size=4M \
    --vhost_trace=1 >"$work/out" 2>&1 && grep -q 'uses queue 3' "$work/out" &&
    ok "vhost_queue=3 selects queue 3" || { cat "$work/out"; bad "vhost_queue=3"; }
}

# Stonewalled jobs reuse the queues earlier jobs stopped (GET_VRING_BASE,
# then a fresh SET_VRING_* sequence on the same connection).
case_stonewall_reuse() {
  cat >"$work/sw.fio" <<EOF2
[global]
thread
ioengine=external:$engine
vhost_socket=$work/disk.sock
vhost_trace=1
bs=4k
size=16M
offset_increment=16M
iodepth=16
numjobs=$QUEUES
verify=crc32c
verify_fatal=1
[write]
rw=randwrite
[reverify]
stonewall
rw=randwrite
verify_only
[mixed]
stonewall
rw=randrw
EOF2
  fio "$work/sw.fio" >"$work/out" 2>&1 || { cat "$work/out"; bad "fio failed"; return; }
  local n
  n=$(grep -c "uses queue" "$work/out")
  [ "$n" -eq $((3 * QUEUES)) ] &&
    ok "3 stonewalled groups of $QUEUES jobs reused the $QUEUES queues, data verified" ||
    { cat "$work/out"; bad "expected $((3 * QUEUES)) queue set-ups, saw $n"; }
}

case_no_thread() {
  if fio --ioengine="external:$engine" --vhost_socket="$work/disk.sock" \
      --name=p --rw=randread --bs=4k --iodepth=4 --numjobs=2 --size=4M \
      --offset_increment=4M >"$work/out" 2>&1; then
    bad "2 jobs without --thread did not fail"
  elif grep -q 'run fio with --thread' "$work/out"; then
    ok "2 jobs without --thread fail and say to use --thread"
  else
    cat "$work/out"; bad "failed without the expected message"
  fi
  fio --ioengine="external:$engine" --vhost_socket="$work/disk.sock" \
    --name=p --rw=randrw --bs=4k --iodepth=8 --size=4M --verify=crc32c \
    --do_verify=1 --verify_fatal=1 >"$work/out" 2>&1 &&
    ok "a single job works in process mode" ||
    { cat "$work/out"; bad "single job in process mode failed"; }
}

case_null_poll() {
  fio --thread --ioengine="external:$engine" --vhost_socket="$work/null.sock" \
    --name=n --rw=randread --bs=4k --iodepth=32 --numjobs=2 --vhost_poll=1 \
    --size=1G --io_size=64M --group_reporting --output-format=json \
    >"$work/out.json" 2>"$work/err" || { cat "$work/err"; bad "poll mode failed"; return; }
  [ "$(jq '[.jobs[].read.total_ios] | add' "$work/out.json")" -eq 32768 ] &&
    ok "null-co, 2 jobs, poll mode: 32768 reads" || bad "wrong read count"
  fio --thread --ioengine="external:$engine" --vhost_socket="$work/null.sock" \
    --name=n --rw=randrw --bs=4k --iodepth=1 --vhost_no_event_idx=1 \
    --size=1G --io_size=8M >"$work/out" 2>&1 &&
    ok "null-co without EVENT_IDX at QD1" || { cat "$work/out"; bad "no-EVENT_IDX run failed"; }
}

case_probe() {
  "$probe" "$work/disk.sock" >"$work/out" 2>&1 && grep -q '^PASSED' "$work/out" &&
    ok "vu-blk-probe round trip" || { cat "$work/out"; bad "vu-blk-probe failed"; }
  "$probe" --info "$work/null.sock" >"$work/out" 2>&1 &&
    grep -q 'capacity *2097152 sectors' "$work/out" &&
    ok "vu-blk-probe --info reads null-co's 1 GiB capacity" ||
    { cat "$work/out"; bad "vu-blk-probe --info"; }
}

for current in $cases; do
  type "case_$current" >/dev/null 2>&1 || die "unknown case $current"
  start_qsd
  case_failed=0
  "case_$current"
  if ! kill -0 "$qsd_pid" 2>/dev/null; then
    bad "qemu-storage-daemon died"; cat "$work/qsd.log"
  fi
  stop_qsd
  if [ $case_failed -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
