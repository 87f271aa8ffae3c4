# shellcheck shell=dash
# vm-fallback-apply: with ublk_drv not loaded, an export listing [ublk, nbd]
# falls back to an attached /dev/nbdN and check and status say why; then,
# while fio --verify runs on that kernel device (an export no manifest
# change touches), apply adds, changes and removes other exports, again and
# again, and fio sees no error; a kernel device held open, or with a mounted
# partition, is not restarted without --force. Then, with ublk_drv loaded
# and vduse not: [vduse, ublk, nbd] lands on ublk (check and status say why
# not vduse); deleting that ublk device behind blkgw's back (ublk-del) moves
# the export to an attached /dev/nbdN, the link follows, the data is intact;
# a ublk START_DEV wedged on a held read (fault layer) is given up after
# start-timeout and the export served over nbd, while the daemon answers.
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
# A partition of b's device, mounted: b counts as in use.
# MBR: partition 1 (type 83) from block 256, 8192 blocks (1M + 32M in 4K blocks)
printf '\000\000\000\000\203\000\000\000\000\001\000\000\000\040\000\000' |
	dd of="$bdev" bs=1 seek=446 conv=notrunc 2>/dev/null
printf '\125\252' | dd of="$bdev" bs=1 seek=510 conv=notrunc,fsync 2>/dev/null
blockdev --rereadpt "$bdev"
part=${bdev}p1
require "b's device has a partition $part" wait_for 10 test -b "$part"
mkdir -p /mnt/p
require "load ext4 (and crc32c)" load_modules crc32c_generic ext4
require "ext2 on $part, mounted" sh -c "mke2fs -q -b 4096 $part && mount -t ext4 $part /mnt/p"
check "b's partition mounted: apply refuses to restart b, naming the partition" \
	sh -c "! $B apply --control $RUN/control.sock /tmp/m2.yaml 2>/tmp/busy.err; cat /tmp/busy.err; grep -q 'export b: .*in use: $bdev: its partition ${part#/dev/} is mounted on /mnt/p' /tmp/busy.err"
umount /mnt/p
exec 7<"$bdev"
check "b held open: apply refuses to restart it, naming the holder" \
	sh -c "! $B apply --control $RUN/control.sock /tmp/m2.yaml 2>/tmp/busy.err; cat /tmp/busy.err; grep -q 'export b: .*in use: $bdev is open in pid' /tmp/busy.err"
exec 7<&-
check "b closed: apply restarts it" $B apply --control $RUN/control.sock /tmp/m2.yaml

# ---- [vduse, ublk, nbd] with ublk_drv and without vduse; the ublk device dies ----
require "load ublk_drv" load_module ublk_drv
check "vduse is not loaded" sh -c "[ ! -e /dev/vduse/control ]"
truncate -s 64M /tmp/u.raw
gen3() { # gen3 FILE [w]: m2's exports, plus u; with w, also w on a held read
	{
		echo "version: 1"
		echo "gateway: { run-dir: $RUN, workers: 2, start-timeout: 2 }"
		echo "images:"
		echo "  keep: { backend: file, path: /tmp/keep.raw }"
		echo "  b: { backend: file, path: /tmp/b.raw }"
		echo "  c: { backend: memory, size: 16M }"
		echo "  u: { backend: file, path: /tmp/u.raw }"
		echo "  w: { backend: memory, size: 16M, fault: { delay: 20s, errno: none, ops: read, every: 1000000 } }"
		echo "exports:"
		echo "  - { image: keep, transports: [ublk, nbd], nbd: { attach: true } }"
		echo "  - { image: b, transports: [nbd] }"
		echo "  - { image: c, transports: [nbd], nbd: { attach: true } }"
		echo "  - { image: u, transports: [vduse, ublk, nbd], nbd: { attach: true } }"
		[ "$2" = w ] && echo "  - { image: w, transports: [ublk, nbd], nbd: { attach: true } }"
		true
	} >"$1"
}
gen3 /tmp/m3.yaml
gen3 /tmp/m4.yaml w
check "check: u would use ublk, and says why not vduse" \
	sh -c "$B check /tmp/m3.yaml >/tmp/check3.out; cat /tmp/check3.out; grep -q '^  vduse: not available here: the vduse kernel module is not loaded' /tmp/check3.out && grep -q '^  falls back to ublk' /tmp/check3.out"
