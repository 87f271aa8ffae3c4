#!/bin/sh
# Run one libFuzzer target (ctest fuzz.NAME, `make fuzz`):
#   run-fuzzer.sh FUZZER NAME SEEDS REGRESS WORKDIR
# First every regression input once (each must pass), then fuzzing for
# FUZZ_SECONDS (default 60) from the committed seeds, writing new inputs
# and any crash under WORKDIR/NAME (never into the source tree). Any crash,
# leak, timeout or sanitizer report fails the test; the crashing input is
# printed as a path to copy into REGRESS once fixed.
set -eu
fuzzer=$1 name=$2 seeds=$3 regress=$4 work=$5/$2
secs=${FUZZ_SECONDS:-60}
mkdir -p "$work/corpus" "$work/artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if [ -d "$regress" ] && [ -n "$(ls -A "$regress" 2>/dev/null)" ]; then
  echo "fuzz.$name: replaying $(ls "$regress" | wc -l) regression inputs"
  "$fuzzer" -runs=0 "$regress"/* >"$work/regress.log" 2>&1 || {
    cat "$work/regress.log"; echo "fuzz.$name: a regression input fails" >&2; exit 1; }
fi
echo "fuzz.$name: fuzzing for $secs s (log $work/fuzz.log)"
set -- -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$work/corpus" "$seeds"
[ -n "${FUZZ_JOBS:-}" ] && set -- -fork="$FUZZ_JOBS" "$@"
if ! "$fuzzer" "$@" >"$work/fuzz.log" 2>&1; then
  tail -80 "$work/fuzz.log"
  echo "fuzz.$name: FAILED; inputs: $(ls "$work/artifacts")" >&2
  exit 1
fi
grep -E '^(#[0-9]+.*DONE|stat::)' "$work/fuzz.log" || tail -5 "$work/fuzz.log"
