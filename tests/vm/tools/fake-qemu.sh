#!/bin/bash
# A stand-in for qemu-system-x86_64 to test run-vm.sh itself (no guest):
# writes a scripted console to the -serial file: target, per FAKE_QEMU_MODE.
#   pass | fail7 | noresult | hang | oops-then-pass (oops on the first boot)
set -eu
[ "${1:-}" = --version ] && { echo "QEMU emulator version 7.2.0 (fake)"; exit 0; }
log=""
prev=""
for a in "$@"; do
	[ "$prev" = -serial ] && log=${a#file:}
	prev=$a
done
[ -n "$log" ] || { echo "fake-qemu: no -serial file:" >&2; exit 1; }
printf '%s\n' "$*" >>"${FAKE_QEMU_ARGS:-/dev/null}"
case "${FAKE_QEMU_MODE:-pass}" in
pass) printf 'booting\r\nBLKGW-VM-RESULT: 0\r\n' >"$log" ;;
fail7) printf 'BLKGW-VM-RESULT: 7\r\n' >"$log" ;;
noresult) printf 'Kernel panic - not syncing\n' >"$log"; exit 0 ;;
hang) echo hanging >"$log"; echo $$ >"${FAKE_QEMU_PIDFILE:-/dev/null}"; exec sleep 1000 ;;
oops-then-pass)
	state="${FAKE_QEMU_STATE:?}"
	if [ ! -e "$state" ]; then
		touch "$state"
		printf 'int3: 0000 [#1] SMP\nRIP: 0010:sched_clock_cpu+0x10/0x1a0\n' >"$log"
		exit 0
	fi
	printf 'BLKGW-VM-RESULT: 0\n' >"$log" ;;
esac
