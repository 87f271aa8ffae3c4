#!/bin/sh
# make install with PREFIX and DESTDIR: the binary, the man pages blkgw(8) and
# blkgw-manifest(5), the docs and the example manifests land under DESTDIR,
# the binary runs from there, the examples still check, and `man -l`
# renders both pages with the sections their sources have.
. "$(dirname "$0")/../lib.sh"
requires man make cmake
root=$T/root
make -s -C "$GW_SOURCE_DIR" install BUILD="$GW_BUILD_DIR" PREFIX=/usr DESTDIR="$root" >"$T/out" 2>&1 ||
  { cat "$T/out"; fail "make install failed"; }
for f in usr/bin/blkgw usr/share/man/man8/blkgw.8 usr/share/man/man5/blkgw-manifest.5 \
  usr/share/doc/blkgw/README.md usr/share/doc/blkgw/LICENSE usr/share/doc/blkgw/manifest.md \
  usr/share/doc/blkgw/control.md usr/share/doc/blkgw/architecture.md \
  usr/share/doc/blkgw/transports/nbd.md usr/share/doc/blkgw/transports/vhost-user-blk.md \
  usr/share/doc/blkgw/examples/quickstart.yaml; do
  [ -f "$root/$f" ] || fail "make install did not install /$f: $(cd "$root" && find . -type f | sort)"
done
[ -x "$root/usr/bin/blkgw" ] || fail "the installed binary is not executable"
"$root/usr/bin/blkgw" --version | grep -q "^blkgw [0-9]" || fail "the installed binary does not run"
n=$(find "$GW_SOURCE_DIR/config/examples" -name '*.yaml' | wc -l)
[ "$(find "$root/usr/share/doc/blkgw/examples" -name '*.yaml' | wc -l)" -eq "$n" ] || fail "not every example was installed"
"$root/usr/bin/blkgw" check "$root/usr/share/doc/blkgw/examples/null-floor.yaml" >/dev/null ||
  fail "an installed example does not check"
# Nothing escaped DESTDIR into the real /usr.
[ ! -e /usr/share/man/man5/blkgw-manifest.5 ] || echo "note: /usr/share/man/man5/blkgw-manifest.5 exists (installed earlier?)"

render() { MANWIDTH=100 man -l "$1" 2>"$T/man.err"; }
render "$root/usr/share/man/man8/blkgw.8" >"$T/blkgw.txt" || fail "man -l blkgw.8: $(cat "$T/man.err")"
for want in "^blkgw(8)" "^NAME" "^SYNOPSIS" "^COMMANDS" "^CONTROL SOCKET" "Usage: blkgw serve MANIFEST" \
  "Usage: blkgw status" '"command": "status"' "blkgw-manifest(5)"; do
  grep -q -- "$want" "$T/blkgw.txt" || fail "blkgw(8) lacks '$want'"
done
render "$root/usr/share/man/man5/blkgw-manifest.5" >"$T/manifest.txt" || fail "man -l blkgw-manifest.5: $(cat "$T/man.err")"
for want in "^blkgw-manifest(5)" "^NAME" "^gateway" "^images" "^exports" "socket-owner" "control-socket-group" \
  "CAP_SYS_ADMIN" "blkgw(8)"; do
  grep -q -- "$want" "$T/manifest.txt" || fail "blkgw-manifest(5) lacks '$want'"
done
# Every key the manifest doc's tables name is in the page: it is the same text.
keys=$(grep -o '^| `[a-z-]*`' "$GW_SOURCE_DIR/docs/manifest.md" | tr -d '|` ' | sort -u)
for k in $keys; do
  grep -q -- "$k" "$T/manifest.txt" || fail "blkgw-manifest(5) lacks key $k of docs/manifest.md"
done
grep -v "cannot adjust line" "$T/man.err" >"$T/man.other" || true
[ ! -s "$T/man.other" ] || fail "man reports problems: $(cat "$T/man.other")"
echo "installed under DESTDIR; man pages render ($(echo "$keys" | wc -w) manifest keys found)"
