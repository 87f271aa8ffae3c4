# shellcheck shell=dash
# Guest side of bench/ublk/run.sh: blkgw over ublk and over attached NBD,
# backends null, memory and file (on the guest's tmpfs), the same fio jobs
# on each device. Prints one block per run for the host to parse:
#   BENCH-BEGIN <transport> <backend> <job> <blkgw cpu ticks> <ticks/s>
#   <fio JSON>
#   BENCH-END
# shellcheck source=SCRIPTDIR/../../tests/vm/guest-lib.sh
. /lib/blkgw-vm/guest-lib.sh

B=/usr/local/bin/blkgw
RUN=/tmp/run
RT=$(cat /test/runtime 2>/dev/null || echo 10)
SIZE=256M
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
require "load ublk_drv" load_module ublk_drv
require "load nbd" load_module nbd nbds_max=4
mkdir -p $RUN

# job name, fio arguments
JOBS="randread-qd1:--rw=randread --bs=4k --iodepth=1
randread-qd128:--rw=randread --bs=4k --iodepth=128
randwrite-qd1:--rw=randwrite --bs=4k --iodepth=1
randwrite-qd128:--rw=randwrite --bs=4k --iodepth=128
seqread-1m:--rw=read --bs=1M --iodepth=8
seqwrite-1m:--rw=write --bs=1M --iodepth=8"

ticks() { # PID: utime+stime of the whole process
	awk '{print $14 + $15}' "/proc/$1/stat"
}

run_one() { # TRANSPORT BACKEND
	local t="$1" b="$2" img dev pid
	case "$b" in
	null) img="{ backend: null, size: $SIZE }" ;;
	memory) img="{ backend: memory, size: $SIZE }" ;;
	file) rm -f /tmp/img.raw; img="{ backend: file, path: /tmp/img.raw, size: $SIZE }" ;;
	esac
	case "$t" in
	ublk) tr="transports: [ublk], ublk: { queues: 1, depth: 128 }" ;;
	nbd) tr="transports: [nbd], nbd: { attach: true, connections: 1 }" ;;
	esac
	cat >/tmp/b.yaml <<YAML
version: 1
gateway: { run-dir: $RUN, workers: 1 }
images:
  x: $img
exports:
  - { image: x, $tr }
YAML
	bg_start gw $B serve /tmp/b.yaml
	if ! bg_wait_for gw 30 test -L $RUN/dev/x; then
		fail "$t/$b: blkgw did not start"
		return
	fi
	dev=$(readlink $RUN/dev/x)
	pid=$(bg_pid gw)
	if [ "$b" != null ]; then
		fio --name=fill --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
			--iodepth=8 --size=$SIZE >/dev/null 2>&1
	fi
	echo "$JOBS" | while IFS=: read -r job args; do
		local c0 c1
		c0=$(ticks "$pid")
		# shellcheck disable=SC2086
		fio --name="$job" --filename="$dev" --direct=1 --ioengine=io_uring $args \
			--time_based --runtime="$RT" --ramp_time=1 --size=$SIZE --randrepeat=0 \
			--output-format=json >/tmp/out.json 2>/tmp/fio.err
		c1=$(ticks "$pid")
		echo "BENCH-BEGIN $t $b $job $((c1 - c0)) $HZ"
		cat /tmp/out.json
		echo "BENCH-END"
	done
	check "$t/$b: stop" sh -c "kill -TERM $pid; true"
	bg_wait gw 60
}

for t in ublk nbd; do
	for b in null memory file; do
		run_one "$t" "$b"
	done
done
