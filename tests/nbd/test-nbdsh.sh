#!/bin/sh
# nbdsh: unaligned and out-of-range requests get the spec's errors, a
# read-only export refuses writes with EPERM, multi-conn is consistent.
. "$(dirname "$0")/../lib.sh"
requires nbdsh jq
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

run=$T/run
truncate -s 64M "$T/file.raw"
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  aligned: { backend: memory, size: 16M, block-size: 4096 }
  mem: { backend: memory, size: 64M }
  ro: { backend: memory, size: 16M }
  file: { backend: file, path: $T/file.raw }
exports:
  - { image: aligned, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: ro, transports: [nbd], read-only: true, nbd: { socket: $run/nbd.sock } }
  - { image: file, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
SOCK=$run/nbd.sock nbdsh_py -c "$(cat "$(dirname "$0")/nbdsh-errors.py")" || fail "nbdsh checks failed"
# The refusals were counted as errors, on the right exports.
"$BLKGW" status --json >"$T/status.json"
jq -e '.exports[] | select(.id == "mem") | .counters.errors >= 10' "$T/status.json" >/dev/null || fail "mem errors not counted"
jq -e '.exports[] | select(.id == "ro") | .counters.errors == 3' "$T/status.json" >/dev/null || fail "ro errors not counted as 3"
jq -e '.exports[] | select(.id == "file") | .counters.errors == 0' "$T/status.json" >/dev/null || fail "file export has errors"
stop_blkgw
