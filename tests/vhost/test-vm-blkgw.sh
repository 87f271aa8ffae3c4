#!/bin/bash
# blkgw's vhost-user-blk transport under a real QEMU guest (tests/vm, TCG,
# Debian's 6.12 kernel, vhost-user-blk-pci, shared memfd memory).
#
#   test-vm-blkgw.sh io         two disks, two vCPUs, two queues each: fio
#                               verify, flush, discard, write zeroes, ext4 with
#                               files and fstrim; the host then checks the
#                               backing files (pattern, zeros, e2fsck, debugfs);
#                               a third disk with a fault layer (EIO in 4M-5M):
#                               the guest sees EIO there, blkgw counts 3 errors;
#                               a fourth whose reads in 8M-8M+4K are held 3 s:
#                               one held holds up no other read
#   test-vm-blkgw.sh reconnect [--cycles N] [--seed S]
#                               guest fio with verify while blkgw is killed
#                               with SIGKILL N times (default 3) at random
#                               moments (a delay of 300..3000 ms from the
#                               seed S, printed so a run can be replayed),
#                               each time with requests in flight, and
#                               started again; the restarted blkgw must
#                               resubmit exactly the requests the inflight
#                               region holds; the run dir must not grow.
#                               Prints one SOAK-FIGURES line (make soak).
#   test-vm-blkgw.sh MODE --qemu-backports
#                               the same with the newest QEMU from
#                               bookworm-backports (10.x, fetched once into
#                               the VM cache by build-guest.sh --qemu) instead
#                               of Debian 12's QEMU 7.2
#   test-vm-blkgw.sh MODE --mem-file
#                               guest memory in a file on /dev/shm
#                               (memory-backend-file: not sealed, so blkgw
#                               guards its mappings against SIGBUS) instead of
#                               a sealed memfd
#
# Needs BLKGW (ctest passes it) and GW_SOURCE_DIR. Exits 77 only when QEMU
# cannot be installed (vm-test.sh decides).
. "$(dirname "$0")/../lib.sh"
requires python3 cmp
mode=${1:?usage: $0 io|reconnect [--qemu-backports|--mem-file] [--cycles N] [--seed S]}
shift
src=${GW_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
vm=$src/tests/vm
mem_args=()
log_level=info
qemu_backports=""
cycles=3
seed=$((RANDOM * 32768 + RANDOM))
while [ $# -gt 0 ]; do
  case "$1" in
  --mem-file)
    mem_args=(--mem-path /dev/shm)
    log_level=debug # the line that says a region is guarded
    shift ;;
  --qemu-backports) qemu_backports=1; shift ;;
  --cycles) cycles=${2:?--cycles N}; shift 2 ;;
  --seed) seed=${2:?--seed S}; shift 2 ;;
  *) fail "unknown option $1" ;;
  esac
done
[[ "$cycles" =~ ^[1-9][0-9]*$ ]] || fail "--cycles wants a positive number, not '$cycles'"
[[ "$seed" =~ ^[0-9]+$ ]] || fail "--seed wants a number, not '$seed'"
if [ -n "$qemu_backports" ]; then
  QEMU_SYSTEM=$("$vm/build-guest.sh" --qemu -q | tail -n1) || fail "cannot fetch QEMU from bookworm-backports"
  export QEMU_SYSTEM
  echo "# QEMU: $("$QEMU_SYSTEM" --version | head -n1)"
fi
run=$T/run
vmpid=""

stop_vm() {
  if [ -n "$vmpid" ] && kill -0 "$vmpid" 2>/dev/null; then
    kill "$vmpid" 2>/dev/null
    wait "$vmpid" 2>/dev/null
  fi
  vmpid=""
}
on_exit stop_vm

# Start vm-test.sh in the background (QEMU waits for blkgw's sockets).
start_vm() {
  local script=$1
  shift
  "$vm/vm-test.sh" --workdir "$T/vm" --script "$vm/guest/$script" "$@" >"$T/vm.out" 2>&1 &
  vmpid=$!
}

# Wait for the VM's exit status; 77 (no QEMU) passes through as a skip.
wait_vm() {
  local rc=0
  wait "$vmpid" || rc=$?
  vmpid=""
  tail -n 40 "$T/vm.out"
  [ "$rc" -ne 77 ] || exit 77
  grep -E 'PASS:|FAIL:' "$T/vm/console.log" 2>/dev/null
  [ "$rc" -eq 0 ] || fail "the guest failed (exit $rc); console: $T/vm/console.log"
}

# Wait until the console shows $1 (or the VM ended).
wait_console() {
  local i
  for i in $(seq 3000); do
    grep -q "$1" "$T/vm/console.log" 2>/dev/null && return 0
    kill -0 "$vmpid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

case_io() {
  requires e2fsck debugfs md5sum
  truncate -s 128M "$T/disk0.raw" "$T/disk1.raw"
  cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  rawdisk: { backend: file, path: $T/disk0.raw }
  fsdisk: { backend: file, path: $T/disk1.raw, direct: true }
  faulty: { backend: memory, size: 16M, fault: { errno: EIO, ranges: 4M-5M } }
  slow: { backend: memory, size: 16M, fault: { delay: 3s, ops: read, ranges: 8M-8196K } }
exports:
  - { image: rawdisk, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/vda.sock, queues: 2, serial: blkgw-vda } }
  - { image: fsdisk, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/vdb.sock, queues: 2 } }
  - { image: faulty, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/vdc.sock } }
  - { image: slow, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/vdd.sock } }
