#!/bin/sh
# The rbd backend never makes a loop wait on the cluster, and its lock keeps
# QEMU out (one throwaway cluster, tests/rbd/cluster.sh, shared by all):
#   - block status (nbdinfo --map) many times while fio writes and verifies
#     the same image: every map covers the image, fio's data is intact
#   - with the only OSD stopped, a block status query stays pending while
#     the same (single) worker goes on serving a memory export; after the
#     OSD resumes the query answers with the right map
#   - in the same stall, export-add of an rbd image (checked and opened on
#     the apply's thread) leaves the control socket answering; after the OSD
#     resumes the export is added and serves
#   - check contacts four silent clusters at once (not one after another)
#   - QEMU's own librbd (qemu-io, rbd: driver) holding the image open for
#     writing owns its exclusive lock: blkgw is refused, naming that client;
#     once QEMU lets go, blkgw serves what QEMU wrote
# Every wait is bounded; nothing here measures time.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/cluster.sh"
cd "$T"
requires qemu-io nbdinfo fio jq

ceph_start
rbd_t create --size 64M rbd/img || fail "rbd create img"
# No object map: the allocation map then comes from the OSDs, query by query.
rbd_t create --size 16M --image-feature layering,exclusive-lock rbd/ext || fail "rbd create ext"
rbd_t create --size 16M rbd/q || fail "rbd create q"
rbd_t create --size 16M rbd/late || fail "rbd create late"

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 1 }
images:
  img: { backend: rbd, image: img, conf: $CEPH_CONF }
  ext: { backend: rbd, image: ext, conf: $CEPH_CONF }
  mem: { backend: memory, size: 16M }
