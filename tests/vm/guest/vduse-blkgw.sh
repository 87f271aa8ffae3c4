# shellcheck shell=dash
# vm-vduse: blkgw exports images as the guest kernel's own virtio-blk disks
# through VDUSE (no QEMU, no iproute2): the errors a user meets without the
# modules; fio --verify with 1 and 2 queues (4k random at QD1 and QD32,
# 1 MiB sequential); mkfs.ext4 + mount + files + umount + remount across a
# daemon restart; blkdiscard punches holes in the sparse backing file;
# write-zeroes; a read-only export refuses writes; SIGTERM tears everything
# down (nothing left under /sys/bus/vdpa/devices or /dev/vduse/); vhost_vdpa
# taking the device, no CAP_NET_ADMIN, names in use; three kill -9 restarts
# under fio (a memory export's device deleted, not taken over); a dropped
# export's device torn down at start-up; qemu-storage-daemon's vduse-blk
# export as the peer, on the image blkgw then reads back.
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
# vhost_vdpa registered before virtio_vdpa: the vdpa bus offers it the device first.
require "load vhost_vdpa (before virtio_vdpa)" load_module vhost_vdpa
require "load virtio_vdpa" load_module virtio_vdpa
check "serve without virtio_blk: exit 1, 'modprobe virtio_blk' named" \
	sh -c "! $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'virtio_blk module is not loaded (modprobe virtio_blk)' /tmp/err"
require "load virtio_blk" load_module virtio_blk
check "vhost_vdpa takes the device: exit 1, 'taken by vhost_vdpa' and the rebind named" \
	sh -c "! timeout 120 $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'was taken by vhost_vdpa, not virtio_vdpa, so no /dev/vdX appears: unload it (modprobe -r vhost_vdpa) or rebind' /tmp/err"
check "nothing was left behind by the vhost_vdpa failure" \
	sh -c "[ -z \"\$(ls /sys/bus/vdpa/devices)\" ] && [ \"\$(ls /dev/vduse)\" = control ]"
require "unload vhost_vdpa" rmmod vhost_vdpa
check "without CAP_NET_ADMIN: exit 1, CAP_NET_ADMIN named" \
	sh -c "! /usr/local/bin/setpriv --bounding-set=-net_admin --inh-caps=-net_admin $B serve /tmp/m.yaml 2>/tmp/err; cat /tmp/err; grep -q 'binding a VDUSE device (vdpa netlink) needs CAP_NET_ADMIN' /tmp/err"
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
	# Reads only: every 4k block the randwrite jobs left is read back at random and verified.
	fio_verify "$n queue(s): fio 4k randread QD32, 2 jobs, verifies the randwrite jobs' blocks" \
		"$d" --rw=randread --bs=4k --size=32M --offset_increment=32M --numjobs=2 --iodepth=32
done

sync
used0=$(stat -c %b /tmp/disk.raw)
check "blkdiscard the 64 MiB fio wrote sequentially" blkdiscard -f -o 67108864 -l 67108864 "$dev"
used1=$(stat -c %b /tmp/disk.raw)
vm_log "backing file blocks: $used0 before, $used1 after the discard"
check "the discard punched holes in the sparse backing file" test $((used0 - used1)) -ge 100000
check "the discarded range reads as zeros" \
	sh -c "dd if=$dev bs=1M skip=64 count=64 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"
dd if=/dev/urandom of="$dev" bs=1M count=4 seek=8 oflag=direct 2>/dev/null
check "blkdiscard -z (write-zeroes) 4 MiB" blkdiscard -f -z -o 8388608 -l 4194304 "$dev"
check "the zeroed range reads as zeros" \
	sh -c "dd if=$dev bs=1M skip=8 count=4 iflag=direct 2>/dev/null | cmp - /dev/zero 2>&1 | grep -q EOF"

check "the read-only device is read-only" test "$(cat /sys/block/${rodev#/dev/}/ro)" = 1
check "writing the read-only device fails" \
	sh -c "! dd if=/dev/zero of=$rodev bs=4k count=1 oflag=direct 2>/tmp/err; cat /tmp/err; grep -qiE 'I/O error|not permitted|read-only' /tmp/err"
check "reading the read-only device gives the backing file" \
	sh -c "dd if=$rodev bs=1M iflag=direct 2>/dev/null | md5sum | grep -q $(cat /tmp/ro.md5)"

