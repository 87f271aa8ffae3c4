#!/bin/sh
# The fault layer's `extents` op: allocation queries fail or wait like I/O.
# Over NBD a failed query is a BLOCK_STATUS error (EIO) while reads go on.
# Over FUSE, a held query (lseek SEEK_DATA, the block count stat reports)
# waits on the worker's ring, not in the worker: with one worker, a read
# of the same file completes while the lseek and the stat are still held
# (when the walk was synchronous the read waited for both). A failed walk
# makes lseek fail with EIO, and stat count the whole file as allocated.
. "$(dirname "$0")/../lib.sh"
requires nbdinfo jq
run=$T/run
mnt=$T/files
mkdir -p "$run" "$mnt"
fuse=0
if [ -c /dev/fuse ] && [ "$(id -u)" = 0 ]; then fuse=1; fi

cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $run, workers: 1 }
images:
  bad: { backend: memory, size: 4M, fault: { errno: EIO, ops: extents, ranges: 1M-2M } }
  slow: { backend: memory, size: 4M, fault: { delay: 3s, ops: extents } }
exports:
  - { image: bad, transports: [nbd], nbd: { socket: $run/bad.sock } }
YAML
if [ $fuse = 1 ]; then
  cat >>"$T/m.yaml" <<YAML
  - { image: bad, transports: [fuse], fuse: { path: $mnt/bad } }
  - { image: slow, transports: [fuse], fuse: { path: $mnt/slow } }
YAML
  on_exit "umount -l $mnt/bad 2>/dev/null; umount -l $mnt/slow 2>/dev/null"
fi
start_blkgw "$T/m.yaml"

# NBD: block status in the faulted range fails, elsewhere and reads work.
nbdsh_py --base-allocation -u "nbd+unix:///bad?socket=$run/bad.sock" -c '
import errno
seen = []
def cb(ctx, off, ents, err):
    seen.append(off)
    return 0
h.block_status(65536, 0, cb)
assert seen == [0], seen
try:
    h.block_status(65536, 1 << 20, cb)
    raise SystemExit("block status in the faulted range succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
assert h.pread(4096, 1 << 20) == bytes(4096)
print("nbd: block status fails with EIO in 1M-2M only; reads there work")
' || fail "NBD block status through the extents fault"

if [ $fuse = 0 ]; then
  skip "FUSE half: needs /dev/fuse and root (NBD half passed)"
fi
dd if=/dev/urandom of="$mnt/slow" bs=64K count=1 seek=16 conv=notrunc 2>/dev/null ||
  fail "writing data into the slow image"

# Held queries do not hold the worker: one worker serves all of it.
/usr/bin/python3 - "$mnt/slow" <<'PY' || fail "a held extents query held up a read"
import os, sys, threading, time
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
done = {}
def seek():
    done["seek"] = os.lseek(fd, 0, os.SEEK_DATA)
    done["seek_t"] = time.monotonic()
def stat():
    done["blocks"] = os.stat(path).st_blocks
    done["stat_t"] = time.monotonic()
ts = [threading.Thread(target=seek), threading.Thread(target=stat)]
for t in ts:
    t.start()
time.sleep(0.5)          # both are with the daemon, held 3 s
rfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
import mmap
buf = mmap.mmap(-1, 4096)
n = os.preadv(rfd, [buf], 1 << 20)
read_t = time.monotonic()
assert n == 4096, n
for t in ts:
    t.join()
assert done["seek"] == 1 << 20, done
assert done["blocks"] * 512 == 64 << 10, done
# The order, not a time: the read came back before either held query.
assert read_t < done["seek_t"] and read_t < done["stat_t"], done
print("fuse: a read completed while lseek and stat were held; then SEEK_DATA = 1M, 64K allocated")
PY

# A failed walk: lseek says EIO; stat counts everything (du never understates).
/usr/bin/python3 - "$mnt/bad" <<'PY' || fail "FUSE with failing extents queries"
import errno, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
try:
    os.lseek(fd, 1 << 20, os.SEEK_DATA)
    raise SystemExit("lseek in the faulted range succeeded")
except OSError as e:
    assert e.errno == errno.EIO, e
assert os.stat(path).st_blocks * 512 == 4 << 20, os.stat(path).st_blocks
print("fuse: lseek fails with EIO where queries fail; stat counts the whole image")
PY
stop_blkgw
echo "extents faults: NBD block status errors, FUSE lseek/stat held without holding the worker"
