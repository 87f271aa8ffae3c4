#!/bin/sh
# The command line: help for every command, errors for what is missing or
# unknown, each with exit status 2 and a message that says what to do.
. "$(dirname "$0")/../lib.sh"

# expect RC PATTERN STREAM -- ARGS...: blkgw ARGS exits RC and STREAM (out/err) matches PATTERN.
expect() {
  want=$1 pattern=$2 stream=$3; shift 4
  rc=0
  "$BLKGW" "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" -eq "$want" ] || fail "blkgw $*: exit $rc, expected $want: $(cat "$T/err")"
  grep -q -- "$pattern" "$T/$stream" || fail "blkgw $*: $stream lacks '$pattern': $(cat "$T/$stream")"
}

for c in serve check status version; do
  expect 0 "^Usage: blkgw $c" out -- help "$c"
  expect 0 "^Usage: blkgw $c" out -- "$c" --help
done
expect 0 "^Usage: blkgw COMMAND" out -- help
expect 0 "^Usage: blkgw COMMAND" out -- --help
expect 2 "unknown command 'frobnicate' (commands: serve, check, status, apply, save-manifest, checkpoint, backup, version, help)" err -- help frobnicate
expect 2 "unknown command 'frobnicate'" err -- frobnicate
expect 2 "missing MANIFEST, the YAML file" err -- serve
expect 2 "missing MANIFEST, the YAML file" err -- check
expect 2 "one MANIFEST only" err -- serve a.yaml b.yaml
expect 0 "^blkgw [0-9]" out -- version
expect 0 "^blkgw [0-9]" out -- --version
expect 2 "^Usage: blkgw version" err -- version extra
echo "command line: help, versions and errors as expected"
