#!/bin/bash
# blkgw's vhost-user-blk transport driven from the host by the fio engine
# and vu-blk-probe (bench/vhost-client), no VM: memory, file (buffered and
# O_DIRECT), null and read-only exports, 2 to 4 queues, crc32c verify, the
# backing file checked behind blkgw's back, discard/write-zeroes/flush,
# a slow driver (interrupt holding), status, one frontend at a time, a
# frontend that shrinks its memory under a request, SIGTERM during I/O.
#
#   test-blkgw-fio.sh ENGINE_SO PROBE [CASE...]
#
# Every case runs against a fresh blkgw. Exit: 0 all passed, 1 otherwise.
engine=${1:?usage: $0 ENGINE_SO PROBE [CASE...]}
probe=${2:?usage: $0 ENGINE_SO PROBE [CASE...]}
shift 2
. "$(dirname "$0")/../lib.sh"
# fio writes its verify state files into the current folder: keep them in $T.
cd "$T"
set +e
requires fio jq cmp
[ -f "$engine" ] || fail "fio engine $engine not built"
[ -x "$probe" ] || fail "vu-blk-probe $probe not built"

all_cases="probe mem_verify file_verify direct_verify trim_flush zeroes read_only null_poll
  slow_driver status_clients second_frontend shrunk_memory sigterm_during_io"
cases=${*:-$all_cases}
run=$T/run
pass=0
nfail=0

manifest() {
  rm -f "$T/file.raw" "$T/direct.raw"
  cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  mem: { backend: memory, size: 256M }
  file: { backend: file, path: $T/file.raw, size: 256M }
  direct: { backend: file, path: $T/direct.raw, size: 256M, direct: true }
  null: { backend: null, size: 1G }
exports:
  - { image: mem, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/mem.sock, queues: 4 } }
  - { image: file, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/file.sock, queues: 4 } }
  - { image: direct, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/direct.sock, queues: 2 } }
  - { image: null, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/null.sock, queues: 2 } }
  - { image: file, read-only: true, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/ro.sock, queues: 1, serial: ro-disk } }
YAML
}

ok() { echo "ok - $current: $*"; }
bad() { echo "not ok - $current: $*"; case_failed=1; }

# fio through the engine on export $1; more fio arguments follow.
vfio() {
  local sock=$run/$1.sock
  shift
  fio --thread --ioengine="external:$engine" --vhost_socket="$sock" "$@"
}

case_probe() {
  "$probe" "$run/mem.sock" >"$T/out" 2>&1 && grep -q '^PASSED' "$T/out" &&
    ok "vu-blk-probe round trip (write, read, flush, get id, discard, write zeroes, IOERR past the end)" ||
    { cat "$T/out"; bad "vu-blk-probe failed"; }
  "$probe" --info "$run/null.sock" >"$T/out" 2>&1 && grep -q 'capacity *2097152 sectors' "$T/out" &&
    grep -q 'queues (GET_QUEUE_NUM): 2' "$T/out" &&
    ok "config: 1 GiB, 2 queues" || { cat "$T/out"; bad "vu-blk-probe --info"; }
}

# 4k random writes at QD32 on 2 and 4 queues, every block read back.
verify_jobs() {
  local exp=$1 jobs=$2 bs=$3 rw=$4
  vfio "$exp" --name=v --rw="$rw" --bs="$bs" --iodepth=32 --numjobs="$jobs" --size=32M \
    --offset_increment=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=1024 \
    --randrepeat=1 --serialize_overlap=1 --group_reporting --output-format=json \
    >"$T/out.json" 2>"$T/err" || { cat "$T/err"; bad "fio on $exp failed"; return 1; }
  local w r
  w=$(jq '[.jobs[].write.io_bytes] | add' "$T/out.json")
  r=$(jq '[.jobs[].read.io_bytes] | add' "$T/out.json")
  [ "$w" -eq $((jobs * 32 << 20)) ] && [ "$r" -ge $((jobs * 32 << 20)) ] &&
    ok "$exp: $jobs queues x QD32 $rw $bs: $((w >> 20)) MiB written, every block verified" ||
    { bad "$exp: unexpected byte counts: written $w read $r"; return 1; }
}

case_mem_verify() {
  verify_jobs mem 2 4k randwrite
  verify_jobs mem 4 64k randwrite
}