check "apply m3: u starts over ublk, keep untouched" \
	sh -c "$B apply --control $RUN/control.sock /tmp/m3.yaml >/tmp/a3.out 2>&1; cat /tmp/a3.out; grep -q '^keep keep: unchanged$' /tmp/a3.out && grep -q '^add u: started over ublk' /tmp/a3.out"
$S --json >/tmp/s3.json
check "status --json: u over ublk, vduse rejected with its reason" \
	sh -c "tr -d '\n' </tmp/s3.json | grep -q '\"id\": \"u\".*\"transport\": \"ublk\".*\"rejected\": \[ *{ *\"transport\": \"vduse\", *\"reason\": \"the vduse kernel module is not loaded'"
check "status: the table says why u fell back" sh -c "$S | grep -q '^  u fell back: vduse: the vduse kernel module is not loaded'"
udev=$(readlink $RUN/dev/u)
vm_log "u is $udev"
check "u's link points at a ublk device" sh -c "case $udev in /dev/ublkb*) true;; *) false;; esac"
dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
check "8 MiB written through u's ublk device" dd if=/tmp/pat of="$RUN/dev/u" bs=1M conv=fsync
check "ublk-del deletes $udev behind blkgw's back" timeout 120 ublk-del "${udev#/dev/ublkb}"
check "u's link moves to an attached /dev/nbdN" \
	bg_wait_for gw 60 sh -c "readlink $RUN/dev/u | grep -q '^/dev/nbd'"
vm_log "u is now $(readlink $RUN/dev/u)"
check "u's data is intact on its new device" \
	sh -c "dd if=$RUN/dev/u bs=1M count=8 2>/dev/null | cmp - /tmp/pat"
$S --json >/tmp/s4.json
check "status --json: u over nbd; ublk rejected: died while serving" \
	sh -c "tr -d '\n' </tmp/s4.json | grep -q '\"id\": \"u\".*\"transport\": \"nbd\".*\"transport\": \"ublk\", *\"reason\": \"died while serving: /dev/ublkb[0-9]* was stopped or deleted behind blkgw'"
check "the log says u was re-exported over nbd" grep -q 'export u: re-exported over nbd' "$VM_LOGS/gw.log"
check "$udev is gone" sh -c "[ ! -e $udev ]"

# ---- a wedged device creation: w's first read is held 20 s, start-timeout is 2 s ----
check "apply m4: w's ublk START_DEV times out, w serves over nbd" \
	sh -c "$B apply --control $RUN/control.sock /tmp/m4.yaml >/tmp/a4.out 2>&1; cat /tmp/a4.out; grep -q '^add w: started over nbd' /tmp/a4.out"
check "meanwhile the daemon answers, and keep's device reads" \
	sh -c "$S >/dev/null && dd if=$RUN/dev/keep of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null"
$S --json >/tmp/s5.json
check "status --json: w's ublk rejected: did not finish within 2 s" \
	sh -c "tr -d '\n' </tmp/s5.json | grep -q '\"id\": \"w\".*\"transport\": \"nbd\".*\"transport\": \"ublk\", *\"reason\": \"creating the device did not finish within 2 s'"
check "the given-up ublk device is removed once the kernel returns" \
	bg_wait_for gw 180 grep -q 'export w: the device creation given up earlier has ended' "$VM_LOGS/gw.log"
ls /dev/ublkb* 2>/dev/null
check "only keep's nbd, c's nbd, u's and w's nbd: no ublk device left" sh -c "! ls /dev/ublkb* 2>/dev/null"
check "SIGTERM stops everything" sh -c "kill -TERM $(bg_pid gw) && true"
check "blkgw exits 0" bg_wait gw 60
