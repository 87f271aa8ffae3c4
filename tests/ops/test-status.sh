#!/bin/sh
# blkgw status, as an operator reads it: the table has size, read-only and
# backend columns that stay aligned whatever the transport's name; --json
# carries an absolute manifest path and per-op total times; without a
# daemon, --json still prints a JSON object (an error) and exits non-zero;
# worker_loops counts what each worker's loop did.
. "$(dirname "$0")/../lib.sh"
requires jq qemu-io

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  disk: { backend: memory, size: 64M }
  floor: { backend: null, size: 1G }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $run/disk.sock } }
  - { image: floor, read-only: true, transports: [vhost-user-blk] }
YAML
cd "$T"
start_blkgw m.yaml # a relative path: status must still say where it is
qemu-io -f raw -c 'write -P 1 0 1M' -c 'read -P 1 0 1M' -c 'read 0 512K' -c flush \
  "nbd+unix:///disk?socket=$run/disk.sock" >/dev/null || fail "qemu-io failed"

"$BLKGW" status >"$T/status.txt" || fail "status failed"
cat "$T/status.txt"
# Every row starts each column where the header does.
awk 'NR == 2 { for (i = 1; i <= NF; i++) col[$i] = index($0, $i); next }
     NR > 2 && /^[a-z]/ {
       if (substr($0, col["STATE"], 7) != "running") { print "STATE misplaced: " $0; bad = 1 }
       if (substr($0, col["RO"], 3) !~ /^(yes|no )$/) { print "RO misplaced: " $0; bad = 1 }
       if (substr($0, col["BACKEND"], 4) !~ /^(memo|null)$/) { print "BACKEND misplaced: " $0; bad = 1 }
       e = substr($0, col["ENDPOINT"], 1); if (e != "n" && e != "/") { print "ENDPOINT misplaced: " $0; bad = 1 }
       rows++ }
     END { exit bad || rows != 2 }' "$T/status.txt" || fail "the status table's columns are not aligned"
grep -E "^floor +floor +vhost-user-blk +running +1\\.0 GiB +yes +0 +0 " "$T/status.txt" >/dev/null ||
  fail "the floor row lacks its size or read-only mark"

"$BLKGW" status --json >"$T/s.json" || fail "status --json failed"
jq -e --arg m "$T/m.yaml" '.manifest == $m' "$T/s.json" >/dev/null ||
  fail "manifest is not the absolute path: $(jq .manifest "$T/s.json")"
jq -e '.exports[0].counters | .reads == 2 and .writes == 1 and .flushes >= 1
  and .read_total_time_ns > 0 and .write_total_time_ns > 0 and .flush_total_time_ns > 0
  and .trim_total_time_ns == 0 and .zero_total_time_ns == 0 and .cache_total_time_ns == 0' \
  "$T/s.json" >/dev/null || { jq .exports[0].counters "$T/s.json"; fail "per-op total times missing or wrong"; }
# Means in a plausible range: more than nothing, less than the test's life.
jq -e '.exports[0].counters | (.write_total_time_ns / .writes) < 60e9 and (.read_total_time_ns / .reads) < 60e9' \
  "$T/s.json" >/dev/null || fail "per-op times implausible"

# Each worker's loop, seen from outside: 300 more 4 KiB reads at QD1 show
# up in the pool's request count, each counter stays within the one it is a
# part of, and the coalescer's state is a known one.
reads=""
for i in $(seq 300); do reads="$reads -c 'read $((i * 4096)) 4k'"; done
eval qemu-io -f raw $reads "nbd+unix:///disk?socket=$run/disk.sock" >/dev/null || fail "qemu-io reads failed"
"$BLKGW" status --json >"$T/s2.json" || fail "status --json failed"
jq -e --slurpfile a "$T/s.json" '.worker_loops as $w | ($a[0].worker_loops) as $v
  | ($w | length) == .workers and ($v | length) == .workers
  and ([$w[].requests] | add) - ([$v[].requests] | add) >= 300
  and ([$w[].turns] | add) > ([$v[].turns] | add)
  and all($w[]; .background == false and .turns >= .sleeps and .turns >= .spin_turns
      and .spin_turns >= .spin_turns_with_work and .turns >= 1
      and (.coalesce.phase | IN("idle", "measure-off", "measure-on", "settled"))
      and .ring_polls >= .ring_polls_with_work and .kicks == 0
      and .coalesce.window_us >= 0 and .held_signals == 0)' "$T/s2.json" >/dev/null ||
  { jq .worker_loops "$T/s.json" "$T/s2.json"; fail "worker_loops counters missing or inconsistent"; }
stop_blkgw

rc=0
"$BLKGW" status --json >"$T/none.json" 2>"$T/err" || rc=$?
[ $rc -eq 1 ] || fail "status --json without a daemon exited $rc"
jq -e '.ok == false and .error.code < 0 and (.error.message | test("is the daemon running"))' "$T/none.json" >/dev/null ||
  fail "status --json without a daemon did not print a JSON error: $(cat "$T/none.json" "$T/err")"
echo "status: table aligned with size, read-only and backend; JSON with times and worker loops; JSON error without a daemon"
