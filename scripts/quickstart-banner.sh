#!/bin/sh
# Printed by `make run` before the gateway starts: how to reach the exports.
m=${1:-config/examples/quickstart.yaml}
cat <<TXT
blkgw is starting on $m (Ctrl-C stops it). From another terminal:

  nbdinfo 'nbd+unix:///scratch?socket=/run/blkgw/scratch.sock'
  nbdinfo --map nbd://127.0.0.1:10809/scratch
  qemu-img info nbd://127.0.0.1:10809/scratch
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://127.0.0.1:10809/scratch
  build/blkgw status --control /run/blkgw/control.sock

TXT
