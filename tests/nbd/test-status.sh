#!/bin/sh
# blkgw status: one row per export with image, transport, endpoint, state and
# counters; --json carries the same; the control socket refuses bad requests.
. "$(dirname "$0")/../lib.sh"
requires jq qemu-io python3

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, control-socket: $T/ctl.sock }
images:
  disk: { backend: memory, size: 64M }
  floor: { backend: null, size: 1G }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $run/disk.sock } }
  - { image: floor, transports: [nbd], read-only: true, nbd: { socket: $run/floor.sock } }
YAML
start_blkgw "$T/m.yaml" --pidfile "$T/pid"
[ "$(cat "$T/pid")" = "$BLKGW_PID" ] || fail "pid file does not hold the daemon's pid"
[ "$(stat -c %a "$T/ctl.sock")" = 600 ] || fail "control socket is not mode 0600"
[ "$(stat -c %a "$run/disk.sock")" = 600 ] || fail "export socket is not mode 0600"
qemu-io -f raw -c 'write -P 1 0 1M' -c 'read -P 1 0 1M' -c 'read 0 512K' "nbd+unix:///disk?socket=$run/disk.sock" >/dev/null

"$BLKGW" status --control "$T/ctl.sock" >"$T/status.txt" || fail "status failed"
cat "$T/status.txt"
grep -E "^disk +disk +nbd +running +64\.0 MiB +no +0 +[0-9]+ +1\.5 MiB +1\.0 MiB +0  memory 64 MiB \(1 MiB written\)  nbd\+unix:///disk\?socket=$run/disk.sock$" "$T/status.txt" >/dev/null ||
  fail "the disk row is wrong"
grep -E "^floor +floor +nbd +running" "$T/status.txt" >/dev/null || fail "the floor row is missing"
# --manifest finds the control socket by itself; BLKGW_CONTROL is honoured too.
BLKGW_CONTROL= "$BLKGW" status --manifest "$T/m.yaml" --json >"$T/s.json" || fail "status --manifest failed"
jq -e '.ok and (.exports | length) == 2' "$T/s.json" >/dev/null || fail "status --json: wrong export count"
jq -e '.exports[0] | .image == "disk" and .transport == "nbd" and .state == "running" and .size == 67108864
  and .counters.bytes_written == 1048576 and .counters.bytes_read == 1572864 and .counters.errors == 0
  and .counters.writes == 1 and .read_only == false' "$T/s.json" >/dev/null || { cat "$T/s.json"; fail "disk counters wrong"; }
jq -e '.exports[1] | .read_only == true and .backend == "null 1 GiB"' "$T/s.json" >/dev/null || fail "floor export wrong"

# The control socket answers bad requests with errors and stays up.
python3 - "$T/ctl.sock" <<'PY' || fail "control socket error handling"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def ask(line):
    f.write(line + b"\n"); f.flush(); return json.loads(f.readline())
r = ask(b"{not json"); assert not r["ok"] and "JSON" in r["error"]["message"], r
r = ask(b"[1,2]"); assert not r["ok"], r
r = ask(b'{"command": "frobnicate"}'); assert not r["ok"] and "frobnicate" in r["error"]["message"], r
r = ask(b'{"cmd": "status"}'); assert not r["ok"], r
r = ask(b'{"command": "version"}'); assert r["ok"] and r["version"], r
r = ask(b'{"command": "status"}'); assert r["ok"] and len(r["exports"]) == 2, r
PY
stop_blkgw
[ ! -e "$T/ctl.sock" ] && [ ! -e "$T/pid" ] || fail "control socket or pid file left behind"
rc=0; "$BLKGW" status --control "$T/ctl.sock" 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "is the daemon running" "$T/err" || fail "status without a daemon: rc $rc, $(cat "$T/err")"