# Another process (a second blkgw, its own run dir) asks for names in use.
mkdir -p /tmp/run2
cat >/tmp/m2.yaml <<YAML
version: 1
gateway: { run-dir: /tmp/run2, workers: 1 }
images:
  mq: { backend: memory, size: 16M }
exports:
  - { image: mq, transports: [vduse] }
YAML
check "a default name in use by another process: exit 1, 'choose another vduse.name'" \
	sh -c "! timeout 120 $B serve /tmp/m2.yaml 2>/tmp/err; cat /tmp/err; grep -q \"a VDUSE device named 'mq' already exists (another process's?): choose another vduse.name\" /tmp/err"
sed -i 's/transports: \[vduse\] }/transports: [vduse], vduse: { name: blkgw-disk } }/' /tmp/m2.yaml
check "vduse.name in use by another process: exit 1, 'choose another vduse.name'" \
	sh -c "! timeout 120 $B serve /tmp/m2.yaml 2>/tmp/err; cat /tmp/err; grep -q \"a VDUSE device named 'blkgw-disk' already exists (another process's?): choose another vduse.name\" /tmp/err"
check "the refused starts left no record" sh -c "! ls /tmp/run2/*.inflight 2>/dev/null"
check "the first blkgw's disks still serve" \
	sh -c "dd if=$mqdev of=/dev/null bs=4k count=16 iflag=direct && dd if=$dev of=/dev/null bs=4k count=16 iflag=direct"

check "SIGTERM tears every device down and exits 0" stop_gw
check "nothing left under /sys/bus/vdpa/devices or /dev/vduse, no links" torn_down
check_eq "the read-only backing file is unchanged" "$(cat /tmp/ro.md5)" "$(md5sum /tmp/ro.raw | cut -d' ' -f1)"
if ! torn_down; then
	ls -l /sys/bus/vdpa/devices /dev/vduse $RUN/dev
fi

# --- kill -9 while fio verifies; the disk outlives blkgw ---------------------------
# A file export survives and is taken over; a memory export's device is
# deleted instead (its data died with blkgw: a process holding it gets I/O
# errors, never another image's data) and a new one replaces it; a device
# the manifest no longer wants is torn down at start-up.

rm -f /tmp/disk.raw /tmp/gone.raw
manifest_k() { # with "gone" or not
	cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  disk: { backend: file, path: /tmp/disk.raw, size: 256M }
  mem: { backend: memory, size: 64M }
  gone: { backend: file, path: /tmp/gone.raw, size: 64M }
exports:
  - { image: disk, transports: [vduse], vduse: { queues: 2 } }
  - { image: mem, transports: [vduse] }
YAML
	[ "$1" = gone ] && echo "  - { image: gone, transports: [vduse] }" >>/tmp/m.yaml
	return 0
}
manifest_k gone
ready() { $B status --control $RUN/control.sock >/dev/null 2>&1; }
gone_pid() { ! kill -0 "$1" 2>/dev/null; }
# fio in the background on DEV until it fails (the device went away); its log in /tmp/fio-NAME.log.
fio_until_error() { # NAME DEV
	fio --name="$1" --filename="$2" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
		--size=32M --iodepth=8 --time_based --runtime=900 --rate_iops=200 \
		>/tmp/fio-"$1".log 2>&1 &
}
require "blkgw starts" start_gw disk mem gone
require "blkgw answers status" bg_wait_for gw 30 ready
dev=$(readlink $RUN/dev/disk)
memdev=$(readlink $RUN/dev/mem)
dd if=/dev/urandom of=/tmp/mark bs=4k count=1 2>/dev/null
require "a mark written to the memory export" dd if=/tmp/mark of="$memdev" bs=4k count=1 oflag=direct
fio --name=k --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
	--size=48M --iodepth=16 --numjobs=2 --offset_increment=64M --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --group_reporting --rate_iops=100000,300 >/tmp/fio-k.log 2>&1 &
