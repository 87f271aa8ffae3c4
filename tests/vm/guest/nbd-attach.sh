# shellcheck shell=dash
# vm-nbd-attach: blkgw attaches its NBD exports as /dev/nbdN itself (nbd
# generic netlink, socketpairs, no nbd-client): a filesystem survives detach
# and reattach and lands in the backing file; fio verifies 4k random and
# 1 MiB sequential writes; blkdiscard punches holes in the sparse backing
# file; a read-only attach refuses writes; Debian's nbd-client (netlink and
# ioctl) works against blkgw's TCP and unix exports; a backup read through
# nbd-client while fio --verify writes the attached disk is the disk at its
# checkpoint; fio --verify survives three kill -9 restarts of blkgw (the
# device reattached with NBD_CMD_RECONFIGURE, same index), a device
# disconnected behind a dead blkgw's back is attached anew, and a dropped
# export's device is disconnected.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RUN=/tmp/run

# --- errors a user meets ------------------------------------------------------

mkdir -p $RUN
truncate -s 256M /tmp/disk.raw
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  disk: { backend: file, path: /tmp/disk.raw }
exports:
  - { image: disk, transports: [nbd], nbd: { attach: true, connections: 2 } }
YAML
check "check: without the module, it refuses as serve would (exit 1, the reason)" \
	sh -c "! $B check /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'no transport could start: nbd: the nbd kernel module is not loaded' /tmp/err"
check "serve: without the module, a plain error and exit 1" \
	sh -c "! $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'nbd kernel module is not loaded' /tmp/err"
require "load nbd" load_module nbd nbds_max=8
require "load ext4 (and crc32c for its checksums)" load_modules crc32c_generic ext4
chmod 666 /tmp/disk.raw
chmod 1777 $RUN
check "check: with the module, attach can work here" $B check /tmp/m.yaml
check "check as an unprivileged user: refused, CAP_SYS_ADMIN named" \
	sh -c "! /usr/local/bin/setpriv --reuid=65534 --regid=65534 --clear-groups $B check /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'needs root (CAP_SYS_ADMIN)' /tmp/err"
check "serve as an unprivileged user: permission denied" \
	sh -c "! /usr/local/bin/setpriv --reuid=65534 --regid=65534 --clear-groups $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -qi 'permission denied' /tmp/err"

start_gw() {
	bg_start gw $B serve /tmp/m.yaml --log-level debug
	bg_wait_for gw 20 test -L $RUN/dev/disk
}
stop_gw() {
	kill -TERM "$(bg_pid gw)" && bg_wait gw 30
}

# --- filesystem across detach and reattach ----------------------------------------