# What went through blkgw must be in the file: the same fio job, run
# against the file itself with psync after blkgw stopped, verifies it.
file_job="--name=f --rw=randwrite --bs=4k --bsrange=4k-64k --iodepth=32 --size=32M --verify=crc32c --randrepeat=1 --offset_increment=32M --verify_fatal=1"
case_file_verify() {
  # shellcheck disable=SC2086
  vfio file $file_job --numjobs=4 --do_verify=1 --group_reporting >"$T/out" 2>&1 ||
    { cat "$T/out"; bad "fio through blkgw failed"; return; }
  ok "file: 4 queues, mixed 4k-64k random writes verified through blkgw"
  stop_blkgw
  # shellcheck disable=SC2086
  fio --ioengine=psync --filename="$T/file.raw" $file_job --numjobs=4 --verify_only \
    >"$T/out" 2>&1 && ok "the backing file holds every block at its offset (psync verify_only)" ||
    { tail -5 "$T/out"; bad "the backing file does not hold what was written"; }
}

case_direct_verify() {
  verify_jobs direct 2 1M write
  verify_jobs direct 2 4k randwrite
}

# FLUSH every 8 writes, then DISCARD a range: it reads back as zeros through
# blkgw and is a hole of zeros in the file.
case_trim_flush() {
  local base=$((32 << 20)) len=$((8 << 20)) toff=$((34 << 20)) tlen=$((2 << 20))
  vfio file --name=w --rw=randwrite --bs=4k --iodepth=16 --size=$len --offset=$base \
    --verify=pattern --verify_pattern=0x5a%o --do_verify=1 --verify_fatal=1 --fsync=8 \
    --output-format=json >"$T/out.json" 2>"$T/err" || { cat "$T/err"; bad "write+verify failed"; return; }
  [ "$(jq '.jobs[0].sync.total_ios' "$T/out.json")" -ge 256 ] && ok "256 flushes completed" ||
    bad "fewer flushes than expected"
  "$BLKGW" status --json | jq -e '.exports[] | select(.endpoint | endswith("/file.sock")) | .counters.flushes >= 256' \
    >/dev/null && ok "blkgw counted the flushes" || bad "blkgw did not count the flushes"
  vfio file --name=t --rw=trim --bs=64k --iodepth=8 --size=$tlen --offset=$toff \
    >"$T/out" 2>&1 || { cat "$T/out"; bad "trim failed"; return; }
  vfio file --name=z --rw=write --bs=4k --size=$tlen --offset=$toff --verify_only \
    --verify=pattern --verify_pattern=0 --verify_fatal=1 >"$T/out" 2>&1 &&
    ok "the discarded range reads back as zeros" || { tail -5 "$T/out"; bad "discarded range not zero"; }
  cmp -s -n $tlen -i $toff:0 "$T/file.raw" /dev/zero && ok "and is zero in the backing file" ||
    bad "discarded range not zero in the backing file"
  vfio file --name=v --rw=write --bs=4k --size=$((toff - base)) --offset=$base --verify_only \
    --verify=pattern --verify_pattern=0x5a%o --verify_fatal=1 >"$T/out" 2>&1 &&
    ok "data before the discarded range intact" || { tail -5 "$T/out"; bad "data before the range damaged"; }
}

case_zeroes() {
  local mode off=$((200 << 20)) len=$((4 << 20))
  for mode in write_zeroes write_zeroes_unmap; do
    vfio file --name=w --rw=write --bs=64k --size=$len --offset=$off --verify=pattern \
      --verify_pattern=0xee --do_verify=0 >"$T/out" 2>&1 || { cat "$T/out"; bad "writer failed"; return; }
    cmp -s -n $len -i $off:0 "$T/file.raw" /dev/zero && { bad "pattern did not reach the file"; return; }
    vfio file --name=z --rw=trim --vhost_trim=$mode --bs=256k --size=$len --offset=$off \
      >"$T/out" 2>&1 || { cat "$T/out"; bad "$mode failed"; return; }
    cmp -s -n $len -i $off:0 "$T/file.raw" /dev/zero && ok "$mode zeroed the range in the backing file" ||
      bad "$mode left data in the backing file"
  done
}

case_read_only() {
  "$probe" --info "$run/ro.sock" >"$T/out" 2>&1 && grep -q ' RO ' "$T/out" &&
    ! grep -q 'DISCARD' "$T/out" && ok "read-only export offers RO, no DISCARD" ||
    { cat "$T/out"; bad "read-only features"; }
  # The engine refuses to write to an RO device itself; blkgw's IOERR for
  # writes that come anyway is covered by unit.test_vblk.
  if vfio ro --name=w --rw=write --bs=4k --size=1M >"$T/out" 2>&1; then
    bad "a write on the read-only export succeeded"
  else
    grep -q 'read-only (VIRTIO_BLK_F_RO)' "$T/out" && ok "the frontend sees a read-only disk" ||
      { cat "$T/out"; bad "write failed, but not because the disk is read-only"; }
  fi
  vfio ro --name=r --rw=randread --bs=4k --size=4M --iodepth=8 >"$T/out" 2>&1 &&
    ok "reads work" || { cat "$T/out"; bad "reads on the read-only export failed"; }
  "$BLKGW" status --json | jq -e '[.exports[] | select(.read_only) | .counters.writes] | add == 0' \
    >/dev/null && ok "no write reached the image" || bad "a write reached the read-only image"
}

