#!/bin/sh
# NBD's socket polling leaves slow requests alone (docs/transports/nbd.md,
# socket polling), seen in `blkgw status --json` with real clients; one
# worker, pinned to one CPU, the clients to another:
# - fio's nbd engine at queue depth 1 on a null image: the worker polls
#   (spin turns that found work grow), its connections are not left
#   unpolled as slow (a stop of a few requests when the worker was
#   preempted for time slices running, on a loaded host, is allowed);
# - the same on a null image whose reads the fault layer holds 1 ms: the
#   connection stops polling (socket_poll.stopped_slow), and the worker's
#   spin turns stay far below one per request;
# - one nbdsh connection reading a held range, then an unheld one: polling
#   stops (slow_connections 1 while connected), then starts again
#   (resumed, slow_connections 0).
# Nothing here is timed: the fault layer's delay makes a request at least
# 1 ms long, ten times the 100 us above which polling stops.
. "$(dirname "$0")/../lib.sh"
cd "$T"
requires fio jq taskset nproc nbdsh
fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*nbd' || skip "this fio has no nbd engine"
[ "$(nproc)" -ge 2 ] || skip "pinning client and daemon to two CPUs needs two; this host has $(nproc)"
two_cpus

run=$T/run
sock=$run/nbd.sock
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 1 }
images:
  fast: { backend: null, size: 64M }
  slow: { backend: null, size: 64M, fault: { delay: 1ms, ops: read } }
  mixed: { backend: null, size: 64M, fault: { delay: 1ms, ops: read, ranges: "0-1M" } }
exports:
  - { image: fast, transports: [nbd], nbd: { socket: $sock } }
  - { image: slow, transports: [nbd], nbd: { socket: $sock } }
  - { image: mixed, transports: [nbd], nbd: { socket: $sock } }
YAML
BLKGW_WRAP="taskset -c $c1" start_blkgw "$T/m.yaml"

# st JQ: one value from status --json
st() { "$BLKGW" status --json | jq -r "$1"; }
poll() { st ".exports[] | select(.image == \"$1\") | .socket_poll.$2"; }
reqs() { st ".exports[] | select(.image == \"$1\") | .counters.requests"; }
spins() { st '.worker_loops[0].spin_turns'; }
found() { st '.worker_loops[0].spin_turns_with_work'; }
qd1() {
  taskset -c "$c0" fio --name="$1" --ioengine=nbd --uri="nbd+unix:///$1?socket=$sock" \
    --rw=randread --bs=4k --size=64M --iodepth=1 --time_based --runtime="$2" \
    --output="$T/fio.out" >"$T/fio.err" 2>&1 || { cat "$T/fio.out" "$T/fio.err"; fail "fio on $1"; }
}

echo "== null image, QD1: polled"
f0=$(found) r0=$(reqs fast)
qd1 fast 2
f1=$(found) r1=$(reqs fast)
echo "fast: $((r1 - r0)) requests, $((f1 - f0)) spin turns that found work, socket_poll $(st '.exports[] | select(.image == "fast") | .socket_poll | tostring')"
[ "$((f1 - f0))" -gt 0 ] || fail "a serial client of a null image was never polled for"
# A worker preempted for several time slices running (a loaded host) may
# stop it briefly; never for long, never often.
stops=$(poll fast stopped_slow)
[ $((stops * 1000)) -lt $((r1 - r0)) ] || fail "a null image's connection stopped polling as if slow $stops times in $((r1 - r0)) requests"
[ "$(poll fast slow_connections)" = 0 ] || fail "a null image's connection was left unpolled as slow"

echo "== requests held 1 ms, QD1: not polled"
s0=$(spins) r0=$(reqs slow)
qd1 slow 1
s1=$(spins) r1=$(reqs slow)
n=$((r1 - r0))
echo "slow: $n requests, $((s1 - s0)) spin turns, socket_poll $(st '.exports[] | select(.image == "slow") | .socket_poll | tostring')"
[ "$(poll slow stopped_slow)" -ge 1 ] || fail "the slow image's connection never stopped polling"
[ $(((s1 - s0) * 10)) -lt "$n" ] || fail "the worker spun $((s1 - s0)) turns for $n requests of 1 ms"
[ "$n" -ge 50 ] || fail "fio sent only $n requests to the slow image in 1 s"
[ "$(poll slow slow_connections)" = 0 ] || fail "slow_connections did not drop when fio disconnected"

echo "== one connection: slow, then fast again"
nbdsh_py -u "nbd+unix:///mixed?socket=$sock" -c - <<PY || fail "nbdsh on the mixed image"
import json, subprocess
def sp():
    out = subprocess.run(["$BLKGW", "status", "--json"], check=True, capture_output=True).stdout
    return [e for e in json.loads(out)["exports"] if e["image"] == "mixed"][0]["socket_poll"]
for i in range(50):
    h.pread(4096, (i % 256) * 4096)
s = sp()
print("after 50 held reads:", s)
assert s["stopped_slow"] == 1 and s["slow_connections"] == 1, s
for i in range(2000):
    h.pread(4096, 8 * 1024 * 1024 + (i % 256) * 4096)
s = sp()
print("after 2000 unheld reads:", s)
assert s["resumed"] == 1 and s["slow_connections"] == 0, s
PY
stop_blkgw
echo "PASS nbd socket polling and slow requests"
