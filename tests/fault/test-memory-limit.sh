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
for kb in 8000 16000 24000 32000 48000 64000 96000 128000 192000 256000 384000 512000 768000; do
  rc=0
  (ulimit -v $kb; exec timeout -s TERM 3 "$BLKGW" serve "$T/m.yaml") >"$T/out" 2>&1 || rc=$?
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
done
[ -n "$started" ] || fail "blkgw did not start even with 768 MB of address space"
echo "starts with ${started}K of address space"
