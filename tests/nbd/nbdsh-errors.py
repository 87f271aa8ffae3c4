# Run inside nbdsh (the nbd module is imported, `h` exists). The server's
# answers to bad requests, read-only exports and multi-conn consistency.
import errno
import os

sock = os.environ["SOCK"]
MiB = 1 << 20


def conn(name, strict=True):
    g = nbd.NBD()
    if not strict:
        g.set_strict_mode(0)  # let bad requests reach the server
    g.set_export_name(name)
    g.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    g.connect_unix(sock)
    return g


def expect_err(fn, err, what):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != err:
            raise AssertionError("%s: got errno %s (%s), want %d" % (what, e.errnum, e, err))
        return
    raise AssertionError("%s: succeeded, want errno %d" % (what, err))


# Misaligned requests on an export with a 4 KiB minimum block size: EINVAL.
a = conn("aligned", strict=False)
assert a.get_block_size(nbd.SIZE_MINIMUM) == 4096
a.pwrite(b"\x42" * 4096, 8192)
expect_err(lambda: a.pread(4096, 1), errno.EINVAL, "read at offset 1")
expect_err(lambda: a.pread(100, 4096), errno.EINVAL, "read of 100 bytes")
expect_err(lambda: a.pwrite(b"x" * 4096, 2048), errno.EINVAL, "write at 2048")
expect_err(lambda: a.trim(4096, 512), errno.EINVAL, "trim at 512")
expect_err(lambda: a.zero(1000, 4096), errno.EINVAL, "zero of 1000 bytes")
assert a.pread(4096, 8192) == b"\x42" * 4096, "aligned read after errors"

# Out of range: reads/trims EINVAL, writes/zeroes ENOSPC (the spec's mapping).
m = conn("mem", strict=False)
size = m.get_size()
expect_err(lambda: m.pread(4096, size), errno.EINVAL, "read past the end")
expect_err(lambda: m.pread(8192, size - 4096), errno.EINVAL, "read straddling the end")
expect_err(lambda: m.pwrite(b"y" * 4096, size), errno.ENOSPC, "write past the end")
expect_err(lambda: m.pwrite(b"y" * 8192, size - 4096), errno.ENOSPC, "write straddling the end")
expect_err(lambda: m.zero(4096, size), errno.ENOSPC, "zero past the end")
expect_err(lambda: m.trim(4096, size), errno.EINVAL, "trim past the end")
expect_err(lambda: m.cache(4096, size), errno.EINVAL, "cache past the end")
expect_err(lambda: m.block_status(4096, size, lambda *args: 0), errno.EINVAL, "block status past the end")
expect_err(lambda: m.pread(4096, (1 << 63) - 1), errno.EINVAL, "read at 2^63-1")
# Larger than the advertised maximum payload (32 MiB): EINVAL, connection survives.
expect_err(lambda: m.pread(32 * MiB + 4096, 0), errno.EINVAL, "oversized read")
expect_err(lambda: m.pwrite(b"z" * (32 * MiB + 4096), 0), errno.EINVAL, "oversized write")
assert m.pread(4096, 0) == b"\0" * 4096, "the oversized write must not have landed"
m.pwrite(b"w" * 4096, 0)
assert m.pread(4096, 0) == b"w" * 4096, "connection unusable after errors"

# Fast zero is fast on memory; a structured read of a hole is a hole chunk.
m.zero(MiB, 4 * MiB, nbd.CMD_FLAG_FAST_ZERO)
chunks = []
m.pread_structured(65536, 40 * MiB, lambda buf, off, st, err: chunks.append(st) or 0)
assert chunks == [nbd.READ_HOLE], "unwritten range should come back as one hole chunk, got %r" % chunks
chunks = []
m.pread_structured(4096, 0, lambda buf, off, st, err: chunks.append(st) or 0)
assert chunks == [nbd.READ_DATA], "written range should be one data chunk, got %r" % chunks
# REQ_ONE: exactly one extent, not longer than asked.
ext = []
m.block_status(8192, 0, lambda ctx, off, e, err: ext.extend(e) or 0, nbd.CMD_FLAG_REQ_ONE)
assert len(ext) == 2 and ext[0] <= 8192, "REQ_ONE answer %r" % ext

# Read-only export: every write refused with EPERM, reads and flush fine.
r = conn("ro", strict=False)
assert r.is_read_only()
expect_err(lambda: r.pwrite(b"q" * 4096, 0), errno.EPERM, "write to read-only export")
expect_err(lambda: r.trim(4096, 0), errno.EPERM, "trim on read-only export")
expect_err(lambda: r.zero(4096, 0), errno.EPERM, "zero on read-only export")
r.flush()
assert r.pread(4096, 0) == b"\0" * 4096

# Multi-conn: what one connection wrote and flushed, another reads.
h1 = conn("file")
h2 = conn("file")
assert h1.can_multi_conn() and h2.can_multi_conn()
for i in range(64):
    data = bytes([i]) * 65536
    h1.pwrite(data, i * 65536)
h1.flush()
for i in range(64):
    assert h2.pread(65536, i * 65536) == bytes([i]) * 65536, "block %d not seen on the second connection" % i
h2.pwrite(b"\x77" * 4096, 5 * MiB, nbd.CMD_FLAG_FUA)
assert h1.pread(4096, 5 * MiB) == b"\x77" * 4096, "FUA write not visible on the first connection"
for g in (a, m, r, h1, h2):
    g.shutdown()
print("nbdsh: all error and consistency checks passed")
