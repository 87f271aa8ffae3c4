#!/usr/bin/env python3
"""Hostile and malformed NBD clients against blkgw (python3 stdlib only).

Every case checks the server's exact answer where the protocol defines one,
and that a bad client only ever loses its own connection.
usage: hostile.py SOCKET EXPORT BLKGW_PID
"""
import os
import socket
import struct
import sys
import threading
import time

SOCK, EXPORT, PID = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
ACK, INFO = 1, 3
ERR = lambda n: 0x80000000 + n
UNSUP, INVALID, UNKNOWN, TOO_BIG = ERR(1), ERR(3), ERR(6), ERR(9)
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_GO = 1, 2, 3, 5, 7
OPT_STRUCTURED, OPT_SET_META, OPT_EXT_HEADERS = 8, 10, 11
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 1, 2, 3, 7
EINVAL, EPERM = 22, 1
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b


def closed_by_server(s, timeout=5):
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def connect(flags=3):
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    s.settimeout(10)
    magic, opt, hflags = struct.unpack(">QQH", recvn(s, 18))
    assert magic == 0x4E42444D41474943 and opt == IHAVEOPT and hflags == 3, "bad greeting"
    if flags is not None:
        s.sendall(struct.pack(">I", flags))
    return s


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def read_reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == REP_MAGIC, "bad reply magic %x" % magic
    return opt, typ, recvn(s, ln)


def final_reply(s):
    while True:
        opt, typ, data = read_reply(s)
        if typ != INFO and typ != 2 and typ != 4:
            return opt, typ, data


def go(s, name=EXPORT):
    send_opt(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    opt, typ, _ = final_reply(s)
    assert typ == ACK, "GO refused: %x" % typ


def request(s, cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length) + payload)


def simple_reply(s, datalen=0):
    magic, err, cookie = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == SIMPLE_MAGIC, "bad simple reply magic %x" % magic
    data = recvn(s, datalen) if err == 0 and datalen else b""
    return err, cookie, data


def healthy():
    """A fresh, well-behaved client can still write and read."""
    s = connect()
    go(s)
    request(s, CMD_WRITE, 65536, 4096, cookie=7, payload=b"\xab" * 4096)
    err, cookie, _ = simple_reply(s)
    request(s, CMD_READ, 65536, 4096, cookie=8)
    err2, cookie2, data = simple_reply(s, 4096)
    request(s, CMD_DISC)
    s.close()
    return err == 0 and cookie == 7 and err2 == 0 and cookie2 == 8 and data == b"\xab" * 4096


def rss():
    with open("/proc/%d/status" % PID) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def case(name):
    def deco(fn):
        try:
            fn()
        except Exception as e:  # a protocol surprise is a failure, not a crash of the test
            check(False, "%s: %r" % (name, e))
        check(os.path.exists("/proc/%d" % PID), "%s: the daemon died" % name)
        check(healthy(), "%s: a well-behaved client failed afterwards" % name)
        print("ok:", name, flush=True)
    return deco


@case("unknown client flag bits close the connection")
def _():
    s = connect(flags=0x80)
    check(closed_by_server(s), "server kept a connection with unknown client flags")


@case("unknown option: ERR_UNSUP, negotiation continues")
def _():
    s = connect()
    send_opt(s, 99, b"x" * 1000)
    opt, typ, msg = read_reply(s)
    check(opt == 99 and typ == UNSUP, "unknown option answered %x" % typ)
    go(s)


@case("oversized option data is discarded and refused")
def _():
    s = connect()
    send_opt(s, 99, b"y" * (1 << 20))
    opt, typ, _ = read_reply(s)
    check(typ in (TOO_BIG, UNSUP), "1 MiB option answered %x" % typ)
    go(s)


@case("STARTTLS and EXTENDED_HEADERS: ERR_UNSUP")
def _():
    s = connect()
    send_opt(s, OPT_STARTTLS)
    check(read_reply(s)[1] == UNSUP, "STARTTLS not refused with UNSUP")
    send_opt(s, OPT_EXT_HEADERS)
    check(read_reply(s)[1] == UNSUP, "EXTENDED_HEADERS not refused with UNSUP")
    go(s)


@case("GO with lengths that do not add up: ERR_INVALID")
def _():
    s = connect()
    send_opt(s, OPT_GO, struct.pack(">I", 1000) + b"abc" + struct.pack(">H", 0))
    check(read_reply(s)[1] == INVALID, "bad name length not ERR_INVALID")
    send_opt(s, OPT_GO, struct.pack(">I", len(EXPORT)) + EXPORT + struct.pack(">H", 5) + b"\0\0")
    check(read_reply(s)[1] == INVALID, "bad info count not ERR_INVALID")
    send_opt(s, OPT_GO, b"\0")
    check(read_reply(s)[1] == INVALID, "short GO not ERR_INVALID")
    go(s)


