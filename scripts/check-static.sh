#!/bin/sh
# Static checks of the daemon's C sources (ctest lint.cppcheck):
#   scripts/check-static.sh cppcheck [BUILD]   cppcheck, warnings and portability
#   scripts/check-static.sh tidy BUILD         clang-tidy with .clang-tidy (ctest static.clang_tidy)
# Both must be clean: fix a finding, or (a false positive only) add it to
# scripts/cppcheck.supp, or a NOLINT(check) for clang-tidy, saying why.
set -eu
cd "$(dirname "$0")/.."
tool=${1:?usage: check-static.sh cppcheck|tidy [BUILD]}
build=${2:-build}
srcs=$(git ls-files 'lib/*.c' 'backends/*.c' 'config/*.c' 'gateway/*.c' 'transports/*.c' 2>/dev/null ||
  find lib backends config gateway transports -name '*.c')
case $tool in
cppcheck)
  command -v cppcheck >/dev/null || { echo "SKIP: cppcheck is not installed (scripts/deps.sh test)"; exit 77; }
  # shellcheck disable=SC2086
  cppcheck -q --enable=warning,portability --std=c11 -D_GNU_SOURCE -I . -I "$build/generated" \
    --suppressions-list=scripts/cppcheck.supp --inline-suppr --error-exitcode=1 \
    -j "${JOBS:-2}" $srcs
  echo "cppcheck: clean ($(echo $srcs | wc -w) files)"
  ;;
tidy)
  command -v clang-tidy >/dev/null || { echo "SKIP: clang-tidy is not installed (scripts/deps.sh test)"; exit 77; }
  [ -f "$build/compile_commands.json" ] || { echo "no $build/compile_commands.json" >&2; exit 1; }
  # shellcheck disable=SC2086
  run-clang-tidy -quiet -p "$build" -j "${JOBS:-2}" $srcs >"$build/clang-tidy.log" 2>&1 || {
    grep -E "warning:|error:" "$build/clang-tidy.log" | sort -u; echo "clang-tidy: findings above (log $build/clang-tidy.log)" >&2; exit 1; }
  if grep -qE "(warning|error):" "$build/clang-tidy.log"; then
    grep -E "(warning|error):" "$build/clang-tidy.log" | sort -u; exit 1
  fi
  echo "clang-tidy: clean ($(echo $srcs | wc -w) files)"
  ;;
*) echo "usage: check-static.sh cppcheck|tidy [BUILD]" >&2; exit 2 ;;
esac
