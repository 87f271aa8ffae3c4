#!/bin/sh
# Every export of one manifest falls back for a different reason, and each
# says its own: `blkgw check` prints, per export, why each earlier transport
# cannot work here and which one it falls back to; `blkgw serve` then runs
# each over that transport, and `status --json` (and the table) give the same
# reasons, export by export. This host has no ublk, vduse or nbd module; FUSE
# over io_uring is off in most kernels (when it is on, that export is not
# expected to fall back, and the test says so).
. "$(dirname "$0")/../lib.sh"
requires jq
[ "$(id -u)" -eq 0 ] || skip "needs root (otherwise every kernel transport fails for want of CAP_SYS_ADMIN, one reason for all)"
[ ! -e /dev/ublk-control ] || skip "this host has ublk; the test expects none"
[ ! -e /dev/vduse/control ] || skip "this host has vduse; the test expects none"
[ ! -d /sys/module/nbd ] || skip "this host has the nbd module; the test expects none"

run=$T/run
cat >"$T/fb.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  a: { backend: memory, size: 16M }
  b: { backend: memory, size: 16M }
  c: { backend: memory, size: 16M }
  d: { backend: memory, size: 16M }
exports:
  - { image: a, transports: [ublk, nbd] }
  - { image: b, transports: [vduse, nbd] }
  - { image: c, transports: [nbd, vhost-user-blk], nbd: { attach: true } }
  - { image: d, transports: [fuse, nbd], fuse: { path: $T/d.img, io-uring: "on" } }
YAML
"$BLKGW" check "$T/fb.yaml" >"$T/check.out" 2>&1 || fail "check refused a manifest that falls back: $(cat "$T/check.out")"
cat "$T/check.out"

# section ID: the lines check prints for export ID
section() { awk -v id="$1" '/^export /{on = ($2 == id ":")} on' "$T/check.out"; }
# expect ID TRANSPORT REASON-START NEXT
expect() {
  section "$1" >"$T/sec"
  grep -qF "  $2: not available here: $3" "$T/sec" ||
    fail "check: export $1 does not say '$2: not available here: $3': $(cat "$T/sec")"
  grep -q "^  falls back to $4:" "$T/sec" || fail "check: export $1 does not fall back to $4: $(cat "$T/sec")"
  [ "$(grep -c 'not available here' "$T/sec")" -eq 1 ] || fail "check: export $1 has other reasons too: $(cat "$T/sec")"
  echo "ok - check: $1 falls back to $4 ($2: $3...)"
}
expect a ublk "the ublk_drv kernel module is not loaded" nbd
expect b vduse "the vduse kernel module is not loaded" nbd
expect c nbd "the nbd kernel module is not loaded" vhost-user-blk
d_falls=yes
if section d | grep -q "^  fuse: would serve"; then
  d_falls=no
  echo "# this kernel has FUSE over io_uring on: export d serves over fuse, no fallback to check"
else
  expect d fuse "FUSE over io_uring is" nbd
fi

# serve: each export over the transport check named, with the same reason.
start_blkgw "$T/fb.yaml"
"$BLKGW" status --json >"$T/s.json"
"$BLKGW" status >"$T/s.txt"
# served ID TRANSPORT REJECTED: status agrees with check, word for word
served() {
  jq -e --arg id "$1" --arg t "$2" '.exports[] | select(.id == $id) | .transport == $t and .state == "running"' "$T/s.json" >/dev/null ||
    fail "status: export $1 is not running over $2: $(jq -c --arg id "$1" '.exports[] | select(.id == $id) | [.transport, .state, .notes]' "$T/s.json")"
  want=$(section "$1" | sed -n "s/^  $3: not available here: //p")
  got=$(jq -r --arg id "$1" '.exports[] | select(.id == $id) | .rejected | map(.transport + ": " + .reason) | join("; ")' "$T/s.json")
  [ "$got" = "$3: $want" ] || fail "status: export $1 rejected '$got'; check said '$3: $want'"
  grep -qF "  $1 fell back: $3: $want" "$T/s.txt" || fail "status table: no '$1 fell back: $3: ...': $(cat "$T/s.txt")"
  echo "ok - serve: $1 over $2, $3 rejected with check's reason"
}
served a nbd ublk
served b nbd vduse
served c vhost-user-blk nbd
[ $d_falls = no ] || served d nbd fuse
stop_blkgw
