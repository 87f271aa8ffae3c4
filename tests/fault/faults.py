# Clients' view of the fault layer (run by test-nbd-faults.sh with Debian's
# python3): backend errors reach NBD clients as the errno the layer was
# told to return, the connection keeps serving, and a delayed request
# delays neither other requests on its connection nor other exports.
import errno
import os
import sys

import nbd

sock = os.environ["SOCK"]
K, M = 1024, 1 << 20


def conn(name):
    g = nbd.NBD()
    g.set_export_name(name)
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


phase = sys.argv[1]
if phase == "errors":
    # werr: writes touching 1M-2M fail with EIO; everything else works.
    w = conn("werr")
    w.pwrite(b"a" * 4096, 0)
    expect_err(lambda: w.pwrite(b"b" * 4096, M), errno.EIO, "write inside the range")
    expect_err(lambda: w.pwrite(b"c" * 1024, M - 512), errno.EIO, "write overlapping it")
    w.pwrite(b"d" * 4096, 3 * M)
    assert w.pread(4096, M) == b"\0" * 4096, "the refused write changed data"
    assert w.pread(4096, 0) == b"a" * 4096
    assert w.pread(4096, 3 * M) == b"d" * 4096
    w.flush()
    w.shutdown()
    # rerr: after one read, every second read fails with ENOSPC; writes work.
    r = conn("rerr")
    got = []
    for i in range(6):
        try:
            r.pread(512, i * 512)
            got.append(0)
        except nbd.Error as e:
            got.append(e.errnum)
    assert got == [0, errno.ENOSPC, 0, errno.ENOSPC, 0, errno.ENOSPC], got
    r.pwrite(b"x" * 512, 0)
    r.shutdown()
    # eperm: every request fails with EPERM (trim included), and keeps failing.
    p = conn("eperm")
    for _ in range(3):
        expect_err(lambda: p.pread(512, 0), errno.EPERM, "read on eperm")
        expect_err(lambda: p.trim(4096, 0), errno.EPERM, "trim on eperm")
    p.shutdown()
    print("errors: ok")
elif phase == "delay":
    # slow: reads of its first 4 KiB are held 5 s. Meanwhile another read on
    # the same connection and a read on another export complete.
    s = conn("slow")
    other = conn("werr")
    held = s.aio_pread(nbd.Buffer(4096), 0)
    assert s.pread(4096, 8192) == b"\0" * 4096
    assert not s.aio_command_completed(held), "the fast read waited for the held one"
    assert other.pread(4096, 0) == b"a" * 4096
    assert not s.aio_command_completed(held), "the other export waited for the held read"
    while not s.aio_command_completed(held):
        s.poll(-1)
    s.shutdown()
    other.shutdown()
    print("delay: ok")
elif phase == "fill":
    # full: a file image on a small tmpfs. Writes run out of space with
    # ENOSPC; what was written reads back; the connection keeps working.
    f = conn("full")
    size = f.get_size()
    off, failed = 0, None
    while off < size:
        try:
            f.pwrite(bytes([off // M % 250 + 1]) * M, off)
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, "full disk gave errno %d (%s)" % (e.errnum, e)
            failed = off
            break
        off += M
    assert failed is not None, "the filesystem never filled up"
    for o in range(0, failed, M):
        assert f.pread(M, o) == bytes([o // M % 250 + 1]) * M, "data at %d after ENOSPC" % o
    f.pread(4096, size - 4096)
    f.shutdown()
    with open(os.environ["FAILED_AT"], "w") as out:
        out.write(str(failed))
    print("fill: ENOSPC at %d MiB" % (failed // M))
elif phase == "refill":
    # Space was freed: the write that failed now works.
    failed = int(open(os.environ["FAILED_AT"]).read())
    f = conn("full")
    f.pwrite(b"\x77" * M, failed)
    f.flush()
    assert f.pread(M, failed) == b"\x77" * M
    f.shutdown()
    print("refill: ok")
