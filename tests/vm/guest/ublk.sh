# shellcheck shell=dash
# vm-ublk: blkgw exports images as /dev/ublkbN through the guest's ublk
# driver. A clear error without ublk_drv; fio crc32c verify at QD1 and QD32
# on one and two queues (4k random, 1 MiB sequential); mkfs.ext4, mount,
# files, remount; blkdiscard punches holes in the sparse backing file;
# write-zeroes; a read-only export is a read-only disk; status shows the
# device; a taken id is refused; SIGTERM removes every device; each queue's
# thread runs on the CPUs GET_QUEUE_AFFINITY names; O_SYNC writes arrive as
# FUA and fsync as flushes (status counters); kill -9 recovery (3 cycles);
# a device another process holds cannot be taken over: the export falls
# back to nbd, with the reason in status.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RUN=/tmp/run
CTL="--control $RUN/control.sock"

# --- without the module -----------------------------------------------------------

mkdir -p $RUN
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  mem: { backend: memory, size: 16M }
exports:
  - { image: mem, transports: [ublk] }
YAML
check "check: without ublk_drv, the reason and the fix (exit 1)" \
	sh -c "! $B check /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'ublk_drv kernel module is not loaded.*modprobe ublk_drv' /tmp/err"
check "serve: without ublk_drv, a plain error and exit 1" \
	sh -c "! $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'no transport could start: ublk: the ublk_drv kernel module is not loaded' /tmp/err"
require "load ublk_drv" load_module ublk_drv
require "load ext4 (and crc32c for its checksums)" load_modules crc32c_generic ext4
check "check: with the module, ublk can work here" $B check /tmp/m.yaml
mkdir -p /tmp/np && chmod 1777 /tmp/np
sed "s|run-dir: $RUN|run-dir: /tmp/np|" /tmp/m.yaml >/tmp/np.yaml
check "check as an unprivileged user: refused, CAP_SYS_ADMIN named" \
	sh -c "! /usr/local/bin/setpriv --reuid=65534 --regid=65534 --clear-groups $B check /tmp/np.yaml 2>/tmp/err; cat /tmp/err; grep -q 'needs root (CAP_SYS_ADMIN)' /tmp/err"

# --- several exports: file on 1 and 2 queues, read-only, memory ----------------------------

truncate -s 256M /tmp/d1.raw
truncate -s 256M /tmp/d2.raw
dd if=/dev/urandom of=/tmp/ro.raw bs=1M count=16 2>/dev/null
md5sum /tmp/ro.raw | cut -d' ' -f1 >/tmp/ro.md5
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  d1: { backend: file, path: /tmp/d1.raw }
  d2: { backend: file, path: /tmp/d2.raw }
  ro: { backend: file, path: /tmp/ro.raw }
  mem: { backend: memory, size: 64M }
exports:
  - { image: d1, transports: [ublk], ublk: { poll-us: 1000 } }
  - { image: d2, transports: [ublk], ublk: { id: 5, queues: 2, depth: 64, max-io: 1M } }
  - { image: ro, transports: [ublk], read-only: true }
  - { image: mem, transports: [ublk], ublk: { depth: 32 } }
YAML

start_gw() {
	bg_start gw $B serve "$1" --log-level debug
	for x in $2; do
		bg_wait_for gw 30 test -L $RUN/dev/$x || return 1
	done
}
stop_gw() {
	kill -TERM "$(bg_pid gw)" && bg_wait gw 60
}

require "blkgw serves four ublk exports (links in $RUN/dev)" start_gw /tmp/m.yaml "d1 d2 ro mem"
d1=$(readlink $RUN/dev/d1)
d2=$(readlink $RUN/dev/d2)
ro=$(readlink $RUN/dev/ro)
mem=$(readlink $RUN/dev/mem)
vm_log "devices: d1=$d1 d2=$d2 ro=$ro mem=$mem"
check_eq "the id option is honoured" /dev/ublkb5 "$d2"
check "the devices exist" test -b "$d1" -a -b "$d2" -a -b "$ro" -a -b "$mem"
check_eq "d1 is 256 MiB" 524288 "$(cat /sys/block/${d1#/dev/}/size)"
check_eq "d2 has two hardware queues" 2 "$(ls -d /sys/block/ublkb5/mq/* | wc -l)"
check "status names each device, its queues and depth" \
	sh -c "$B status $CTL --json >/tmp/st; cat /tmp/st; grep -q '\"device\": \"/dev/ublkb5\"' /tmp/st && grep -q 'ublk id 5, 2 queues x depth 64, max-io 1024 KiB' /tmp/st"
