#!/bin/sh
# Declarative apply on the host, with real clients: while fio --verify runs
# on an export no manifest change touches, other exports are added, changed
# (transport switched) and removed, again and again, and fio sees no error;
# --dry-run and a bad manifest change nothing; an export in use is not
# removed without --force; save-manifest round-trips (apply: all kept; serve:
# the same exports); SIGHUP re-reads the file; export-add/export-del over the
# control socket; a transport that cannot work here is passed over with its
# reason in status --json and in check.
. "$(dirname "$0")/../lib.sh"
requires jq fio qemu-io
fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*nbd' || skip "this fio has no nbd engine"
CTL="/usr/bin/python3 $(dirname "$0")/ctl.py"
run=$T/run
truncate -s 64M "$T/d.raw"

gen() { # gen FILE with|without: the 'a' export is the same in both
  {
    echo "version: 1"
    echo "gateway: { run-dir: $run }"
    echo "images:"
    echo "  a: { backend: memory, size: 256M }"
    echo "  b: { backend: memory, size: 32M }"
    echo "  c: { backend: null, size: 1G }"
    echo "  d: { backend: file, path: $T/d.raw }"
    echo "exports:"
    echo "  - { image: a, transports: [nbd], nbd: { socket: $run/a.sock } }"
    if [ "$2" = with ]; then
      echo "  - { image: b, transports: [nbd] }"
      echo "  - { image: d, transports: [nbd] }"
    else
      echo "  - { image: b, transports: [vhost-user-blk] }"
      echo "  - { image: c, read-only: true, transports: [nbd] }"
    fi
  } >"$1"
}
gen "$T/m1.yaml" with
gen "$T/m2.yaml" without
ids() { "$BLKGW" status --json | jq -c '[.exports[] | [.id, .transport, .state]]'; }

start_blkgw "$T/m1.yaml" --log-format json
qemu-io -f raw -c 'write -P 9 0 1M' "nbd+unix:///d?socket=$run/d.sock" >/dev/null || fail "write to d"

# fio verify on 'a' while the others churn. fio runs again and again (each
# run writes, then reads back and verifies) until the apply cycles are done,
# so they overlap however fast or slow this machine is.
fio_loop_start --name=untouched --ioengine=nbd --uri="nbd+unix:///a?socket=$run/a.sock" \
  --rw=randwrite --bs=4k --iodepth=16 --size=64M --verify=crc32c --verify_fatal=1 --randrepeat=0
i=0; until grep -q "on export 'a'" "$T/blkgw.log"; do
  i=$((i+1)); [ $i -lt 300 ] || fail "fio did not connect to export a"; sleep 0.1; done
cycles=0
while [ $cycles -lt 5 ]; do
  "$BLKGW" apply "$T/m2.yaml" >"$T/apply.out" || { cat "$T/apply.out"; fail "apply m2"; }
  grep -q '^keep a: unchanged$' "$T/apply.out" || { cat "$T/apply.out"; fail "a was touched"; }
  grep -q '^restart b (transports list changed): started over vhost-user-blk$' "$T/apply.out" ||
    { cat "$T/apply.out"; fail "b did not move to vhost-user-blk"; }
  grep -q '^add c: started over nbd$' "$T/apply.out" || { cat "$T/apply.out"; fail "c not added"; }
  grep -q '^remove d: stopped$' "$T/apply.out" || { cat "$T/apply.out"; fail "d not removed"; }
  "$BLKGW" apply "$T/m1.yaml" >"$T/apply.out" || { cat "$T/apply.out"; fail "apply m1"; }
  grep -q '^keep a: unchanged$' "$T/apply.out" || { cat "$T/apply.out"; fail "a was touched"; }
  cycles=$((cycles + 1))
  fio_loop_alive || { cat "$T/fio.runs" "$T/fio.err"; fail "fio on the untouched export stopped during apply cycle $cycles"; }
done
fio_loop_stop "fio verify on the untouched export failed"
echo "fio verify ($FIO_RUNS runs) ran through $cycles apply cycles (add, change, remove); longest completion in the last run: $(jq '.jobs[0].write.clat_ns.max / 1e6' "$T/fio.json") ms"
qemu-io -f raw -c 'read -P 9 0 1M' "nbd+unix:///d?socket=$run/d.sock" >/dev/null ||
  fail "d's data did not survive its removal and return"

