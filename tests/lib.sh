# Shared helpers for blkgw's shell tests. Source it:  . "$(dirname "$0")/../lib.sh"
#
#   BLKGW            the binary under test (ctest passes it as $BLKGW)
#   requires CMD...  exit 77 (skip, loudly) when a command is missing
#   T                a private temporary folder, removed on exit
#   on_exit CMD      run CMD on exit (last registered runs first)
#   start_blkgw MANIFEST [ARGS...]   start the daemon, wait until it answers;
#                    sets BLKGW_PID; its stderr goes to $T/blkgw.log. With
#                    BLKGW_WRAP set (scripts/test-valgrind.sh), the daemon runs
#                    under that command (e.g. valgrind and its options)
#   stop_blkgw [SIG] stop it (default TERM) and wait; fails the test if it
#                    does not exit within 30 s or exits non-zero
#   fail MSG         print MSG (and the daemon log) and exit 1
#   nbdsh_py         run Debian's nbdsh (needs Debian's python3 first on PATH)
set -eu

: "${BLKGW:?set BLKGW to the blkgw binary}"
T=$(mktemp -d "${TMPDIR:-/tmp}/blkgw-test.XXXXXX")
_exit_cmds=""
BLKGW_PID=""

on_exit() { _exit_cmds="$1; $_exit_cmds"; }
_run_exit() {
  rc=$?
  set +e
  if [ -n "$BLKGW_PID" ] && kill -0 "$BLKGW_PID" 2>/dev/null; then
    kill -KILL "$BLKGW_PID" 2>/dev/null
  fi
  eval "$_exit_cmds"
  rm -rf "$T"
  exit $rc
}
trap _run_exit EXIT
trap 'exit 130' INT TERM

fail() {
  echo "FAIL: $*" >&2
  if [ -f "$T/blkgw.log" ]; then
    echo "---- blkgw log ----" >&2
    tail -n 60 "$T/blkgw.log" >&2
  fi
  exit 1
}

skip() {
  echo "SKIP: $*" >&2
  exit 77
}

# two_cpus: set c0 and c1 to two different CPUs this shell may run on (to
# pin a client and blkgw apart), or skip the test.
two_cpus() {
  local cpus
  cpus=$(taskset -c -p $$ | sed 's/.*: //')
  c0=$(echo "$cpus" | tr ',' '\n' | head -1 | cut -d- -f1)
  c1=$(awk -v c="$cpus" -v c0="$c0" 'BEGIN { n = split(c, r, ","); for (i = 1; i <= n; i++) {
    m = split(r[i], ab, "-"); for (x = ab[1]; x <= (m > 1 ? ab[2] : ab[1]); x++) if (x != c0) { print x; exit } } }')
  [ -n "$c1" ] || skip "this shell may run on one CPU only ($cpus)"
}

requires() {
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || skip "'$c' is not installed (make test installs it)"
  done
}

# Wait until the daemon's control socket answers (or the daemon dies).
start_blkgw() {
  manifest=$1; shift
  # Ask `check` first: once serve runs, the images it creates are half-made for a moment.
  control=$("$BLKGW" check "$manifest" | sed -n 's/.*control socket \([^,]*\),.*/\1/p')
  [ -n "$control" ] || fail "blkgw check $manifest named no control socket"
  # shellcheck disable=SC2086
  ${BLKGW_WRAP:-} "$BLKGW" serve "$manifest" "$@" 2>>"$T/blkgw.log" &
  BLKGW_PID=$!
  i=0
  while ! "$BLKGW" status --control "$control" >/dev/null 2>&1; do
    kill -0 "$BLKGW_PID" 2>/dev/null || fail "blkgw exited during start-up"
    i=$((i + 1))
    [ $i -lt 300 ] || fail "blkgw did not answer on $control within 30 s"
    sleep 0.1
  done
  BLKGW_CONTROL=$control
  export BLKGW_CONTROL
}

stop_blkgw() {
  sig=${1:-TERM}
  [ -n "$BLKGW_PID" ] || return 0
  kill -"$sig" "$BLKGW_PID"
  i=0
  while kill -0 "$BLKGW_PID" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 300 ] || fail "blkgw did not stop within 30 s of SIG$sig"
    sleep 0.1
  done
  rc=0
  wait "$BLKGW_PID" || rc=$?
  BLKGW_PID=""
  [ "$rc" -eq 0 ] || fail "blkgw exited with status $rc after SIG$sig"
}

# Debian's nbdsh imports Debian's python3 modules.
nbdsh_py() {
  PATH="/usr/bin:$PATH" nbdsh "$@"
}

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# fio --verify in a loop until fio_loop_stop: each run writes, reads back and
# verifies (fio ARGS: the job, with --verify=...), so the loop overlaps
# whatever the test does meanwhile however fast this machine is.
# fio_loop_alive fails once a run failed; fio_loop_stop waits for the run in
# progress and fails the test if any run failed. Results in $T/fio.*.
fio_loop_start() {
  (
    n=0
    while [ ! -e "$T/fio.stop" ]; do
      n=$((n + 1))
      fio "$@" --output-format=json --output="$T/fio.json" >"$T/fio.err" 2>&1 ||
        { echo "run $n failed" >>"$T/fio.runs"; exit 1; }
      jq -e '.jobs[0].error == 0' "$T/fio.json" >/dev/null || { echo "run $n: error" >>"$T/fio.runs"; exit 1; }
      echo "run $n ok" >>"$T/fio.runs"
    done
  ) &
  FIO_LOOP=$!
  on_exit "touch $T/fio.stop"
}
fio_loop_alive() { kill -0 "$FIO_LOOP" 2>/dev/null; }
fio_loop_stop() { # what failed, for the message
  touch "$T/fio.stop"
  wait "$FIO_LOOP" || { cat "$T/fio.runs" "$T/fio.err"; fail "$1"; }
  FIO_RUNS=$(grep -c ' ok$' "$T/fio.runs")
}
