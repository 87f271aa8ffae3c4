#!/bin/sh
# FUSE over io_uring: the bounded, adaptive poll for a serial client
# (poll-us, docs/transports/fuse.md), seen in `blkgw status`'s counters with
# fio at queue depth 1 and the CPUs pinned with taskset:
# - blkgw on one CPU, fio on another: the worker polls (polled for > 0), and
#   fio's crc32c verify passes while it does;
# - the same with poll-us: 0: never polled;
# - requests 500 us apart (fio thinktime, beyond twice poll-us): not polled
#   (a window or two around open and close at most);
# - blkgw and fio on the same CPU: never polled (spinning there would only
#   delay the client), and the counter of windows not opened for it grows.
. "$(dirname "$0")/../lib.sh"
requires fio taskset nproc
[ -c /dev/fuse ] || skip "no /dev/fuse on this host"
[ "$(id -u)" = 0 ] || skip "mounting FUSE needs root"
[ "$(nproc)" -ge 2 ] || skip "pinning client and daemon to two CPUs needs two; this host has $(nproc)"
p=/sys/module/fuse/parameters/enable_uring
[ -e $p ] || skip "this kernel ($(uname -r)) has no FUSE over io_uring (6.14+)"
if [ "$(cat $p)" != Y ]; then
  echo Y >$p 2>/dev/null || skip "FUSE over io_uring is off ($p = N) and cannot be turned on"
  on_exit "echo N > $p"
fi
two_cpus

run=$T/run
mkdir -p "$run"
cat >"$T/m.yaml" <<EOM
version: 1
gateway: { run-dir: $run, workers: 1 }
images:
  a: { backend: memory, size: 64M }
  b: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [fuse], fuse: { path: $T/a.raw, io-uring: on } }
  - { image: b, transports: [fuse], fuse: { path: $T/b.raw, io-uring: on, poll-us: 0 } }
EOM
on_exit "umount -l $T/a.raw 2>/dev/null; umount -l $T/b.raw 2>/dev/null"
BLKGW_WRAP="taskset -c $c1" start_blkgw "$T/m.yaml"

# counter FILE NAME: a number from the file's status line
counter() {
  "$BLKGW" status | grep -F "$T/$1 (io_uring" | sed -n "s/.*$2: \([0-9]*\).*/\1/p"
}
# qd1 CPU FILE [FIO ARGS]: 3 s of 4k random writes at QD1, verified
qd1() {
  cpu=$1 f=$2
  shift 2
  taskset -c "$cpu" fio --name=p --filename="$T/$f" --ioengine=io_uring --direct=1 --iodepth=1 \
    --rw=randwrite --bs=4k --size=16M --time_based --runtime=3 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --verify_state_save=0 "$@" --output="$T/fio.out" || { cat "$T/fio.out"; fail "fio on $f $*"; }
}

echo "== client on CPU $c0, blkgw on CPU $c1: polls"
qd1 "$c0" a.raw
polled=$(counter a.raw "polled for")
echo "a.raw: $("$BLKGW" status | grep -F "$T/a.raw" | sed 's/.*(io_uring/(io_uring/')"
[ "${polled:-0}" -gt 0 ] || fail "a serial client on another CPU was never polled for"

echo "== poll-us: 0 never polls"
qd1 "$c0" b.raw
[ "$(counter b.raw "polled for")" = 0 ] || fail "poll-us: 0, yet polled: $("$BLKGW" status | grep -F "$T/b.raw")"
[ "$(counter b.raw "requests")" -gt 1000 ] || fail "b.raw served too few requests over io_uring"

echo "== requests 500 us apart: not polled"
before=$(counter a.raw "polled for")
req0=$(counter a.raw "requests")
# No verify pass: fio's verifying reads do not think between requests.
taskset -c "$c0" fio --name=t --filename="$T/a.raw" --ioengine=io_uring --direct=1 --iodepth=1 \
  --rw=randread --bs=4k --size=16M --time_based --runtime=1 --thinktime=500 --output="$T/fio.out" ||
  { cat "$T/fio.out"; fail "fio with thinktime"; }
after=$(counter a.raw "polled for")
req1=$(counter a.raw "requests")
# Opening and closing the file sends a few requests back to back (LOOKUP,
# OPEN, FLUSH...), which may open a window or two; the reads never do.
echo "$((req1 - req0)) requests, polled for $((after - before))"
[ $(((after - before) * 50)) -lt $((req1 - req0)) ] ||
  fail "a client 500 us apart (more than twice poll-us) was polled for $((after - before)) times in $((req1 - req0)) requests"

echo "== client and blkgw on the same CPU: not polled"
same0=$(counter a.raw "not polled (client on the worker's CPU)")
qd1 "$c1" a.raw
same1=$(counter a.raw "not polled (client on the worker's CPU)")
after2=$(counter a.raw "polled for")
[ "$after2" = "$after" ] || fail "polled for a client on the worker's own CPU ($((after2 - after)) times)"
[ "$same1" -gt "$same0" ] || fail "the same-CPU counter did not grow ($same0 -> $same1)"
echo "same CPU: $((same1 - same0)) windows not opened"
stop_blkgw TERM
echo "PASS fuse io_uring polling"
