#!/bin/sh
# Printed by `make run` before the gateway starts: how to reach the exports of
# the manifest about to be served, as `blkgw check` describes them (so it is
# true for any manifest, not only the quick start's). Exits 1, printing the
# problems, when check refuses the manifest: serve would refuse it too.
#   scripts/quickstart-banner.sh BLKGW MANIFEST
set -eu
blkgw=${1:?usage: $0 BLKGW MANIFEST}
m=${2:?usage: $0 BLKGW MANIFEST}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! "$blkgw" check "$m" >"$out"; then
  echo "blkgw check refuses $m: nothing will be served." >&2
  exit 1
fi
control=$(sed -n '1s/.*control socket \([^,]*\),.*/\1/p' "$out")
echo "blkgw is starting on $m (Ctrl-C stops it). From another terminal:"
echo
# "export ID: image NAME (BACKEND)[ read-only]" then "  TRANSPORT: would serve at WHERE..."
awk -v blkgw="$blkgw" '
  /^export / { ro = / read-only$/; id = $2; sub(/:$/, "", id); next }
  /^  [a-z-]+: would serve at / {
    t = $1; sub(/:$/, "", t)
    for (i = 5; i <= NF; i++) {
      w = $i
      if (t == "nbd" && w ~ /^nbd(\+unix)?:\/\//) {
        printf "  nbdinfo '\''%s'\''\n", w
        if (!shown) {
          printf "  qemu-img info '\''%s'\''\n", w
          if (ro)
            printf "  qemu-io -r -f raw -c '\''read 0 1M'\'' '\''%s'\''\n", w
          else
            printf "  qemu-io -f raw -c '\''write -P 0xab 0 1M'\'' -c '\''read -P 0xab 0 1M'\'' '\''%s'\''\n", w
          shown = 1
        }
      } else if (t == "nbd" && w == "kernel") {
        printf "  # export %s is attached as %s\n", id, $(i + 1); i++
      } else if (t == "vhost-user-blk") {
        printf "  # export %s: a QEMU guest connects with\n", id
        printf "  #   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem\n"
        printf "  #   -chardev socket,id=%s,path=%s,reconnect=1 -device vhost-user-blk-pci,chardev=%s\n", "vu" (n + 0), w, "vu" (n + 0)
        n++
      } else {
        printf "  # export %s: %s at %s\n", id, t, w
      }
    }
  }' "$out"
echo "  $blkgw status --control $control"
echo
