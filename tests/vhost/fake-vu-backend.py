#!/usr/bin/python3
"""A deliberately broken vhost-user-blk backend, to test that blkgw's
vhost-user-blk frontend (bench/vhost-client) reports a misbehaving server
clearly instead of crashing or hanging.

    fake-vu-backend.py SOCKET MODE

Serves one connection, then exits. MODE picks the misbehaviour:
  ok           behave (a 1 MiB disk in memory)
  bad_id       complete a descriptor id beyond the ring
  dup_id       complete the same request twice
  big_len      claim more written bytes than the request had writable
  no_status    complete without writing the status byte
  bad_status   write status 7
  idx_jump     advance used->idx past the requests in flight
  hangup       close the connection instead of completing
  silent       never complete anything
  bad_reply    answer GET_FEATURES without the REPLY flag
  short_config answer GET_CONFIG with fewer bytes than asked
  nack_mem     reject SET_MEM_TABLE through REPLY_ACK
Standard library only.
"""
import mmap
import os
import select
import socket
import struct
import sys

GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 15, 16, 17
SET_VRING_ENABLE, GET_CONFIG = 18, 24
REPLY, NEED_REPLY = 0x4, 0x8

FEATURES = (1 << 32) | (1 << 30) | (1 << 9) | (1 << 6)  # VERSION_1 PROTOCOL FLUSH BLK_SIZE
PROTOCOL = (1 << 0) | (1 << 3) | (1 << 9)               # MQ REPLY_ACK CONFIG
CAPACITY = 2048                                         # sectors (1 MiB)


