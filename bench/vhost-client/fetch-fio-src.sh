#!/bin/sh
# Fetch, unpack and configure the source of the *installed* fio package, so an
# external ioengine can be compiled against fio's own headers (Debian ships no
# fio headers). Run at build time by CMake.
#
#   fetch-fio-src.sh CACHE_DIR STAMP_FILE
#
# The source comes from Debian's deb-src archive through a private apt
# configuration under CACHE_DIR: the host's apt sources are only read (and
# rewritten as deb-src into CACHE_DIR), never modified. Each fio version gets
# CACHE_DIR/<version>/src; CACHE_DIR/current points at the installed one.
# STAMP_FILE holds the version and is rewritten only when it changes, so the
# engine is recompiled exactly when the installed fio changes.
set -eu

cache=$1
stamp=$2

die() { echo "fetch-fio-src: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found (Debian only)"
ver=$(dpkg-query -W -f='${Version}' fio 2>/dev/null) ||
  die "fio is not installed: apt-get install fio (scripts/deps.sh test)"
[ -n "$ver" ] || die "fio is not installed: apt-get install fio"
safe=$(printf '%s' "$ver" | tr ':~' '__')
dir=$cache/$safe

if [ ! -f "$dir/src/config-host.h" ]; then
  command -v dpkg-source >/dev/null 2>&1 ||
    die "dpkg-source not found: apt-get install dpkg-dev (scripts/deps.sh test)"
  echo "fetch-fio-src: fetching the source of fio $ver into $dir"
  apt=$cache/apt
  rm -rf "$apt/sources" "$dir"
  mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial" "$dir/dl"

  # deb822 files: turn every "Types:" line into deb-src.
  n=0
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$apt/sources/$(basename "$f")"
    n=$((n + 1))
  done
  # One-line format: keep the "deb" lines as "deb-src".
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n -E 's/^[[:space:]]*deb[[:space:]]+/deb-src /p' "$f" \
      > "$apt/sources/$(basename "$f").list"
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || die "no apt sources found under /etc/apt"

  set -- -q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources" \
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" \
    -o APT::Sandbox::User=root -o Debug::NoLocking=1
  apt-get "$@" update >"$apt/update.log" 2>&1 ||
    { cat "$apt/update.log" >&2; die "apt-get update (deb-src, private lists) failed"; }
  (cd "$dir/dl" && apt-get "$@" source --download-only "fio=$ver") >"$dir/fetch.log" 2>&1 ||
    { cat "$dir/fetch.log" >&2; die "apt-get source fio=$ver failed"; }
  dsc=
  for f in "$dir"/dl/fio_*.dsc; do [ -f "$f" ] && dsc=$f; done
  [ -n "$dsc" ] || die "no .dsc downloaded for fio $ver"
  # apt already checked the files against the signed archive index.
  dpkg-source --no-check -x "$dsc" "$dir/src.tmp" >"$dir/unpack.log" 2>&1 ||
    { cat "$dir/unpack.log" >&2; die "dpkg-source -x failed"; }
  (cd "$dir/src.tmp" && ./configure --disable-native) >"$dir/configure.log" 2>&1 ||
    { cat "$dir/configure.log" >&2; die "fio's ./configure failed"; }
  grep -q 'FIO_IOOPS_VERSION' "$dir/src.tmp/ioengines.h" ||
    die "unexpected fio source layout (no FIO_IOOPS_VERSION in ioengines.h)"
  rm -rf "$dir/src"
  mv "$dir/src.tmp" "$dir/src"
fi

ln -sfn "$safe" "$cache/current.tmp"
mv -T "$cache/current.tmp" "$cache/current"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$ver" ]; then
  printf '%s\n' "$ver" > "$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
fi
