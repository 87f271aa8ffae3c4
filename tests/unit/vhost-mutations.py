#!/usr/bin/python3
"""Mutation check for the virtio / vhost-user-blk unit tests: disable one
safety check at a time in a private copy of the tree, rebuild the unit
test that covers it, and report whether the test notices (fails or hangs).

    tests/unit/vhost-mutations.py [--keep]

Copies the repository (without .git and build*) to a temporary folder and
builds there, so the working tree and other build folders are never
touched. Takes a few minutes. A MISSED line is either a test gap, or a
check backed by a second layer (noted in WHY); see docs/transports/vhost-user-blk.md.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# (file, text, replacement, test, what[, (second file, text, replacement)])
M = [
 ("transports/virtio/vq.c", "if (len == 0)\n\t\t\treturn vq_fail(q, \"head %u: zero-length buffer\", head);", "", "test_vq", "zero-length (both layers)", ["transports/virtio/virtio_mem.c", "if (len == 0 || __builtin_add_overflow", "if (__builtin_add_overflow"]),
 # (file, old, new, test, what)
 ("transports/virtio/vq.c", "if (++count > tmax)", "if (++count > 0xffffffffu)", "test_vq", "chain loop/length guard (removed)"),
 ("transports/virtio/virtio_mem.c", "else if (addr - r->addr >= r->len)", "else if (0)", "test_vq", "region end check in lookup"),
 ("transports/virtio/virtio_mem.c", "if (len == 0 || __builtin_add_overflow(addr, len - 1, &last))\n\t\treturn -EFAULT;", "(void)last;", "test_vq", "address+length overflow check"),
 ("transports/virtio/vq.c", "if (indirect)\n\t\t\t\treturn vq_fail(q, \"head %u: indirect descriptor inside", "if (indirect && 0)\n\t\t\t\treturn vq_fail(q, \"head %u: indirect descriptor inside", "test_vq", "nested indirect refused"),
 ("transports/virtio/vq.c", "if (flags & VRING_DESC_F_NEXT)\n\t\t\t\treturn vq_fail(q, \"head %u: indirect descriptor with NEXT", "if (0)\n\t\t\t\treturn vq_fail(q, \"head %u: indirect descriptor with NEXT", "test_vq", "INDIRECT|NEXT refused"),
 ("transports/virtio/vq.c", "if (len == 0 || len % sizeof(struct vring_desc) ||", "if (len == 0 ||", "test_vq", "indirect length multiple of 16"),
 ("transports/virtio/vq.c", "if (!q->indirect)\n", "if (0)\n", "test_vq", "indirect needs the feature"),
 ("transports/virtio/vq.c", "if (count)\n\t\t\t\treturn vq_fail", "if (0)\n\t\t\t\treturn vq_fail", "test_vq", "indirect only at the head"),
 ("transports/virtio/vq.c", "if (len == 0)\n\t\t\treturn vq_fail(q, \"head %u: zero-length buffer\", head);", "", "test_vq", "zero-length buffer refused"),
 ("transports/virtio/vq.c", "if (writing)\n\t\t\t\treturn vq_fail", "if (0)\n\t\t\t\treturn vq_fail", "test_vq", "readable after writable refused"),
 ("transports/virtio/vq.c", "if (gw_unlikely(q->busy[head]))", "if (0)", "test_vq", "duplicate head refused"),
 ("transports/virtio/vq.c", "if (gw_unlikely(pending > q->num))", "if (0)", "test_vq", "avail index jump refused"),
 ("transports/virtio/vq.c", "if (next >= tmax)", "if (next >= 65535)", "test_vq", "next bound"),
 ("transports/virtio/vq.c", "return (uint16_t)(new - ev - 1) < (uint16_t)(new - old);", "return ((uint16_t)(new - ev - 1) < (uint16_t)(new - old)) || 1;", "test_vq", "EVENT_IDX interrupt suppression"),
 ("transports/virtio/vq.c", "if (batch < q->num && r->desc[batch].inflight) {", "if (0) {", "test_vq", "torn completion repaired"),
 ("transports/virtio/vq.c", "return x->counter < y->counter ? -1 : x->counter > y->counter;", "return (x->head > y->head) - (x->head < y->head);", "test_vq", "resubmission in pop order"),
 ("transports/virtio/virtio_blk.c", "if (e->truncated || e->out_len < VIRTIO_BLK_HDR_SIZE) {", "if (e->truncated) {", "test_vblk", "short header -> IOERR"),
 ("transports/virtio/virtio_blk.c", "if (!e->last_in)\n\t\treturn -EPROTO;", "", "test_vblk", "no writable status byte"),
 ("transports/virtio/virtio_blk.c", "return sector <= d->capacity && nsec <= d->capacity - sector;", "return (sector <= d->capacity && nsec <= d->capacity - sector) || sector != 12345;", "test_vblk", "range check against capacity"),
 ("transports/virtio/virtio_blk.c", "if (len % VIRTIO_BLK_SECTOR || len > d->max_data ||", "if (len > d->max_data ||", "test_vblk", "length multiple of 512"),
 ("transports/virtio/virtio_blk.c", "len > d->max_data ||", "", "test_vblk", "data cap"),
 ("transports/virtio/virtio_blk.c", "(r->type == VIRTIO_BLK_T_DISCARD && (flags & VIRTIO_BLK_WZ_F_UNMAP))) {", "0) {", "test_vblk", "UNMAP on DISCARD -> UNSUPP"),
 ("transports/virtio/virtio_blk.c", "len / VIRTIO_BLK_SEG_SIZE > VBLK_MAX_SEGS) {", "0) {", "test_vblk", "segment count limit"),
 ("transports/virtio/virtio_blk.c", "? GW_IO_NO_UNMAP : 0;", "? 0 : 0;", "test_vblk", "WZ without UNMAP keeps the allocation"),
 ("transports/virtio/virtio_blk.c", "& ~VIRTIO_BLK_T_BARRIER;", ";", "test_vblk", "BARRIER bit masked"),
 ("transports/vhost/vhost_dev.c", "} else if (rules[m->request].size != VAR && m->size != rules[m->request].size) {", "} else if (0) {", "test_vhost_msg", "payload size check"),
 ("transports/vhost/vhost_dev.c", "} else if (m->nfds < rules[m->request].min_fds || m->nfds > rules[m->request].max_fds) {", "} else if (0) {", "test_vhost_msg", "fd count check"),
 ("transports/vhost/vhost_vring.c", "if (index >= c->x->o->queues) {", "if (index >= VHOST_MAX_QUEUES) {", "test_vhost_msg", "queue index bound"),
 ("transports/vhost/vhost_mem.c", "if (fstat(fd, &st) < 0 || (S_ISREG(st.st_mode) && (uint64_t)st.st_size < end)) {", "if (fstat(fd, &st) < 0) {", "test_vhost_msg", "region within its file"),
 ("transports/virtio/virtio_mem.c", "if (addr <= r->addr + (r->len - 1) && r->addr <= last)\n\t\t\treturn -EEXIST;", "", "test_vhost_msg", "overlapping regions refused"),
 ("transports/vhost/vhost_mem.c", "if ((vr->desc_ua & 15) || (vr->avail_ua & 1) || (vr->used_ua & 3)) {", "if (0) {", "test_vhost_msg", "ring alignment"),
 ("transports/vhost/vhost_msg.c", "if (m->size > VHOST_USER_MAX_PAYLOAD) {", "if (m->size > 4096) {", "test_vhost_msg", "payload size cap"),
 ("transports/vhost/vhost_msg.c", "if ((m->flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION) {", "if (0) {", "test_vhost_msg", "protocol version check"),
 ("transports/vhost/vhost_dev.c", "if (f & ~offered)\n", "if (0)\n", "test_vhost_msg", "unoffered features refused"),
 ("transports/vhost/vhost_vring.c", "if (nofd != (m->nfds == 0))", "if (0)", "test_vhost_msg", "no-fd flag vs fds"),
 ("transports/vhost/vhost_msg.c", "for (unsigned i = 0; i < m->nfds; i++)\n\t\tif (m->fds[i] >= 0)\n\t\t\tclose(m->fds[i]);", "", "test_vhost_msg", "extra fds closed (leak check)"),
 ("transports/vhost/vhost.c", "} else {\n\t\t\tgw_warn(\"vhost-user-blk %s: refusing a second frontend", "} else if (0) {\n\t\t\tgw_warn(\"vhost-user-blk %s: refusing a second frontend", "test_vhost_msg", "second frontend refused"),
 ("transports/vhost/vhost_vring.c", "\tc->broken = true;\n\tif (vr->err_fd >= 0", "\tc->broken = true;\n\tif (0 && vr->err_fd >= 0", "test_vhost_msg", "err eventfd signalled on a broken ring"),
]

# Checks a second layer also enforces: a MISSED here is expected.
LAYERED = {
    "zero-length buffer refused": "virtio_mem_iov refuses empty ranges",
    "zero-length (both layers)": "len - 1 underflows and fails the overflow check",
    "range check against capacity": "gw_export_submit checks ranges again",
    "data cap": "gw_export_submit caps READ/WRITE at max_xfer",
}


def main():
    work = tempfile.mkdtemp(prefix="blkgw-mut.")
    src, build = os.path.join(work, "src"), os.path.join(work, "build")
    try:
        os.makedirs(src, exist_ok=True)
        subprocess.run(f"tar --exclude=./.git --exclude='./build*' -C {ROOT} -cf - . | tar -C {src} -xf -",
                       shell=True, check=True)
        subprocess.run(["cmake", "-S", src, "-B", build, "-DGW_ENABLE_BENCH=OFF"], check=True,
                       capture_output=True)
        missed = 0
        for m in M:
            f, old, new, test, what = m[:5]
            extra = m[5] if len(m) > 5 else None
            path = os.path.join(src, f)
            orig = open(path).read()
            eorig = None
            if old not in orig:
                print(f"{what:45} PATTERN NOT FOUND (update this tool)")
                missed += 1
                continue
            open(path, "w").write(orig.replace(old, new, 1))
            if extra:
                epath = os.path.join(src, extra[0])
                eorig = open(epath).read()
                open(epath, "w").write(eorig.replace(extra[1], extra[2], 1))
            try:
                b = subprocess.run(["nice", "cmake", "--build", build, "-j1", "--target", test],
                                   capture_output=True, text=True)
                if b.returncode:
                    verdict = "BUILD FAILED (update this tool)"
                else:
                    try:
                        r = subprocess.run([os.path.join(build, "tests/unit", test)], capture_output=True,
                                           text=True, timeout=60)
                        last = (r.stdout.strip().splitlines() or [""])[-1]
                        verdict = ("CAUGHT  " if r.returncode else "MISSED  ") + f"{test}: {last}"
                    except subprocess.TimeoutExpired:
                        verdict = f"CAUGHT  {test}: hangs (timeout)"
                if verdict.startswith("MISSED") and what in LAYERED:
                    verdict += f"  [expected: {LAYERED[what]}]"
                elif not verdict.startswith("CAUGHT"):
                    missed += 1
                print(f"{what:45} {verdict}", flush=True)
            finally:
                open(path, "w").write(orig)
                if extra:
                    open(epath, "w").write(eorig)
        return 1 if missed else 0
    finally:
        if "--keep" in sys.argv:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
