#!/bin/sh
# Malformed and hostile NBD clients get protocol errors or lose their own
# connection; the daemon never crashes and other clients keep working.
. "$(dirname "$0")/../lib.sh"
requires python3

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  mem: { backend: memory, size: 256M }
exports:
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
python3 "$(dirname "$0")/hostile.py" "$run/nbd.sock" mem "$BLKGW_PID" || fail "hostile client checks failed"
"$BLKGW" status >/dev/null || fail "status failed after the hostile clients"
stop_blkgw
