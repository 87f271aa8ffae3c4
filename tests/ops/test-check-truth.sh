#!/bin/sh
# `blkgw check` refuses whatever `blkgw serve` would refuse for a reason it
# can know in advance, with the same FILE:LINE:COL messages and exit 1:
# attach without the nbd module or without CAP_SYS_ADMIN, an image that can
# only be read exported writable, one socket path for two transports or for
# a transport and the control socket, a socket folder that cannot be written,
# a file where a socket should go. A later transport taking over is reported,
# not refused; a TCP port is named as not checked.
. "$(dirname "$0")/../lib.sh"
requires setpriv unshare
[ "$(id -u)" -eq 0 ] || skip "needs root (setpriv, a read-only mount)"

run=$T/run
n=0
# refused NAME PATTERN [RUNNER...]: check and serve of $T/NAME.yaml both exit 1
# with the same problem lines, and one of them matches PATTERN.
refused() {
  name=$1 pattern=$2; shift 2
  m=$T/$name.yaml
  rc=0; "$@" "$BLKGW" check "$m" >"$T/check.out" 2>"$T/check.err" || rc=$?
  [ $rc -eq 1 ] || fail "$name: check exited $rc, expected 1: $(cat "$T/check.out" "$T/check.err")"
  rc=0; "$@" "$BLKGW" serve "$m" >"$T/serve.out" 2>"$T/serve.err" || rc=$?
  [ $rc -eq 1 ] || fail "$name: serve exited $rc, expected 1: $(cat "$T/serve.err")"
  grep "^$m:" "$T/check.err" >"$T/check.lines" || true
  grep "^$m:" "$T/serve.err" >"$T/serve.lines" || true
  grep -q -- "$pattern" "$T/check.lines" || fail "$name: check does not say '$pattern': $(cat "$T/check.err")"
  diff -u "$T/check.lines" "$T/serve.lines" >&2 || fail "$name: check and serve disagree"
  grep -q "nothing was started" "$T/serve.err" || fail "$name: serve did not say it started nothing"
  echo "ok - $name: $(head -1 "$T/check.lines" | sed "s|^$T/||")"
  n=$((n + 1))
}
manifest() { # NAME: the manifest on stdin, with the header every case shares
  { echo "version: 1"; echo "gateway: { run-dir: $run }"; cat; } >"$T/$1.yaml"
}

# attach: true on this host, which has no nbd module (and cannot load one).
[ ! -d /sys/module/nbd ] || skip "this host has the nbd module; the test expects none"
manifest attach <<YAML
images:
  d: { backend: memory, size: 64M }
exports:
  - { image: d, transports: [nbd], nbd: { attach: true } }
YAML
refused attach ":6:5: export 1 (d): no transport could start: nbd: the nbd kernel module is not loaded (modprobe nbd)"
# ... and without CAP_SYS_ADMIN (root, but not with that capability).
refused attach "no transport could start: nbd: attaching a kernel NBD device needs root (CAP_SYS_ADMIN)" \
  setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin

# The only transport that cannot work is an error; a later one taking over is not.
manifest fallback <<YAML
images:
  d: { backend: memory, size: 64M }
exports:
  - { image: d, transports: [nbd, vhost-user-blk], nbd: { attach: true } }
YAML
"$BLKGW" check "$T/fallback.yaml" >"$T/out" 2>&1 || fail "a fallback to vhost-user-blk was refused: $(cat "$T/out")"
grep -q "^  nbd: not available here: the nbd kernel module is not loaded" "$T/out" &&
  grep -q "^  falls back to vhost-user-blk" "$T/out" || fail "the fallback is not reported: $(cat "$T/out")"
echo "ok - fallback: reported, not refused"

# An image only readable by the user blkgw runs as, exported writable.
mkdir -p "$run" && chmod 0777 "$run" && chmod 0711 "$T"
truncate -s 16M "$T/ro.raw" && chmod 0444 "$T/ro.raw"
manifest readonly <<YAML
images:
  ro: { backend: file, path: $T/ro.raw }
exports:
  - { image: ro, transports: [nbd] }
YAML
chmod 0644 "$T/readonly.yaml"
refused readonly ":6:5: export 1: image 'ro' can only be read ($T/ro.raw: Permission denied); set 'read-only: true'" \
  setpriv --reuid=64211 --regid=64211 --clear-groups
sed -i 's/transports: \[nbd\] }/transports: [nbd], read-only: true }/' "$T/readonly.yaml"
setpriv --reuid=64211 --regid=64211 --clear-groups "$BLKGW" check "$T/readonly.yaml" >/dev/null 2>"$T/err" ||
  fail "with read-only: true it is still refused: $(cat "$T/err")"

# One path, two servers: an NBD socket that is another export's vhost-user-blk socket ...
manifest clash <<YAML
images:
  a: { backend: memory, size: 64M }
  b: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [vhost-user-blk], vhost-user-blk: { socket: $run/x.sock } }
  - { image: b, transports: [nbd], nbd: { socket: $run/x.sock } }
YAML
refused clash ":8:30: export 2: nbd: socket $run/x.sock is also the vhost-user-blk socket of export 1 (line 7): one path, one server"
# ... or the control socket (the default one, and one set in gateway).
manifest control <<YAML
images:
  a: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [nbd], nbd: { socket: $run/control.sock } }
YAML
refused control ":6:30: export 1: nbd: socket $run/control.sock is the gateway's control socket"

# A socket folder that cannot be written (a read-only mount), a file in the way.
mkdir -p "$T/ro"
manifest rodir <<YAML
images:
  a: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [vhost-user-blk], vhost-user-blk: { socket: $T/ro/sub/a.sock } }
YAML
# shellcheck disable=SC2016
refused rodir "export 1: vhost-user-blk: cannot create the socket $T/ro/sub/a.sock: folder $T/ro: Read-only file system" \
  unshare -m sh -c 'mount -t tmpfs -o ro blkgw-test "$0" && exec "$@"' "$T/ro"
: >"$T/file-in-the-way"
manifest inway <<YAML
images:
  a: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [nbd], nbd: { socket: $T/file-in-the-way } }
YAML
refused inway "export 1: nbd: $T/file-in-the-way exists and is not a socket"
manifest rundir <<YAML
images:
  a: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [nbd], nbd: { socket: $run/a.sock } }
YAML
sed -i "s|run-dir: $run|run-dir: $T/file-in-the-way/run|" "$T/rundir.yaml"
refused rundir ":2:21: gateway: run dir: cannot create the folder $T/file-in-the-way/run: $T/file-in-the-way is not a folder"

# What cannot be known in advance is said, not checked.
manifest tcp <<YAML
images:
  a: { backend: memory, size: 64M }
exports:
  - { image: a, transports: [nbd], nbd: { listen: "127.0.0.1:10809" } }
YAML
"$BLKGW" check "$T/tcp.yaml" >"$T/out" 2>&1 || fail "tcp.yaml: $(cat "$T/out")"
grep -q "^not checked: whether TCP 127.0.0.1:10809 is free" "$T/out" || fail "the TCP port is not named as unchecked: $(cat "$T/out")"
echo "ok - a TCP port is named as not checked"
echo "$n cases refused alike by check and serve"