exports:
  - { image: img, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: ext, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
uri() { echo "nbd+unix:///$1?socket=$run/nbd.sock"; }
counter() { # export counter
  "$BLKGW" status --json | jq -r ".exports[] | select(.id == \"$1\") | .counters.$2"
}

# Block status while fio writes and verifies the same image.
fio --name=bs --ioengine=nbd --uri="$(uri img)" --rw=randwrite --bs=64k --size=32M --iodepth=8 \
  --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 --output-format=json \
  --output="$T/fio.json" >"$T/fio.err" 2>&1 &
fio_pid=$!
on_exit "kill $fio_pid 2>/dev/null"
maps=0
while kill -0 $fio_pid 2>/dev/null && [ $maps -lt 200 ]; do
  timeout 60 nbdinfo --map "$(uri img)" >"$T/map.out" 2>&1 || { cat "$T/map.out"; fail "nbdinfo --map failed while fio ran"; }
  total=$(awk '{s += $2} END {print s}' "$T/map.out")
  [ "$total" = 67108864 ] || { cat "$T/map.out"; fail "a map taken during I/O covers $total bytes, not 64 MiB"; }
  maps=$((maps + 1))
done
timeout 300 sh -c "while kill -0 $fio_pid 2>/dev/null; do sleep 0.2; done" || fail "fio did not finish within 300 s"
wait $fio_pid || { cat "$T/fio.err"; fail "fio verify failed while block status ran"; }
jq -e '.jobs[0].error == 0 and .jobs[0].read.io_bytes == 33554432' "$T/fio.json" >/dev/null ||
  fail "fio did not verify 32 MiB"
[ $maps -gt 0 ] || fail "no block status query ran while fio wrote"
echo "block status: $maps maps taken while fio wrote and verified 32 MiB"

# The OSD stopped: a block status query waits on the cluster, the worker does not.
# Once in a while (seen once under ASan in CI) the query is answered all the
# same, so the premise does not hold and nothing is tested: then the OSD is
# let go and the round made again, three rounds at most.
qemu-io -f raw -c 'write -P 0x11 4M 64K' "$(uri ext)" >/dev/null || fail "qemu-io write to ext"
on_exit "kill -CONT $CEPH_OSD_PID 2>/dev/null"
for round in 1 2 3; do
  before=$(counter ext block_status)
  kill -STOP "$CEPH_OSD_PID" || fail "cannot stop the OSD (pid $CEPH_OSD_PID)"
  timeout 120 nbdinfo --map "$(uri ext)" >"$T/stalled-map.out" 2>&1 &
  mapper=$!
  i=0
  while [ "$(counter ext block_status)" = "$before" ]; do
    kill -0 $mapper 2>/dev/null || { cat "$T/stalled-map.out"; fail "nbdinfo ended before its query reached blkgw"; }
    i=$((i + 1)); [ $i -lt 600 ] || fail "the block status query did not reach blkgw within 60 s"; sleep 0.1
  done
  timeout 60 qemu-io -f raw -c 'write -P 0x66 0 1M' -c 'read -P 0x66 0 1M' "$(uri mem)" >"$T/mem.out" 2>&1 ||
    { cat "$T/mem.out"; fail "the worker stopped serving the memory export while a block status query waited on the stopped OSD"; }
  grep -q "Pattern verification failed" "$T/mem.out" && fail "the memory export read back wrong"
  kill -0 $mapper 2>/dev/null && break
  cat "$T/stalled-map.out"
  [ $round -lt 3 ] || fail "block status answered while the only OSD was stopped, three rounds out of three (not a test of waiting)"
  echo "round $round: block status answered although the OSD was stopped; again"
  kill -CONT "$CEPH_OSD_PID"
  wait $mapper || true
  sleep 1
done
# export-add of an image on the stopped cluster: checking and opening it wait
# on the OSD, the main loop does not (status answers meanwhile).
/usr/bin/python3 "$GW_SOURCE_DIR/tests/ops/ctl.py" "$BLKGW_CONTROL" \
  "{\"command\": \"export-add\", \"image\": {\"name\": \"late\", \"backend\": \"rbd\", \"image\": \"late\", \"conf\": \"$CEPH_CONF\"}, \"export\": {\"image\": \"late\", \"transports\": [\"nbd\"], \"nbd\": {\"socket\": \"$run/nbd.sock\"}}}" \
  >"$T/add.json" 2>&1 &
adder=$!
on_exit "kill $adder 2>/dev/null"
i=0
until grep -q "export-add: reading" "$T/blkgw.log"; do
  kill -0 $adder 2>/dev/null || { cat "$T/add.json"; fail "export-add ended before blkgw began it"; }
  i=$((i + 1)); [ $i -lt 600 ] || fail "blkgw did not begin the export-add within 60 s"; sleep 0.1
done
for n in 1 2 3; do
  timeout 30 "$BLKGW" status >/dev/null || fail "the control socket did not answer while export-add waited on the stopped OSD"
  sleep 0.5
done
kill -0 $adder 2>/dev/null || { cat "$T/add.json"; fail "export-add finished while the only OSD was stopped (not a test of waiting)"; }
timeout 60 qemu-io -f raw -c 'read -P 0x66 0 1M' "$(uri mem)" | grep -q "Pattern verification failed" &&
  fail "the memory export read back wrong during export-add"
"$BLKGW" status >/dev/null || fail "the control socket did not answer"
kill -CONT "$CEPH_OSD_PID"
wait $mapper || { cat "$T/stalled-map.out"; fail "block status failed after the OSD resumed"; }
timeout 180 sh -c "while kill -0 $adder 2>/dev/null; do sleep 0.2; done" || fail "export-add did not finish within 180 s of SIGCONT"
wait $adder || { cat "$T/add.json"; fail "export-add failed after the OSD resumed"; }
jq -e '.exports[] | select(.id == "late") | .result == "started"' "$T/add.json" >/dev/null || { cat "$T/add.json"; fail "export-add: late not started"; }
qemu-io -f raw -c 'write -P 0x21 0 64K' -c 'read -P 0x21 0 64K' "$(uri late)" | grep -q "Pattern verification failed" &&
  fail "the export added during the stall reads back wrong"
echo "export-add: the control socket answered while the new rbd image waited on a stopped OSD; served after"
awk '{print $1, $2, $4}' "$T/stalled-map.out" >"$T/map"
cat >"$T/map.expect" <<MAP
0 4194304 hole,zero
4194304 4194304 data
8388608 8388608 hole,zero
MAP
diff -u "$T/map.expect" "$T/map" || fail "the map answered after the stall is wrong"
echo "block status: pending on a stopped OSD while the worker served other I/O; right after SIGCONT"
stop_blkgw

# QEMU's librbd holds the image open for writing (and so its exclusive lock).
mkfifo "$T/qin"
qemu-io -f raw "rbd:rbd/q:conf=$CEPH_CONF" <"$T/qin" >"$T/qemu-io.out" 2>&1 &
qio=$!
exec 3>"$T/qin"
on_exit "exec 3>&-; kill $qio 2>/dev/null"
echo "write -P 0x5a 0 64K" >&3
i=0
until grep -q "wrote 65536/65536" "$T/qemu-io.out"; do
  kill -0 $qio 2>/dev/null || { cat "$T/qemu-io.out"; fail "qemu-io exited"; }
  i=$((i + 1)); [ $i -lt 600 ] || { cat "$T/qemu-io.out"; fail "qemu-io's write did not finish within 60 s"; }
  sleep 0.1
done
owner=$(rbd_t status rbd/q | sed -n 's/.*watcher=\([^ ]*\) \(client\.[0-9]*\) .*/\2 at \1/p')
[ -n "$owner" ] || { rbd_t status rbd/q; fail "no watcher while qemu-io holds the image"; }
cat >"$T/q.yaml" <<YAML
version: 1
gateway: { run-dir: $T/runq }
images:
  q: { backend: rbd, image: q, conf: $CEPH_CONF }
exports:
  - { image: q, transports: [nbd], nbd: { socket: $T/runq/nbd.sock } }
YAML
timeout 120 "$BLKGW" serve "$T/q.yaml" >"$T/q.out" 2>&1 && fail "blkgw served an image QEMU holds open for writing"
grep -q "cannot take the exclusive lock: held by another client $owner" "$T/q.out" ||
  { cat "$T/q.out" "$T/qemu-io.out"; fail "blkgw did not name QEMU's librbd ($owner) as the lock's owner"; }
echo "QEMU holds the lock: $(grep -o "cannot take.*" "$T/q.out" | head -1)"
echo "quit" >&3
exec 3>&-
timeout 60 sh -c "while kill -0 $qio 2>/dev/null; do sleep 0.1; done" || fail "qemu-io did not quit"
wait $qio || { cat "$T/qemu-io.out"; fail "qemu-io failed"; }
start_blkgw "$T/q.yaml"
qemu-io -f raw -c 'read -P 0x5a 0 64K' "nbd+unix:///q?socket=$T/runq/nbd.sock" | grep -q "Pattern verification failed" &&
  fail "blkgw does not read what QEMU wrote"
stop_blkgw
# check asks its images at once: four images on four clusters that accept
# connections and never answer (a listener here) are contacted together,
# then each is reported; images on the live cluster pass.
cat >"$T/mons.py" <<'PY'
import select, socket, sys
out, ports = sys.argv[1], []
ls = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16); ls.append(s)
    ports.append(s.getsockname()[1])
