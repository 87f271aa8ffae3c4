#!/bin/sh
# Source-based coverage (llvm-cov) of what each fuzz target's corpus reaches:
#   scripts/fuzz-coverage.sh [NAME...]
# Builds the replay programs with clang -fprofile-instr-generate
# -fcoverage-mapping in build-cov/, replays the corpus the last `make fuzz`
# grew (build-fuzz/tests/fuzz/work/NAME/corpus) plus the committed seeds,
# and prints `llvm-cov report` for the files the target is about.
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
build=${COV_BUILD:-build-cov}
work=${FUZZ_WORK:-build-fuzz/tests/fuzz/work}
[ $# -gt 0 ] || set -- nbd manifest control vq vhost vduse ublk
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DGW_MAN=OFF -DGW_WERROR=OFF \
  -DCMAKE_C_FLAGS="-fprofile-instr-generate -fcoverage-mapping" >/dev/null
for t in "$@"; do
  cmake --build "$build" -j "${JOBS:-2}" --target "fuzz_${t}_replay" >/dev/null
  case $t in
    nbd) files="transports/nbd/nbd_conn.c transports/nbd/nbd_handshake.c" ;;
    manifest) files="config/manifest.c config/yaml_tree.c lib/opts.c" ;;
    control) files="gateway/control.c" ;;
    vq) files="transports/virtio/vq.c transports/virtio/virtio_mem.c" ;;
    vhost) files="transports/vhost/vhost_msg.c transports/vhost/vhost_dev.c transports/vhost/vhost_vring.c transports/vhost/vhost_mem.c" ;;
    vduse) files="transports/vduse/vduse_dev.c transports/vduse/vduse_iotlb.c" ;;
    ublk) files="transports/ublk/ublk_proto.c transports/ublk/ublk_queue.c" ;;
    *) files="" ;;
  esac
  dirs="tests/fuzz/corpus/$t"
  [ -d "$work/$t/corpus" ] && dirs="$work/$t/corpus $dirs"
  [ -d "tests/fuzz/regress/$t" ] && dirs="$dirs tests/fuzz/regress/$t"
  rm -f "$build/$t".profraw
  # shellcheck disable=SC2086
  LLVM_PROFILE_FILE="$build/$t.profraw" "$build/tests/fuzz/fuzz_${t}_replay" $dirs
  llvm-profdata merge -sparse "$build/$t.profraw" -o "$build/$t.profdata"
  echo "== $t"
  # shellcheck disable=SC2086
  (cd "$src" && llvm-cov report "$build/tests/fuzz/fuzz_${t}_replay" \
    -instr-profile="$build/$t.profdata" $files)
done
