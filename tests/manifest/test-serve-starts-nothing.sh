#!/bin/sh
# A manifest with one good and one bad export starts nothing and leaves no
# socket; a manifest that is valid but cannot start (a TCP address in use)
# exits non-zero and removes what it had created.
. "$(dirname "$0")/../lib.sh"
requires python3

run=$T/run
cat >"$T/bad.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  good: { backend: memory, size: 64M }
exports:
  - { image: good, transports: [nbd], nbd: { socket: $run/good.sock } }
  - { image: missing, transports: [nbd], nbd: { socket: $run/missing.sock } }
YAML
rc=0
"$BLKGW" serve "$T/bad.yaml" 2>"$T/err" || rc=$?
[ "$rc" -eq 1 ] || fail "serve of a bad manifest exited $rc"
grep -q "unknown image 'missing'" "$T/err" || fail "no message about the missing image: $(cat "$T/err")"
[ ! -e "$run" ] || fail "serve created $run for a manifest it refused: $(ls -la "$run")"

# Hold a TCP port so the second export cannot bind it.
port_file=$T/port
/usr/bin/python3 - "$port_file" <<'PY' &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(60)
PY
holder=$!
on_exit "kill $holder 2>/dev/null"
i=0; while [ ! -s "$port_file" ]; do i=$((i+1)); [ $i -lt 100 ] || fail "port holder did not start"; sleep 0.1; done
port=$(cat "$port_file")
cat >"$T/busy.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  a: { backend: memory, size: 64M }
  b: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [nbd], nbd: { socket: $run/a.sock } }
  - { image: b, transports: [nbd], nbd: { listen: "127.0.0.1:$port" } }
YAML
"$BLKGW" check "$T/busy.yaml" >/dev/null || fail "busy.yaml should be valid"
rc=0
"$BLKGW" serve "$T/busy.yaml" 2>"$T/err" || rc=$?
[ "$rc" -eq 1 ] || fail "serve with a busy address exited $rc, expected 1"
grep -q "127.0.0.1:$port" "$T/err" || fail "the error does not name the busy address: $(cat "$T/err")"
[ ! -e "$run/a.sock" ] || fail "the first export's socket was left behind"
[ ! -e "$run/control.sock" ] || fail "the control socket was left behind"
echo "nothing started, nothing left behind"