YAML
  start_blkgw "$T/m.yaml" --log-level "$log_level"
  start_vm vhost-blkgw.sh --bin fio --bin blkdiscard --bin fstrim --bin mkfs.ext4 \
    --file /etc/mke2fs.conf:/etc/mke2fs.conf --module ext4 --module crc32c_generic -- \
    "${mem_args[@]}" --smp 2 --vhost-user-blk "$run/vda.sock,num-queues=2" --vhost-user-blk "$run/vdb.sock,num-queues=2" \
    --vhost-user-blk "$run/vdc.sock" --vhost-user-blk "$run/vdd.sock" \
    --append "blkgw.size_mib=128 blkgw.queues=2" --timeout 400
  wait_vm
  if [ ${#mem_args[@]} -gt 0 ]; then
    grep -q 'not sealed against shrinking: guarded' "$T/blkgw.log" ||
      fail "guest memory in a /dev/shm file, but blkgw did not guard its mappings"
    echo "ok - blkgw guarded the unsealed guest memory ($(grep -c 'not sealed against shrinking: guarded' "$T/blkgw.log") region(s))"
  fi
  "$BLKGW" status --json >"$T/status.json"
  jq -e '.exports[0].counters | .flushes > 0 and .trims > 0 and .zeroes > 0 and .errors == 0' \
    "$T/status.json" >/dev/null || { jq '.exports[0].counters' "$T/status.json"; fail "vda counters"; }
  jq -e '.exports[1].counters | .flushes > 0 and .trims > 0 and .errors == 0' "$T/status.json" \
    >/dev/null || { jq '.exports[1].counters' "$T/status.json"; fail "vdb counters"; }
  echo "ok - blkgw counted flushes, discards and write zeroes, no errors"
  # vdc: the guest met the fault layer's EIO 3 times (read, write, read again).
  jq -e '.exports[2].counters.errors == 3' "$T/status.json" >/dev/null ||
    { jq '.exports[2].counters' "$T/status.json"; fail "vdc: errors not counted as 3"; }
  echo "ok - blkgw counted the 3 injected errors on vdc"
  stop_blkgw
  (set +o pipefail; yes blkgw-vm-pattern | head -c 4194304) >"$T/pattern"
  cmp -n 4194304 -i 0:$((100 << 20)) "$T/pattern" "$T/disk0.raw" ||
    fail "disk0.raw does not hold the guest's pattern at 100 MiB"
  echo "ok - disk0.raw holds the guest's pattern at 100 MiB"
  cmp -n $((3 << 20)) -i $((40 << 20)):0 "$T/disk0.raw" /dev/zero ||
    fail "the discarded / zeroed range 40-43 MiB is not zero in disk0.raw"
  echo "ok - the discarded and zeroed range is zero in disk0.raw"
  e2fsck -fn "$T/disk1.raw" >"$T/fsck" 2>&1 || { cat "$T/fsck"; fail "e2fsck found problems in disk1.raw"; }
  echo "ok - e2fsck -fn: the guest's ext4 is clean in disk1.raw"
  want=$(sed -n 's/.*BLKGW-MD5 \([0-9a-f]*\).*/\1/p' "$T/vm/console.log" | tail -n1)
  got=$(debugfs -R "cat /big" "$T/disk1.raw" 2>/dev/null | md5sum | cut -d' ' -f1)
  [ -n "$want" ] && [ "$want" = "$got" ] || fail "/big read on the host: md5 $got, the guest wrote $want"
  echo "ok - /big read from disk1.raw with debugfs matches the guest's md5 $want"
}

# SIGSTOP blkgw until its inflight region shows requests in flight, then
# SIGKILL it. Prints how many were in flight.
kill_with_inflight() {
  local pid=$1 n tries=0 out
  while :; do
    tries=$((tries + 1))
    kill -STOP "$pid"
    out=$(python3 "$src/tests/vhost/inflight-peek.py" "$pid") || { kill -CONT "$pid"; return 1; }
    n=$(echo "$out" | sed -n 's/^total //p')
    if [ "${n:-0}" -gt 0 ]; then
      kill -KILL "$pid"
      echo "$out" >>"$T/peek.log"
      echo "$n"
      return 0
    fi
    kill -CONT "$pid"
    [ $tries -lt 2000 ] || return 1
    sleep 0.00$((RANDOM % 9 + 1))
  done
}

# The run dir's regular files and sockets: "COUNT BYTES".
rundir_size() {
  find "$run" \( -type f -o -type s -o -type l \) -printf '%s\n' | awk '{ n++; s += $1 } END { print n + 0, s + 0 }'
}

case_reconnect() {
  local round n resub total_in=0 total_re=0 delay t0 t1 size base="" passes
  # the guest's fio passes stop at the first pass boundary after this
  # marker appears at 126 MiB (written after the last kill)
  local stop_off=$(((128 - 2) << 20))
  RANDOM=$seed
  echo "# SOAK-SEED $seed (replay: --cycles $cycles --seed $seed)"
  truncate -s 128M "$T/disk.raw"
  cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  disk: { backend: file, path: $T/disk.raw, direct: true }
exports:
  - { image: disk, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/vu.sock, queues: 2 } }
YAML
  start_blkgw "$T/m.yaml"
  start_vm vhost-blkgw-reconnect.sh --bin fio -- "${mem_args[@]}" --smp 2 --vhost-user-blk "$run/vu.sock,num-queues=2" \
    --append "blkgw.size_mib=128 blkgw.fio_mib=112 blkgw.stop_mib=126" --timeout $((600 + cycles * 30))
  wait_console BLKGW-FIO-RUNNING || { wait_vm; fail "the guest never started fio"; }
  : >"$T/recovery_ms"
  for round in $(seq "$cycles"); do
    delay=$((300 + RANDOM % 2701))
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    grep -q BLKGW-FIO-DONE "$T/vm/console.log" && fail "round $round: fio ended before the kill"
    n=$(kill_with_inflight "$BLKGW_PID") || fail "round $round: never caught a request in flight"
    t0=$(date +%s%N)
    wait "$BLKGW_PID" 2>/dev/null || true
    BLKGW_PID=""
    echo "round $round: killed blkgw ${delay} ms after the last restart with $n request(s) in flight"
    mv "$T/blkgw.log" "$T/blkgw.$round.log"
    sleep 0.5
    start_blkgw "$T/m.yaml" --log-level debug
    # QEMU reconnects within a second or two and restarts both rings (with
    # recovery from its inflight region).
    for _ in $(seq 300); do
      [ "$(grep -c 'inflight tracked' "$T/blkgw.log")" -ge 2 ] && break
      sleep 0.1
    done
    [ "$(grep -c 'inflight tracked' "$T/blkgw.log")" -ge 2 ] ||
      fail "round $round: QEMU did not restart both rings with an inflight region"
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000)) >>"$T/recovery_ms"
    sleep 0.5
    resub=$(sed -n 's/.*resubmitting \([0-9]*\) request.*/\1/p' "$T/blkgw.log" | awk '{ s += $1 } END { print s + 0 }')
    torn=$(grep -c 'completed just before the restart' "$T/blkgw.log" || true)
    echo "round $round: the restarted blkgw resubmitted $resub, skipped $torn torn completion(s); rings back $(((t1 - t0) / 1000000)) ms after the kill"
    [ "$resub" -eq $((n - torn)) ] || fail "round $round: $n in flight at the kill, $torn torn, but $resub resubmitted"
    size=$(rundir_size)
    [ -n "$base" ] || base=$size
    # no more files than after round 1, no more bytes but for 16 a file
    # (in case a file records a pid)
    # shellcheck disable=SC2086 # two numbers each
    set -- $size $base
    [ "$1" -le "$3" ] && [ "$2" -le $(($4 + 16 * $3)) ] ||
      { ls -lR "$run"; fail "round $round: the run dir grew to $1 files, $2 bytes (after round 1: $3, $4)"; }
    total_in=$((total_in + n))
    total_re=$((total_re + resub))
  done
  # tell the guest to end its fio passes (it looks between passes)
  printf 'BLKGW-SOAK-STOP' | dd of="$T/disk.raw" bs=4096 seek=$((stop_off / 4096)) conv=notrunc,sync oflag=direct status=none
  wait_vm
  passes=$(grep -c 'PASS: fio randwrite' "$T/vm/console.log")
  [ "$passes" -ge 1 ] || fail "no fio pass completed"
  echo "ok - $cycles kills with $total_in request(s) in flight, $total_re resubmitted exactly once, fio verify passed ($passes passes)"
  stop_blkgw
  (set +o pipefail; yes blkgw-vm-pattern | head -c 1048576) >"$T/pattern"
  cmp -n 1048576 -i 0:$((127 << 20)) "$T/pattern" "$T/disk.raw" || fail "disk.raw lacks the final pattern"
  echo "ok - the backing file holds what the guest wrote after the last restart"
  # shellcheck disable=SC2086
  set -- $base
  echo "SOAK-FIGURES transport=vhost-user-blk cycles=$cycles survived=$cycles fio_passes=$passes" \
    "verified_mib=$((passes * 112)) recovery_ms_median=$(sort -n "$T/recovery_ms" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')" \
    "recovery_ms_max=$(sort -n "$T/recovery_ms" | tail -n1) rundir_files=$1 rundir_bytes=$2" \
    "inflight_at_kill=$total_in resubmitted=$total_re"
}

mkdir -p "$run"
case "$mode" in
io) case_io ;;
reconnect) case_reconnect ;;
*) fail "unknown mode $mode" ;;
esac
