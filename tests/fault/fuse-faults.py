# The fault layer seen through the FUSE export (run by test-fuse-faults.sh
# with Debian's python3): a backend errno reaches read(2)/write(2) on the
# mounted file as that errno, other ranges keep working, and a delayed read
# holds up neither another read of the same file nor another export.
import errno
import mmap
import os
import sys
import threading
import time

d = os.environ["MNT"]
K, M = 1024, 1 << 20


def opendirect(name, flags=os.O_RDWR):
    return os.open(os.path.join(d, name), flags | os.O_DIRECT)


def buf(fill=0):
    b = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    b.write(bytes([fill]) * 4096)
    return b


def expect_err(fn, err, what):
    try:
        fn()
    except OSError as e:
        if e.errno != err:
            raise AssertionError("%s: got %s, want errno %d" % (what, e, err))
        return
    raise AssertionError("%s: succeeded, want errno %d (%s)" % (what, err, os.strerror(err)))


phase = sys.argv[1]
if phase == "errors":
    # eio: every op in 1M-2M fails with EIO, direct or buffered; the rest works.
    fd = opendirect("eio")
    os.pwritev(fd, [buf(0x61)], 0)
    expect_err(lambda: os.preadv(fd, [buf()], M), errno.EIO, "direct read inside the range")
    expect_err(lambda: os.pwritev(fd, [buf(0x62)], M + 4 * K), errno.EIO, "direct write inside it")
    expect_err(lambda: os.preadv(fd, [buf()], 2 * M - 4 * K), errno.EIO, "direct read of its last block")
    b = buf()
    assert os.preadv(fd, [b], 0) == 4096 and b[:] == b"a" * 4096, "read before the range"
    assert os.preadv(fd, [b], 2 * M) == 4096 and b[:] == b"\0" * 4096, "read after the range"
    os.pwritev(fd, [buf(0x63)], 3 * M)
    os.close(fd)
    # Buffered: a write is sent through at once (no writeback cache); a read
    # of the range has to fetch it.
    fb = os.open(os.path.join(d, "eio"), os.O_RDWR)
    expect_err(lambda: os.pwrite(fb, b"x" * 512, M + 100), errno.EIO, "buffered write inside the range")
    expect_err(lambda: os.pread(fb, 4096, M + 8 * K), errno.EIO, "buffered read inside the range")
    assert os.pread(fb, 4096, 3 * M) == b"c" * 4096, "buffered read outside the range"
    os.close(fb)
    # nospc: writes in 2M-3M fail with ENOSPC, passed through as that errno.
    fd = opendirect("nospc")
    expect_err(lambda: os.pwritev(fd, [buf(1)], 2 * M), errno.ENOSPC, "direct write in the ENOSPC range")
    fb = os.open(os.path.join(d, "nospc"), os.O_WRONLY)
    expect_err(lambda: os.pwrite(fb, b"y" * 100, 2 * M + 7), errno.ENOSPC, "buffered write there")
    os.close(fb)
    b = buf()
    assert os.preadv(fd, [b], 2 * M) == 4096 and b[:] == b"\0" * 4096, "the refused writes changed data"
    os.pwritev(fd, [buf(2)], 0)
    os.close(fd)
    # Still serving: every range again, after the errors.
    fd = opendirect("eio", os.O_RDONLY)
    expect_err(lambda: os.preadv(fd, [buf()], M), errno.EIO, "read inside the range, again")
    assert os.preadv(fd, [b], 0) == 4096 and b[:] == b"a" * 4096
    os.close(fd)
    print("errors: ok")
elif phase == "errnos":
    # Each file's image fails everything in 64K-128K with the errno it is
    # named after: direct and buffered reads and writes get that errno.
    for name in sys.argv[2:]:
        want = getattr(errno, name)
        fd = opendirect(name)
        expect_err(lambda: os.preadv(fd, [buf()], 64 * K), want, name + ": direct read")
        expect_err(lambda: os.pwritev(fd, [buf()], 124 * K), want, name + ": direct write")
        assert os.preadv(fd, [buf()], 0) == 4096, name + ": read outside the range"
        os.close(fd)
        fb = os.open(os.path.join(d, name), os.O_RDWR)
        expect_err(lambda: os.pread(fb, 100, 100 * K), want, name + ": buffered read")
        expect_err(lambda: os.pwrite(fb, b"z", 100 * K), want, name + ": buffered write")
        os.close(fb)
    print("errnos: each passed through: " + " ".join(sys.argv[2:]))
elif phase == "delay":
    # slow: reads of its first 4 KiB are held 5 s. Meanwhile another read of
    # the same file and a read of another export complete.
    done = {}

    def held():
        fd = opendirect("slow", os.O_RDONLY)
        os.preadv(fd, [buf()], 0)
        done["t"] = time.monotonic()
        os.close(fd)

    t0 = time.monotonic()
    th = threading.Thread(target=held)
    th.start()
    time.sleep(0.5)  # let the held read reach the daemon
    fd = opendirect("slow", os.O_RDONLY)
    b = buf(0xFF)
    assert os.preadv(fd, [b], 8 * K) == 4096 and b[:] == b"\0" * 4096
    os.close(fd)
    assert "t" not in done, "the read of another range waited for the held one"
    fd = opendirect("eio", os.O_RDONLY)
    assert os.preadv(fd, [b], 0) == 4096 and b[:] == b"a" * 4096
    os.close(fd)
    assert "t" not in done, "the other export waited for the held read"
    th.join()
    print("delay: ok (the held read took %.1f s)" % (done["t"] - t0))
