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
manifest 1M
started=""
for kb in 8000 16000 24000 32000 40000 48000 64000 96000 128000; do
  rc=0
  (ulimit -v $kb; exec timeout -s TERM 3 "$BLKGW" serve "$T/m.yaml") >"$T/out" 2>&1 || rc=$?
  case $rc in
    124) started=$kb; break ;;
    1) grep -q "error:\|cannot" "$T/out" || fail "limit ${kb}K: exit 1 without a message" ;;
    *) fail "limit ${kb}K: exit status $rc (a crash?): $(tail -5 "$T/out")" ;;
  esac
  echo "limit ${kb}K: refused: $(grep -m1 "error:\|cannot" "$T/out")"
done
[ -n "$started" ] || fail "blkgw did not start even with 128 MB of address space"
echo "starts with ${started}K of address space"

# At that limit, a client's largest requests (32 MiB) are answered or refused, and it keeps serving.
manifest 64M
(ulimit -v $((started + 64000)); exec "$BLKGW" serve "$T/m.yaml") 2>>"$T/blkgw.log" &
BLKGW_PID=$!
i=0
until [ -S "$run/nbd.sock" ]; do
  kill -0 $BLKGW_PID 2>/dev/null || fail "blkgw died during start-up"
  i=$((i + 1)); [ $i -lt 300 ] || fail "no socket within 30 s"; sleep 0.1
done
SOCK=$run/nbd.sock /usr/bin/python3 - <<'PY' || fail "client under the limit"
import errno, os, nbd
h = nbd.NBD()
h.connect_unix(os.environ["SOCK"])
ok = err = 0
for i in range(4):
    try:
        h.pwrite(b"\x5a" * (32 << 20), 0)
        assert h.pread(32 << 20, 0) == b"\x5a" * (32 << 20)
        ok += 1
    except nbd.Error as e:
        assert e.errnum == errno.ENOMEM, "32 MiB request: %s" % e
        err += 1
h.pread(4096, 0)
print("32 MiB requests: %d answered, %d refused" % (ok, err))
PY
kill -0 $BLKGW_PID || fail "blkgw died while serving under the limit"
stop_blkgw
