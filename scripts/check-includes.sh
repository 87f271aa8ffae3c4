#!/bin/sh
# The include graph points down (docs/architecture.md, "Layers"):
#
#   gateway/ (daemon) -> config/ -> transports/ -> backends/ -> lib/
#
#   lib/         includes only lib/ (and generated headers)
#   backends/    lib/ and backends/
#   transports/  lib/, backends/backend.h, the gateway's interfaces
#                (gateway/export.h, gateway/transport.h), its own folder and
#                the shared transports/virtio core; never another transport
#   config/      lib/, config/, the interfaces backends/backend.h and
#                gateway/transport.h, never the daemon or a transport
#   bench/, tests/ may include anything.
# Exits 1 listing every include that points the wrong way.
set -eu
cd "${1:-$(dirname "$0")/..}"

bad=0
check() { # file include-path
  f=$1 inc=$2
  src_dir=${f%%/*}
  case "$inc" in
    lib/*|gw_version.h|gw_config.h) ok=1 ;;
    backends/*) case "$src_dir" in lib) ok=0 ;; transports|config) [ "$inc" = backends/backend.h ] && ok=1 || ok=0 ;; *) ok=1 ;; esac ;;
    gateway/export.h|gateway/transport.h)
      case "$src_dir" in lib|backends) ok=0 ;; *) ok=1 ;; esac ;;
    gateway/*) [ "$src_dir" = gateway ] && ok=1 || ok=0 ;;
    config/*) case "$src_dir" in gateway|config) ok=1 ;; *) ok=0 ;; esac ;;
    transports/*)
      case "$src_dir" in
        transports)
          own=$(echo "$f" | cut -d/ -f2); to=$(echo "$inc" | cut -d/ -f2)
          [ "$own" = "$to" ] || [ "$to" = virtio ] && ok=1 || ok=0 ;;
        gateway) ok=1 ;;
        *) ok=0 ;;
      esac ;;
    *) ok=1 ;; # a header of the same folder, or a system header in quotes
  esac
  if [ "$ok" -eq 0 ]; then
    echo "$f: includes \"$inc\", which points up or sideways" >&2
    bad=1
  fi
}

for f in $(find lib backends transports config gateway -name '*.[ch]' | sort); do
  for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
    check "$f" "$inc"
  done
done
[ "$bad" -eq 0 ] && echo "include graph: no upward or sideways include"
exit "$bad"