fpid=$!
fio_until_error mem "$memdev"
mpid=$!
# Writes capped at 300/s per job (above): the write phase lasts 40 s or more
# however fast the machine, so fio still runs at every kill.
for i in 1 2 3; do
	sleep 4
	check "restart $i: fio is still running when blkgw is killed" kill -0 $fpid
	kill -9 "$(bg_pid gw)"
	bg_wait gw 10
	check "restart $i: the device outlives blkgw" test -e /sys/bus/vdpa/devices/disk
	sleep 1
	require "restart $i: blkgw starts again with the same manifest" start_gw disk mem gone
	check "restart $i: it took the device over" \
		bg_wait_for gw 30 grep -q 'survived the last blkgw' "$VM_LOGS/gw.log"
	check_eq "restart $i: the memory export's device was deleted, not taken over" 1 \
		"$(grep -c 'vduse mem: deleting the device left by pid' "$VM_LOGS/gw.log")"
	require "restart $i: blkgw answers status" bg_wait_for gw 30 ready
	check_eq "restart $i: the same disk" "$dev" "$(readlink $RUN/dev/disk)"
	if [ "$i" = 1 ]; then
		check "the fio holding the memory export's old device fails (no other data)" \
			wait_for 120 gone_pid $mpid
		check "its error is an I/O error" grep -q 'Input/output error' /tmp/fio-mem.log
		memdev=$(readlink $RUN/dev/mem)
		dd if=/dev/zero of=/tmp/zero4k bs=4k count=1 2>/dev/null
		check "the new memory device is empty: the mark is not there" \
			sh -c "dd if=$memdev bs=4k count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/zero4k"
		check "the new memory device serves" \
			sh -c "dd if=/tmp/mark of=$memdev bs=4k count=1 oflag=direct && dd if=$memdev bs=4k count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/mark"
	fi
done
check "fio completes and verifies across three kill -9 restarts" wait $fpid
grep -E 'err=|verify|WRITE:|READ:' /tmp/fio-k.log | head -10
grep -E 'resubmitting' "$VM_LOGS/gw.log"
kill $mpid 2>/dev/null

# A device the manifest no longer wants, with I/O in flight, is torn down at start-up.
gonedev=$(readlink $RUN/dev/gone)
fio_until_error gone "$gonedev"
gpid=$!
sleep 2
kill -9 "$(bg_pid gw)"
bg_wait gw 10
manifest_k
require "blkgw starts without export gone" start_gw disk mem
check "the dropped export's device is removed" \
	bg_wait_for gw 120 sh -c "! test -e /sys/bus/vdpa/devices/gone && ! test -e /dev/vduse/gone"
check "the log says why" \
	grep -q 'vduse gone: removing the device left by pid .* for export gone, which is no longer served over vduse' "$VM_LOGS/gw.log"
check "its record and link are gone" \
	sh -c "! test -e $RUN/vduse-gone.inflight && ! test -L $RUN/dev/gone"
check "the fio holding it ends" wait_for 120 gone_pid $gpid
check "with I/O errors" grep -q 'Input/output error' /tmp/fio-gone.log
check "the wanted devices are still served" \
	sh -c "dd if=$dev of=/dev/null bs=4k count=16 iflag=direct && dd if=$(readlink $RUN/dev/mem) of=/dev/null bs=4k count=16 iflag=direct"
check "SIGTERM tears the surviving devices down" stop_gw
check "nothing left under /sys/bus/vdpa/devices or /dev/vduse, no links" torn_down
check "the inflight logs are gone with the devices" sh -c "! ls $RUN/*.inflight 2>/dev/null"

# --- the peer: qemu-storage-daemon's vduse-blk export, then blkgw's, one image ----
# The fio verify above holds against another VDUSE server (the test itself is
# sound), and blkgw reads back exactly what qemu-storage-daemon wrote.

rm -f /tmp/peer.raw
truncate -s 64M /tmp/peer.raw
bg_start qsd qemu-storage-daemon \
	--blockdev driver=file,node-name=n0,filename=/tmp/peer.raw,aio=threads \
	--export type=vduse-blk,id=e0,node-name=n0,name=qsd0,writable=on,num-queues=2,queue-size=128
require "peer: qemu-storage-daemon creates its VDUSE device" bg_wait_for qsd 60 test -e /dev/vduse/qsd0
require "peer: vdpa dev add binds it" vdpa dev add name qsd0 mgmtdev vduse
require "peer: virtio_blk makes a disk of it" wait_for 30 vdpa_disk qsd0
qdev=$(vdpa_disk qsd0)
fio_verify "peer: fio 4k randwrite QD16, crc32c verify, on qemu-storage-daemon's disk" "$qdev" \
	--rw=randwrite --bs=4k --size=32M --iodepth=16
qsum=$(dd if="$qdev" bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
check "peer: vdpa dev del" vdpa dev del qsd0
kill -TERM "$(bg_pid qsd)"
check "peer: qemu-storage-daemon exits on SIGTERM" wait_for 60 _vm_gone "$(bg_pid qsd)"
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 2 }
images:
  peer: { backend: file, path: /tmp/peer.raw }
exports:
  - { image: peer, transports: [vduse], vduse: { queues: 2 } }
