#!/bin/sh
# The Prometheus endpoint (gateway.metrics): over TCP and over a unix socket
# it answers text that `promtool check metrics` accepts, with per-export
# bytes, requests per operation, errors, in-flight, latency histograms, the
# active transport, and the transports passed over with their reasons; a bad
# address is a manifest error; changing it is reported as needing a restart.
. "$(dirname "$0")/../lib.sh"
requires curl promtool qemu-io jq
run=$T/run
port=$(free_port)
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, metrics: "127.0.0.1:$port" }
images:
  disk: { backend: memory, size: 64M }
exports:
  - { image: disk, transports: [nbd] }
  - { image: disk, read-only: true, transports: [nbd, vhost-user-blk], nbd: { attach: true } }
YAML
start_blkgw "$T/m.yaml"
qemu-io -f raw -c 'write -P 1 0 1M' -c 'read -P 1 0 1M' -c 'read 0 64K' -c flush \
  "nbd+unix:///disk?socket=$run/disk.sock" >/dev/null || fail "qemu-io failed"
curl -sf "http://127.0.0.1:$port/metrics" >"$T/m.txt" || fail "GET /metrics failed"
promtool check metrics <"$T/m.txt" >"$T/promtool.out" 2>&1 || { cat "$T/promtool.out"; fail "promtool check metrics failed"; }
want() { grep -qF -- "$1" "$T/m.txt" || { grep -v _bucket "$T/m.txt"; fail "metrics lack: $1"; }; }
want 'blkgw_export_written_bytes_total{export="disk"} 1048576'
want 'blkgw_export_read_bytes_total{export="disk"} 1114112'
want 'blkgw_export_requests_total{export="disk",op="read"} 2'
want 'blkgw_export_requests_total{export="disk",op="write"} 1'
want 'blkgw_export_errors_total{export="disk"} 0'
want 'blkgw_export_in_flight{export="disk"} 0'
want 'blkgw_export_info{export="disk",image="disk",transport="nbd",state="running"} 1'
want 'blkgw_export_request_duration_seconds_count{export="disk",op="write"} 1'
want 'blkgw_export_request_duration_seconds_bucket{export="disk",op="read",le="+Inf"} 2'
# Per worker loop: each pool worker has its counters; the pool counted the requests above.
for n in turns sleeps spin_turns spin_turns_with_work requests kicks ring_polls ring_polls_with_work held_signals; do
  want "# TYPE blkgw_worker_${n}_total counter"
done
want 'blkgw_worker_coalesce_window_seconds{worker="worker0"}'
want 'blkgw_worker_turns_total{worker="worker0"}'
awk '/^blkgw_worker_requests_total\{worker="worker[0-9]+"\}/ { n += $2; w++ }
  END { exit !(w >= 1 && n >= 3) }' "$T/m.txt" || fail "per-worker request counts missing or short"
if [ ! -e /sys/module/nbd ]; then
  want 'blkgw_export_info{export="disk#2",image="disk",transport="vhost-user-blk",state="running"} 1'
  want 'blkgw_export_fallbacks{export="disk#2"} 1'
  grep -q '^blkgw_export_transport_rejected{export="disk#2",transport="nbd",reason="the nbd kernel module is not loaded' "$T/m.txt" ||
    fail "the rejected transport and its reason are missing"
fi
# Buckets are cumulative and end at the count.
awk -F'[{}]' '/_bucket\{export="disk",op="read"/ { split($3, v, " "); if (v[1] + 0 < last) bad = 1; last = v[1] + 0 }
  END { exit bad || last != 2 }' "$T/m.txt" || fail "histogram buckets are not cumulative"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/metrics")
[ "$code" = 405 ] || fail "POST answered $code, not 405"
# Moving it is a restart, not silently ignored.
sed "s|metrics: \"127.0.0.1:$port\"|metrics: $run/metrics.sock|" "$T/m.yaml" >"$T/m2.yaml"
"$BLKGW" apply --dry-run "$T/m2.yaml" | grep -q "^needs restart: metrics (127.0.0.1:$port -> $run/metrics.sock)" ||
  fail "changing metrics was not reported as needing a restart"
stop_blkgw
# Over a unix socket.
start_blkgw "$T/m2.yaml"
curl -sf --unix-socket "$run/metrics.sock" http://localhost/metrics >"$T/u.txt" || fail "GET over the unix socket failed"
promtool check metrics <"$T/u.txt" >/dev/null 2>&1 || fail "promtool rejects the unix socket's text"
stop_blkgw
[ ! -e "$run/metrics.sock" ] || fail "the metrics socket was left behind"
# A bad address is a manifest error.
sed "s|metrics: \"127.0.0.1:$port\"|metrics: nonsense|" "$T/m.yaml" >"$T/bad.yaml"
"$BLKGW" check "$T/bad.yaml" 2>"$T/bad.err" && fail "check accepted metrics: nonsense"
grep -q "bad.yaml:2:.*'metrics' must be HOST:PORT such as 127.0.0.1:9333, or an absolute unix socket path (got 'nonsense')" "$T/bad.err" ||
  { cat "$T/bad.err"; fail "bad metrics address: unclear message"; }
echo "metrics: promtool accepts TCP and unix output; counters, histograms, fallbacks right"
