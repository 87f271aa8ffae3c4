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
print('seeds written under', corpus, file=sys.stderr)
