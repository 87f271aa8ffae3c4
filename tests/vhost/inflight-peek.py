#!/usr/bin/python3
"""Read a stopped blkgw's vhost-user inflight regions from /proc/PID/mem.

    inflight-peek.py PID

Prints one line per queue region: "queue Q: version V desc_num N used_idx U
last_batch_head H inflight K heads [..]", then "total K". The process should
be stopped (SIGSTOP) so the region does not change while it is read. Needs
root (or ptrace rights over PID). Python 3 standard library only.

The layout is the libvhost-user split layout blkgw uses (transports/virtio/vq.h):
per queue a 16-byte header {u64 features, u16 version, u16 desc_num,
u16 last_batch_head, u16 used_idx} and desc_num 16-byte entries {u8 inflight,
u8 pad[5], u16 next, u64 counter}, each queue's part 64-byte aligned.
"""
import struct
import sys


def regions(pid):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "memfd:blkgw-inflight" not in line:
                continue
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            yield lo, hi


def main():
    pid = int(sys.argv[1])
    total = 0
    q = 0
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for lo, hi in regions(pid):
            mem.seek(lo)
            data = mem.read(hi - lo)
            off = 0
            while off + 16 <= len(data):
                _feat, version, num, batch, used = struct.unpack_from("<QHHHH", data, off)
                if version == 0 or num == 0:
                    break
                heads = []
                for i in range(num):
                    e = off + 16 + 16 * i
                    if e + 16 > len(data):
                        break
                    if data[e]:
                        heads.append(i)
                print(f"queue {q}: version {version} desc_num {num} used_idx {used} "
                      f"last_batch_head {batch} inflight {len(heads)} heads {heads}")
                total += len(heads)
                q += 1
                off += (16 + 16 * num + 63) & ~63
    print(f"total {total}")


if __name__ == "__main__":
    main()
