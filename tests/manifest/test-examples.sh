#!/bin/sh
# Every shipped example manifest is valid. One that needs what this host
# lacks (the nbd module for attach) may only fail for that reason: check
# then says no transport could start here, and nothing else.
. "$(dirname "$0")/../lib.sh"
n=0
for m in "$GW_SOURCE_DIR"/config/examples/*.yaml; do
  name=$(basename "$m")
  if ! "$BLKGW" check "$m" >"$T/out" 2>"$T/err"; then
    grep -v "^[0-9]* problems* found$" "$T/err" | grep -v ": no transport could start: " >"$T/other" || true
    grep -q ": no transport could start: " "$T/err" && [ ! -s "$T/other" ] ||
      { cat "$T/err"; fail "$name does not check"; }
    echo "$name: valid, but not servable on this host: $(cat "$T/err" | head -1)"
  else
    grep -q "^export " "$T/out" || fail "$name: check listed no export"
  fi
  n=$((n + 1))
done
[ "$n" -ge 3 ] || fail "expected several examples, found $n"
echo "$n examples valid"