YAML
require "blkgw exports the image qemu-storage-daemon wrote" start_gw peer
pdev=$(readlink $RUN/dev/peer)
check_eq "blkgw's disk reads what qemu-storage-daemon's did (md5 of the whole disk)" "$qsum" \
	"$(dd if="$pdev" bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
fio_verify "blkgw verifies every block qemu-storage-daemon's fio wrote (4k randread QD16)" "$pdev" \
	--rw=randread --bs=4k --size=32M --iodepth=16
check "SIGTERM" stop_gw
check "nothing of blkgw's left under /sys/bus/vdpa/devices, no links" \
	sh -c "! test -e /sys/bus/vdpa/devices/peer && ! test -e /dev/vduse/peer && [ -z \"\$(ls $RUN/dev 2>/dev/null)\" ]"

# --- the fault layer: errors at the block layer; a held read holds up nothing else ----
# Memory exports with fault layers on one worker. blkgw answers an injected
# error with VIRTIO_BLK_S_IOERR, which virtio_blk ends as BLK_STS_IOERR: EIO
# for the injected EIO and for ENOSPC alike (virtio-blk has no status for a
# full disk); the kernel logs it; outside the ranges and afterwards the
# devices work; a read held 8 s holds up neither a read of another range on
# the same queue nor I/O on another export.

cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  ferr: { backend: memory, size: 16M, fault: { errno: EIO, ranges: 4M-5M } }
  fnospc: { backend: memory, size: 16M, fault: { errno: ENOSPC, ops: write, ranges: 4M-5M } }
  fslow: { backend: memory, size: 16M, fault: { delay: 8s, ops: read, ranges: 4M-5M } }
exports:
  - { image: ferr, transports: [vduse] }
  - { image: fnospc, transports: [vduse] }
  - { image: fslow, transports: [vduse] }
YAML
# io_error DD-ARGS...: one 4k dd fails with Input/output error
io_error() {
	! dd "$@" bs=4k count=1 2>/tmp/dderr || {
		echo "dd succeeded"
		return 1
	}
	cat /tmp/dderr
	grep -q 'Input/output error' /tmp/dderr
}
require "fault: blkgw serves three VDUSE disks with fault layers" start_gw ferr fnospc fslow
ferr=$(readlink $RUN/dev/ferr)
fnospc=$(readlink $RUN/dev/fnospc)
fslow=$(readlink $RUN/dev/fslow)
vm_log "fault: ferr=$ferr fnospc=$fnospc fslow=$fslow"
check "fault: a direct read in the EIO range fails with an I/O error" \
	io_error if="$ferr" of=/dev/null skip=1024 iflag=direct
check "fault: a direct write there fails with an I/O error" \
	io_error if=/dev/zero of="$ferr" seek=1100 oflag=direct
check "fault: the kernel logged the I/O error" \
	sh -c "dmesg | grep -E 'I/O error, dev ${ferr#/dev/}, sector (8192|8800) '"
yes blkgw-fault | head -c 4096 >/tmp/f4k
check "fault: outside the range a write and a read succeed" \
	sh -c "dd if=/tmp/f4k of=$ferr bs=4k seek=1280 count=1 oflag=direct && dd if=$ferr bs=4k skip=1280 count=1 iflag=direct 2>/dev/null | cmp - /tmp/f4k"
fio_verify "fault: the disk keeps serving (fio verify outside the range)" "$ferr" \
	--rw=randwrite --bs=4k --offset=8M --size=1M --iodepth=8
check "fault: the range still fails, the disk is still there" \
	sh -c "test -b $ferr && ! dd if=$ferr of=/dev/null bs=4k skip=1024 count=1 iflag=direct"
check "fault: ENOSPC reaches the writer as an I/O error" \
	io_error if=/dev/zero of="$fnospc" seek=1024 oflag=direct
check "fault: reads of that range work (the layer fails writes only)" \
	dd if="$fnospc" of=/dev/null bs=4k skip=1024 count=1 iflag=direct
dd if="$fslow" of=/dev/null bs=4k skip=1024 count=1 iflag=direct 2>/tmp/held.err &
held=$!
check "fault: the held read reached blkgw (status: 1 hit)" \
	wait_for 10 sh -c "$B status --control $RUN/control.sock | grep -q 'after a delay, 1 hit'"
check "fault: meanwhile a read of another range on the same queue completes" \
	dd if="$fslow" of=/dev/null bs=4k count=1 iflag=direct
