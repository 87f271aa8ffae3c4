# shellcheck shell=dash
# vm-fallback-apply: with ublk_drv not loaded, an export listing [ublk, nbd]
# falls back to an attached /dev/nbdN and check and status say why; then,
# while fio --verify runs on that kernel device (an export no manifest
# change touches), apply adds, changes and removes other exports, again and
# again, and fio sees no error; a kernel device held open is not restarted
# without --force.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RUN=/tmp/run
mkdir -p $RUN
truncate -s 256M /tmp/keep.raw
truncate -s 64M /tmp/b.raw

gen() { # gen FILE 1|2: 'keep' is the same in both
	{
		echo "version: 1"
		echo "gateway: { run-dir: $RUN, workers: 2 }"
		echo "images:"
		echo "  keep: { backend: file, path: /tmp/keep.raw }"
		echo "  a: { backend: memory, size: 32M }"
		echo "  b: { backend: file, path: /tmp/b.raw }"
		echo "  c: { backend: memory, size: 16M }"
		echo "exports:"
		echo "  - { image: keep, transports: [ublk, nbd], nbd: { attach: true } }"
		if [ "$2" = 1 ]; then
			echo "  - { image: a, transports: [nbd] }"
			echo "  - { image: b, transports: [nbd], nbd: { attach: true } }"
		else
			echo "  - { image: b, transports: [nbd] }"
			echo "  - { image: c, transports: [nbd], nbd: { attach: true } }"
		fi
	} >"$1"
}
gen /tmp/m1.yaml 1
gen /tmp/m2.yaml 2
require "load nbd (and not ublk_drv)" load_module nbd nbds_max=8
check "ublk_drv is not loaded" sh -c "[ ! -e /dev/ublk-control ]"

check "check: keep would fall back to nbd, and says why ublk cannot" \
	sh -c "$B check /tmp/m1.yaml >/tmp/check.out; cat /tmp/check.out; grep -q '^  ublk: not available here: the ublk_drv kernel module is not loaded' /tmp/check.out && grep -q '^  falls back to nbd' /tmp/check.out"

bg_start gw $B serve /tmp/m1.yaml
require "blkgw serves (keep's device link)" bg_wait_for gw 30 test -L $RUN/dev/keep
S="$B status --control $RUN/control.sock"
$S --json >/tmp/s.json
check "status --json: keep runs over nbd, ublk rejected with its reason" \
	sh -c "tr -d '\n' </tmp/s.json | grep -q '\"id\": \"keep\".*\"transport\": \"nbd\".*\"rejected\": \[ *{ *\"transport\": \"ublk\", *\"reason\": \"the ublk_drv kernel module is not loaded'"
check "status: the table says why keep fell back" sh -c "$S | grep -q '^  keep fell back: ublk: the ublk_drv kernel module is not loaded'"
dev=$(readlink $RUN/dev/keep)
vm_log "keep is $dev"

bg_start fio fio --name=untouched --filename="$dev" --direct=1 --rw=randwrite --bs=4k \
	--iodepth=8 --ioengine=libaio --size=32M --io_size=40M --verify=crc32c --verify_fatal=1 \
	--randrepeat=0
cycles=0
applyok=1
sleep 1
while bg_running fio || [ $cycles -lt 1 ]; do
	$B apply --control $RUN/control.sock /tmp/m2.yaml >/tmp/a2.out 2>&1 || { cat /tmp/a2.out; applyok=0; break; }
	grep -q '^keep keep: unchanged$' /tmp/a2.out || { cat /tmp/a2.out; applyok=0; break; }
	$B apply --control $RUN/control.sock /tmp/m1.yaml >/tmp/a1.out 2>&1 || { cat /tmp/a1.out; applyok=0; break; }
	grep -q '^keep keep: unchanged$' /tmp/a1.out || { cat /tmp/a1.out; applyok=0; break; }
	cycles=$((cycles + 1))
	[ $cycles -eq 1 ] && ! bg_running fio && { vm_log "fio ended before one apply cycle"; applyok=0; break; }
done
cat /tmp/a2.out /tmp/a1.out
check_eq "apply cycles (add c, change b to network, remove a; and back) all kept keep" 1 $applyok
vm_log "$cycles apply cycles while fio ran"
check "fio --verify on the untouched kernel device: no error" bg_wait fio 600
grep -E "clat.*max|lat \(.*max" "$VM_LOGS/fio.log" | head -3

bdev=$(readlink $RUN/dev/b)
exec 7<"$bdev"
check "b held open: apply refuses to restart it, naming the holder" \
	sh -c "! $B apply --control $RUN/control.sock /tmp/m2.yaml 2>/tmp/busy.err; cat /tmp/busy.err; grep -q 'export b: .*in use: $bdev is open in pid' /tmp/busy.err"
exec 7<&-
check "b closed: apply restarts it" $B apply --control $RUN/control.sock /tmp/m2.yaml
check "SIGTERM stops everything" sh -c "kill -TERM $(bg_pid gw) && true"
check "blkgw exits 0" bg_wait gw 60
