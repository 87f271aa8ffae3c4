#!/usr/bin/python3
"""Write the seed corpora of tests/fuzz/corpus/ (run once; the output is committed).

Small well-formed inputs, one per path worth starting from; libFuzzer
mutates from them. Python's standard library only.
"""
import os
import shutil
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
corpus = os.path.join(here, 'corpus')


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


# ---- NBD ----
IHAVEOPT = 0x49484156454F5054


def opt(o, data=b''):
    return struct.pack('>QII', IHAVEOPT, o, len(data)) + data


def req(cmd, off=0, length=0, flags=0, cookie=1, payload=b''):
    return struct.pack('>IHHQQI', 0x25609513, flags, cmd, cookie, off, length) + payload


def meta(name, *queries):
    b = struct.pack('>I', len(name)) + name + struct.pack('>I', len(queries))
    for q in queries:
        b += struct.pack('>I', len(q)) + q
    return b


go = struct.pack('>I', 4) + b'mem0' + struct.pack('>HH', 1, 3)  # info: NAME
flags = struct.pack('>I', 3)
put('nbd', 'raw-go', b'\0' + flags + opt(8) + opt(3) + opt(6, go) +
    opt(10, meta(b'mem0', b'base:allocation')) + opt(7, go) + req(0, 0, 512) + req(2))
# A backup export's contexts (the fuzzed export has a change map since c1).
put('nbd', 'raw-backup-contexts', b'\0' + flags + opt(8) +
    opt(9, meta(b'mem0', b'qemu:')) + opt(9, meta(b'mem0', b'qemu:dirty-bitmap:')) +
    opt(10, meta(b'mem0', b'base:allocation', b'qemu:dirty-bitmap:c1', b'qemu:allocation-depth')) +
    opt(7, go) + req(7, 0, 1 << 20, cookie=5) + req(7, 65536, 196608, flags=8, cookie=6) +
    req(0, 0, 4096) + req(2))
put('nbd', 'raw-export-name', b'\0' + struct.pack('>I', 1) + opt(1, b'mem0') + req(0, 0, 4096))
put('nbd', 'raw-list-meta', b'\0' + flags + opt(9, meta(b'mem0', b'base:')) + opt(5) +
    opt(11) + opt(99, b'x') + opt(2))
io = (req(1, 4096, 512, payload=b'\x5a' * 512) + req(0, 4096, 512, cookie=2) +
      req(1, 0, 512, flags=1, payload=b'\1' * 512) + req(3, cookie=3) + req(4, 0, 65536) +
      req(6, 8192, 4096, flags=2) + req(6, 8192, 4096, flags=8) + req(5, 0, 4096) +
      req(0, (1 << 20) - 512, 1024) + req(9, 0, 0) + req(2))
put('nbd', 'tx-simple', b'\1' + io)
put('nbd', 'tx-structured', b'\2' + io + req(7, 0, 1 << 20, cookie=9) +
    req(7, 4096, 8192, flags=8) + req(0, 0, 8192, flags=4) + req(2))

# ---- manifests: the examples, and a few refused ones ----
src = os.path.normpath(os.path.join(here, '..', '..'))
for d, pick in ((os.path.join(src, 'config', 'examples'), lambda n: n.endswith('.yaml')),
                (os.path.join(src, 'tests', 'manifest', 'bad'),
                 lambda n: n in ('every-problem.yaml', 'wrong-type.yaml', 'tab-indent.yaml'))):
    for n in sorted(os.listdir(d)):
        if pick(n):
            shutil.copy(os.path.join(d, n), os.path.join(corpus, 'manifest', n))

# ---- control socket ----
put('control', 'status', b'{"command": "status"}\n{"command":"version"}\n')
put('control', 'bad', b'{"command": 1}\n[1,2]\n{"a":\n\n"x"\n{"command":"status"} trailing\n')

