#!/bin/sh
# nbdinfo --json and --map on file (sparse), memory and null images: size,
# flags, contexts and extents match what the backing store holds.
. "$(dirname "$0")/../lib.sh"
requires nbdinfo jq qemu-io qemu-img

run=$T/run
# A sparse 64 MiB file with data at 1 MiB..2 MiB and 40 MiB..40 MiB+64 KiB.
truncate -s 64M "$T/sparse.raw"
dd if=/dev/urandom of="$T/sparse.raw" bs=1M seek=1 count=1 conv=notrunc status=none
dd if=/dev/urandom of="$T/sparse.raw" bs=64K seek=640 count=1 conv=notrunc status=none
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 2 }
images:
  file: { backend: file, path: $T/sparse.raw }
  mem: { backend: memory, size: 256M }
  nul: { backend: null, size: 100G }
  ro: { backend: memory, size: 16M, block-size: 4096 }
exports:
  - { image: file, transports: [nbd], nbd: { socket: $run/nbd.sock, description: "sparse file" } }
  - { image: mem, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: nul, transports: [nbd], nbd: { socket: $run/nbd.sock } }
  - { image: ro, transports: [nbd], read-only: true, nbd: { socket: $run/nbd.sock } }
YAML
start_blkgw "$T/m.yaml"
uri() { echo "nbd+unix:///$1?socket=$run/nbd.sock"; }

# --json: size, flags, contexts, block sizes.
check_json() { # export expr...
  exp=$1; shift
  nbdinfo --json "$(uri "$exp")" >"$T/$exp.json" || fail "nbdinfo --json $exp failed"
  for e in "$@"; do
    jq -e ".exports[0] | $e" "$T/$exp.json" >/dev/null || { cat "$T/$exp.json"; fail "$exp: expected $e"; }
  done
}
check_json file '."export-size" == 67108864' '.is_read_only == false' '.can_flush and .can_fua and .can_trim and .can_zero and .can_fast_zero and .can_cache and .can_multi_conn and .can_df' '.contexts == ["base:allocation"]' '.description == "sparse file"' '.block_size_minimum == 1 and .block_size_maximum == 33554432'
check_json mem '."export-size" == 268435456' '.is_read_only == false' '.contexts == ["base:allocation"]'
check_json nul '."export-size" == 107374182400' '.can_zero and .can_trim'
check_json ro '."export-size" == 16777216' '.is_read_only == true' '.can_trim == false and .can_zero == false' '.block_size_minimum == 4096 and .block_size_preferred == 4096'
jq -e '.structured == true and .protocol == "newstyle-fixed"' "$T/file.json" >/dev/null || fail "not newstyle-fixed with structured replies"

# --list shows every export on the shared socket.
nbdinfo --list --json "$(uri file)" | jq -r '.exports[]."export-name"' | sort >"$T/list"
printf 'file\nmem\nnul\nro\n' | diff -u - "$T/list" || fail "--list does not show the four exports"

# --map of the sparse file equals the file's own allocation (qemu-img map on the raw file).
qemu-img map --output=json -f raw "$T/sparse.raw" |
  jq -r '.[] | "\(.start) \(.length) \(if .data then "data" else "hole" end)"' >"$T/file.map.expect"
nbdinfo --map --json "$(uri file)" |
  jq -r '.[] | "\(.offset) \(.length) \(if (.type % 2) == 1 then "hole" else "data" end)"' >"$T/file.map"
diff -u "$T/file.map.expect" "$T/file.map" || fail "extents of the file export differ from the file's"
grep -q "^1048576 1048576 data$" "$T/file.map" || fail "the written MiB is not reported as data"

# memory: holes until written; written ranges become data; trim makes holes again.
nbdinfo --map "$(uri mem)" >"$T/mem0"
[ "$(awk '{print $1, $2, $4}' "$T/mem0")" = "0 268435456 hole,zero" ] || { cat "$T/mem0"; fail "fresh memory image is not one hole"; }
qemu-io -f raw -c 'write -P 0x11 4M 1M' -c 'write -P 0x22 100M 8K' "$(uri mem)" >/dev/null
qemu-io -f raw -c 'discard 100M 4K' "$(uri mem)" >/dev/null
nbdinfo --map "$(uri mem)" | awk '{print $1, $2, $4}' >"$T/mem1"
cat >"$T/mem1.expect" <<MAP
0 4194304 hole,zero
4194304 1048576 data
5242880 99614720 hole,zero
104857600 4096 hole,zero
104861696 4096 data
104865792 163569664 hole,zero
MAP
# Adjacent holes are one run.
awk 'NR==1{o=$1;l=$2;t=$3;next} $3==t{l+=$2;next} {print o,l,t; o=$1;l=$2;t=$3} END{print o,l,t}' "$T/mem1.expect" >"$T/mem1.merged"
diff -u "$T/mem1.merged" "$T/mem1" || fail "memory extents wrong after writes and a trim"

# null: all hole and zero, whatever the size.
[ "$(nbdinfo --map "$(uri nul)" | awk '{print $1, $2, $4}')" = "0 107374182400 hole,zero" ] || fail "null map wrong"
stop_blkgw
echo "nbdinfo views match the images"
