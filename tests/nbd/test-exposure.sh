#!/bin/sh
# TCP exposure: a writable export on an address beyond loopback gets a loud
# warning at start (a read-only one, or one on loopback, does not); every
# client is logged with its address and export name; every refused export
# name is logged, rate-limited. Runs in a private network namespace, so the
# wildcard address reaches nothing but this test.
if [ -z "${GW_IN_NETNS:-}" ]; then
  command -v unshare >/dev/null && command -v ip >/dev/null ||
    { echo "SKIP: needs unshare and ip (iproute2)" >&2; exit 77; }
  GW_IN_NETNS=1 exec unshare -n sh "$0" "$@"
fi
ip link set lo up
. "$(dirname "$0")/../lib.sh"
requires nbdinfo python3

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 1 }
images:
  open: { backend: memory, size: 16M }
  ro: { backend: memory, size: 16M }
  local: { backend: memory, size: 16M }
exports:
  - { image: open, transports: [nbd], nbd: { listen: "*:10809" } }
  - { image: ro, transports: [nbd], read-only: true, nbd: { listen: "0.0.0.0:10810" } }
  - { image: local, transports: [nbd], nbd: { listen: "127.0.0.1:10811", socket: $run/local.sock } }
YAML
start_blkgw "$T/m.yaml"
grep -q "warn: export open: WRITABLE over NBD on \*:10809.*WITHOUT TLS" "$T/blkgw.log" ||
  fail "no warning for a writable export on every address"
n=$(grep -c "WITHOUT TLS" "$T/blkgw.log")
[ "$n" -eq 1 ] || fail "$n exposure warnings; only 'open' is writable beyond loopback"
echo "ok: a writable export beyond loopback warns; read-only and loopback ones do not"

nbdinfo --size nbd://127.0.0.1:10811/local >/dev/null || fail "nbdinfo on loopback"
nbdinfo --size "nbd+unix:///local?socket=$run/local.sock" >/dev/null || fail "nbdinfo on unix"
grep -Eq "info: nbd: 127\.0\.0\.1:10811: client 127\.0\.0\.1:[0-9]+ on export 'local'" "$T/blkgw.log" ||
  fail "the TCP client was not logged with its address and export"
grep -Eq "info: nbd: $run/local.sock: client pid [0-9]+ uid [0-9]+ on export 'local'" "$T/blkgw.log" ||
  fail "the unix client was not logged with its pid and export"
echo "ok: each client is logged with its peer and export name"

nbdinfo --size nbd://127.0.0.1:10811/nope >/dev/null 2>&1 && fail "an unknown export was served"
grep -Eq "client 127\.0\.0\.1:[0-9]+ asked for unknown export 'nope' \(GO\): refused" "$T/blkgw.log" ||
  fail "the refused export name was not logged"
# EXPORT_NAME (old style) too, and a name with control characters is made safe.
python3 - <<'PY' || fail "EXPORT_NAME client"
import socket, struct
s = socket.create_connection(("127.0.0.1", 10811))
s.recv(18)
s.sendall(struct.pack(">I", 1))
name = b"bad\nname\x1b"
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)
assert s.recv(100) == b""
PY
grep -q "asked for unknown export 'bad?name?' (EXPORT_NAME, closing): refused" "$T/blkgw.log" ||
  fail "EXPORT_NAME refusal not logged (or not made printable)"
echo "ok: refused export names are logged, control characters replaced"

# 200 refusals in a burst: a handful of lines, one saying the rest are dropped.
python3 - <<'PY' || fail "refusal flood"
import socket, struct
for i in range(200):
    s = socket.create_connection(("127.0.0.1", 10811))
    s.recv(18)
    s.sendall(struct.pack(">I", 1))
    name = b"flood%d" % i
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)
    s.recv(100)
    s.close()
PY
n=$(grep -c "asked for unknown export 'flood" "$T/blkgw.log")
[ "$n" -le 12 ] || fail "$n log lines for 200 refused names; expected rate-limited"
grep -q "unknown export 'flood.*more like this in the next 5 s dropped" "$T/blkgw.log" ||
  fail "the rate limit does not say that lines are dropped"
echo "ok: 200 refusals cost $n log lines"
stop_blkgw