# --dry-run changes nothing.
before=$(ids)
"$BLKGW" apply --dry-run "$T/m2.yaml" >"$T/dry.out" || fail "dry run failed"
grep -q "^dry run: nothing was changed" "$T/dry.out" || fail "dry run said nothing"
grep -q "^restart b (transports list changed)$" "$T/dry.out" || { cat "$T/dry.out"; fail "dry run diff"; }
[ "$(ids)" = "$before" ] || fail "dry run changed the exports: $(ids)"

# A bad manifest changes nothing, and says where.
cp "$T/m2.yaml" "$T/bad.yaml"
echo "  - { image: nosuch, transports: [nbd] }" >>"$T/bad.yaml"
for via in cli daemon; do # the CLI reads it first (for the control socket); the daemon again
  ctl=""; [ $via = daemon ] && ctl="--control $BLKGW_CONTROL"
  rc=0; "$BLKGW" apply $ctl "$T/bad.yaml" 2>"$T/bad.err" || rc=$?
  [ $rc -eq 1 ] || fail "bad apply ($via) exited $rc"
  grep -q "bad.yaml:[0-9]*:[0-9]*: .*unknown image 'nosuch'" "$T/bad.err" || { cat "$T/bad.err"; fail "bad apply ($via): no position"; }
  grep -q "nothing was changed" "$T/bad.err" || { cat "$T/bad.err"; fail "bad apply ($via) did not say nothing changed"; }
done
printf 'version: 1\nexports: [\n' >"$T/broken.yaml"
"$BLKGW" apply --control "$BLKGW_CONTROL" "$T/broken.yaml" 2>"$T/bad.err" && fail "broken YAML applied"
grep -q "broken.yaml:" "$T/bad.err" || { cat "$T/bad.err"; fail "broken YAML: no position"; }
[ "$(ids)" = "$before" ] || fail "a bad apply changed the exports: $(ids)"
# Settings that cannot change live are named, not ignored.
sed "s|run-dir: $run }|run-dir: $run, workers: 1, coalesce-us: 7 }|" "$T/m1.yaml" >"$T/gw.yaml"
"$BLKGW" apply --dry-run "$T/gw.yaml" >"$T/gw.out" || fail "gateway change apply failed"
grep -q "^needs restart: coalesce-us (20 -> 7)" "$T/gw.out" || { cat "$T/gw.out"; fail "coalesce-us not reported"; }

# An export in use is not removed without --force.
PATH="/usr/bin:$PATH" /usr/bin/python3 -c '
import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); print("connected", flush=True); time.sleep(60)
' "nbd+unix:///b?socket=$run/b.sock" >"$T/hold.out" 2>&1 &
hold=$!
on_exit "kill $hold 2>/dev/null"
i=0; until grep -q connected "$T/hold.out"; do i=$((i+1)); [ $i -lt 300 ] || fail "nbd client did not connect"; sleep 0.1; done
rc=0; "$BLKGW" apply "$T/m2.yaml" 2>"$T/busy.err" || rc=$?
[ $rc -eq 1 ] || fail "apply restarting a busy export exited $rc"
grep -q "export b: .*in use: 1 client connected (--force stops it anyway)" "$T/busy.err" ||
  { cat "$T/busy.err"; fail "busy refusal unclear"; }
[ "$(ids)" = "$before" ] || fail "a refused apply changed the exports: $(ids)"
"$BLKGW" apply --force "$T/m2.yaml" >"$T/force.out" || fail "apply --force failed"
grep -q "^restart b" "$T/force.out" || fail "--force did not restart b"
kill $hold 2>/dev/null || true

# save-manifest round-trips.
"$BLKGW" save-manifest "$T/saved.yaml" || fail "save-manifest failed"
"$BLKGW" check "$T/saved.yaml" >/dev/null || { cat "$T/saved.yaml"; fail "saved manifest does not check"; }
"$BLKGW" apply "$T/saved.yaml" >"$T/saved.out" || fail "apply saved"
[ "$(grep -cv '^keep .*: unchanged$' "$T/saved.out")" -eq 0 ] || { cat "$T/saved.out"; fail "re-applying the saved manifest changed something"; }
live=$(ids)

# export-add and export-del over the control socket.
$CTL "$BLKGW_CONTROL" '{"command": "export-add", "image": {"name": "x", "backend": "memory", "size": "16M"}, "export": {"image": "x", "transports": ["nbd"]}}' >"$T/add.json" ||
  { cat "$T/add.json"; fail "export-add failed"; }
