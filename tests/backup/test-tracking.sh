#!/bin/sh
# Changed-block tracking over NBD with real clients (docs/backup.md): writes,
# write-zeroes and discards from qemu-io land in the record, rounded to the
# granularity; checkpoints rotate; the record survives kill -9; a lost state
# file makes the record untrusted, status says so and `changes` exits 3.
. "$(dirname "$0")/../lib.sh"
requires jq qemu-io

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  disk: { backend: file, path: $T/disk.img, size: 64M, track-changes: true, change-granularity: 64K }
exports:
  - { image: disk, transports: [nbd], nbd: { socket: $run/disk.sock } }
YAML
url="nbd+unix:///disk?socket=$run/disk.sock"
start_blkgw "$T/m.yaml"
"$BLKGW" status --json | jq -e '.exports[0].tracking | .granularity == 65536 and .trusted == true' \
  >/dev/null || fail "status does not show tracking"
qemu-io -f raw -c 'write -P 1 0 4k' "$url" >/dev/null
"$BLKGW" checkpoint create disk c1 || fail "checkpoint create c1"
"$BLKGW" checkpoint create disk c1 2>"$T/err" && fail "a second c1 was accepted"
grep -q "exists already" "$T/err" || fail "duplicate checkpoint: wrong message"

# A write inside one chunk, one across a boundary, write-zeroes, discard (FUA on one).
qemu-io -f raw -c 'write -P 2 1M 4k' -c 'write -P 3 2044k 8k' -c 'write -z 8M 128k' \
  -c 'discard 16M 64k' -c 'write -f -P 4 30M 512' "$url" >/dev/null
"$BLKGW" checkpoint changes disk c1 >"$T/ch" || fail "checkpoint changes c1"
printf '%s\n' "1048576 65536" "2031616 131072" "8388608 131072" "16777216 65536" "31457280 65536" >"$T/want"
diff -u "$T/want" "$T/ch" || fail "the record of changes since c1 is wrong"

# kill -9: every acknowledged write is still in the record after a restart.
qemu-io -f raw -c 'write -P 5 40M 4k' -c 'write -P 6 50M 1M' "$url" >/dev/null
kill -KILL "$BLKGW_PID"; wait "$BLKGW_PID" 2>/dev/null || true; BLKGW_PID=
start_blkgw "$T/m.yaml"
"$BLKGW" checkpoint changes disk c1 >"$T/ch" || fail "changes after kill -9"
printf '%s\n' "41943040 65536" "52428800 1048576" >>"$T/want"
diff -u "$T/want" "$T/ch" || fail "a write acknowledged before kill -9 is missing from the record"

# Rotation over the CLI: c2, then c1 deleted; its changes merge into c2's record.
"$BLKGW" checkpoint create disk c2 || fail "checkpoint create c2"
qemu-io -f raw -c 'write -P 7 60M 4k' "$url" >/dev/null
"$BLKGW" checkpoint create disk c3 || fail "checkpoint create c3"
"$BLKGW" checkpoint changes disk c2 c3 >"$T/ch" || fail "changes c2..c3"
[ "$(cat "$T/ch")" = "62914560 65536" ] || fail "changes c2..c3: $(cat "$T/ch")"
"$BLKGW" checkpoint delete disk c2 || fail "checkpoint delete c2"
"$BLKGW" checkpoint changes disk c2 2>/dev/null && fail "a deleted checkpoint still answers"
"$BLKGW" checkpoint list disk --json | jq -e '[.checkpoints[].name] == ["c1", "c3"]
  and .checkpoints[1].changed_bytes == 1638400' >/dev/null ||
  { "$BLKGW" checkpoint list disk; fail "after deleting c2, c3 does not hold c2's changes"; }
"$BLKGW" checkpoint list disk >"$T/list" || fail "checkpoint list"
grep -q "^c3 " "$T/list" || fail "checkpoint list shows no c3"

# A lost state file: untrusted, reported, and `changes` says a full backup is needed.
stop_blkgw
rm "$run/cbt/disk/active.rec"
start_blkgw "$T/m.yaml"
"$BLKGW" status --json | jq -e '.exports[0].tracking.trusted == false' >/dev/null ||
  fail "status does not report the untrusted record"
rc=0; "$BLKGW" checkpoint changes disk c3 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 3 ] || fail "changes over a lost record exited $rc, not 3"
grep -q "was lost" "$T/err" || fail "no reason given: $(cat "$T/err")"

# The image changed while blkgw was not serving it: untrusted too.
"$BLKGW" checkpoint create disk c4 || fail "checkpoint create c4"
stop_blkgw
touch -d '2001-01-01' "$T/disk.img"
start_blkgw "$T/m.yaml"
rc=0; "$BLKGW" checkpoint changes disk c4 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 3 ] && grep -q "changed while blkgw was not serving" "$T/err" ||
  fail "an image changed behind blkgw's back is not reported ($rc: $(cat "$T/err"))"
# An unknown control command names every checkpoint command among the ones there are.
/usr/bin/python3 "$(dirname "$0")/../ops/ctl.py" "$BLKGW_CONTROL" '{"command": "frobnicate"}' >"$T/unk.json" || true
for c in create list delete changes; do
  jq -e --arg c "checkpoint-$c" '.error.message | contains($c)' "$T/unk.json" >/dev/null ||
    fail "unknown-command answer does not list checkpoint-$c: $(cat "$T/unk.json")"
done
stop_blkgw
echo "tracking: ok"
