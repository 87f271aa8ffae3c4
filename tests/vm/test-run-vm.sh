#!/bin/bash
# vm-run-harness: run-vm.sh's own behaviour, with a fake QEMU (no guest):
# exit statuses, the timeout (and no QEMU left behind), the int3 retry, and
# the QEMU arguments for --vhost-user-blk.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
touch "$t/vmlinuz" "$t/initrd"
export QEMU_SYSTEM="$here/tools/fake-qemu.sh"
ok=0 bad=0

expect() { # DESC WANT_RC MODE [run-vm args...]
	local desc=$1 want=$2 mode=$3 rc=0
	shift 3
	FAKE_QEMU_MODE=$mode "$here/run-vm.sh" --guest "$t" -q "$@" >"$t/out" 2>&1 || rc=$?
	if [ "$rc" = "$want" ]; then
		echo "ok: $desc"
		ok=$((ok + 1))
	else
		echo "FAILED: $desc (exit $rc, wanted $want)"
		sed 's/^/    | /' "$t/out"
		bad=$((bad + 1))
	fi
}

expect "a passing guest exits 0" 0 pass
expect "the guest's status is passed through" 7 fail7
expect "no result marker is 125" 125 noresult
start=$(date +%s)
export FAKE_QEMU_PIDFILE="$t/qemu.pid"
expect "a hung guest times out with 124" 124 hang --timeout 2
qpid=$(cat "$t/qemu.pid" 2>/dev/null || echo "")
if [ -n "$qpid" ] && [ $(($(date +%s) - start)) -le 10 ] && ! kill -0 "$qpid" 2>/dev/null; then
	echo "ok: the timeout killed QEMU (pid $qpid) promptly"; ok=$((ok + 1))
else
	echo "FAILED: QEMU (pid ${qpid:-?}) outlived the timeout"; bad=$((bad + 1))
	[ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null
fi
export FAKE_QEMU_STATE="$t/state"
expect "the int3 oops is retried once with --smp 2" 0 oops-then-pass --smp 2
rm -f "$t/state"
expect "the int3 oops is not retried with --smp 1" 125 oops-then-pass --smp 1
rm -f "$t/state"
expect "--no-retry turns the retry off" 125 oops-then-pass --smp 2 --no-retry

export FAKE_QEMU_ARGS="$t/args"
expect "vhost-user-blk options are accepted" 0 pass --vhost-user-blk "$t/a.sock,num-queues=2" \
	--vhost-user-blk "$t/b.sock" -m 768 --append blkgw.x=1 -- -device foo
a=$(cat "$t/args")
for want in "memory-backend-memfd,id=blkgw-mem,size=768M,share=on" "pc,memory-backend=blkgw-mem" \
	"socket,id=blkgw-vu0,path=$t/a.sock,reconnect=1" "vhost-user-blk-pci,chardev=blkgw-vu0,num-queues=2" \
	"vhost-user-blk-pci,chardev=blkgw-vu1 " "panic=-1 oops=panic no_timer_check blkgw.x=1" "-device foo" "-accel tcg" "-cpu max"; do
	if [[ "$a " == *"$want"* ]]; then
		echo "ok: QEMU gets '$want'"; ok=$((ok + 1))
	else
		echo "FAILED: QEMU args lack '$want': $a"; bad=$((bad + 1))
	fi
done
echo "run-vm harness: $ok ok, $bad FAILED"
[ "$bad" = 0 ]
