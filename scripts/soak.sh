#!/bin/bash
# make soak: kill -9 soaks of every transport that survives its daemon.
#
#   scripts/soak.sh BUILD_DIR [CYCLES] [SEED]
#
# ublk, VDUSE and attached NBD: one TCG guest (tests/vm/guest/soak.sh), blkgw killed with
# SIGKILL at random moments while fio verifies, CYCLES times per transport.
# vhost-user-blk: tests/vhost/test-vm-blkgw.sh reconnect --cycles CYCLES
# (blkgw on the host, QEMU reconnecting). SEED (default: new) sets the
# random delays of both; each part prints the seed it used, so a failed run
# is replayed with the same SEED. Prints a table of the figures at the end;
# exits non-zero if any part failed. Logs and consoles stay in a temporary
# directory whose path is printed.
set -uo pipefail

build=${1:?usage: $0 BUILD_DIR [CYCLES] [SEED]}
cycles=${2:-20}
seed=${3:-$((RANDOM * 32768 + RANDOM))}
src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$build" && pwd)
[[ "$cycles" =~ ^[1-9][0-9]*$ ]] || { echo "soak: CYCLES must be a positive number, not '$cycles'" >&2; exit 2; }
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "soak: SEED must be a number, not '$seed'" >&2; exit 2; }
[ -x "$build/blkgw" ] || { echo "soak: no $build/blkgw (build first)" >&2; exit 2; }
out=$(mktemp -d "${TMPDIR:-/tmp}/blkgw-soak.XXXXXX")
echo "soak: $cycles cycles per transport, seed $seed, logs in $out"
rc=0
# a guest's timeout: boot, per cycle up to 3 s of delay plus recovery, fio's last pass
guest_timeout=$((300 + cycles * 3 * 30))

start=$(date +%s)
echo "== ublk, vduse, nbd (one guest) =="
if "$src/tests/vm/vm-test.sh" --workdir "$out/kernel" --script "$src/tests/vm/guest/soak.sh" \
	--bin "$build/blkgw" --bin fio -- --smp 2 -m 1024 --timeout "$guest_timeout" -q \
	--append "blkgw.cycles=$cycles blkgw.seed=$seed" >"$out/kernel.out" 2>&1; then
	echo "ok ($(($(date +%s) - start)) s)"
else
	r=$?
	[ "$r" -eq 77 ] && echo "SKIP: $(tail -n 3 "$out/kernel.out")" || { echo "FAILED (exit $r); console: $out/kernel/console.log"; tail -n 30 "$out/kernel.out"; rc=1; }
fi
grep -h 'FAIL:' "$out/kernel/console.log" 2>/dev/null | head -n 20

start=$(date +%s)
echo "== vhost-user-blk (QEMU reconnect) =="
if BLKGW="$build/blkgw" GW_SOURCE_DIR="$src" GW_BUILD_DIR="$build" \
	"$src/tests/vhost/test-vm-blkgw.sh" reconnect --cycles "$cycles" --seed "$seed" >"$out/vhost.out" 2>&1; then
	echo "ok ($(($(date +%s) - start)) s)"
else
	r=$?
	[ "$r" -eq 77 ] && echo "SKIP" || { echo "FAILED (exit $r): $out/vhost.out"; tail -n 30 "$out/vhost.out"; rc=1; }
fi

echo
echo "kill -9 soak figures (seed $seed):"
printf '%-15s %7s %9s %11s %13s %13s %13s %13s\n' transport cycles survived "fio passes" "verified MiB" \
	"recov. median" "recov. max" "run dir"
sed -n 's/.*SOAK-FIGURES //p' "$out/kernel/console.log" "$out/vhost.out" 2>/dev/null | while read -r line; do
	declare -A f=()
	for kv in $line; do f[${kv%%=*}]=${kv#*=}; done
	printf '%-15s %7s %9s %11s %13s %13s %13s %13s\n' "${f[transport]}" "${f[cycles]}" "${f[survived]}" \
		"${f[fio_passes]}" "${f[verified_mib]}" "${f[recovery_ms_median]} ms" "${f[recovery_ms_max]} ms" \
		"${f[rundir_files]} f/${f[rundir_bytes]} B"
	unset f
done
exit $rc