@case("GO for an unknown export: ERR_UNKNOWN with a message")
def _():
    s = connect()
    send_opt(s, OPT_GO, struct.pack(">I", 7) + b"missing" + struct.pack(">H", 0))
    opt, typ, msg = read_reply(s)
    check(typ == UNKNOWN and b"missing" in msg, "unknown export answered %x %r" % (typ, msg))
    go(s)


@case("EXPORT_NAME for an unknown export closes")
def _():
    s = connect()
    send_opt(s, OPT_EXPORT_NAME, b"nope")
    check(closed_by_server(s), "unknown EXPORT_NAME did not close")


@case("SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID")
def _():
    s = connect()
    q = b"base:allocation"
    send_opt(s, OPT_SET_META, struct.pack(">I", len(EXPORT)) + EXPORT + struct.pack(">II", 1, len(q)) + q)
    check(read_reply(s)[1] == INVALID, "meta context without structured replies accepted")
    go(s)


@case("LIST with data: ERR_INVALID; ABORT: ACK and close")
def _():
    s = connect()
    send_opt(s, OPT_LIST, b"junk")
    check(read_reply(s)[1] == INVALID, "LIST with data accepted")
    send_opt(s, OPT_ABORT)
    check(read_reply(s)[1] == ACK, "ABORT not acknowledged")
    check(closed_by_server(s), "ABORT did not close")


@case("bad option magic closes")
def _():
    s = connect()
    s.sendall(struct.pack(">QII", 0x1234, OPT_GO, 0))
    check(closed_by_server(s), "bad option magic did not close")


@case("bad request magic closes only that connection")
def _():
    s = connect()
    go(s)
    s.sendall(b"\xde\xad\xbe\xef" + b"\0" * 24)
    check(closed_by_server(s), "bad request magic did not close")


@case("unknown command and unknown flags: EINVAL, connection continues")
def _():
    s = connect()
    go(s)
    request(s, 42, cookie=11)
    err, cookie, _ = simple_reply(s)
    check(err == EINVAL and cookie == 11, "unknown command answered %d" % err)
    request(s, CMD_READ, 0, 4096, flags=0x8000, cookie=12)
    err, cookie, _ = simple_reply(s)
    check(err == EINVAL and cookie == 12, "unknown flag answered %d" % err)
    request(s, CMD_READ, 0, 4096, flags=4, cookie=13)  # DF without structured replies
    err, _, _ = simple_reply(s)
    check(err == EINVAL, "DF without structured replies answered %d" % err)
    request(s, CMD_BLOCK_STATUS, 0, 4096, cookie=14)  # no meta context
    err, _, _ = simple_reply(s)
    check(err == EINVAL, "BLOCK_STATUS without a context answered %d" % err)
    request(s, CMD_FLUSH, cookie=15)
    check(simple_reply(s)[0] == 0, "flush after errors failed")


@case("a write larger than the maximum: payload skipped, then EINVAL")
def _():
    s = connect()
    go(s)
    n = 64 << 20
    request(s, CMD_WRITE, 0, n, cookie=21)
    s.sendall(b"\x01" * n)
    err, cookie, _ = simple_reply(s)
    check(err == EINVAL and cookie == 21, "oversized write answered %d" % err)
    request(s, CMD_READ, 0, 4096, cookie=22)
    err, cookie, data = simple_reply(s, 4096)
    check(err == 0 and data != b"\x01" * 4096, "oversized write landed or broke the connection")


@case("a client that never reads replies does not stall others")
def _():
    hog = connect()
    go(hog)
    hog.setblocking(False)
    sent = 0
    req = b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, i, 0, 1 << 20) for i in range(64))
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            sent += hog.send(req)
        except BlockingIOError:
            break
    rss0 = rss()
    t0 = time.time()
    for _ in range(20):
        check(healthy(), "a normal client failed while another hogged the server")
    check(time.time() - t0 < 10, "normal clients were slowed to %.1f s" % (time.time() - t0))
    check(rss() - rss0 < 256 << 20, "the daemon grew by %d MiB for an unread client" % ((rss() - rss0) >> 20))
    hog.close()


@case("a stalled partial request does not block others")
def _():
    s = connect()
    go(s)
    s.sendall(struct.pack(">IHH", REQ_MAGIC, 0, CMD_READ))  # 8 of 28 bytes, then silence
    ok = all(healthy() for _ in range(5))
    check(ok, "partial request blocked other clients")
    s.close()


@case("many clients dropping mid-handshake")
def _():
    for i in range(200):
        s = socket.socket(socket.AF_UNIX)
        s.connect(SOCK)
        if i % 3 == 0:
            s.sendall(b"\0\0\0\3" + struct.pack(">Q", IHAVEOPT)[:5])
        elif i % 3 == 1:
            s.sendall(os.urandom(64))
        s.close()


@case("garbage after the greeting")
def _():
    for _ in range(20):
        s = connect(flags=None)
        s.sendall(os.urandom(4096))
        closed_by_server(s, timeout=2)
        s.close()


print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
