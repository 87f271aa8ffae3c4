# shellcheck shell=dash
# vm-soak (guest side): kill -9 soak of the kernel transports blkgw serves
# from inside the guest. For each transport in turn: fio writes with crc32c
# verify to the device while blkgw is killed with SIGKILL at random moments
# and started again with the same manifest, CYCLES times. After every cycle:
# the device is the same (link and major:minor) and serves a read, the run
# dir does not grow (no more files than after the first cycle, and no more
# bytes but for 16 a file: state files record a pid), fio is still running. At the end: every fio pass verified, SIGTERM
# removes the device, nothing is orphaned, and the backing file itself holds
# what the last fio pass wrote (fio --verify_only on the file).
#
# Kernel command line (run-vm.sh --append):
#   blkgw.cycles=N          kills per transport (default 3)
#   blkgw.transports=a,b    which ones, in order (default ublk,vduse,nbd)
#   blkgw.seed=S            the random delays' seed (default: new, printed)
#   blkgw.kill_min_ms=A, blkgw.kill_max_ms=B
#                           the delay before each kill, uniform in [A, B]
#                           (default 300..3000 ms)
# A failed run is replayed with the seed it printed ("SOAK-SEED").
#
# The figures of each transport go to the console as one line:
#   SOAK-FIGURES transport=T cycles=N survived=N fio_passes=P verified_mib=M
#     recovery_ms_median=X recovery_ms_max=Y rundir_files=F rundir_bytes=Z
# (the run dir's files after cycle 1, its largest size in bytes seen after a cycle)
#
# Adding a transport T: define
#   soak_T_setup           load modules etc.; vm_skip or return 1 if impossible
#   soak_T_export          print the export's manifest line for image "soak"
#                          (backing file $SOAK_IMG, run dir $SOAK_RUN)
#   soak_T_device          print the block device of the running export
#   soak_T_recovered       true once the restarted blkgw took the device over
#                          (reads $VM_LOGS/gw.log, which each start truncates)
#   soak_T_orphans         print what of T is left in the kernel (empty: none)
# and add T to blkgw.transports. The driver does the rest.
# shellcheck source=SCRIPTDIR/../guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
cycles=$(vm_arg cycles 3)
transports=$(vm_arg transports ublk,vduse,nbd)
kmin=$(vm_arg kill_min_ms 300)
kmax=$(vm_arg kill_max_ms 3000)
seed=$(vm_arg seed "")
[ -n "$seed" ] || seed=$(printf '%d' "0x$(cut -c1-5 /proc/sys/kernel/random/uuid)")
vm_log "SOAK-SEED $seed (replay: blkgw.seed=$seed blkgw.cycles=$cycles blkgw.transports=$transports blkgw.kill_min_ms=$kmin blkgw.kill_max_ms=$kmax)"

# A small LCG, so that a seed replays the same delays on any busybox.
rnd_state=$seed
# (not in a $(...) subshell, which would not advance the state)
rnd() { # MIN MAX: sets RND to a number in [MIN, MAX]
	rnd_state=$(((rnd_state * 1103515245 + 12345) % 2147483648))
	RND=$(($1 + (rnd_state / 65536) % ($2 - $1 + 1)))
}
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
ms_to_s() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# --- ublk ------------------------------------------------------------------------
soak_ublk_setup() { load_module ublk_drv; }
soak_ublk_export() { echo "  - { image: soak, transports: [ublk], ublk: { id: 3, depth: 32 } }"; }
soak_ublk_device() { echo /dev/ublkb3; }
soak_ublk_recovered() { grep -q 'recovered from blkgw pid' "$VM_LOGS/gw.log"; }
soak_ublk_orphans() { ls /dev/ublkb* /dev/ublkc* 2>/dev/null; }