case_null_poll() {
  vfio null --name=n --rw=randread --bs=4k --iodepth=32 --numjobs=2 --vhost_poll=1 --size=1G \
    --io_size=64M --group_reporting --output-format=json >"$T/out.json" 2>"$T/err" ||
    { cat "$T/err"; bad "poll mode failed"; return; }
  [ "$(jq '[.jobs[].read.total_ios] | add' "$T/out.json")" -eq 32768 ] &&
    ok "null, 2 queues, driver polling (no interrupts): 32768 reads" || bad "wrong read count"
  vfio null --name=n --rw=randrw --bs=4k --iodepth=1 --vhost_no_event_idx=1 --size=1G --io_size=8M \
    >"$T/out" 2>&1 && ok "without EVENT_IDX at QD1" || { cat "$T/out"; bad "no-EVENT_IDX run failed"; }
  # A bounded spin before sleeping (the bench's client): blkgw answers a
  # QD1 read in microseconds, so the spin sees answers.
  vfio null --name=n --rw=randread --bs=4k --iodepth=1 --vhost_spin_us=200 --vhost_trace=1 \
    --size=1G --io_size=8M >"$T/out" 2>&1 || { cat "$T/out"; bad "spin run failed"; return; }
  local sp
  sp=$(sed -n 's/.* \([0-9]*\) spins (\([0-9]*\) answered).*/\1 \2/p' "$T/out")
  [ -n "$sp" ] && [ "${sp% *}" -gt 0 ] && [ "${sp#* }" -gt 0 ] &&
    ok "client spin before sleeping: ${sp% *} spins, ${sp#* } answered (2048 reads)" ||
    { cat "$T/out"; bad "the spin never ran or never saw an answer"; }
}

# While a frontend is connected the export reports one client and its socket.
case_status_clients() {
  "$BLKGW" status --json | jq -e --arg s "$run/mem.sock" \
    '.exports[] | select(.endpoint == $s) | .transport == "vhost-user-blk" and .clients == 0' >/dev/null &&
    ok "status: endpoint is the socket, no client yet" || { "$BLKGW" status --json; bad "status before"; }
  vfio mem --name=s --rw=randread --bs=4k --iodepth=4 --size=4M --time_based --runtime=3 \
    >"$T/out" 2>&1 &
  local fpid=$! i c=""
  for i in $(seq 50); do
    c=$("$BLKGW" status --json | jq --arg s "$run/mem.sock" '.exports[] | select(.endpoint == $s) | .clients')
    [ "$c" = 1 ] && break
    sleep 0.1
  done
  [ "$c" = 1 ] && ok "status: 1 client while fio runs" || bad "status shows $c clients while fio runs"
  wait "$fpid" || { cat "$T/out"; bad "fio failed"; }
  sleep 0.3
  c=$("$BLKGW" status --json | jq --arg s "$run/mem.sock" '.exports[] | select(.endpoint == $s) | .clients')
  [ "$c" = 0 ] && ok "status: 0 clients after it left" || bad "status shows $c clients after fio"
}

# A driver that posts requests 30 us apart, like an emulated guest: the
# queue holds its interrupts (notify-hold-us, on by default; at QD1 one in
# 32 as a probe). Whatever it holds must be released: a QD1 driver waits
# for every interrupt, and one never sent stalls fio (seen with the release
# taken out: fio hung), so each run gets 60 s.
case_slow_driver() {
  local qd
  for qd in 1 16; do
    timeout 60 fio --thread --ioengine="external:$engine" --vhost_socket="$run/mem.sock" --name=s --rw=randwrite --bs=4k --iodepth=$qd --thinktime=30 --thinktime_blocks=1 \
      --offset=$((qd * 4))M --size=2M --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --vhost_timeout=10 --output-format=json >"$T/out" 2>"$T/err" &&
      ok "QD$qd, 30 us between requests: written and verified ($(jq '.jobs[0].write.total_ios' "$T/out") writes)" ||
      { cat "$T/err"; bad "QD$qd slow driver failed"; }
  done
  # The workers' counters (status --json worker_loops) saw it: held signals,
  # kicks from a driver that lets the queue sleep, polling that found work.
  "$BLKGW" status --json | jq -e '[.worker_loops[].held_signals] | add > 0' >/dev/null &&
    "$BLKGW" status --json | jq -e '([.worker_loops[].kicks] | add > 0) and
      ([.worker_loops[].ring_polls_with_work] | add > 0) and
      all(.worker_loops[]; .ring_polls >= .ring_polls_with_work and .turns >= .sleeps)' >/dev/null &&
    ok "worker_loops counted held signals, kicks and polls that found work" ||
    { "$BLKGW" status --json | jq .worker_loops; bad "worker_loops counters do not show the held signals or kicks"; }
}

