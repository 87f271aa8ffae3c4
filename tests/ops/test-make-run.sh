#!/bin/sh
# make run: the banner names the endpoints of the manifest actually served
# (from blkgw check), not the quick start's; a manifest check refuses gets
# no banner and exit 1; and `deps.sh run` installs every client the README's
# quick start runs.
. "$(dirname "$0")/../lib.sh"
requires dpkg awk
banner=$GW_SOURCE_DIR/scripts/quickstart-banner.sh

run=$T/run
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run }
images:
  mine: { backend: memory, size: 64M }
  ro: { backend: null, size: 1G }
exports:
  - { image: mine, transports: [nbd], nbd: { socket: $run/mine.sock, listen: "127.0.0.1:10999" } }
  - { image: ro, read-only: true, transports: [vhost-user-blk] }
YAML
"$banner" "$BLKGW" "$T/m.yaml" >"$T/out" || fail "banner failed: $(cat "$T/out")"
cat "$T/out"
for want in "nbdinfo 'nbd+unix:///mine?socket=$run/mine.sock'" \
  "nbdinfo 'nbd://127.0.0.1:10999/mine'" \
  "qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' 'nbd+unix:///mine?socket=$run/mine.sock'" \
  "path=$run/ro.vhost.sock" \
  "status --control $run/control.sock"; do
  grep -qF -- "$want" "$T/out" || fail "the banner lacks: $want"
done
! grep -q "scratch\|/run/blkgw" "$T/out" || fail "the banner still prints the quick start's endpoints"

# The quick start's own manifest gets the README's commands.
"$banner" "$BLKGW" "$GW_SOURCE_DIR/config/examples/quickstart.yaml" >"$T/qs" || fail "banner on quickstart.yaml failed"
grep -qF "nbdinfo 'nbd+unix:///scratch?socket=/run/blkgw/scratch.sock'" "$T/qs" &&
  grep -qF "nbdinfo 'nbd://127.0.0.1:10809/scratch'" "$T/qs" || fail "quick start banner: $(cat "$T/qs")"

# A manifest check refuses: no banner, exit 1 (make run stops before serve).
printf 'version: 1\nimages: {}\nexports: []\nbogus: 1\n' >"$T/bad.yaml"
rc=0; "$banner" "$BLKGW" "$T/bad.yaml" >"$T/out" 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "unknown key 'bogus'" "$T/err" && ! grep -q "From another terminal" "$T/out" ||
  fail "a refused manifest: rc $rc, $(cat "$T/out" "$T/err")"

# Every client the README's quick start runs comes from a package `deps.sh run` installs.
pkgs=$("$GW_SOURCE_DIR/scripts/deps.sh" list run)
cmds=$(awk '/^## Quick start/ { q = 1 } q && /^```sh/ { b = 1; next } b && /^```/ { exit } b { print $1 }' \
  "$GW_SOURCE_DIR/README.md" | sort -u | grep -v '^build/')
[ -n "$cmds" ] || fail "found no commands in the README's quick start"
for c in $cmds; do
  path=$(command -v "$c") || fail "$c (README quick start) is not installed"
  pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1) ||
    pkg=$(dpkg -S "$path" | head -1 | cut -d: -f1)
  echo "$pkgs" | grep -qx "$pkg" || fail "$c comes from $pkg, which 'deps.sh run' does not install"
  echo "quick start client $c: package $pkg, installed by deps.sh run"
done