# --- VDUSE -----------------------------------------------------------------------
soak_vduse_setup() { load_modules vduse virtio_vdpa virtio_blk; }
soak_vduse_export() { echo "  - { image: soak, transports: [vduse], vduse: { queues: 2 } }"; }
soak_vduse_device() { vdpa_disk soak; }
soak_vduse_recovered() { grep -q 'survived the last blkgw' "$VM_LOGS/gw.log"; }
soak_vduse_orphans() {
	local f
	ls /sys/bus/vdpa/devices
	for f in /dev/vduse/*; do
		[ "$f" = /dev/vduse/control ] || echo "$f"
	done
}

# --- attached NBD (/dev/nbdN) ------------------------------------------------------
# Two sockets; each restart hands the recorded device fresh ones
# (NBD_CMD_RECONFIGURE). Left over: a configured device (its backend file)
# or a record in the run dir.
soak_nbd_setup() { load_module nbd nbds_max=4; }
soak_nbd_export() { echo "  - { image: soak, transports: [nbd], nbd: { attach: true, connections: 2 } }"; }
soak_nbd_device() { readlink "$SOAK_RUN/dev/soak"; }
soak_nbd_recovered() { grep -q 'reattached /dev/nbd[0-9]* left by blkgw pid' "$VM_LOGS/gw.log"; }
soak_nbd_orphans() { ls /sys/block/nbd*/backend "$SOAK_RUN"/nbd/* 2>/dev/null; }

# --- the driver -------------------------------------------------------------------

rundir_files() { find "$SOAK_RUN" \( -type f -o -type l -o -type s \) | wc -l; }
rundir_bytes() { find "$SOAK_RUN" -type f -exec stat -c %s {} \; | awk '{ s += $1 } END { print s + 0 }'; }
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }'; }
maxof() { sort -n | tail -n1; }
no_orphans() { # TRANSPORT
	local out
	out=$(soak_"$1"_orphans 2>&1)
	echo "$out"
	[ -z "$out" ]
}
devnum() { stat -L -c '%t:%T' "$1"; }
# the fio job every pass runs; the final --verify_only on the backing file repeats it
FIO_JOB="--name=soak --bs=4k --size=16M --iodepth=16 --rw=randwrite --verify=crc32c --randrepeat=1"

# fio passes back to back until /tmp/soak-stop exists: writes rate-limited
# (so a pass lasts about 15 s whatever the machine) with verification
# interleaved and a full verify at the end of each pass.
fio_loop() { # DEV
	local n=0
	while ! test -e /tmp/soak-stop; do
		n=$((n + 1))
		# shellcheck disable=SC2086 # FIO_JOB is a list of options
		if fio $FIO_JOB --filename="$1" --direct=1 --ioengine=io_uring --do_verify=1 \
			--verify_fatal=1 --verify_backlog=256 --rate_iops=100000,300 \
			>"/tmp/fio-pass-$n.log" 2>&1; then
			echo "pass $n ok"
		else
			echo "pass $n FAILED"
			cat "/tmp/fio-pass-$n.log"
			return 1
		fi
	done
}

soak_one() { # TRANSPORT
	local t=$1 dev num link kpid delay t0 t1 c survived=0 base_files="" base_bytes=""
	local files bytes passes max_bytes=0
	SOAK_RUN=/tmp/soak-$t/run
	SOAK_IMG=/tmp/soak-$t/disk.raw
	mkdir -p "$SOAK_RUN"
	truncate -s 64M "$SOAK_IMG"
	rm -f /tmp/soak-stop /tmp/fio-pass-*.log "/tmp/rec-$t.txt"
	if ! soak_"$t"_setup; then
		fail "$t: setup (modules)"
		return 1
	fi
	{
		echo "version: 1"
		echo "gateway: { run-dir: $SOAK_RUN, workers: 2 }"
		echo "images:"
		echo "  soak: { backend: file, path: $SOAK_IMG }"
		echo "exports:"
		soak_"$t"_export
	} >/tmp/soak-$t.yaml
	bg_start gw $B serve /tmp/soak-$t.yaml --log-level debug
	require "$t: blkgw serves the export (link $SOAK_RUN/dev/soak)" bg_wait_for gw 60 test -L $SOAK_RUN/dev/soak
	require "$t: the device appears" wait_for 30 soak_"$t"_device
	dev=$(soak_"$t"_device)
	link=$(readlink $SOAK_RUN/dev/soak)
	num=$(devnum "$dev")
	vm_log "$t: device $dev ($num), link $link"
	bg_start fio fio_loop "$dev"
	c=1
	while [ $c -le "$cycles" ]; do
		rnd "$kmin" "$kmax"
		delay=$RND
		sleep "$(ms_to_s "$delay")"
		if ! bg_running fio; then
			fail "$t: cycle $c: fio stopped before the kill"
			break
		fi
		kpid=$(bg_pid gw)
		t0=$(now_ms)
		kill -9 "$kpid"
		bg_wait gw 30
		bg_start gw $B serve /tmp/soak-$t.yaml --log-level debug
		# a read through the device returns once blkgw serves it again
		rnd 0 16383
		if ! timeout 120 dd if="$dev" of=/dev/null bs=4k count=1 skip=$RND iflag=direct 2>/dev/null; then
			fail "$t: cycle $c: the device does not serve a read within 120 s of the restart"
			break
		fi
		t1=$(now_ms)
		echo $((t1 - t0)) >>/tmp/rec-$t.txt
		check "$t: cycle $c (killed after ${delay} ms): blkgw took the device over" \
			bg_wait_for gw 60 soak_"$t"_recovered || break
		check "$t: cycle $c: the same device ($dev $num, link $link)" \
			sh -c "[ \"\$(stat -L -c '%t:%T' $dev)\" = $num ] && [ \"\$(readlink $SOAK_RUN/dev/soak)\" = $link ]" || break
		files=$(rundir_files)
		bytes=$(rundir_bytes)
		if [ -z "$base_files" ]; then
			base_files=$files base_bytes=$bytes
		fi
		# bytes: a state file records the daemon's pid, whose digits vary
		check "$t: cycle $c: the run dir does not grow ($files files, $bytes bytes; after cycle 1: $base_files, $base_bytes)" \
			test "$files" -le "$base_files" -a "$bytes" -le $((base_bytes + 16 * base_files)) || { ls -lR "$SOAK_RUN"; break; }
		[ "$bytes" -le "$max_bytes" ] || max_bytes=$bytes
		vm_log "$t: cycle $c: recovered in $((t1 - t0)) ms"
		survived=$c
		c=$((c + 1))
	done
	touch /tmp/soak-stop
	check "$t: every fio pass verified across $survived kill(s)" bg_wait fio 600
	passes=$(grep -c 'ok$' "$VM_LOGS/fio.log")
	check "$t: the device still serves after the last kill" dd if="$dev" of=/dev/null bs=1M count=4 iflag=direct
	kill -TERM "$(bg_pid gw)"
	check "$t: SIGTERM: blkgw exits 0" bg_wait gw 60
	check "$t: no device orphaned" no_orphans "$t"
	# shellcheck disable=SC2086
	check "$t: the backing file holds what the last fio pass wrote (fio --verify_only)" \
		fio $FIO_JOB --filename="$SOAK_IMG" --ioengine=psync --verify_only
	vm_log "SOAK-FIGURES transport=$t cycles=$cycles survived=$survived fio_passes=$passes" \
		"verified_mib=$((passes * 16 + 16)) recovery_ms_median=$(median </tmp/rec-$t.txt)" \
		"recovery_ms_max=$(maxof </tmp/rec-$t.txt) rundir_files=$base_files rundir_bytes=$max_bytes"
	rm -f "$SOAK_IMG"
}

for t in $(echo "$transports" | tr , ' '); do
	vm_log "=== soak: $t, $cycles cycles, kills ${kmin}..${kmax} ms apart ==="
	soak_one "$t"
done
