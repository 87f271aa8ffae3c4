# shellcheck shell=dash
# vm-nbd-netlink: attach /dev/nbdX through transports/nbd/nbd_netlink.c (the
# nbd-nl-selftest tool serves an in-memory export on a socketpair), move data
# with dd, blkdiscard and fio --verify, then detach. Also checks the error
# messages (module missing, permission denied, device busy), multiple
# connections, and RECONFIGURE after a dropped connection (LINK_DEAD event).
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

T=nbd-nl-selftest

# expect_fail TEXT CMD...: CMD must exit 3 (a netlink error) and say TEXT
expect_fail() {
	local text="$1" rc
	shift
	"$@" >/tmp/expect.out 2>&1
	rc=$?
	cat /tmp/expect.out
	[ "$rc" -eq 3 ] || { echo "expected exit 3, got $rc"; return 1; }
	grep -q "$text" /tmp/expect.out || { echo "expected the message to contain '$text'"; return 1; }
}

# stat_of LOG NAME: a counter from the selftest's final "stats:" line
stat_of() {
	sed -n "s/^stats: .*\b$2=\([0-9]*\).*/\1/p" "$1"
}

# stat_ge LOG NAME MIN
stat_ge() {
	local v
	v=$(stat_of "$1" "$2")
	echo "$2=$v (want >= $3)"
	[ -n "$v" ] && [ "$v" -ge "$3" ]
}

sysblk() { cat "/sys/block/nbd$1/$2"; }

# --- before the module is loaded --------------------------------------------

check "probe without the nbd module says the driver is not loaded" \
	expect_fail "NBD driver is not loaded" $T probe
require "load nbd (nbds_max=4)" load_module nbd nbds_max=4
require "probe resolves the nbd family and its multicast group" \
	sh -c "$T probe | tee /dev/stderr | grep -q 'multicast group nbd_mc_group id [1-9]'"
check "genl-check passes with the nbd module loaded" $T genl-check
check "connect as an unprivileged user is refused with a permission message" \
	expect_fail "permission denied" $T serve --as-user 65534 --size 1M

# --- one connection: dd, blkdiscard, fio verify --------------------------------

bg_start srv $T serve --size 64M --block-size 4096 --ready-file /tmp/srv.idx --dump /tmp/srv.img
require "the selftest connected a device" bg_wait_for srv 20 test -s /tmp/srv.idx
idx=$(cat /tmp/srv.idx)
dev=/dev/nbd$idx
vm_log "attached $dev"
check "$dev is a block device" wait_for 5 test -b "$dev"
check_eq "nbd$idx size is 64 MiB" 131072 "$(sysblk "$idx" size)"
check_eq "nbd$idx logical block size is 4096" 4096 "$(sysblk "$idx" queue/logical_block_size)"
check "status reports nbd$idx connected" sh -c "$T status $idx | grep -qx 'nbd$idx connected'"
check "a second connect to nbd$idx fails with 'already in use'" \
	expect_fail "already in use" $T serve --index "$idx" --size 1M

dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
check "dd writes 8 MiB (O_DIRECT)" dd if=/tmp/pattern of="$dev" bs=1M oflag=direct
check "dd reads the same 8 MiB back (O_DIRECT)" \
	sh -c "dd if=$dev of=/tmp/readback bs=1M count=8 iflag=direct && cmp /tmp/pattern /tmp/readback"
# blkdiscard is util-linux's (build-guest --bin): guest-lib makes the bare name
# run it instead of busybox's applet, which has no -z. -f: the random
# pattern can look like a file system to libblkid (it once read as hfsplus),
# and blkdiscard then refuses without it
check "blkdiscard -z zeroes 1 MiB at 4 MiB (WRITE_ZEROES)" blkdiscard -f -z -o 4194304 -l 1048576 "$dev"
check "blkdiscard discards 4 MiB at 32 MiB (TRIM)" blkdiscard -f -o 33554432 -l 4194304 "$dev"
dd if=/dev/zero of=/tmp/zero1m bs=1M count=1 2>/dev/null
check "the zeroed range reads back as zeroes" \
	sh -c "dd if=$dev bs=1M skip=4 count=1 iflag=direct 2>/dev/null | cmp - /tmp/zero1m"
check "fio randwrite 16 MiB with crc32c verify (io_uring, qd 16, fsync)" \
	fio --name=verify --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite \
	--bs=4k --offset=16M --size=16M --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --serialize_overlap=1 --fsync=64 --end_fsync=1
