#!/bin/sh
# Tests leave the source tree as they found it. `make test` runs
#   scripts/tree-clean.sh save FILE    before ctest: what `git status` shows now
#   scripts/tree-clean.sh check FILE   after: fail, naming them, if entries appeared
# (entries present before, a developer's own edits, are not the tests' doing).
set -eu
cd "$(dirname "$0")/.."
mode=${1:?usage: $0 save|check FILE}
file=${2:?usage: $0 save|check FILE}
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "tree-clean: not a git checkout; not checked" >&2
  exit 0
fi
case $mode in
  save) git status --porcelain --untracked-files=all >"$file" ;;
  check)
    git status --porcelain --untracked-files=all >"$file.after"
    new=$(sort "$file.after" | comm -13 "$(sort "$file" >"$file.sorted" && echo "$file.sorted")" -)
    rm -f "$file.after" "$file.sorted"
    if [ -n "$new" ]; then
      echo "FAIL: the tests left files in the source tree (git status --porcelain):" >&2
      echo "$new" >&2
      exit 1
    fi
    echo "tree-clean: the tests left the source tree as they found it"
    ;;
  *) echo "usage: $0 save|check FILE" >&2; exit 2 ;;
esac
