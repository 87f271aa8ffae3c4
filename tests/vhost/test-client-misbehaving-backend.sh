#!/bin/bash
# blkgw's vhost-user-blk frontend against a deliberately broken backend
# (fake-vu-backend.py): every misbehaviour must end in a clear error and a
# normal exit, never a crash or a hang.
#
#   test-client-misbehaving-backend.sh ENGINE_SO PROBE
# ok/bad only print, so "check && ok ... || bad ..." is a safe if/else.
# shellcheck disable=SC2015
set -u

engine=${1:?usage: $0 ENGINE_SO PROBE}
probe=${2:?usage: $0 ENGINE_SO PROBE}
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
[ -x "$py" ] || { echo "FATAL: $py not found" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vu-fake-test.XXXXXX") || exit 1
cd "$work" || exit 1   # fio writes its verify state files here
fake_pid=""
cleanup() {
  if [ -n "$fake_pid" ] && kill -0 "$fake_pid" 2>/dev/null; then
    kill "$fake_pid" 2>/dev/null; wait "$fake_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass=0
fail=0
sock=$work/fake.sock

start_fake() {
  rm -f "$sock"
  "$py" "$here/fake-vu-backend.py" "$sock" "$1" 2>"$work/fake.log" &
  fake_pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
  echo "FATAL: fake backend did not start" >&2; cat "$work/fake.log" >&2; exit 1
}

stop_fake() {
  if [ -n "$fake_pid" ]; then
    kill "$fake_pid" 2>/dev/null; wait "$fake_pid" 2>/dev/null
  fi
  fake_pid=""
}

# expect MODE REGEX: the probe must fail (status 1, not a signal) and say REGEX.
expect() {
  local mode=$1 regex=$2 rc
  start_fake "$mode"
  timeout 60 "$probe" --timeout 2000 --no-discard "$sock" >"$work/out" 2>&1
  rc=$?
  stop_fake
  if [ $rc -eq 1 ] && grep -Eq "$regex" "$work/out"; then
    echo "ok - $mode: $(grep -Em1 "$regex" "$work/out")"
    pass=$((pass + 1))
  else
    echo "not ok - $mode: exit status $rc, expected 1 and /$regex/"
    sed 's/^/    /' "$work/out"
    fail=$((fail + 1))
  fi
}

# The fake backend itself works: the probe passes against mode "ok".
start_fake ok
if timeout 60 "$probe" --no-discard "$sock" >"$work/out" 2>&1 && grep -q '^PASSED' "$work/out"; then
  echo "ok - ok: probe passes against the well-behaved fake backend"; pass=$((pass + 1))
else
  echo "not ok - ok: probe failed against the well-behaved fake"; cat "$work/out"; fail=$((fail + 1))
fi
stop_fake

expect bad_id       'completed descriptor id [0-9]+ .* out of range'
expect dup_id       'moved used->idx .* only [0-9]+ requests are in flight|not in flight'
expect big_len      'only had [0-9]+ writable bytes'
expect no_status    'without writing its status byte'
expect bad_status   'invalid status 7'
expect idx_jump     'moved used->idx from'
expect hangup       'closed the connection'
expect silent       'no completion from the backend within 2000 ms'
expect bad_reply    'bad flags 0x1'
expect short_config 'payload size 20, expected 72'
expect nack_mem     'rejected SET_MEM_TABLE'

# The fio engine turns a ring violation into a job error, not a crash.
start_fake bad_id
timeout 60 fio --thread --ioengine="external:$engine" --vhost_socket="$sock" \
  --name=f --rw=randread --bs=4k --iodepth=4 --size=1M >"$work/out" 2>&1
rc=$?
stop_fake
if [ $rc -ne 0 ] && [ $rc -lt 124 ] && grep -q 'vhost-user-blk: job f: queue 0: backend completed descriptor id' "$work/out"; then
  echo "ok - fio: ring violation reported as a job error"; pass=$((pass + 1))
else
  echo "not ok - fio: exit status $rc"; cat "$work/out"; fail=$((fail + 1))
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
