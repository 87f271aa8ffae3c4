#!/bin/sh
# Every malformed manifest under bad/ is refused by `blkgw check` with exactly
# the messages in its .expect file (FILE stands for the manifest's path), and
# `blkgw serve` refuses it too, starting nothing.
. "$(dirname "$0")/../lib.sh"
dir=$(cd "$(dirname "$0")" && pwd)/bad
# TRANSPORTS in an .expect file stands for this build's transports, as listed by --help.
transports=$("$BLKGW" --help | sed -n '/^Transports in this build:/,/^Backends/p' |
  awk 'NF > 1 && $1 != "Transports" && $1 != "Backends" {print $1}' | paste -sd, - | sed 's/,/, /g')
[ -n "$transports" ] || fail "could not read the transport list from --help"
n=0
for m in "$dir"/*.yaml; do
  name=$(basename "$m" .yaml)
  expect="$dir/$name.expect"
  [ -f "$expect" ] || fail "$name: no $name.expect"
  rc=0
  "$BLKGW" check "$m" >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "$name: check exited $rc, expected 1"
  sed "s|^$m:|FILE:|" "$T/err" >"$T/got"
  sed "s|TRANSPORTS|$transports|" "$expect" >"$T/want"
  if ! diff -u "$T/want" "$T/got"; then
    fail "$name: messages differ from $name.expect"
  fi
  rc=0
  "$BLKGW" serve "$m" >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "$name: serve exited $rc, expected 1"
  grep -q "nothing was started" "$T/err" || fail "$name: serve did not say it started nothing"
  n=$((n + 1))
done
[ "$n" -ge 10 ] || fail "only $n malformed manifests; the suite needs at least 10"
echo "$n malformed manifests refused with the expected messages"