require "blkgw attaches the export (link $RUN/dev/disk)" start_gw
dev=$(readlink $RUN/dev/disk)
vm_log "attached at $dev"
idx=${dev#/dev/nbd}
check_eq "device size is 256 MiB" 524288 "$(cat /sys/block/nbd$idx/size)"
check_eq "logical block size 4096" 4096 "$(cat /sys/block/nbd$idx/queue/logical_block_size)"
check "two connections (sockets) to the kernel" sh -c "$B status --control $RUN/control.sock --json | grep -q '\"clients\": 2'"
check "status shows the device" sh -c "$B status --control $RUN/control.sock --json | grep -q '\"device\": \"$dev\"'"
require "mkfs.ext4 on $dev" mkfs.ext4 -q -F "$dev"
mkdir -p /mnt
require "mount $dev" mount -t ext4 "$dev" /mnt
echo "hello from blkgw" >/mnt/hello.txt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=8 2>/dev/null
md5sum /mnt/random.bin | cut -d' ' -f1 >/tmp/random.md5
check "umount" umount /mnt
check "SIGTERM: blkgw exits 0" stop_gw
check "the device link is gone" test ! -e $RUN/dev/disk
check_eq "the device is detached (size 0)" 0 "$(cat /sys/block/nbd$idx/size 2>/dev/null || echo 0)"
require "blkgw reattaches" start_gw
dev=$(readlink $RUN/dev/disk)
require "mount again" mount -t ext4 "$dev" /mnt
check_eq "the file is intact" "hello from blkgw" "$(cat /mnt/hello.txt)"
check_eq "the 8 MiB file is intact" "$(cat /tmp/random.md5)" "$(md5sum /mnt/random.bin | cut -d' ' -f1)"
check "umount" umount /mnt
check "stop" stop_gw
check_eq "the backing file holds the files (debugfs)" "hello from blkgw" \
	"$(debugfs -R 'cat /hello.txt' /tmp/disk.raw 2>/dev/null)"

# --- fio verify and discard on the attached device ---------------------------------

rm -f /tmp/disk.raw
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  disk: { backend: file, path: /tmp/disk.raw, size: 256M }
  ro: { backend: file, path: /tmp/ro.raw, size: 16M }
  mem: { backend: memory, size: 64M }
exports:
  - { image: disk, transports: [nbd], nbd: { attach: true, connections: 2, device: /dev/nbd4 } }
  - { image: ro, transports: [nbd], read-only: true, nbd: { attach: true } }
  - { image: mem, transports: [nbd], nbd: { socket: $RUN/mem.sock, listen: "127.0.0.1:10809" } }
YAML
dd if=/dev/urandom of=/tmp/ro.raw bs=1M count=16 2>/dev/null
md5sum /tmp/ro.raw | cut -d' ' -f1 >/tmp/ro.md5
require "blkgw starts with three exports" start_gw
require "the read-only export is attached too" bg_wait_for gw 10 test -L $RUN/dev/ro
dev=$(readlink $RUN/dev/disk)
check_eq "the device option is honoured" /dev/nbd4 "$dev"
cat >/tmp/busy.yaml <<YAML
version: 1
gateway: { run-dir: /tmp/run2 }
images:
  other: { backend: memory, size: 16M }
exports:
  - { image: other, transports: [nbd], nbd: { attach: true, device: /dev/nbd4 } }
YAML
check "a second daemon asking for /dev/nbd4: 'already in use', exit 1" \
	sh -c "! $B serve /tmp/busy.yaml 2>/tmp/err; cat /tmp/err; grep -q 'already in use' /tmp/err"
check "fio 4k randwrite, 2 jobs x iodepth 16, crc32c verify" \
	fio --name=rand --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
	--size=64M --offset_increment=64M --numjobs=2 --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --group_reporting
check "fio 1 MiB sequential, 2 jobs x iodepth 16, crc32c verify" \
	fio --name=seq --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
	--size=64M --offset=128M --offset_increment=64M --numjobs=2 --iodepth=16 --verify=crc32c \
	--do_verify=1 --verify_fatal=1 --group_reporting
sync
used0=$(stat -c %b /tmp/disk.raw)
check "blkdiscard 128 MiB" blkdiscard -f -o 134217728 -l 134217728 "$dev"
used1=$(stat -c %b /tmp/disk.raw)
vm_log "backing file blocks: $used0 before, $used1 after the discard"
check "the discard punched holes in the sparse backing file" test $((used0 - used1)) -ge 250000
check "the discarded range reads as zeros" \
	sh -c "dd if=$dev bs=1M skip=200 count=32 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"

rodev=$(readlink $RUN/dev/ro)
check "the read-only device is read-only" test "$(cat /sys/block/${rodev#/dev/}/ro)" = 1
check "writing the read-only device fails with an I/O error" \
	sh -c "! dd if=/dev/zero of=$rodev bs=4k count=1 oflag=direct 2>/tmp/err; cat /tmp/err; grep -qiE 'I/O error|not permitted|read-only' /tmp/err"
check "reading the read-only device gives the backing file" \
	sh -c "dd if=$rodev bs=1M iflag=direct 2>/dev/null | md5sum | grep -q $(cat /tmp/ro.md5)"

# --- Debian's nbd-client against blkgw's servers ---------------------------------------

dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
nbdc() { # DESC DEVICE CONNECT-ARGS...
	local desc="$1" d="$2"
	shift 2
	check "nbd-client $desc connects" nbd-client "$@" "$d" -b 4096 || return
	check "$desc: write and read back 4 MiB" \
		sh -c "dd if=/tmp/pat of=$d bs=1M oflag=direct 2>/dev/null && dd if=$d bs=1M count=4 iflag=direct 2>/dev/null | cmp - /tmp/pat"
	check "nbd-client -d $d" nbd-client -d "$d"
}
nbdc "unix, netlink" /dev/nbd5 -N mem -u $RUN/mem.sock
nbdc "unix, ioctl (-nonetlink)" /dev/nbd6 -N mem -u $RUN/mem.sock -nonetlink
nbdc "TCP, netlink" /dev/nbd5 -N mem 127.0.0.1 10809
nbdc "TCP, ioctl (-nonetlink)" /dev/nbd6 -N mem 127.0.0.1 10809 -nonetlink

check "SIGTERM detaches everything and exits 0" stop_gw
check_eq "the read-only backing file is unchanged" "$(cat /tmp/ro.md5)" "$(md5sum /tmp/ro.raw | cut -d' ' -f1)"
check "no device links remain" sh -c "[ -z \"\$(ls $RUN/dev 2>/dev/null)\" ]"
check_eq "/dev/nbd4 is detached" 0 "$(cat /sys/block/nbd4/size 2>/dev/null || echo 0)"

# --- a backup while the kernel writes the disk -------------------------------------
# A tracked image attached as /dev/nbdN; fio --verify writes it in a loop
# while a backup of a checkpoint (copy-before-write: /tmp cannot reflink) is
# read through Debian's nbd-client on another /dev/nbdN: the backup is the
# disk as it was at the checkpoint, and fio sees no error.

truncate -s 64M /tmp/bk.raw
cat >/tmp/bk.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  bk: { backend: file, path: /tmp/bk.raw, track-changes: true }
exports:
  - { image: bk, transports: [nbd], nbd: { attach: true } }
YAML
bg_start gwb $B serve /tmp/bk.yaml
require "blkgw attaches the tracked image" bg_wait_for gwb 20 test -L $RUN/dev/bk
bdev=$(readlink $RUN/dev/bk)
require "write 16 MiB to $bdev" dd if=/dev/urandom of="$bdev" bs=1M count=16 oflag=direct
cp /tmp/bk.raw /tmp/bk-c1.raw
require "backup start bk c1 (a new checkpoint, with its view)" \
	sh -c "$B backup start bk c1 --socket /tmp/bk-b.sock --control $RUN/control.sock"
bg_start fioloop sh -c "n=0; while [ ! -e /tmp/fio.stop ]; do n=\$((n + 1)); \
	fio --name=live --filename=$bdev --direct=1 --ioengine=libaio --iodepth=8 --rw=randwrite \
	--bs=4k --size=8M --verify=crc32c --verify_fatal=1 --randrepeat=0 || exit 1; \
	echo \$n >/tmp/fio.runs; done"
check "fio writes the live disk" wait_for 60 sh -c "! cmp -s /tmp/bk.raw /tmp/bk-c1.raw"
check "nbd-client attaches the backup export" nbd-client -N bk@c1 -u /tmp/bk-b.sock /dev/nbd7 -b 4096
check "the backup, read while fio writes, is the disk as it was at c1" \
	sh -c "dd if=/dev/nbd7 bs=1M iflag=direct 2>/dev/null | cmp - /tmp/bk-c1.raw"
check "nbd-client -d /dev/nbd7" nbd-client -d /dev/nbd7
check "fio was still writing when the backup had been read" bg_running fioloop
touch /tmp/fio.stop
check "fio --verify on the live disk: no error through the backup" bg_wait fioloop 600
vm_log "fio runs: $(cat /tmp/fio.runs 2>/dev/null); $($B status --control $RUN/control.sock --json | grep -o '"copied_bytes": [0-9]*')"
check "backup stop" $B backup stop bk@c1 --control $RUN/control.sock
stop_gwb() { kill -TERM "$(bg_pid gwb)" && bg_wait gwb 30; }
check "SIGTERM: the tracked image's daemon exits 0" stop_gwb

# --- kill -9 under fio --verify: a restart reattaches the same /dev/nbdN -----------
# dead-conn-timeout at its default (60 s): the kernel holds the device's I/O
# while blkgw is dead. fio --verify writes the device (rate-capped, so it is
# still writing at every kill) while blkgw is killed with -9 and restarted 3
# times at random moments; each restart hands the kernel fresh sockets
# (NBD_CMD_RECONFIGURE) for the device recorded in RUN-DIR/nbd/. Then: a
# device disconnected behind the dead daemon's back is attached anew; SIGTERM
# disconnects and removes the record; a restart after the image grew
# disconnects the old device and attaches anew; a restart whose manifest
# dropped the export disconnects the device the killed daemon left.

truncate -s 32M /tmp/rk.raw
cat >/tmp/rk.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  rk: { backend: file, path: /tmp/rk.raw }
exports:
  - { image: rk, transports: [nbd], nbd: { attach: true, connections: 2 } }
YAML
cat >/tmp/rk2.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  other: { backend: memory, size: 16M }
exports:
  - { image: other, transports: [nbd], nbd: { socket: $RUN/other.sock } }
YAML
rk_start() { bg_start gwr $B serve "${1:-/tmp/rk.yaml}" --log-level debug; }
rk_kill9() {
	kill -9 "$(bg_pid gwr)"
	bg_wait gwr 30
	return 0
}
rk_stop() { kill -TERM "$(bg_pid gwr)" && bg_wait gwr 30; }
rk_records() { ls $RUN/nbd 2>/dev/null | wc -l; }

rk_start
require "blkgw attaches rk" bg_wait_for gwr 20 test -L $RUN/dev/rk
rdev=$(readlink $RUN/dev/rk)
ridx=${rdev#/dev/nbd}
check "the device is recorded in the run dir" test -s $RUN/nbd/$ridx.state
check "its backend identifier names blkgw and the export" grep -q '^blkgw:rk:' /sys/block/nbd$ridx/backend
t0=$(vm_uptime)
bg_start fior fio --name=rk --filename="$rdev" --direct=1 --ioengine=io_uring --rw=randwrite \
	--bs=4k --size=24M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
	--randrepeat=1 --rate_iops=100000,300
for cycle in 1 2 3; do
	pause=$(($(od -An -N1 -tu1 /dev/urandom) % 4 + 1))
	vm_log "cycle $cycle: killing blkgw in ${pause}s"
	sleep $pause
	check "cycle $cycle: fio is still writing when blkgw is killed" bg_running fior
	rk_kill9
	check "cycle $cycle: $rdev survives kill -9 (still sized, its backend kept)" \
		sh -c "test \"\$(cat /sys/block/nbd$ridx/size)\" != 0 && test -s /sys/block/nbd$ridx/backend"
	rk_start
	check "cycle $cycle: the restarted blkgw reattaches $rdev (NBD_CMD_RECONFIGURE, 2 sockets)" \
		bg_wait_for gwr 60 grep -q "reattached $rdev left by blkgw pid [0-9]* (2 fresh connections)" $VM_LOGS/gwr.log
	check_eq "cycle $cycle: the device link still names $rdev" "$rdev" "$(readlink $RUN/dev/rk)"
	check_eq "cycle $cycle: one record in the run dir" 1 "$(rk_records)"
done
check "fio completes and verifies with no error across three kill -9 restarts" bg_wait fior 600
vm_log "fio under three kill -9 restarts took $(awk "BEGIN{print $(vm_uptime) - $t0}") s"

check "kill -9 once more" rk_kill9
check "nbd-client -d disconnects $rdev behind the dead blkgw's back" nbd-client -d "$rdev"
rk_start
check "the restarted blkgw says the recorded device is gone and attaches anew" \
	bg_wait_for gwr 60 grep -q "not reattaching $rdev left by blkgw pid [0-9]*: it is gone.*attaching anew" $VM_LOGS/gwr.log
check "attached anew" bg_wait_for gwr 30 grep -q "export rk: attached as /dev/nbd" $VM_LOGS/gwr.log
rdev2=$(readlink $RUN/dev/rk)
check "the new device reads what fio wrote" \
	sh -c "dd if=$rdev2 bs=1M iflag=direct 2>/dev/null | cmp - /tmp/rk.raw"
check_eq "one record in the run dir (the stale one removed)" 1 "$(rk_records)"
check "SIGTERM: blkgw exits 0" rk_stop
check "SIGTERM disconnected ${rdev2}" sh -c "test \"\$(cat /sys/block/${rdev2#/dev/}/size 2>/dev/null || echo 0)\" = 0"
check_eq "SIGTERM removed the record" 0 "$(rk_records)"

rk_start
check "blkgw attaches rk again" bg_wait_for gwr 20 grep -q "export rk: attached as /dev/nbd" $VM_LOGS/gwr.log
rdev3=$(readlink $RUN/dev/rk)
check "kill -9" rk_kill9
truncate -s 40M /tmp/rk.raw
rk_start
check "a restart after the image grew does not reattach $rdev3: it says why and disconnects it" \
	bg_wait_for gwr 30 grep -q "not reattaching $rdev3 left by blkgw pid [0-9]*: its size, block size or flags .* differ .*disconnecting it" $VM_LOGS/gwr.log
check "and attaches anew" bg_wait_for gwr 30 grep -q "export rk: attached as /dev/nbd" $VM_LOGS/gwr.log
rdev3=$(readlink $RUN/dev/rk)
check_eq "at the new size (40 MiB)" 81920 "$(cat /sys/block/${rdev3#/dev/}/size)"
check_eq "one record in the run dir" 1 "$(rk_records)"
check "kill -9" rk_kill9
rk_start /tmp/rk2.yaml
check "a restart whose manifest dropped rk disconnects the device the killed blkgw left" \
	bg_wait_for gwr 30 grep -q "disconnected $rdev3 left by a stopped blkgw for export rk" $VM_LOGS/gwr.log
check_eq "and removes its record" 0 "$(rk_records)"
check "$rdev3 is disconnected" sh -c "test \"\$(cat /sys/block/${rdev3#/dev/}/size 2>/dev/null || echo 0)\" = 0"
check "SIGTERM: blkgw exits 0" rk_stop

# --- while serving: a lost connection is replaced, a lost device moves on ----------
# A read held 6 s by the fault layer outlives `timeout: 2`: the kernel drops
# the device's only connection and waits for a new one (dead-conn-timeout);
# blkgw hands it a fresh one (NBD_CMD_RECONFIGURE) and the retried read
# completes with the data. Then nbd-client -d disconnects the device behind
# blkgw's back: the export is served over the next transport of its list
# (vhost-user-blk), and status says why.
cat >/tmp/rt.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  rt: { backend: memory, size: 16M, fault: { delay: 6s, ops: read, ranges: 1M-1028K, every: 1000000 } }
exports:
  - { image: rt, transports: [nbd, vhost-user-blk], nbd: { attach: true, timeout: 2 } }
YAML
rt_has() { $B status --control $RUN/control.sock --json | grep -q "$1"; }
rt_stop() { kill -TERM "$(bg_pid gwt)" && bg_wait gwt 30; }
bg_start gwt $B serve /tmp/rt.yaml
require "blkgw attaches rt" bg_wait_for gwt 20 test -L $RUN/dev/rt
tdev=$(readlink $RUN/dev/rt)
head -c 4096 /dev/urandom >/tmp/rt.blk
check "write a block at 1 MiB" dd if=/tmp/rt.blk of=$tdev bs=4k seek=256 oflag=direct conv=notrunc status=none
check "a read held 6 s (over timeout: 2) completes with the data once blkgw replaces the dropped connection" \
	sh -c "timeout 50 dd if=$tdev of=/tmp/rt.out bs=4k skip=256 count=1 iflag=direct status=none && cmp /tmp/rt.blk /tmp/rt.out"
check "blkgw says the kernel dropped the connection and it handed a fresh one" \
	grep -q "export rt: the kernel dropped 1 connection of $tdev .*handed it 1 fresh one" $VM_LOGS/gwt.log
check "still served over nbd as $tdev" rt_has "\"device\": \"$tdev\""
check "the device still works" dd if=$tdev of=/dev/null bs=1M count=4 iflag=direct status=none
check "nbd-client -d $tdev while blkgw serves it" nbd-client -d $tdev
check "the export moves to vhost-user-blk" \
	bg_wait_for gwt 30 sh -c "$B status --control $RUN/control.sock --json | grep -q '\"transport\": \"vhost-user-blk\"'"
check "status says nbd died while serving, and why" \
	rt_has "died while serving: $tdev was disconnected behind blkgw"
check "the device link is gone" test ! -e $RUN/dev/rt
check "SIGTERM: blkgw exits 0" rt_stop