open(out + ".ports", "w").write(" ".join(map(str, ports)) + "\n")
conns, best = {}, 0  # socket -> the port it came in on
while True:
    r, _, _ = select.select(ls + list(conns), [], [], 1)
    for s in r:
        if s in ls:
            c, _ = s.accept(); conns[c] = s.getsockname()[1]
        elif not s.recv(4096):
            del conns[s]; s.close()
    n = len(set(conns.values()))
    if n > best:
        best = n
        open(out, "w").write("%d\n" % best)
PY
python3 "$T/mons.py" "$T/mons.max" 4 &
mons=$!
on_exit "kill $mons 2>/dev/null"
i=0
until [ -s "$T/mons.max.ports" ]; do i=$((i + 1)); [ $i -lt 300 ] || fail "the listener did not start"; sleep 0.1; done
{
  echo "version: 1"; echo "gateway: { run-dir: $T/run6 }"; echo "images:"
  n=0
  for p in $(cat "$T/mons.max.ports"); do
    n=$((n + 1))
    sed "s/^mon host = .*/mon host = 127.0.0.1:$p/" "$CEPH_CONF" >"$T/mute$n.conf"
    echo "  mute$n: { backend: rbd, image: img, conf: $T/mute$n.conf, connect-timeout: 5 }"
  done
  echo "  live1: { backend: rbd, image: img, conf: $CEPH_CONF }"
  echo "  live2: { backend: rbd, image: q, conf: $CEPH_CONF }"
  echo "exports:"
  for i in 1 2 3 4; do echo "  - { image: mute$i, transports: [nbd], nbd: { socket: $T/run6/nbd.sock } }"; done
  echo "  - { image: live1, transports: [nbd], nbd: { socket: $T/run6/nbd.sock } }"
  echo "  - { image: live2, transports: [nbd], nbd: { socket: $T/run6/nbd.sock } }"
} >"$T/mute.yaml"
timeout 300 "$BLKGW" check "$T/mute.yaml" >"$T/mute.out" 2>&1 && fail "check passed images on clusters that never answer"
for i in 1 2 3 4; do
  grep -q "image 'mute$i': cannot connect to the Ceph cluster of $T/mute$i.conf .*did not answer" "$T/mute.out" ||
    { cat "$T/mute.out"; fail "check did not report mute$i's silent cluster"; }
done
grep -q "live" "$T/mute.out" && { cat "$T/mute.out"; fail "check reported an image on the live cluster"; }
[ "$(cat "$T/mons.max")" = 4 ] ||
  { cat "$T/mute.out"; fail "check contacted at most $(cat "$T/mons.max") of the 4 silent clusters at once: not in parallel"; }
echo "check: 4 silent clusters contacted at once, each reported; live images pass"

echo "rbd async: block status off the worker's loop, QEMU's lock respected, checks in parallel"