# ---- virtqueue: header, then guest memory (desc at 0, avail at 4 KiB, used at 8 KiB) ----
def vq_seed(flags, descs, avail, regions=((0x100000, 4096, 0),), last=0, extra=()):
    h = bytes([flags, len(regions) - 1])
    for addr, length, off in regions:
        h += struct.pack('>QHH', addr, length // 16, off // 16)
    h += struct.pack('>H', last)
    mem = bytearray(12288)
    for i, (addr, length, fl, nxt) in enumerate(descs):
        struct.pack_into('<QIHH', mem, 16 * i, addr, length, fl, nxt)
    struct.pack_into('<HH', mem, 4096, 0, len(avail))
    for i, head in enumerate(avail):
        struct.pack_into('<H', mem, 4096 + 4 + 2 * i, head)
    for off, data in extra:
        mem[off:off + len(data)] = data
    return h + bytes(mem).rstrip(b'\0')


# one region: gpa 0x100000.. maps guest memory 0..64K
R = ((0x100000, 65520, 0),)
chain = [(0x100000 + 0x3000, 16, 1, 1), (0x100000 + 0x3100, 512, 1, 2),
         (0x100000 + 0x3400, 1, 2, 0)]
put('vq', 'chain', vq_seed(3 << 3 | 2, chain, [0], R))
ind = struct.pack('<QIHH', 0x100000 + 0x3000, 16, 1, 1) + \
    struct.pack('<QIHH', 0x100000 + 0x3400, 1, 2, 0)
put('vq', 'indirect', vq_seed(4 << 3 | 3, [(0x100000 + 0x2800, 32, 4, 0)] + chain, [0, 1],
                              R, extra=((0x2800, ind),)))
put('vq', 'split-regions', vq_seed(2 << 3 | 4, chain, [0, 0],
                                   ((0x100000, 0x3100, 0), (0xffffffffffff0000, 0x1000, 0x3100),
                                    (0x200000, 0x1000, 0x3400)), last=65535))
# ---- virtio-blk requests in guest memory (shared by vduse and vhost) ----
def vring(num, descs, heads):
    """(descriptor table bytes, avail ring bytes) for a split ring of num entries."""
    d = b''.join(struct.pack('<QIHH', a, l, f, n) for a, l, f, n in descs)
    av = struct.pack('<HH', 0, len(heads)) + b''.join(struct.pack('<H', h) for h in heads)
    return d, av


def blk_req(base, t, sector, data_len, write, idx):
    """Descriptors idx.. of one request whose buffers are at base: header, data, status."""
    hdr, data, st = base, base + 0x100, base + 0x100 + max(data_len, 1)
    descs = [(hdr, 16, 1, idx + 1)]
    if data_len:
        descs.append((data, data_len, 1 if write else 3, idx + 2))
    descs.append((st, 1, 2, 0))
    return descs, struct.pack('<IIQ', t, 0, sector)


# ---- VDUSE: header, then ops (tests/fuzz/fuzz_vduse.c) ----
def vd_entry(first_page, pages, perm=3, file_page=None):
    return struct.pack('<HBBH', first_page, pages - 1, perm,
                       first_page if file_page is None else file_page)


def vd_msg(t, *args):
    if t == 0:
        return bytes([0, 0, args[0]])
    if t == 1:
        return bytes([0, 1, args[0]])
    if t == 2:
        return bytes([0, 2]) + struct.pack('<QQ', *args)
    return bytes([0, t])


def vd_poke(off, data):
    out = b''
    for i in range(0, len(data), 255):
        out += bytes([1]) + struct.pack('<IB', off + i, len(data[i:i + 255])) + data[i:i + 255]
    return out


def vd_info(q, ready, num, desc, drv, dev, avail=0):
    return bytes([4 | q << 3, ready]) + struct.pack('<HHHHH', num, desc, drv, dev, avail)


RING = 0x4000  # ring pages at IOVA 64 MiB (file offset = IOVA)
descs, heads, hdrs = [], [], []
for i, (t, sec, ln, w) in enumerate(((0, 0, 512, False), (1, 8, 4096, True), (4, 0, 0, False),
                                     (8, 0, 20, False))):
    d, h = blk_req(0x1000 * (i + 1), t, sec, ln, w, len(descs))
    heads.append(len(descs))
    descs += d
    hdrs.append((0x1000 * (i + 1), h))
desc, avail = vring(16, descs, heads)
setup = (bytes([1 | 4 | 8, 2]) + vd_entry(RING, 4) + vd_entry(0, 256) +
         vd_info(0, 1, 16, RING, RING + 1, RING + 2) +
         vd_poke(RING << 12, desc) + vd_poke((RING + 1) << 12, avail) +
         b''.join(vd_poke(a, h) for a, h in hdrs))
put('vduse', 'start-io-reset', setup + vd_msg(1, 0x0f) + bytes([2]) + vd_msg(0, 0) +
    vd_msg(2, RING << 12, (RING << 12) + 0xfff) + bytes([2]) + vd_msg(0, 1) + vd_msg(0, 5) +
    vd_msg(1, 0) + vd_msg(0, 0) + vd_msg(77) + bytes([5 | 8 << 3]))
put('vduse', 'two-queues', setup + vd_info(1, 1, 8, RING + 3, RING + 3, RING + 3) +
    vd_msg(1, 0x0f) + bytes([2, 2 | 8]) + vd_msg(2, 1, 0) + vd_msg(1, 0x0b) + vd_msg(1, 0x0f))
put('vduse', 'bad-rings', bytes([4, 1]) + vd_entry(RING, 1, perm=1) +
    vd_info(0, 1, 12, RING, RING + 9, RING) + vd_msg(1, 0x0f) +
    vd_info(0, 1, 1024, RING, RING, RING) + vd_msg(1, 0x0f) +
    bytes([3 | 1 << 3]) + vd_entry(RING, 2) + vd_msg(2, 0xffffffffffff0000, 0xffffffffffffffff))


# ---- vhost-user: ops (tests/fuzz/fuzz_vhost.c); guest memory is a 256 KiB memfd ----
def vu(req, payload=b'', nfds=0, need_reply=True, evfds_only=False):
    return (bytes([0 | nfds << 3 | (0x20 if evfds_only else 0), req, 1 if need_reply else 0]) +
            struct.pack('<H', len(payload)) + payload)


def vu_poke(off, data):
    out = b''
    for i in range(0, len(data), 255):
        out += bytes([3]) + struct.pack('<IB', off + i, len(data[i:i + 255])) + data[i:i + 255]
    return out


UVA = 0x7f0000000000  # where the frontend says guest memory is (QEMU's address)
GPA = 0x100000
features = struct.pack('<Q', 1 << 32 | 1 << 30 | 1 << 28 | 1 << 29 | 1 << 9)
proto = struct.pack('<Q', 1 | 1 << 3 | 1 << 9 | 1 << 12 | 1 << 15)  # MQ REPLY_ACK CONFIG INFLIGHT SLOTS
region = struct.pack('<QQQQ', GPA, 256 << 10, UVA, 0)
hello = (vu(1, need_reply=False) + vu(15, need_reply=False) + vu(16, proto) + vu(17, need_reply=False) +
         vu(3) + vu(2, features) + vu(5, struct.pack('<II', 1, 0) + region, nfds=1))
# vring 0: 16 entries, desc at 0x10000, avail 0x11000, used 0x12000 (offsets in the memfd)
vdescs, vheads, vhdrs = [], [], []
for i, (t, sec, ln, w) in enumerate(((0, 0, 512, False), (1, 8, 4096, True), (4, 0, 0, False),
                                     (8, 0, 20, False))):
    d, h = blk_req(GPA + 0x20000 + 0x2000 * i, t, sec, ln, w, len(vdescs))
    vheads.append(len(vdescs))
    vdescs += d
    vhdrs.append((0x20000 + 0x2000 * i, h))
vdesc, vavail = vring(16, vdescs, vheads)
ring0 = (vu(8, struct.pack('<II', 0, 16)) + vu(10, struct.pack('<II', 0, 0)) +
         vu(9, struct.pack('<IIQQQQ', 0, 0, UVA + 0x10000, UVA + 0x12000, UVA + 0x11000, 0)) +
         vu(13, struct.pack('<Q', 0), nfds=1, evfds_only=True) +
         vu(12, struct.pack('<Q', 0), nfds=1, evfds_only=True) +
         vu(18, struct.pack('<II', 0, 1)))
guest = vu_poke(0x10000, vdesc) + vu_poke(0x11000, vavail) + \
    b''.join(vu_poke(a, h) for a, h in vhdrs)
put('vhost', 'handshake-io', hello + guest + ring0 + bytes([2 | 1 << 3]) +
    vu(24, struct.pack('<III', 0, 20, 0) + bytes(20), need_reply=False) +
    vu(11, struct.pack('<II', 0, 0), need_reply=False) +
    vu(34))
put('vhost', 'inflight-slots', hello + vu(31, struct.pack('<QQHH', 0, 0, 2, 16) + bytes(4),
                                           need_reply=False) +
    vu(36, need_reply=False) +
    vu(37, bytes(8) + struct.pack('<QQQQ', 0x900000, 0x10000, UVA + 0x900000, 0x20000), nfds=1) +
    vu(38, bytes(8) + struct.pack('<QQQQ', 0x900000, 0x10000, UVA + 0x900000, 0x20000)) +
    guest + ring0 + bytes([2 | 1 << 3]) + vu(5, struct.pack('<II', 1, 0) + region, nfds=1) +
    bytes([2 | 1 << 3]) + vu(4))
put('vhost', 'bad', vu(2, features) + vu(5, struct.pack('<II', 9, 0) + region, nfds=1) +
    bytes([1, 12]) + struct.pack('<III', 1, 1, 8) + vu(99) + vu(1, b'x', nfds=2, evfds_only=True))

# ---- ublk (tests/fuzz/fuzz_ublk.c): byte 0 even: a queue; odd: control replies ----
def ub_ev(tag, res, op, sectors=0, start=0, addr=0):
    return struct.pack('<BBIIQQ', tag, res, op, sectors, start, addr)


put('ublk', 'queue-io', bytes([0, 3, 15]) + ub_ev(0, 0, 0, 8, 0) + ub_ev(1, 0, 1, 8, 8) +
    ub_ev(2, 0, 2) + ub_ev(3, 0, 3, 8, 16) + ub_ev(0, 0, 5, 16, 0) +
    ub_ev(1, 0, 1 | 1 << 8, 1, 2047) + ub_ev(2, 0, 0, 8, 2044) + ub_ev(3, 0, 0, 129, 0) +
    ub_ev(0, 0, 99) + ub_ev(1, 2, 0) + ub_ev(1, 0, 0, 1) + ub_ev(2, 7, 0))
put('ublk', 'queue-deep', bytes([0, 15, 0]) + b''.join(ub_ev(t, 0, t % 4, 8, t * 8) for t in range(16)) +
    b''.join(ub_ev(t, 0, 5 | 1 << 10, 1, t) for t in range(16)))
# GET_DEV_INFO: 2 queues x 64, quiesced, 512K max-io, ublk7, pid 1234, USER_RECOVERY(_REISSUE)
info = struct.pack('<HHHHIIiIQQQQQ', 2, 64, 2, 0, 512 << 10, 7, 1234, 0, 1 << 3 | 1 << 4, 0, 0, 0, 0)
# GET_PARAMS: basic, 512-byte blocks, 1 MiB (the fuzzed image)
params = struct.pack('<II', 128, 1) + struct.pack('<IBBBBIIQQ', 0, 9, 9, 9, 9, 1024, 0, 2048, 0)
put('ublk', 'control', bytes([1]) + struct.pack('<Q', 0x7f) + info + params.ljust(128, b'\0') +
    bytes([0x0f, 0xf0] + [0] * 14) + b'7 1234 2 64 524288 vm0\n')
put('ublk', 'control-bad', bytes([1]) + struct.pack('<Q', 0) + bytes(64) + bytes(16) + b'auto')

print('seeds written under', corpus, file=sys.stderr)
