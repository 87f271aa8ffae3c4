#!/bin/sh
# Install the Debian 12 packages blkgw needs, only those that are missing.
#   scripts/deps.sh build   what building needs
#   scripts/deps.sh run     building, and the clients the README's quick start
#                           uses (nbdinfo, qemu-img, qemu-io): `make run`
#   scripts/deps.sh test    what building and every test (VM tests included) need
#   scripts/deps.sh list LEVEL   print a level's packages, install nothing
set -eu

# Exactly what CMakeLists.txt finds: liburing, json-c, yaml-0.1 and libmnl
# through pkg-config, libev by header and library. A backend that links a new
# library (libcurl for http, libnbd for nbd) adds its -dev package here and
# its find step there, in the same commit.
build_pkgs="build-essential cmake pkg-config liburing-dev libev-dev libjson-c-dev
  libyaml-dev libmnl-dev lowdown librbd-dev librados-dev"
# Test clients and peers: real NBD clients (libnbd tools, qemu-img/qemu-io, fio),
# peers for the benchmarks (nbdkit, qemu-storage-daemon), and what the test VM
# is built from (QEMU, busybox, cpio, xz, e2fsprogs, nbd-client); clang with
# libFuzzer and llvm-cov for `make fuzz` (tests/fuzz); cryptsetup makes LUKS
# images for the format tests; prometheus brings promtool (metrics), curl asks for them;
# cppcheck runs as lint.cppcheck, clang-tidy as static.clang_tidy; gnuplot-nox
# draws bench/run's plots; libvirt (virsh, virt-xml-validate, its QEMU driver)
# runs vm-libvirt's guest from docs/libvirt.md's XML.
# iproute2 and util-linux (unshare) make vm-rbd's network namespace and tap link.
# xfsprogs makes the XFS file system backup.export loop-mounts (reflink views).
# valgrind runs the daemon in make test-valgrind (scripts/test-valgrind.sh).
test_pkgs="libnbd-bin python3-libnbd nbdkit fio qemu-utils qemu-system-x86
  qemu-block-extra jq cpio busybox-static xz-utils e2fsprogs util-linux iproute2 nbd-client
  procps kmod file binutils dpkg-dev clang-format man-db curl prometheus
  clang libclang-rt-14-dev llvm cryptsetup-bin ceph-mon ceph-osd ceph-common
  cppcheck clang-tidy gnuplot-nox libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu
  xfsprogs valgrind"

# The quick start's clients (README.md): nbdinfo, qemu-img and qemu-io.
run_pkgs="libnbd-bin qemu-utils"

level=${1:-build}
[ "$level" = list ] && level=${2:-build}
case "$level" in
  build) want="$build_pkgs" ;;
  run)   want="$build_pkgs $run_pkgs" ;;
  test)  want="$build_pkgs $run_pkgs $test_pkgs" ;;
  *) echo "usage: $0 build|run|test, or $0 list build|run|test" >&2; exit 2 ;;
esac
if [ "${1:-}" = list ]; then
  echo $want | tr ' ' '\n'
  exit 0
fi

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

echo "deps: installing:$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "deps: need root (or sudo) to install:$missing" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
