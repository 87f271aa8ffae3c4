# shellcheck shell=dash
# vm-vduse: blkgw exports images as the guest kernel's own virtio-blk disks
# through VDUSE (no QEMU, no iproute2): the errors a user meets without the
# modules; fio --verify with 1 and 2 queues (4k random at QD1 and QD32,
# 1 MiB sequential); mkfs.ext4 + mount + files + umount + remount across a
# daemon restart; blkdiscard punches holes in the sparse backing file;
# write-zeroes; a read-only export refuses writes; SIGTERM tears everything
# down (nothing left under /sys/bus/vdpa/devices or /dev/vduse/).
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RUN=/tmp/run
mkdir -p $RUN /mnt

# --- errors a user meets ------------------------------------------------------

truncate -s 256M /tmp/disk.raw
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  disk: { backend: file, path: /tmp/disk.raw }
exports:
  - { image: disk, transports: [vduse] }
YAML
check "serve without the vduse module: exit 1, 'modprobe vduse' named" \
	sh -c "! $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'vduse kernel module is not loaded (modprobe vduse' /tmp/err"
require "load vduse" load_module vduse
check "serve without virtio_vdpa: exit 1, 'modprobe virtio_vdpa' named" \
	sh -c "! $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'virtio_vdpa module is not loaded (modprobe virtio_vdpa)' /tmp/err"
require "load virtio_vdpa" load_module virtio_vdpa
check "serve without virtio_blk: exit 1, 'modprobe virtio_blk' named" \
	sh -c "! $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'virtio_blk module is not loaded (modprobe virtio_blk)' /tmp/err"
require "load virtio_blk" load_module virtio_blk
require "load ext4 (and crc32c for its checksums)" load_modules crc32c_generic ext4
check "nothing was left behind by the failed starts" \
	sh -c "[ -z \"\$(ls /sys/bus/vdpa/devices)\" ] && [ \"\$(ls /dev/vduse)\" = control ]"

start_gw() { # LINK...
	bg_start gw $B serve /tmp/m.yaml --log-level debug
	for l in "$@"; do
		bg_wait_for gw 60 test -L $RUN/dev/$l || return 1
	done
}
stop_gw() {
	kill -TERM "$(bg_pid gw)" && bg_wait gw 60
}
torn_down() {
	[ -z "$(ls /sys/bus/vdpa/devices)" ] && [ "$(ls /dev/vduse)" = control ] &&
		[ -z "$(ls $RUN/dev 2>/dev/null)" ]
}

# --- filesystem across a restart -----------------------------------------------