check "a state file per device in the run dir" test -s $RUN/ublk/5.state
check_eq "a volatile cache (flushes reach the backend)" "write back" \
	"$(cat /sys/block/ublkb5/queue/write_cache)"
check_eq "max-io 1M: 1024 KiB per request" 1024 "$(cat /sys/block/ublkb5/queue/max_sectors_kb)"

# queue_cpus ID Q: the CPUs blkgw's thread for queue Q of ublkID may run on
queue_cpus() {
	for t in /proc/"$(bg_pid gw)"/task/*; do
		[ "$(cat "$t/comm")" = "ublk$1-q$2" ] && sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$t/status"
	done
}
vm_log "ublkb5 queues: kernel maps CPUs '$(cat /sys/block/ublkb5/mq/0/cpu_list)' and '$(cat /sys/block/ublkb5/mq/1/cpu_list)'; threads on '$(queue_cpus 5 0)' and '$(queue_cpus 5 1)'"
check_eq "GET_QUEUE_AFFINITY: queue 0's thread runs on the CPU the kernel maps to queue 0" \
	"$(cat /sys/block/ublkb5/mq/0/cpu_list)" "$(queue_cpus 5 0)"
check_eq "GET_QUEUE_AFFINITY: queue 1's thread runs on the CPU the kernel maps to queue 1" \
	"$(cat /sys/block/ublkb5/mq/1/cpu_list)" "$(queue_cpus 5 1)"
check "the two queues' threads are pinned apart (two vCPUs)" \
	test "$(queue_cpus 5 0)" != "$(queue_cpus 5 1)"
check_eq "a one-queue device's thread may run on every CPU" 0-1 "$(queue_cpus ${d1#/dev/ublkb} 0)"

cat >/tmp/busy.yaml <<YAML
version: 1
gateway: { run-dir: /tmp/run2 }
images:
  other: { backend: memory, size: 16M }
exports:
  - { image: other, transports: [ublk], ublk: { id: 5 } }
YAML
check "a second daemon asking for id 5: 'in use', exit 1" \
	sh -c "! $B serve /tmp/busy.yaml 2>/tmp/err; cat /tmp/err; grep -q 'ublk device id 5 is in use' /tmp/err"

fio_rand() { # DEV QD SIZE [extra...]
	local dev="$1" qd="$2" size="$3"
	shift 3
	fio --name=rand --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
		--size="$size" --iodepth="$qd" --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--randrepeat=1 --group_reporting "$@"
}
fio_seq() { # DEV QD SIZE [extra...]
	local dev="$1" qd="$2" size="$3"
	shift 3
	fio --name=seq --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
		--size="$size" --iodepth="$qd" --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--group_reporting "$@"
}
check "1 queue, fio 4k randwrite QD1, crc32c verify" fio_rand "$d1" 1 4M
check "1 queue, fio 4k randwrite QD32, crc32c verify" fio_rand "$d1" 32 16M
check "1 queue, fio 1 MiB write QD1, crc32c verify" fio_seq "$d1" 1 16M --offset=64M
check "1 queue, fio 1 MiB write QD32, crc32c verify" fio_seq "$d1" 32 32M --offset=128M
two="--numjobs=2 --offset_increment=64M --cpus_allowed=0-1 --cpus_allowed_policy=split"
# shellcheck disable=SC2086
check "2 queues, fio 4k randwrite QD1 x 2 jobs, crc32c verify" fio_rand "$d2" 1 4M $two
# shellcheck disable=SC2086
check "2 queues, fio 4k randwrite QD32 x 2 jobs, crc32c verify" fio_rand "$d2" 32 8M $two
# shellcheck disable=SC2086
check "2 queues, fio 1 MiB write QD1 x 2 jobs, crc32c verify" fio_seq "$d2" 1 8M --offset=128M $two
# shellcheck disable=SC2086
check "2 queues, fio 1 MiB write QD32 x 2 jobs, crc32c verify" fio_seq "$d2" 32 16M --offset=128M $two
check "memory backend, fio 4k randrw QD32, crc32c verify" fio_rand "$mem" 32 16M --rw=randrw
# d1 polls (poll-us 1000) for a serial client when it comes back within 2 ms:
# under TCG it may or may not; fio verified either way. Logged, not asserted.
vm_log "d1's queue polled for the QD1 client: $(grep -c "ublk${d1#/dev/ublkb} queue 0: a serial client: polling" $VM_LOGS/gw.log) time(s)"
check "the backing file holds what fio wrote on d1 (first 8 MiB)" \
	sh -c "sync; dd if=$d1 bs=1M count=8 iflag=direct 2>/dev/null | md5sum >/tmp/a; dd if=/tmp/d1.raw bs=1M count=8 2>/dev/null | md5sum >/tmp/b; cmp /tmp/a /tmp/b"

# --- FUA and flush reach the backend ---------------------------------------------------

counter() { # EXPORT NAME: one of the export's counters in status --json
	$B status $CTL --json | tr -d ' \n' | grep -o "\"id\":\"$1\".*" | grep -o "\"$2\":[0-9]*" |
		head -1 | cut -d: -f2
}
writes_fua() { # EXPORT DEV WRITES FUA [fio args...]: fio's writes and FUA writes counted
	local x="$1" dev="$2" w0 f0 w1 f1
	shift 2
	local want_w="$1" want_f="$2"
	shift 2
	w0=$(counter "$x" writes) f0=$(counter "$x" fua)
	fio --name=fua --filename="$dev" --ioengine=psync --rw=write --bs=4k --size=64k \
		--offset=200M --direct=1 "$@" >/dev/null || return 1
	w1=$(counter "$x" writes) f1=$(counter "$x" fua)
	echo "writes $w0 -> $w1, fua $f0 -> $f1 (want +$want_w, +$want_f)"
	[ $((w1 - w0)) -eq "$want_w" ] && [ $((f1 - f0)) -eq "$want_f" ]
}
check "16 O_DIRECT|O_SYNC writes on d1 arrive as 16 FUA writes" writes_fua d1 "$d1" 16 16 --sync=1
check "16 plain O_DIRECT writes carry no FUA" writes_fua d1 "$d1" 16 0
flushes_after_fsync() {
	local f0 f1
	f0=$(counter d1 flushes)
	fio --name=fsync --filename="$d1" --ioengine=psync --rw=write --bs=4k --size=16k \
		--offset=200M --direct=1 --fsync=1 >/dev/null || return 1
	f1=$(counter d1 flushes)
	# fio fsyncs after a write only when another follows: 3 for 4 writes.
	echo "flushes $f0 -> $f1 (want at least +3)"
	[ $((f1 - f0)) -ge 3 ]
}
check "fio's fsyncs between 4 writes reach the backend as flushes" flushes_after_fsync

# --- discard and write-zeroes --------------------------------------------------------

sync
used0=$(stat -c %b /tmp/d1.raw)
check "blkdiscard 64 MiB at 128 MiB" /usr/local/bin/blkdiscard -f -o 134217728 -l 67108864 "$d1"
used1=$(stat -c %b /tmp/d1.raw)
vm_log "d1 backing file blocks: $used0 before, $used1 after the discard"
check "the discard punched a hole in the sparse backing file" test $((used0 - used1)) -ge 60000
check "the discarded range reads as zeros (its last 16 MiB)" \
	sh -c "dd if=$d1 bs=1M skip=176 count=16 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"
check "write-zeroes (blkdiscard -z) 16 MiB at 64 MiB" \
	/usr/local/bin/blkdiscard -f -z -o 67108864 -l 16777216 "$d1"
check "the zeroed range reads as zeros" \
	sh -c "dd if=$d1 bs=1M skip=64 count=16 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"
check "status counts the write-zeroes" \
	sh -c "$B status $CTL --json | tr -d ' \n' | grep -o '\"id\":\"d1\".*' | grep -q '\"zeroes\":[1-9]'"

# --- read-only --------------------------------------------------------------------

check_eq "the read-only export is a read-only disk" 1 "$(cat /sys/block/${ro#/dev/}/ro)"
check "writing the read-only device fails" \
	sh -c "! dd if=/dev/zero of=$ro bs=4k count=1 oflag=direct 2>/tmp/err; cat /tmp/err; grep -qiE 'I/O error|not permitted|read-only' /tmp/err"
check "reading the read-only device gives the backing file" \
	sh -c "dd if=$ro bs=1M iflag=direct 2>/dev/null | md5sum | grep -q $(cat /tmp/ro.md5)"

# --- a filesystem -------------------------------------------------------------------------

require "mkfs.ext4 on $d2" mkfs.ext4 -q -F "$d2"
mkdir -p /mnt
require "mount $d2" mount -t ext4 "$d2" /mnt
echo "hello from blkgw over ublk" >/mnt/hello.txt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=8 2>/dev/null
md5sum /mnt/random.bin | cut -d' ' -f1 >/tmp/random.md5
check "umount" umount /mnt
check "remount" mount -t ext4 "$d2" /mnt
check_eq "the file is intact after remount" "hello from blkgw over ublk" "$(cat /mnt/hello.txt)"
check_eq "the 8 MiB file is intact after remount" "$(cat /tmp/random.md5)" \
	"$(md5sum /mnt/random.bin | cut -d' ' -f1)"
check "umount" umount /mnt

# --- SIGTERM removes every device -------------------------------------------------------

check "SIGTERM: blkgw exits 0" stop_gw
check "no /dev/ublkb* or /dev/ublkc* left" sh -c "! ls /dev/ublkb* /dev/ublkc* 2>/dev/null"
check "the device links are gone" sh -c "! ls $RUN/dev/* 2>/dev/null"
check "the state files are gone" sh -c "! ls $RUN/ublk/*.state 2>/dev/null"
check_eq "the read-only backing file is unchanged" "$(cat /tmp/ro.md5)" "$(md5sum /tmp/ro.raw | cut -d' ' -f1)"
check_eq "the filesystem is in the backing file (debugfs)" "hello from blkgw over ublk" \
	"$(debugfs -R 'cat /hello.txt' /tmp/d2.raw 2>/dev/null)"

# --- kill -9 and restart: the device survives, fio verifies (3 cycles) ------------------

truncate -s 128M /tmp/rec.raw
cat >/tmp/r.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  rec: { backend: file, path: /tmp/rec.raw }
  mem: { backend: memory, size: 16M }
exports:
  - { image: rec, transports: [ublk], ublk: { id: 7, depth: 32 } }
  - { image: mem, transports: [ublk], ublk: { depth: 16 } }
YAML
sed '/image: rec/d; /  rec:/d' /tmp/r.yaml >/tmp/r2.yaml

# recovered_gw MANIFEST N: start blkgw and wait until it took N devices over
recovered_gw() {
	bg_start gw $B serve "$1" --log-level debug
	bg_wait_for gw 60 sh -c "test \$(grep -c 'recovered from blkgw pid' $VM_LOGS/gw.log) -ge $2"
}
kill9_gw() {
	kill -9 "$(bg_pid gw)"
	bg_wait gw 30
	return 0
}

require "blkgw serves /dev/ublkb7 and a memory export" start_gw /tmp/r.yaml "rec mem"
rec=/dev/ublkb7
# Writes capped at 300/s: the write phase lasts 40 s or more however fast the
# machine, so fio is still writing through all three kills (unloaded, it
# finished before the second one).
bg_start fio fio --name=rec --filename=$rec --direct=1 --ioengine=io_uring --rw=randwrite \
	--bs=4k --size=48M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=1 \
	--rate_iops=100000,300
for cycle in 1 2 3; do
	sleep 3
	check "cycle $cycle: fio is still writing when blkgw is killed" bg_running fio
	kill9_gw
	check "cycle $cycle: /dev/ublkb7 survives kill -9" test -b $rec
	check "cycle $cycle: blkgw restarted with the same manifest takes /dev/ublkb7 over" \
		recovered_gw /tmp/r.yaml 1
	check "cycle $cycle: the memory export's device is deleted, not recovered onto an empty image" \
		wait_for 60 grep -q "deleting /dev/ublkb[0-9]* left by pid [0-9]*: its image lived in the killed blkgw" $VM_LOGS/gw.log
	check "cycle $cycle: status says the device was recovered" \
		sh -c "$B status $CTL --json | grep -q 'ublk id 7, 1 queue x depth 32, max-io 512 KiB, recovered'"
done
check "fio completes and verifies with no error across three kill -9 restarts" bg_wait fio 900

check "kill -9 once more" kill9_gw
check "the state file outlives the daemon" test -s $RUN/ublk/7.state
check "restart with a manifest that dropped the export: the memory export starts anew" \
	start_gw /tmp/r2.yaml "mem"
check "its old device is deleted, not recovered onto a new, empty memory image" \
	wait_for 60 grep -q "deleting /dev/ublkb[0-9]* left by pid [0-9]*: its image lived in the killed blkgw" $VM_LOGS/gw.log
check "the dropped export's /dev/ublkb7 is deleted" wait_for 60 sh -c "! test -e /dev/ublkb7"
check "its state file is gone" wait_for 10 sh -c "! test -e $RUN/ublk/7.state"
check "the log says why" grep -q "removed /dev/ublkb7 left by a stopped blkgw for export rec" \
	$VM_LOGS/gw.log
check "SIGTERM: blkgw exits 0" stop_gw
check "no /dev/ublkb* or /dev/ublkc* left after all that" sh -c "! ls /dev/ublkb* /dev/ublkc* 2>/dev/null"

# --- a device that cannot be taken over: the export falls back to its next transport ------

truncate -s 64M /tmp/fb.raw
cat >/tmp/f.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  fb: { backend: file, path: /tmp/fb.raw }
exports:
  - { image: fb, transports: [ublk, nbd], ublk: { id: 9 }, nbd: { socket: $RUN/fb.sock } }
YAML
require "blkgw serves fb as /dev/ublkb9" start_gw /tmp/f.yaml fb
check "fb over ublk: fio 4k randwrite QD8, crc32c verify" fio_rand /dev/ublkb9 8 4M
check "kill -9 blkgw" kill9_gw
hold_cdev() { # another process opens the dead daemon's /dev/ublkc9 (once the kernel let it go)
	for _ in $(seq 1 50); do
		rm -f /tmp/held
		bg_start holder sh -c 'exec 3<>/dev/ublkc9 && touch /tmp/held && exec sleep 600'
		bg_wait_for holder 5 test -e /tmp/held && return 0
		sleep 0.2
	done
	return 1
}
check "a process holds /dev/ublkc9 open" hold_cdev
bg_start gw $B serve /tmp/f.yaml --log-level debug
check "restarted, blkgw cannot take /dev/ublkb9 over and falls back to nbd" \
	bg_wait_for gw 120 grep -q "export fb: fell back to nbd" $VM_LOGS/gw.log
check "status: served over nbd, ublk rejected with the error and who holds the device" \
	sh -c "$B status $CTL --json >/tmp/st; cat /tmp/st; grep -q '\"transport\": \"nbd\"' /tmp/st && grep -q 'taking over /dev/ublkb9: START_USER_RECOVERY: /dev/ublkc9 is open in pid [0-9]* (sleep)' /tmp/st"
check "the device it could not take over is removed" sh -c "! test -e /dev/ublkb9"
check "its state line is gone" sh -c "! test -e $RUN/ublk/9.state"
check "the nbd export serves the image fio wrote over ublk: verify" \
	fio --name=rand --ioengine=nbd --uri="nbd+unix:///fb?socket=$RUN/fb.sock" --rw=randwrite \
	--bs=4k --size=4M --iodepth=8 --verify=crc32c --verify_only --randrepeat=1
check "no /dev/ublkc9 either (deleted without waiting for the holder)" sh -c "! test -e /dev/ublkc9"
kill "$(bg_pid holder)"
check "SIGTERM: blkgw exits 0" stop_gw
check "no /dev/ublkb* or /dev/ublkc* left at the end" sh -c "! ls /dev/ublkb* /dev/ublkc* 2>/dev/null"

# --- the fault layer: errors at the block layer; a held read holds up nothing else ------
# Three memory exports with fault layers, one worker. An injected EIO ends a
# request with -EIO (BLK_STS_IOERR: dd says Input/output error, the kernel
# logs it); ENOSPC passes through as BLK_STS_NOSPC (No space left on
# device); outside the ranges and afterwards the devices work; a read held
# 8 s holds up neither a read of another range on the same queue nor I/O on
# another export.

cat >/tmp/fault.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  ferr: { backend: memory, size: 16M, fault: { errno: EIO, ranges: 4M-5M } }
  fnospc: { backend: memory, size: 16M, fault: { errno: ENOSPC, ops: write, ranges: 4M-5M } }
  fslow: { backend: memory, size: 16M, fault: { delay: 8s, ops: read, ranges: 4M-5M } }
exports:
  - { image: ferr, transports: [ublk], ublk: { id: 11 } }
  - { image: fnospc, transports: [ublk], ublk: { id: 12 } }
  - { image: fslow, transports: [ublk], ublk: { id: 13 } }
YAML
# dd_fails MESSAGE DD-ARGS...: one 4k dd fails, and says MESSAGE
dd_fails() {
	local msg="$1"
	shift
	! dd "$@" bs=4k count=1 2>/tmp/dderr || {
		echo "dd succeeded"
		return 1
	}
	cat /tmp/dderr
	grep -q "$msg" /tmp/dderr
}
require "fault: blkgw serves /dev/ublkb11-13" start_gw /tmp/fault.yaml "ferr fnospc fslow"
check "fault: a direct read in the EIO range fails with an I/O error" \
	dd_fails 'Input/output error' if=/dev/ublkb11 of=/dev/null skip=1024 iflag=direct
check "fault: a direct write there fails with an I/O error" \
	dd_fails 'Input/output error' if=/dev/zero of=/dev/ublkb11 seek=1100 oflag=direct
check "fault: the kernel logged the I/O error" \
	sh -c "dmesg | grep -E 'I/O error, dev ublkb11, sector (8192|8800) '"
yes blkgw-fault | head -c 4096 >/tmp/f4k
check "fault: outside the range a write and a read succeed" \
	sh -c "dd if=/tmp/f4k of=/dev/ublkb11 bs=4k seek=1280 count=1 oflag=direct && dd if=/dev/ublkb11 bs=4k skip=1280 count=1 iflag=direct 2>/dev/null | cmp - /tmp/f4k"
check "fault: the device keeps serving (fio verify outside the range)" \
	fio_rand /dev/ublkb11 8 1M --offset=8M
check "fault: the range still fails, the device is still there" \
	sh -c "test -b /dev/ublkb11 && ! dd if=/dev/ublkb11 of=/dev/null bs=4k skip=1024 count=1 iflag=direct"
check "fault: ENOSPC reaches the writer as No space left on device" \
	dd_fails 'No space left on device' if=/dev/zero of=/dev/ublkb12 seek=1024 oflag=direct
check "fault: reads of that range work (the layer fails writes only)" \
	dd if=/dev/ublkb12 of=/dev/null bs=4k skip=1024 count=1 iflag=direct
dd if=/dev/ublkb13 of=/dev/null bs=4k skip=1024 count=1 iflag=direct 2>/tmp/held.err &
held=$!
check "fault: the held read reached blkgw (status: 1 hit)" \
	wait_for 10 sh -c "$B status $CTL | grep -q 'after a delay, 1 hit'"
check "fault: meanwhile a read of another range on the same queue completes" \
	dd if=/dev/ublkb13 of=/dev/null bs=4k count=1 iflag=direct
check "fault: and I/O on another export" \
	sh -c "dd if=/tmp/f4k of=/dev/ublkb12 bs=4k count=1 oflag=direct && dd if=/dev/ublkb11 of=/dev/null bs=4k count=1 iflag=direct"
check "fault: the held read was still held all that time" kill -0 $held
check "fault: then it completes without an error" wait $held
check "fault: SIGTERM: blkgw exits 0" stop_gw
check "fault: no /dev/ublkb* or /dev/ublkc* left" sh -c "! ls /dev/ublkb* /dev/ublkc* 2>/dev/null"