class Backend:
    def __init__(self, conn, mode):
        self.conn, self.mode = conn, mode
        self.regions = []          # (gpa, size, uaddr, mmap object, offset)
        self.num = 0
        self.rings = None          # desc, avail, used as (mem, off)
        self.kick = self.call = None
        self.last_avail = 0
        self.used_idx = 0
        self.disk = bytearray(CAPACITY * 512)

    # -- messages ---------------------------------------------------------
    def recv(self):
        hdr, fds, _, _ = socket.recv_fds(self.conn, 12, 8)
        if len(hdr) < 12:
            return None
        req, flags, size = struct.unpack("<III", hdr)
        body = b""
        while len(body) < size:
            chunk = self.conn.recv(size - len(body))
            if not chunk:
                return None
            body += chunk
        return req, flags, body, fds

    def reply(self, req, payload, flags=1 | REPLY):
        self.conn.sendall(struct.pack("<III", req, flags, len(payload)) + payload)

    def translate(self, addr, length, field):
        for gpa, size, uaddr, mem, off in self.regions:
            base = gpa if field == "gpa" else uaddr
            if base <= addr and addr + length <= base + size:
                return mem, off + addr - base
        raise RuntimeError("address %#x not mapped" % addr)

    def handle(self, req, flags, body, fds):
        if req == GET_FEATURES:
            if self.mode == "bad_reply":
                self.reply(req, struct.pack("<Q", FEATURES), flags=1)
            else:
                self.reply(req, struct.pack("<Q", FEATURES))
            return
        if req == GET_PROTOCOL_FEATURES:
            self.reply(req, struct.pack("<Q", PROTOCOL))
            return
        if req == GET_QUEUE_NUM:
            self.reply(req, struct.pack("<Q", 1))
            return
        if req == GET_CONFIG:
            off, size, cflags = struct.unpack_from("<III", body)
            cfg = bytearray(size)
            struct.pack_into("<Q", cfg, 0, CAPACITY)
            struct.pack_into("<I", cfg, 20, 512)
            if self.mode == "short_config":
                size = 8
                cfg = cfg[:8]
            self.reply(req, struct.pack("<III", off, size, cflags) + bytes(cfg))
            return
        if req == GET_VRING_BASE:
            index, _ = struct.unpack_from("<II", body)
            self.reply(req, struct.pack("<II", index, self.last_avail))
            return
        ack = 0
        if req == SET_MEM_TABLE:
            n, = struct.unpack_from("<I", body)
            for i in range(n):
                gpa, size, uaddr, moff = struct.unpack_from("<QQQQ", body, 8 + 32 * i)
                mem = mmap.mmap(fds[i], size + moff, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
                self.regions.append((gpa, size, uaddr, mem, moff))
            if self.mode == "nack_mem":
                ack = 1
        elif req == SET_VRING_NUM:
            _, self.num = struct.unpack_from("<II", body)
        elif req == SET_VRING_BASE:
            _, self.last_avail = struct.unpack_from("<II", body)
        elif req == SET_VRING_ADDR:
            _, _, desc, used, avail, _ = struct.unpack_from("<IIQQQQ", body)
            self.rings = (self.translate(desc, 16 * self.num, "uaddr"),
                          self.translate(avail, 4 + 2 * self.num, "uaddr"),
                          self.translate(used, 4 + 8 * self.num, "uaddr"))
        elif req == SET_VRING_KICK:
            self.kick = fds[0]
        elif req == SET_VRING_CALL:
            self.call = fds[0]
        for fd in fds if req not in (SET_MEM_TABLE, SET_VRING_KICK, SET_VRING_CALL) else []:
            os.close(fd)
        if flags & NEED_REPLY:
            self.reply(req, struct.pack("<Q", ack))

    # -- data path --------------------------------------------------------
    def process(self):
        (dm, doff), (am, aoff), (um, uoff) = self.rings
        avail_idx, = struct.unpack_from("<H", am, aoff + 2)
        while self.last_avail != avail_idx:
            head, = struct.unpack_from("<H", am, aoff + 4 + 2 * (self.last_avail % self.num))
            self.last_avail = (self.last_avail + 1) & 0xffff
            chain, d = [], head
            while True:
                addr, length, flags, nxt = struct.unpack_from("<QIHH", dm, doff + 16 * d)
                chain.append((addr, length, flags))
                if not flags & 1:
                    break
                d = nxt
            writable = sum(l for _, l, f in chain if f & 2)
            mem, off = self.translate(chain[0][0], 16, "gpa")
            rtype, _, sector = struct.unpack_from("<IIQ", mem, off)
            status, pos = 0, sector * 512
            data = chain[1:-1]
            if rtype in (0, 1) and pos + sum(l for _, l, _ in data) > len(self.disk):
                status = 1
            elif rtype in (0, 1):  # IN / OUT against the in-memory disk
                for a, l, f in data:
                    m, o = self.translate(a, l, "gpa")
                    if rtype == 0:
                        m[o:o + l] = bytes(self.disk[pos:pos + l])
                    else:
                        self.disk[pos:pos + l] = m[o:o + l]
                    pos += l
            elif rtype != 4 and rtype != 8:  # FLUSH and GET_ID succeed
                status = 2
            smem, soff = self.translate(chain[-1][0], 1, "gpa")
            if self.mode == "hangup":
                self.conn.close()
                sys.exit(0)
            if self.mode == "silent":
                continue
            if self.mode != "no_status":
                smem[soff] = 7 if self.mode == "bad_status" else status
            uid, ulen = head, writable
            if self.mode == "bad_id":
                uid = self.num + 5
            if self.mode == "big_len":
                ulen = writable + 100
            self.push(um, uoff, uid, ulen)
            if self.mode == "dup_id":
                self.push(um, uoff, uid, ulen)
            if self.mode == "idx_jump":
                self.used_idx = (self.used_idx + 5) & 0xffff
                struct.pack_into("<H", um, uoff + 2, self.used_idx)
        if self.call is not None:
            os.write(self.call, struct.pack("<Q", 1))

    def push(self, um, uoff, uid, ulen):
        struct.pack_into("<II", um, uoff + 4 + 8 * (self.used_idx % self.num), uid, ulen)
        self.used_idx = (self.used_idx + 1) & 0xffff
        struct.pack_into("<H", um, uoff + 2, self.used_idx)

    def run(self):
        while True:
            rl = [self.conn] + ([self.kick] if self.kick is not None else [])
            ready, _, _ = select.select(rl, [], [], 60)
            if not ready:
                return
            if self.kick is not None and self.kick in ready:
                os.read(self.kick, 8)
                if self.rings:
                    self.process()
            if self.conn in ready:
                msg = self.recv()
                if msg is None:
                    return
                self.handle(*msg)


def main():
    path, mode = sys.argv[1], sys.argv[2]
    if os.path.exists(path):
        os.unlink(path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    conn, _ = lsock.accept()
    lsock.close()
    os.unlink(path)
    Backend(conn, mode).run()


if __name__ == "__main__":
    main()
