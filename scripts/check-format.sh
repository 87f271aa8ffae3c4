#!/bin/sh
# Every C file in the tree is formatted as .clang-format says (clang-format 14,
# Debian 12's). Lists the files that are not and exits 1; with --fix, formats
# them in place.
set -eu
cd "$(dirname "$0")/.."
fix=0
[ "${1:-}" = --fix ] && fix=1
command -v clang-format >/dev/null || { echo "check-format: clang-format is not installed" >&2; exit 1; }
bad=0
for f in $(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*'); do
  if ! clang-format "$f" | cmp -s - "$f"; then
    if [ "$fix" -eq 1 ]; then clang-format -i "$f"; else echo "not formatted: $f (scripts/check-format.sh --fix)" >&2; bad=1; fi
  fi
done
[ "$bad" -eq 0 ] && echo "format: every C file matches .clang-format"
exit "$bad"