check "fault: and I/O on another export" \
	sh -c "dd if=/tmp/f4k of=$fnospc bs=4k count=1 oflag=direct && dd if=$ferr of=/dev/null bs=4k count=1 iflag=direct"
check "fault: the held read was still held all that time" kill -0 $held
check "fault: then it completes without an error" wait $held
check "fault: SIGTERM tears the devices down" stop_gw
check "fault: nothing left under /sys/bus/vdpa/devices or /dev/vduse, no links" torn_down

# --- the vdpa device deleted behind blkgw's back ----------------------------------
# `vdpa dev del` resets the device, then removes it: the disk is gone for
# good, so the export moves to the next transport of its list
# (vhost-user-blk) and status says why; a driver reset alone (unbind and
# bind again) is not a death.
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  vd: { backend: memory, size: 16M }
exports:
  - { image: vd, transports: [vduse, vhost-user-blk] }
YAML
vd_has() { $B status --control $RUN/control.sock --json | grep -q "$1"; }
require "gone: blkgw serves vd over VDUSE" start_gw vd
vdisk=$(readlink $RUN/dev/vd)
check "gone: unbind and bind the driver again (a reset, not a deletion)" \
	sh -c "echo vd > /sys/bus/vdpa/drivers/virtio_vdpa/unbind && echo vd > /sys/bus/vdpa/drivers/virtio_vdpa/bind"
check "gone: after the driver's reset the export stays on VDUSE" \
	sh -c "sleep 6; $B status --control $RUN/control.sock --json | grep -q '\"transport\": \"vduse\"'"
check "gone: its disk comes back and reads" \
	wait_for 20 sh -c "d=\$(ls /sys/bus/vdpa/devices/vd/virtio*/block 2>/dev/null) && [ -n \"\$d\" ] && dd if=/dev/\$d of=/dev/null bs=4k count=1 iflag=direct"
check "gone: vdpa dev del vd behind blkgw's back" vdpa dev del vd
check "gone: the export moves to vhost-user-blk" \
	wait_for 30 sh -c "$B status --control $RUN/control.sock --json | grep -q '\"transport\": \"vhost-user-blk\"'"
check "gone: status says VDUSE died while serving, and why" \
	vd_has "died while serving: its vdpa device vd .*was deleted behind blkgw's back"
check "gone: the VDUSE device was destroyed (nothing under /dev/vduse but control)" \
	sh -c "[ \"\$(ls /dev/vduse)\" = control ]"
check "gone: SIGTERM: blkgw exits 0" stop_gw

# --- a wedged device creation: given up after start-timeout ----------------------
# Binding makes the kernel read the partition table through blkgw; the
# image's first 4 KiB are held 8 s, start-timeout is 2 s: the export moves
# on to vhost-user-blk while the kernel still waits, the daemon answers
# meanwhile, and the given-up device is removed once the kernel returns.
cat >/tmp/m.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1, start-timeout: 2 }
images:
  wedge: { backend: memory, size: 16M, fault: { delay: 8s, ops: read, ranges: 0-4K } }
exports:
  - { image: wedge, transports: [vduse, vhost-user-blk] }
YAML
bg_start gwe $B serve /tmp/m.yaml --log-level debug
stop_gwe() { kill -TERM "$(bg_pid gwe)" && bg_wait gwe 60; }
check "wedge: the export serves over vhost-user-blk once VDUSE's creation times out" \
	bg_wait_for gwe 30 sh -c "$B status --control $RUN/control.sock --json | grep -q '\"transport\": \"vhost-user-blk\"'"
check "wedge: status says VDUSE's creation did not finish within 2 s" \
	sh -c "$B status --control $RUN/control.sock --json | grep -q 'creating the device did not finish within 2 s'"
check "wedge: the kernel is still creating it (the vdpa device exists, the read is held)" \
	test -e /sys/bus/vdpa/devices/wedge
check "wedge: the given-up device is removed once the kernel returns" \
	bg_wait_for gwe 60 grep -q 'export wedge: the device creation given up earlier has ended' $VM_LOGS/gwe.log
check "wedge: nothing left under /sys/bus/vdpa/devices or /dev/vduse" \
	wait_for 20 sh -c "[ -z \"\$(ls /sys/bus/vdpa/devices)\" ] && [ \"\$(ls /dev/vduse)\" = control ]"
check "wedge: the device being made was never taken for one left behind" \
	sh -c "! grep 'removing the device left by' $VM_LOGS/gwe.log"
check "wedge: SIGTERM: blkgw exits 0" stop_gwe
