#!/bin/sh
# Start-up under a tight address-space limit (RLIMIT_AS, `ulimit -v`) fails
# cleanly: exit status 1 with a message naming what could not be had, never
# a crash; and at the tightest limit it does start under, it serves a
# client's largest requests (or refuses them) without dying mid-run.
. "$(dirname "$0")/../lib.sh"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
run=$T/run
manifest() {
  cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  mem: { backend: memory, size: $1 }
exports:
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
YAML
}

# An image bigger than the limit: refused before anything starts.
manifest 1G
rc=0
(ulimit -v 200000; exec "$BLKGW" serve "$T/m.yaml") >"$T/out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "1G image under a 200 MB limit: exit $rc, want 1 ($(cat "$T/out"))"
grep -q "image 'mem': cannot reserve" "$T/out" || fail "no message naming the image: $(cat "$T/out")"
[ ! -e "$run/nbd.sock" ] || fail "a socket was left behind"

# Raise the limit step by step: every failure is exit 1 with a message.
# (A 64 MiB image, so that the largest requests, 32 MiB, fit in it below.)
manifest 64M
started=""
refused=0
try_limit() {
  rc=0
  (ulimit -v "$1"; exec timeout -s TERM 3 "$BLKGW" serve "$T/m.yaml") >"$T/out" 2>&1 || rc=$?
}
for kb in 8000 16000 24000 32000 48000 64000 96000 128000 192000 256000 384000 512000 768000; do
  try_limit $kb
  case $rc in
    124) started=$kb; break ;;
    1) grep -q "error:\|cannot" "$T/out" || fail "limit ${kb}K: exit 1 without a message" ;;
    # The dynamic loader itself could not map the libraries (librbd is large): not blkgw yet.
    127) grep -q "error while loading shared libraries" "$T/out" ||
           fail "limit ${kb}K: exit 127: $(tail -3 "$T/out")"
         echo "limit ${kb}K: too small to load the libraries"; continue ;;
    *) fail "limit ${kb}K: exit status $rc (a crash?): $(tail -5 "$T/out")" ;;
  esac
  echo "limit ${kb}K: refused: $(grep -m1 "error:\|cannot" "$T/out")"
  refused=$kb
done
[ -n "$started" ] || fail "blkgw did not start even with 768 MB of address space"
# Closer, in 16 MB steps from the last limit refused.
kb=$((refused + 16000))
while [ $kb -lt "$started" ]; do
  try_limit $kb
  if [ $rc -eq 124 ]; then started=$kb; break; fi
  [ $rc -eq 1 ] || fail "limit ${kb}K: exit status $rc: $(tail -5 "$T/out")"
  kb=$((kb + 16000))
done
echo "starts with ${started}K of address space"

# Serving at that limit: 8 clients each send two 32 MiB reads and two 32
# MiB writes at once. Each request completes or fails with ENOMEM (an error
# reply), never a hang or a crash; the daemon then serves a small read and
# stops cleanly.
(ulimit -v "$started"; exec "$BLKGW" serve "$T/m.yaml") 2>>"$T/blkgw.log" &
BLKGW_PID=$!
i=0
until [ -S "$run/nbd.sock" ]; do
  kill -0 $BLKGW_PID 2>/dev/null || fail "blkgw died starting under ${started}K"
  i=$((i + 1)); [ $i -lt 300 ] || fail "no socket under ${started}K"; sleep 0.1
done
SOCK=$run/nbd.sock timeout 120 /usr/bin/python3 - <<'PY' || fail "largest requests under the tightest limit"
import errno, nbd, os, time
M = 1 << 20
uri = "nbd+unix:///mem?socket=" + os.environ["SOCK"]
hs = []
for i in range(8):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
keep, pending = [], []
for h in hs:
    for k in range(4):
        b = nbd.Buffer(32 * M)
        keep.append(b)
        pending.append((h, h.aio_pwrite(b, 0) if k % 2 else h.aio_pread(b, 32 * M)))
ok = nomem = 0
t0 = time.time()
while pending:
    if time.time() - t0 > 90:
        raise SystemExit("%d requests unanswered after 90 s" % len(pending))
    for h in hs:
        if h.aio_in_flight():
            h.poll(0)
    still = []
    for h, c in pending:
        try:
            if h.aio_command_completed(c):
                ok += 1
            else:
                still.append((h, c))
        except nbd.Error as e:
            if e.errnum != errno.ENOMEM:
                raise
            nomem += 1
    pending = still
    time.sleep(0.01)
assert len(hs[0].pread(4096, 0)) == 4096
print("32 requests of 32 MiB: %d done, %d refused with ENOMEM; a small read after them works" % (ok, nomem))
PY
kill -0 $BLKGW_PID 2>/dev/null || fail "blkgw died serving under ${started}K"
stop_blkgw