check "fio mixed sizes 8 MiB with md5 verify (libaio)" \
	fio --name=mixed --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite \
	--bsrange=4k-256k --offset=40M --size=8M --iodepth=8 --verify=md5 --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --serialize_overlap=1
check "disconnect nbd$idx over netlink" $T disconnect "$idx"
check "the selftest server exits 0 after the kernel's disconnect" bg_wait srv 30
srvlog=$VM_LOGS/srv.log
cat "$srvlog"
check "the server saw the kernel's NBD_CMD_DISC" stat_ge "$srvlog" disc 1
check "the server saw reads" stat_ge "$srvlog" read 1
check "the server saw writes" stat_ge "$srvlog" write 1
check "the server saw flushes" stat_ge "$srvlog" flush 1
check "the server saw trims" stat_ge "$srvlog" trim 1
check "the server saw write-zeroes" stat_ge "$srvlog" write_zeroes 1
check_eq "no protocol errors" 0 "$(stat_of "$srvlog" errors)"
check "nbd$idx size is 0 after disconnect" wait_for 5 sh -c "[ \"\$(cat /sys/block/nbd$idx/size)\" = 0 ]"
check "status reports nbd$idx idle" sh -c "$T status $idx | grep -qx 'nbd$idx idle'"
check "the server's memory holds the dd pattern (data reached the server)" \
	sh -c "dd if=/tmp/srv.img of=/tmp/srv.head bs=1M count=4 2>/dev/null && dd if=/tmp/pattern of=/tmp/pat.head bs=1M count=4 2>/dev/null && cmp /tmp/srv.head /tmp/pat.head"
check "the server's memory is zero where the device was zeroed" \
	sh -c "dd if=/tmp/srv.img bs=1M skip=4 count=1 2>/dev/null | cmp - /tmp/zero1m"
rm -f /tmp/srv.img

# --- two connections (CAN_MULTI_CONN), destroy on disconnect -------------------

bg_start mc $T serve --size 32M --block-size 512 --conns 2 --destroy --ready-file /tmp/mc.idx
require "the selftest connected a device with two sockets" bg_wait_for mc 20 test -s /tmp/mc.idx
idx=$(cat /tmp/mc.idx)
dev=/dev/nbd$idx
check "$dev is a block device" wait_for 5 test -b "$dev"
check_eq "nbd$idx logical block size is 512" 512 "$(sysblk "$idx" queue/logical_block_size)"
check "fio randrw 8 MiB with crc32c verify over two connections" \
	fio --name=mc --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite \
	--bs=4k --size=8M --iodepth=32 --numjobs=1 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --randrepeat=1 --serialize_overlap=1
check "disconnect nbd$idx" $T disconnect "$idx"
check "the server exits 0" bg_wait mc 30
check "both connections got NBD_CMD_DISC" stat_ge "$VM_LOGS/mc.log" disc 2
check_eq "no protocol errors" 0 "$(stat_of "$VM_LOGS/mc.log" errors)"

# --- a dropped connection repaired with RECONFIGURE ------------------------------

bg_start rc $T serve --size 32M --timeout 2 --dead-timeout 30 --drop-after 40 --ready-file /tmp/rc.idx
require "the selftest connected a device (dead-conn timeout 30 s)" bg_wait_for rc 20 test -s /tmp/rc.idx
idx=$(cat /tmp/rc.idx)
dev=/dev/nbd$idx
check "$dev is a block device" wait_for 5 test -b "$dev"
dd if=/dev/urandom of=/tmp/pattern2 bs=1M count=8 2>/dev/null
check "dd writes 8 MiB while the server drops the connection after 40 requests" \
	dd if=/tmp/pattern2 of="$dev" bs=64k oflag=direct
check "dd reads the same 8 MiB back" \
	sh -c "dd if=$dev of=/tmp/readback2 bs=64k count=128 iflag=direct && cmp /tmp/pattern2 /tmp/readback2"
check "the LINK_DEAD multicast event arrived" grep -q "LINK_DEAD event for nbd$idx" "$VM_LOGS/rc.log"
check "the device was reconfigured with a new socket" grep -q "reconfigured nbd$idx" "$VM_LOGS/rc.log"
check "disconnect nbd$idx" $T disconnect "$idx"
check "the server exits 0" bg_wait rc 30
cat "$VM_LOGS/rc.log"
check "at least one reconnect" stat_ge "$VM_LOGS/rc.log" reconnects 1
check_eq "no protocol errors" 0 "$(stat_of "$VM_LOGS/rc.log" errors)"
check "no I/O errors in the kernel log" sh -c "! dmesg | grep 'I/O error'"
