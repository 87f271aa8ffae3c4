#!/bin/sh
# Running under systemd: the unit `make install` puts in PREFIX/lib/systemd/system
# passes `systemd-analyze verify` (with the installed man pages) and names the
# installed binary; the daemon speaks sd_notify's datagram protocol to a
# NOTIFY_SOCKET this test owns: READY=1 with a one-line STATUS= once every
# export is up, RELOADING=1 then READY=1 around a SIGHUP apply, STOPPING=1.
. "$(dirname "$0")/../lib.sh"
requires systemd-analyze make cmake
root=$T/root
make -s -C "$GW_SOURCE_DIR" install BUILD="$GW_BUILD_DIR" PREFIX=/usr DESTDIR="$root" >"$T/out" 2>&1 ||
  { cat "$T/out"; fail "make install failed"; }
unit=$root/usr/lib/systemd/system/blkgw.service
[ -f "$unit" ] || fail "make install did not install the unit"
grep -qx "ExecStart=/usr/bin/blkgw serve /etc/blkgw/manifest.yaml" "$unit" || fail "ExecStart does not name the installed binary"
grep -qx "ExecReload=/usr/bin/blkgw apply /etc/blkgw/manifest.yaml" "$unit" || fail "ExecReload is not apply"
grep -qx "Type=notify" "$unit" || fail "not Type=notify"
# verify checks that ExecStart's binary exists: point it at the one under DESTDIR.
sed "s|/usr/bin/blkgw|$root/usr/bin/blkgw|" "$unit" >"$T/blkgw.service"
MANPATH=$root/usr/share/man systemd-analyze verify "$T/blkgw.service" >"$T/verify" 2>&1 ||
  { cat "$T/verify"; fail "systemd-analyze verify failed"; }

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  a: { backend: memory, size: 16M }
  b: { backend: null, size: 1G }
exports:
  - { image: a, transports: [nbd] }
  - { image: b, read-only: true, transports: [nbd, vhost-user-blk], nbd: { attach: true } }
YAML
# A datagram socket of our own, as systemd would hold it; every message to a file.
/usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[2] + ".ready", "w").close()
with open(sys.argv[2], "a") as f:
    while True:
        m = s.recv(4096).decode()
        f.write(m.replace("\n", " | ") + "\n")
        f.flush()
' "$T/notify.sock" "$T/notify.log" &
listener=$!
on_exit "kill $listener 2>/dev/null"
i=0; until [ -e "$T/notify.log.ready" ]; do i=$((i+1)); [ $i -lt 100 ] || fail "listener did not start"; sleep 0.1; done
wait_for() { # wait_for REGEX: a notify message matching it arrives
  i=0
  until grep -q -- "$1" "$T/notify.log" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 300 ] || { cat "$T/notify.log" 2>/dev/null; fail "no notify message like '$1'"; }
    sleep 0.1
  done
}
NOTIFY_SOCKET=$T/notify.sock start_blkgw "$T/m.yaml"
fb=1; [ -e /sys/module/nbd ] && fb=0 # without the nbd module, b falls back to vhost-user-blk
wait_for "^READY=1 | STATUS=2 of 2 exports serving, $fb fell back, 0 failed$"
kill -HUP "$BLKGW_PID"
wait_for "^RELOADING=1 | STATUS=applying "
i=0; until [ "$(grep -c '^READY=1' "$T/notify.log")" -ge 2 ]; do
  i=$((i+1)); [ $i -lt 300 ] || { cat "$T/notify.log"; fail "no READY=1 after the reload"; }; sleep 0.1; done
stop_blkgw
wait_for "^STOPPING=1"
echo "systemd: unit verifies; READY/STATUS, RELOADING/READY, STOPPING arrive on NOTIFY_SOCKET"