# One frontend per export: a second is refused, the first is unaffected.
case_second_frontend() {
  vfio mem --name=a --rw=randwrite --bs=4k --iodepth=8 --size=16M --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --time_based --runtime=3 >"$T/out" 2>&1 &
  local fpid=$!
  sleep 1
  "$probe" "$run/mem.sock" >"$T/probe" 2>&1 && bad "a second frontend was served" ||
    ok "a second frontend is refused ($(tail -n1 "$T/probe" | head -c 100))"
  wait "$fpid" && ok "the first frontend carried on and verified" || { cat "$T/out"; bad "the first frontend failed"; }
  grep -q 'refusing a second frontend' "$T/blkgw.log" && ok "blkgw says why" || bad "no log line for the refusal"
  "$probe" "$run/mem.sock" >"$T/probe" 2>&1 && ok "the next frontend is served once the first left" ||
    { cat "$T/probe"; bad "frontend after the first one failed"; }
}

# A hostile frontend truncates its shared memory under a write's buffer
# (memfd left unsealed). blkgw must not die of SIGBUS, must never
# acknowledge that write, must close only that connection, and must keep
# serving: the other exports during it, the same export afterwards.
case_shrunk_memory() {
  vfio direct --name=a --rw=randwrite --bs=4k --iodepth=8 --size=16M --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --time_based --runtime=3 >"$T/out" 2>&1 &
  local fpid=$!
  sleep 0.5
  timeout 60 "$probe" --shrink-memory --timeout 10000 "$run/mem.sock" >"$T/probe" 2>&1 &&
    grep -q '^write from shrunk memory: connection closed *ok' "$T/probe" &&
    ok "memory backend: the write from shrunk memory was never acknowledged; the connection was closed" ||
    { cat "$T/probe"; bad "memory backend: shrunk memory not handled"; }
  kill -0 "$BLKGW_PID" 2>/dev/null && ok "blkgw survived the SIGBUS" || bad "blkgw died"
  grep -Eq "mem: closing the connection: the (frontend|driver's memory) shrank" "$T/blkgw.log" &&
    ok "blkgw says why ($(grep -o 'mem: closing the connection: .*' "$T/blkgw.log" | head -n1))" ||
    { cat "$T/blkgw.log"; bad "no log line naming the shrunk region"; }
  # The file backend reads guest memory in the kernel (io_uring): EFAULT, an IOERR, never success.
  timeout 60 "$probe" --shrink-memory --timeout 10000 "$run/file.sock" >"$T/probe" 2>&1 &&
    ok "file backend: the write from shrunk memory failed ($(grep '^write from shrunk' "$T/probe" | tr -s ' '))" ||
    { cat "$T/probe"; bad "file backend: shrunk memory not handled"; }
  wait "$fpid" && ok "another frontend on another export carried on and verified" ||
    { cat "$T/out"; bad "the other export's frontend failed"; }
  "$probe" "$run/mem.sock" >"$T/probe" 2>&1 && ok "the export serves the next frontend" ||
    { cat "$T/probe"; bad "the export is unusable after the hostile frontend"; }
}

# SIGTERM while fio runs: blkgw finishes in-flight requests and exits 0.
case_sigterm_during_io() {
  vfio file --name=a --rw=randwrite --bs=4k --iodepth=32 --numjobs=2 --size=32M \
    --offset_increment=32M --time_based --runtime=30 --vhost_timeout=10 >"$T/out" 2>&1 &
  local fpid=$!
  sleep 1.5
  stop_blkgw TERM
  ok "blkgw stopped cleanly with I/O in flight"
  wait "$fpid" && bad "fio did not notice" || ok "fio saw the backend go away"
}

for current in $cases; do
  type "case_$current" >/dev/null 2>&1 || fail "unknown case $current"
  manifest
  : >"$T/blkgw.log"
  start_blkgw "$T/m.yaml"
  case_failed=0
  "case_$current"
  if [ -n "$BLKGW_PID" ]; then
    kill -0 "$BLKGW_PID" 2>/dev/null || bad "blkgw died"
    stop_blkgw
  fi
  if grep -q 'malformed' "$T/blkgw.log"; then
    bad "blkgw saw a malformed message or ring"
    grep 'malformed' "$T/blkgw.log" | head -5
  fi
  if [ $case_failed -eq 0 ]; then pass=$((pass + 1)); else nfail=$((nfail + 1)); fi
done
echo "$pass passed, $nfail failed"
[ $nfail -eq 0 ]