require "blkgw creates and binds the device (link $RUN/dev/disk)" start_gw disk
dev=$(readlink $RUN/dev/disk)
vm_log "disk at $dev"
vd=${dev#/dev/}
check_eq "device size is 256 MiB" 524288 "$(cat /sys/block/$vd/size)"
check_eq "the serial is the image name" disk "$(cat /sys/block/$vd/serial 2>/dev/null)"
check "the vdpa device exists" test -e /sys/bus/vdpa/devices/disk
check "status shows the device" \
	sh -c "$B status --control $RUN/control.sock --json | tee /tmp/st | grep -q '\"device\": \"$dev\"' || { cat /tmp/st; false; }"
require "mkfs.ext4 on $dev" mkfs.ext4 -q -F "$dev"
require "mount $dev" mount -t ext4 "$dev" /mnt
echo "hello from blkgw" >/mnt/hello.txt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=8 2>/dev/null
md5sum /mnt/random.bin | cut -d' ' -f1 >/tmp/random.md5
check "umount" umount /mnt
check "SIGTERM: blkgw exits 0" stop_gw
check "teardown: no vdpa device, no /dev/vduse/disk, no link" torn_down
require "blkgw starts again" start_gw disk
dev=$(readlink $RUN/dev/disk)
require "mount again" mount -t ext4 "$dev" /mnt
check_eq "the file is intact" "hello from blkgw" "$(cat /mnt/hello.txt)"
check_eq "the 8 MiB file is intact" "$(cat /tmp/random.md5)" "$(md5sum /mnt/random.bin | cut -d' ' -f1)"
check "umount" umount /mnt
check "stop" stop_gw
check_eq "the backing file holds the files (debugfs)" "hello from blkgw" \
	"$(debugfs -R 'cat /hello.txt' /tmp/disk.raw 2>/dev/null)"

# --- fio verify with 1 and 2 queues, discard, write-zeroes, read-only -----------

rm -f /tmp/disk.raw
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  disk: { backend: file, path: /tmp/disk.raw, size: 256M }
  mq: { backend: memory, size: 128M }
  ro: { backend: file, path: /tmp/ro.raw, size: 16M }
exports:
  - { image: disk, transports: [vduse], vduse: { name: blkgw-disk, serial: s-disk } }
  - { image: mq, transports: [vduse], vduse: { queues: 2, queue-size: 256 } }
  - { image: ro, transports: [vduse], read-only: true }
YAML
dd if=/dev/urandom of=/tmp/ro.raw bs=1M count=16 2>/dev/null
md5sum /tmp/ro.raw | cut -d' ' -f1 >/tmp/ro.md5
require "blkgw starts with three VDUSE exports" start_gw disk mq ro
dev=$(readlink $RUN/dev/disk)
mqdev=$(readlink $RUN/dev/mq)
rodev=$(readlink $RUN/dev/ro)
check "the name option is honoured" test -e /sys/bus/vdpa/devices/blkgw-disk
check_eq "the serial option is honoured" s-disk "$(cat /sys/block/${dev#/dev/}/serial 2>/dev/null)"
check_eq "two queues: two hardware contexts" 2 "$(ls /sys/block/${mqdev#/dev/}/mq | wc -l)"

fio_verify() { # DESC DEV ARGS...
	local desc="$1" d="$2"
	shift 2
	check "$desc" fio --name=v --filename="$d" --direct=1 --ioengine=io_uring --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --randrepeat=1 --group_reporting "$@"
}
for q in "1:$dev" "2:$mqdev"; do
	n=${q%%:*} d=${q#*:}
	fio_verify "$n queue(s): fio 4k randwrite QD1, crc32c verify" "$d" --rw=randwrite --bs=4k \
		--size=16M --iodepth=1
	fio_verify "$n queue(s): fio 4k randwrite QD32, 2 jobs, crc32c verify" "$d" --rw=randwrite \
		--bs=4k --size=32M --offset_increment=32M --numjobs=2 --iodepth=32
	fio_verify "$n queue(s): fio 1 MiB sequential write, QD8, crc32c verify" "$d" --rw=write \
		--bs=1M --size=64M --offset=64M --iodepth=8
done

sync
used0=$(stat -c %b /tmp/disk.raw)
check "blkdiscard the 64 MiB fio wrote sequentially" blkdiscard -o 67108864 -l 67108864 "$dev"
used1=$(stat -c %b /tmp/disk.raw)
vm_log "backing file blocks: $used0 before, $used1 after the discard"
check "the discard punched holes in the sparse backing file" test $((used0 - used1)) -ge 100000
check "the discarded range reads as zeros" \
	sh -c "dd if=$dev bs=1M skip=64 count=64 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"
dd if=/dev/urandom of="$dev" bs=1M count=4 seek=8 oflag=direct 2>/dev/null
check "blkdiscard -z (write-zeroes) 4 MiB" blkdiscard -z -o 8388608 -l 4194304 "$dev"
check "the zeroed range reads as zeros" \
	sh -c "dd if=$dev bs=1M skip=8 count=4 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"

check "the read-only device is read-only" test "$(cat /sys/block/${rodev#/dev/}/ro)" = 1
check "writing the read-only device fails" \
	sh -c "! dd if=/dev/zero of=$rodev bs=4k count=1 oflag=direct 2>/tmp/err; cat /tmp/err; grep -qiE 'I/O error|not permitted|read-only' /tmp/err"
check "reading the read-only device gives the backing file" \
	sh -c "dd if=$rodev bs=1M iflag=direct 2>/dev/null | md5sum | grep -q $(cat /tmp/ro.md5)"

check "SIGTERM tears every device down and exits 0" stop_gw
check "nothing left under /sys/bus/vdpa/devices or /dev/vduse, no links" torn_down
check_eq "the read-only backing file is unchanged" "$(cat /tmp/ro.md5)" "$(md5sum /tmp/ro.raw | cut -d' ' -f1)"
if ! torn_down; then
	ls -l /sys/bus/vdpa/devices /dev/vduse $RUN/dev
fi

# --- kill -9 while fio verifies; the disk outlives blkgw ---------------------------

rm -f /tmp/disk.raw
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  disk: { backend: file, path: /tmp/disk.raw, size: 256M }
exports:
  - { image: disk, transports: [vduse], vduse: { queues: 2 } }
YAML
ready() { $B status --control $RUN/control.sock >/dev/null 2>&1; }
require "blkgw starts" start_gw disk
require "blkgw answers status" bg_wait_for gw 30 ready
dev=$(readlink $RUN/dev/disk)
fio --name=k --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
	--size=48M --iodepth=16 --numjobs=2 --offset_increment=64M --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --group_reporting --rate_iops=100000,300 >/tmp/fio-k.log 2>&1 &
fpid=$!
# Writes capped at 300/s per job (above): the write phase lasts 40 s or more
# however fast the machine, so fio still runs at every kill.
for i in 1 2 3; do
	sleep 4
	check "restart $i: fio is still running when blkgw is killed" kill -0 $fpid
	kill -9 "$(bg_pid gw)"
	bg_wait gw 10
	check "restart $i: the device outlives blkgw" test -e /sys/bus/vdpa/devices/disk
	sleep 1
	require "restart $i: blkgw starts again with the same manifest" start_gw disk
	check "restart $i: it took the device over" \
		bg_wait_for gw 30 grep -q 'survived the last blkgw' "$VM_LOGS/gw.log"
	require "restart $i: blkgw answers status" bg_wait_for gw 30 ready
	check_eq "restart $i: the same disk" "$dev" "$(readlink $RUN/dev/disk)"
done
check "fio completes and verifies across three kill -9 restarts" wait $fpid
cat /tmp/fio-k.log | grep -E 'err=|verify|WRITE:|READ:' | head -10
grep -E 'resubmitting' "$VM_LOGS/gw.log"
check "SIGTERM tears the surviving device down" stop_gw
check "nothing left under /sys/bus/vdpa/devices or /dev/vduse, no links" torn_down
check "the inflight log is gone with the device" sh -c "! ls $RUN/*.inflight 2>/dev/null"
