#!/bin/sh
# Every shipped example manifest is valid.
. "$(dirname "$0")/../lib.sh"
n=0
for m in "$GW_SOURCE_DIR"/config/examples/*.yaml; do
  "$BLKGW" check "$m" >"$T/out" 2>&1 || { cat "$T/out"; fail "$(basename "$m") does not check"; }
  grep -q "^export " "$T/out" || fail "$(basename "$m"): check listed no export"
  n=$((n + 1))
done
[ "$n" -ge 3 ] || fail "expected several examples, found $n"
echo "$n examples valid"