jq -e '.exports[] | select(.id == "x") | .action == "add" and .result == "started"' "$T/add.json" >/dev/null || fail "export-add: x not started"
qemu-io -f raw -c 'write -P 3 0 64K' -c 'read -P 3 0 64K' "nbd+unix:///x?socket=$run/x.sock" >/dev/null || fail "x not served"
$CTL "$BLKGW_CONTROL" '{"command": "export-add", "export": {"image": "nosuch", "transports": ["nbd"]}}' >"$T/add-bad.json" &&
  fail "export-add of an unknown image succeeded"
jq -e '.problems | map(select(test("unknown image .nosuch."))) | length == 1' "$T/add-bad.json" >/dev/null || { cat "$T/add-bad.json"; fail "export-add error"; }
$CTL "$BLKGW_CONTROL" '{"command": "export-del", "id": "x"}' >"$T/del.json" || { cat "$T/del.json"; fail "export-del failed"; }
[ "$(ids)" = "$live" ] || fail "after export-add and export-del the exports differ: $(ids)"
$CTL "$BLKGW_CONTROL" '{"command": "export-del", "id": "x"}' >/dev/null && fail "export-del of a missing export succeeded"

# SIGHUP re-reads the file blkgw was started with.
echo "  - { image: c, read-only: true, transports: [nbd], nbd: { socket: $run/hup.sock } }" >>"$T/m1.yaml"
kill -HUP "$BLKGW_PID"
i=0; until "$BLKGW" status --json | jq -e '.exports[] | select(.id == "c")' >/dev/null; do
  i=$((i+1)); [ $i -lt 300 ] || fail "SIGHUP did not add export c"; sleep 0.1; done
"$BLKGW" status --json | jq -e '[.exports[].id] == ["a", "b", "d", "c"]' >/dev/null || fail "after SIGHUP: $(ids)"
stop_blkgw
# --log-format json: every line one JSON object; lines about an export name it and its transport.
jq -e -s 'length > 20 and all(.time and .level and .thread and .msg)' "$T/blkgw.log" >/dev/null ||
  fail "--log-format json wrote lines that are not JSON objects with time, level, thread, msg"
jq -e -s 'any(.export == "c" and .transport == "nbd" and (.msg | test("^export c: serving over nbd")))' "$T/blkgw.log" >/dev/null ||
  fail "--log-format json: no line names export c and its transport nbd"
jq -e -s 'any(.export == "b" and .transport == "vhost-user-blk")' "$T/blkgw.log" >/dev/null ||
  fail "--log-format json: no line names export b with its transport vhost-user-blk"
mv "$T/blkgw.log" "$T/blkgw-json.log"

# Serving the saved manifest gives the same exports.
start_blkgw "$T/saved.yaml"
[ "$(ids)" = "$live" ] || fail "serving the saved manifest: $(ids), not $live"
stop_blkgw

# Fallback: a kernel NBD device cannot be made on this host (no module), so vhost-user-blk serves.
cat >"$T/fb.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  f: { backend: memory, size: 16M }
exports:
  - { image: f, transports: [nbd, vhost-user-blk], nbd: { attach: true } }
YAML
if [ -e /sys/module/nbd ]; then
  echo "fallback part skipped: this host has the nbd module (the VM test covers it)"
else
  "$BLKGW" check "$T/fb.yaml" >"$T/fb.out" || fail "check fb"
  grep -q "^  nbd: not available here: .*nbd kernel module is not loaded" "$T/fb.out" ||
    grep -q "^  nbd: not available here: .*needs root" "$T/fb.out" || { cat "$T/fb.out"; fail "check gives no reason"; }
  start_blkgw "$T/fb.yaml"
  "$BLKGW" status --json >"$T/fb.json"
  jq -e '.exports[0].transport == "vhost-user-blk" and .exports[0].rejected[0].transport == "nbd"
    and (.exports[0].rejected[0].reason | test("module|root"))' "$T/fb.json" >/dev/null ||
    { jq .exports[0] "$T/fb.json"; fail "status --json lacks the rejected transport and reason"; }
  "$BLKGW" status | grep -q "f fell back: nbd: " || fail "status table does not say why"
  stop_blkgw
fi
echo "apply: untouched export undisturbed through $cycles cycles; dry-run, bad, busy, save, SIGHUP, export-add/del, fallback ok"
