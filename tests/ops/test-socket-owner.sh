#!/bin/sh
# socket-owner / socket-group / socket-mode on every socket blkgw creates
# (NBD unix sockets, vhost-user-blk sockets, the control socket): the socket
# ends up owned as asked, a user in its group can connect (and use it), a
# user outside it cannot. Throwaway numeric ids, switched to with setpriv.
. "$(dirname "$0")/../lib.sh"
requires setpriv nbdinfo jq
[ "$(id -u)" -eq 0 ] || skip "needs root to give sockets to other users"
py=/usr/bin/python3
[ -x "$py" ] || skip "$py is not installed"

owner=64201 group=64202 member=64203 outsider=64204
chmod 0711 "$T" # other users pass through to the sockets, nothing more
run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway:
  run-dir: $run
  control-socket-group: $group
  control-socket-mode: "0660"
images:
  d: { backend: memory, size: 64M }
exports:
  - image: d
    transports: [nbd]
    nbd: { socket: $run/d.sock, socket-owner: $owner, socket-group: $group, socket-mode: "0660" }
  - image: d
    transports: [vhost-user-blk]
    vhost-user-blk: { socket: $run/d.vhost.sock, socket-owner: nobody, socket-group: nogroup, socket-mode: "0660" }
YAML
start_blkgw "$T/m.yaml"
chmod 0711 "$run"
cp "$BLKGW" "$T/blkgw" # a binary every user may run

[ "$(stat -c '%u %g %a' "$run/d.sock")" = "$owner $group 660" ] ||
  fail "NBD socket: $(stat -c '%u %g %a' "$run/d.sock"), expected $owner $group 660"
[ "$(stat -c '%u %g %a' "$run/d.vhost.sock")" = "65534 65534 660" ] ||
  fail "vhost-user-blk socket: $(stat -c '%u %g %a' "$run/d.vhost.sock"), expected nobody:nogroup 660"
[ "$(stat -c '%u %g %a' "$run/control.sock")" = "0 $group 660" ] ||
  fail "control socket: $(stat -c '%u %g %a' "$run/control.sock"), expected root:$group 660"

as_member() { setpriv --reuid=$member --regid=$member --groups=$group "$@"; }
as_outsider() { setpriv --reuid=$outsider --regid=$outsider --clear-groups "$@"; }
as_nobody() { setpriv --reuid=65534 --regid=$outsider --clear-groups "$@"; }


as_member nbdinfo --size "nbd+unix:///d?socket=$run/d.sock" >"$T/size" 2>"$T/err" ||
  fail "a member of group $group cannot use the NBD socket: $(cat "$T/err")"
[ "$(cat "$T/size")" = 67108864 ] || fail "nbdinfo as a group member: size $(cat "$T/size")"
setpriv --reuid=$owner --regid=$outsider --clear-groups nbdinfo --size "nbd+unix:///d?socket=$run/d.sock" >/dev/null 2>&1 ||
  fail "the socket's owner cannot use it"
if as_outsider nbdinfo --size "nbd+unix:///d?socket=$run/d.sock" >/dev/null 2>"$T/err"; then
  fail "a user outside group $group could use the NBD socket"
fi
as_nobody "$py" -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$run/d.vhost.sock" ||
  fail "the vhost-user-blk socket's owner cannot connect"
if as_outsider "$py" -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$run/d.vhost.sock" 2>/dev/null; then
  fail "a user outside nogroup could connect to the vhost-user-blk socket"
fi
as_member "$T/blkgw" status --control "$run/control.sock" --json >"$T/s.json" 2>"$T/err" ||
  fail "a member of group $group cannot ask for status: $(cat "$T/err")"
jq -e '.ok and (.exports | length) == 2' "$T/s.json" >/dev/null || fail "status as a group member: $(cat "$T/s.json")"
if as_outsider "$T/blkgw" status --control "$run/control.sock" >/dev/null 2>&1; then
  fail "a user outside group $group could use the control socket"
fi
stop_blkgw

# An owner or group this host does not know is a manifest error, at its position.
cat >"$T/bad.yaml" <<YAML
version: 1
gateway: { run-dir: $run, control-socket-owner: no-such-user-blkgw }
images:
  d: { backend: memory, size: 64M }
exports:
  - { image: d, transports: [nbd], nbd: { socket-group: no-such-group-blkgw } }
YAML
rc=0
"$BLKGW" check "$T/bad.yaml" 2>"$T/err" || rc=$?
[ $rc -eq 1 ] || fail "check of unknown owner/group exited $rc"
grep -Eq "^$T/bad.yaml:2:[0-9]+: gateway: 'control-socket-owner': no user 'no-such-user-blkgw' on this host" "$T/err" &&
  grep -Eq "^$T/bad.yaml:6:[0-9]+: export 1: nbd: 'socket-group': no group 'no-such-group-blkgw' on this host" "$T/err" ||
  fail "unknown owner/group messages: $(cat "$T/err")"
echo "sockets owned as asked; group members connect, others are refused"
