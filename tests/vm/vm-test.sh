#!/bin/bash
# One VM test for ctest: make sure QEMU is there, build the guest, boot it.
#
#   vm-test.sh --workdir DIR --script GUEST_SCRIPT [build-guest.sh options...]
#              [-- run-vm.sh options...]
#
# DIR/guest holds the built guest, DIR/console.log the console. Exits with the
# guest script's status. Exits 77 (skip) only when QEMU is missing and cannot
# be installed; a missing kernel download, busybox or cpio is a failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workdir="" build_args=() run_args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--workdir) workdir=${2:?}; shift 2 ;;
	--) shift; run_args=("$@"); break ;;
	*) build_args+=("$1"); shift ;;
	esac
done
[ -n "$workdir" ] || { echo "usage: $0 --workdir DIR --script FILE [build opts] [-- run opts]" >&2; exit 2; }

qemu=${QEMU_SYSTEM:-qemu-system-x86_64}

skip() {
	{
		echo "######################################################################"
		echo "# SKIP: this VM test cannot run: $*"
		echo "# Install QEMU (apt-get install qemu-system-x86, or scripts/deps.sh test)."
		echo "######################################################################"
	} >&2
	exit 77
}

if ! command -v "$qemu" >/dev/null 2>&1; then
	why="$qemu is not installed"
	if [ -n "${BLKGW_VM_NO_INSTALL:-}" ]; then
		skip "$why and BLKGW_VM_NO_INSTALL is set"
	elif [ "$(id -u)" != 0 ]; then
		skip "$why and installing it needs root"
	elif ! command -v apt-get >/dev/null 2>&1; then
		skip "$why and there is no apt-get"
	fi
	echo "vm-test: $why; trying apt-get install qemu-system-x86" >&2
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o DPkg::Lock::Timeout=600 qemu-system-x86 >&2; then
		skip "$why and apt-get install qemu-system-x86 failed"
	fi
	command -v "$qemu" >/dev/null 2>&1 || skip "$why even after apt-get install qemu-system-x86"
fi

mkdir -p "$workdir"
"$here/build-guest.sh" --out "$workdir/guest" "${build_args[@]}"
exec "$here/run-vm.sh" --guest "$workdir/guest" --log "$workdir/console.log" "${run_args[@]}"
