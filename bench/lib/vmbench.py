"""bench/run's kernel paths: on the host when its kernel has them, and in
the project's QEMU TCG test VM (--vm).

bench/kernel-paths.sh runs them, one column after the other: blkgw's NBD
attached, ublk and VDUSE devices, nbd-client in front of blkgw and of
qemu-storage-daemon, qsd's vduse-blk and the kernel's null_blk as the
ceiling; in the VM also the vhost-user-blk disks of a blkgw and a qsd
running on the host (QEMU is their client) and fio on a guest file. It
prints each cell's fio JSON (on the guest's console, or on its own output
on the host); bench/run reads it back, and reads its own daemons' CPU time
when the guest says a run starts and stops. Every figure from the VM is
TCG: comparable with the other VM columns only. Where each path runs is
decided by probe_host (blkgw's own transport probes) and
harness.place_kernel_paths.
"""

import json
import os
import shlex
import shutil
import subprocess
import time

import harness as H


def parse_console(text):
    """The guest's console -> (cells, files): cells are dicts with backend,
    column, workload, rep, ticks ('-', 'host:N' or a count), hz, cmd, fio
    (the parsed JSON); files are (cell index they precede, name, text)."""
    cells, files = [], []
    lines = text.replace("\r", "").split("\n")
    i = 0
    cmd = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("BENCH-CMD "):
            cmd = line[len("BENCH-CMD "):]
        elif line.startswith("BENCH-FILE-BEGIN "):
            name = line.split()[1]
            body = []
            i += 1
            while i < len(lines) and lines[i] != "BENCH-FILE-END":
                body.append(lines[i])
                i += 1
            files.append((len(cells), name, "\n".join(body) + "\n"))
        elif line.startswith("BENCH-BEGIN "):
            f = line.split()
            body = []
            i += 1
            while i < len(lines) and lines[i] != "BENCH-END":
                body.append(lines[i])
                i += 1
            t = "\n".join(body)
            try:
                doc = json.loads(t[t.index("{"):t.rindex("}") + 1])
            except ValueError:
                doc = None
            if doc is not None and len(f) >= 7:
                cells.append({"backend": f[1], "column": f[2], "workload": f[3],
                              "rep": int(f[4]), "ticks": f[5], "hz": int(f[6]),
                              "seq": f[7] if len(f) >= 8 else None,
                              "cmd": cmd, "fio": doc})
            cmd = None
        i += 1
    return cells, files


def tree_ticks(root):
    """utime + stime (clock ticks) of process root and all its descendants
    (run-vm.sh and the QEMU it starts), read from /proc."""
    parent, ticks = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                t = fh.read()
        except OSError:
            continue
        rest = t[t.rindex(")") + 2:].split()
        parent[int(d)] = int(rest[1])
        ticks[int(d)] = int(rest[11]) + int(rest[12])
    total, todo, seen = 0, [root], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += ticks.get(p, 0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


# Loaded (modprobe) before probing, when missing and bench/run is root.
PROBE_MODULES = ["nbd", "ublk_drv", "vduse", "virtio_vdpa", "virtio_blk"]


def probe_host(blkgw, tmp):
    """Which kernel paths this host can run: loads the transports' modules
    it can (as root), asks blkgw's probes (`blkgw check` on a one-export
    manifest each) and looks for null_blk and the programs the peers'
    columns need. -> {kernel column: None or why not}."""
    root = os.geteuid() == 0
    if root and shutil.which("modprobe"):
        for m in PROBE_MODULES:
            if not os.path.isdir(f"/sys/module/{m}"):
                subprocess.run(["modprobe", "-q", m], capture_output=True)
    d = os.path.join(tmp, "probe")
    os.makedirs(d, exist_ok=True)
    probes = {}
    exports = {"nbd-attach": "transports: [nbd], nbd: { attach: true }",
               "ublk": "transports: [ublk]",
               "vduse": f"transports: [vduse], vduse: {{ name: bprobe{os.getpid()} }}"}
    for name, tr in exports.items():
        m = os.path.join(d, f"{name}.yaml")
        with open(m, "w") as fh:
            fh.write(f"version: 1\ngateway: {{ run-dir: {d}/run, workers: 1 }}\n"
                     "images:\n  p: { backend: null, size: 1M }\n"
                     f"exports:\n  - {{ image: p, {tr} }}\n")
        r = subprocess.run([blkgw, "check", m], capture_output=True, text=True)
        probes[name] = H.check_reason(r.returncode, r.stderr)
    if os.path.isdir("/sys/module/null_blk"):
        probes["null_blk"] = None
    elif root and subprocess.run(["modprobe", "-n", "-q", "null_blk"],
                                 capture_output=True).returncode == 0:
        probes["null_blk"] = None  # kernel-paths.sh loads it with its own settings
    else:
        probes["null_blk"] = "no null_blk module"
    have = {p for p in ("qemu-storage-daemon", "nbd-client", "vdpa") if shutil.which(p)}
    return H.kernel_host_reasons(probes, have, root)


def cell_key(c):
    """The word a rerun names a cell by (bench/kernel-paths.sh's ONLY)."""
    return f"{c['backend']}:{c['column']}:{c['workload']}:{c['rep']}"


def vm_size(a):
    return min(a.size_bytes, 256 << 20)


def run(b, log, die, site="vm"):
    """Run the kernel paths of b.a.columns in one place: site "vm" (the
    vm/... columns, one boot of the test VM, more for cells a stopped guest
    left) or "host" (the kernel/... columns, kernel-paths.sh here)."""
    a = b.a
    on_host = site == "host"
    if on_host:
        cols = [c for c in a.columns if c in H.KERNEL_COLUMNS]
    else:
        cols = [c for c in a.columns if H.column(c)["where"] == "tcg"]
    label = "host kernel" if on_host else "VM"
    # what the script printed: the guest's console, or its output here
    out_name = "output" if on_host else "console"
    work = os.path.join(b.tmp, site)
    os.makedirs(work, exist_ok=True)
    rawvm = os.path.join(b.out, "raw", "kernel" if on_host else "vm")
    os.makedirs(rawvm, exist_ok=True)
    size = a.size_bytes if on_host else vm_size(a)
    runtime = a.runtime if on_host else a.vm_runtime
    backends = list(a.backends)
    blkgw = b.blkgw

    # Host daemons for the vhost-user-blk guest disks: one blkgw and one qsd,
    # one export per backend, disks in this order (vda, vdb, ...).
    vhost = [c for c in cols if c.endswith("/vhost-guest")]
    disks, daemons, socks = [], {}, []
    files = []
    if vhost:
        for d in ("blkgw", "qsd"):
            if f"vm/{d}/vhost-guest" in vhost:
                disks += [f"{d}:{x}" for x in backends]
        exports, images, qargs = [], [], []
        for x in backends:
            f = os.path.join(a.file_dir, f"blkgw-bench-vm-{os.getpid()}-{x}")
            if "blkgw:" + x in disks:
                s = os.path.join(work, f"blkgw-{x}.sock")
                img = {"null": f"{{ backend: null, size: {size} }}",
                       "memory": f"{{ backend: memory, size: {size} }}",
                       "file": f"{{ backend: file, path: {f}.blkgw, direct: true }}"}[x]
                if x == "file":
                    with open(f + ".blkgw", "w") as fh:
                        fh.truncate(size)
                    files.append(f + ".blkgw")
                images.append(f"  {x}: {img}")
                exports.append(f"  - {{ image: {x}, transports: [vhost-user-blk], "
                               f"vhost-user-blk: {{ socket: {s}, queues: 1 }} }}")
            if "qsd:" + x in disks:
                s = os.path.join(work, f"qsd-{x}.sock")
                if x == "null":
                    bd = f"driver=null-co,node-name={x},size={size},read-zeroes=on"
                else:
                    p = (f"/dev/shm/blkgw-bench-vm-{os.getpid()}" if x == "memory" else f + ".qsd")
                    with open(p, "w") as fh:
                        fh.truncate(size)
                    files.append(p)
                    bd = f"driver=file,node-name={x},filename={p},cache.direct=on,aio=native"
                qargs += ["--blockdev", bd, "--export",
                          f"type=vhost-user-blk,id=e{x},node-name={x},addr.type=unix,"
                          f"addr.path={s},writable=on,num-queues=1"]
        d = os.path.join(rawvm, "host-daemons")
        os.makedirs(d, exist_ok=True)
        if images:
            m = (f"version: 1\ngateway: {{ run-dir: {work}/run, workers: {a.workers}, "
                 "log-level: warn }\nimages:\n" + "\n".join(images) + "\nexports:\n" +
                 "\n".join(exports) + "\n")
            with open(os.path.join(d, "manifest.yaml"), "w") as fh:
                fh.write(m)
            argv = [blkgw, "serve", os.path.join(d, "manifest.yaml")]
            with open(os.path.join(d, "blkgw.cmd"), "w") as fh:
                fh.write(shlex.join(argv) + "\n")
            daemons["blkgw"] = b.spawn(argv, os.path.join(d, "blkgw.log"))
        if qargs:
            argv = ["qemu-storage-daemon"] + qargs
            with open(os.path.join(d, "qsd.cmd"), "w") as fh:
                fh.write(shlex.join(argv) + "\n")
            daemons["qsd"] = b.spawn(argv, os.path.join(d, "qsd.log"))
        for disk in disks:
            dn, x = disk.split(":")
            s = os.path.join(work, f"{dn}-{x}.sock")
            socks.append(s)
            if not b.wait(daemons[dn], lambda s=s: os.path.exists(s), 60):
                die(f"host {dn} for the VM's vhost-user-blk disks did not come up")

    with open(os.path.join(work, "workloads"), "w") as fh:
        for w in a.workloads:
            fh.write(w + " " + " ".join(H.fio_workload_args(w, a.numjobs)) + "\n")
    with open(os.path.join(work, "workloads")) as src, \
            open(os.path.join(rawvm, "workloads"), "w") as dst:
        dst.write(src.read())
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ours = [os.getpid()] + [p.pid for p in daemons.values()]

    script = os.path.join(root, "bench/kernel-paths.sh")
    host_files = {"IMG_FILE": os.path.join(a.file_dir, f"blkgw-bench-kernel-{os.getpid()}.img"),
                  "IMG_MEM": f"/dev/shm/blkgw-bench-kernel-{os.getpid()}.img"}

    def launch(only, attempt, n_cells, timeout):
        """Start kernel-paths.sh for the cells (every one, or only those
        named) -> (process, its output file, its command line), or None when
        the guest could not be built for a rerun."""
        sfx = "" if attempt == 0 else f".a{attempt}"
        config = os.path.join(work, "config")
        with open(config, "w") as fh:
            fh.write(f"RT={runtime}\nREPS={a.repeat}\nSIZE={size}\nSIZE_BYTES={size}\n"
                     f"BACKENDS='{' '.join(backends)}'\nCOLUMNS='{' '.join(cols)}'\n"
                     f"VHOST_DISKS='{' '.join(disks)}'\nONLY='{' '.join(only)}'\n")
            if on_host:
                fh.write(f"ON_HOST=1\nRAMP={a.ramp}\n"
                         f"LIB={shlex.quote(os.path.join(root, 'tests/vm/guest-lib.sh'))}\n"
                         f"WORKLOADS={shlex.quote(os.path.join(work, 'workloads'))}\n"
                         f"BLKGW={shlex.quote(blkgw)}\nWORKERS={a.workers}\n"
                         f"T={shlex.quote(os.path.join(work, 't'))}\n"
                         f"IMG_FILE={shlex.quote(host_files['IMG_FILE'])}\n"
                         f"IMG_MEM={shlex.quote(host_files['IMG_MEM'])}\n")
        with open(config) as src, open(os.path.join(rawvm, "config" + sfx), "w") as dst:
            dst.write(src.read())
        out = os.path.join(rawvm, f"{out_name}{sfx}.log")
        if on_host:
            log(f"host kernel: {n_cells} cells, ~{int(n_cells * (runtime + 2.0) / 60) + 1} min"
                + (f" (pass {attempt}: cells run again)" if attempt else ""))
            argv = ["sh", script, config]
            with open(os.path.join(rawvm, f"run{sfx}.cmd"), "w") as fh:
                fh.write(shlex.join(argv) + "\n")
            # On SIGTERM (bench/run stopping, or boot() after `timeout` s) it
            # takes the current device down: up to a minute for a daemon to
            # stop (bg_wait in teardown), then SIGKILL.
            return b.spawn(argv, out, cleans_up=90), out, argv
        log(f"VM: building the guest; {n_cells} cells in one boot, ~{int(n_cells * (runtime + 4.0) / 60) + 1} min"
            + (f" (boot {attempt}: cells run again)" if attempt else ""))
        guest = os.path.join(work, "guest")
        r = subprocess.run([os.path.join(root, "tests/vm/build-guest.sh"), "-q", "--out", guest,
                            "--script", script,
                            "--bin", blkgw, "--bin", "fio", "--bin", "qemu-storage-daemon",
                            "--bin", "vdpa", "--bin", "nbd-client", "--module", "null_blk",
                            "--file", os.path.join(work, "config") + ":/test/config",
                            "--file", os.path.join(work, "workloads") + ":/test/workloads"],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            if attempt:
                log(f"VM: build-guest.sh failed for the rerun: {r.stderr[-400:]}")
                return None
            die(f"VM: build-guest.sh failed: {r.stderr[-800:]}")
        argv = [os.path.join(root, "tests/vm/run-vm.sh"), "-q", "--guest", guest, "--log", out,
                "--smp", "2", "-m", "2048", "--timeout", str(timeout)]
        for sk in socks:
            argv += ["--vhost-user-blk", sk + ",num-queues=1"]
        with open(os.path.join(rawvm, f"run-vm{sfx}.cmd"), "w") as fh:
            fh.write(shlex.join(argv) + "\n")
        return b.spawn(argv, os.path.join(rawvm, f"run-vm{sfx}.log")), out, argv

    def boot(only, attempt):
        """One boot of the guest (one run of the script on the host) for
        every cell, or only those named (cell_key words). -> the cells'
        metrics, each with the cores other processes on the host used while
        it ran (between its BENCH-T0 and BENCH-T1 lines; QEMU, run-vm.sh or
        the script and what it starts, the host daemons and this harness are
        not others)."""
        n_cells = len(only) if only else a.repeat * len(a.workloads) * sum(
            1 if c.endswith("/null_blk") else len(backends) for c in cols)
        per = runtime + 4.0
        timeout = int(n_cells * per * 3 + 900)
        started_vm = launch(only, attempt, n_cells, timeout)
        if started_vm is None:
            return []
        vm, console, argv = started_vm
        host_ticks, started, t0s, foreign = {}, {}, {}, {}

        def snap():
            with open("/proc/stat") as fh:
                busy, _ = H.parse_sys_stat(fh.read())
            mine = tree_ticks(vm.pid) + sum(b.proc_ticks(p) or 0 for p in ours)
            if on_host:
                # the kernel's own threads serve these paths (nbd's receive
                # work, VDUSE's interrupt work): not other processes' load
                mine += tree_ticks(2)
            return busy, mine, time.time()

        pos, seen, t0 = 0, 0, time.time()
        while True:
            done = vm.poll() is not None
            if not done and on_host and time.time() - t0 > timeout:
                log(f"{label}: still running after {timeout} s: stopping it")
                b.stop(vm)
            try:
                with open(console, errors="replace") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except OSError:
                chunk = ""
            # only whole lines
            cut = chunk.rfind("\n") + 1
            pos += len(chunk[:cut].encode("utf-8", "replace"))
            for line in chunk[:cut].replace("\r", "").split("\n"):
                f = line.split()
                if line.startswith("BENCH-T0 ") and len(f) == 2:
                    t0s[f[1]] = snap()
                elif line.startswith("BENCH-T1 ") and len(f) == 2 and f[1] in t0s:
                    (b0, m0, w0), (b1, m1, w1) = t0s.pop(f[1]), snap()
                    if w1 > w0:
                        foreign[f[1]] = max(0.0, ((b1 - b0) - (m1 - m0)) / b.hz / (w1 - w0))
                elif line.startswith("BENCH-HOST-START ") and len(f) == 3:
                    dn = f[2].split(":")[0]
                    started[f[1]] = b.proc_ticks(daemons[dn].pid) if dn in daemons else None
                elif line.startswith("BENCH-HOST-STOP ") and len(f) == 3:
                    dn = f[2].split(":")[0]
                    t1 = b.proc_ticks(daemons[dn].pid) if dn in daemons else None
                    s0 = started.get(f[1])
                    host_ticks[f[1]] = (t1 - s0) if s0 is not None and t1 is not None else None
                elif line.startswith("BENCH-BEGIN "):
                    seen += 1
                    el = time.time() - t0
                    left = el / seen * max(0, n_cells - seen)
                    log(f"{label} [{seen}/{n_cells} {100 * seen // max(1, n_cells)}%] "
                        f"{f[1]} {f[3]} {f[2]} round {f[4]}{'' if on_host else ' (TCG)'}  elapsed {int(el) // 60}:"
                        f"{int(el) % 60:02d}, ~{int(left) // 60}:{int(left) % 60:02d} left")
            if done:
                break
            time.sleep(0.05)
        rc = vm.returncode
        b.forget(vm)
        text = open(console, errors="replace").read()
        cells, vfiles = parse_console(text)
        what = "kernel-paths.sh" if on_host else "run-vm.sh"
        if rc != 0:
            log(f"{label}: {what} exited {rc} (a check failed, see {console}); "
                f"{len(cells)} cells kept")
        if not cells:
            if attempt:
                log(f"{label}: no results from the rerun ({what} exit {rc}); output: {console}")
                return []
            die(f"{label}: no results ({what} exit {rc}); output: {console}")
        for pos_i, name, body in vfiles:
            if pos_i < len(cells):
                c = cells[pos_i]
                d = os.path.join(rawvm, c["backend"], c["column"].replace("/", "_"))
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"r{c['rep']}.{name}"), "w") as fh:
                    fh.write(body)
        out = []
        for c in cells:
            d = os.path.join(rawvm, c["backend"], c["column"].replace("/", "_"))
            os.makedirs(d, exist_ok=True)
            j = os.path.join(d, f"{c['workload']}.r{c['rep']}.a{attempt}.json")
            with open(j, "w") as fh:
                json.dump(c["fio"], fh, indent=1)
            with open(j + ".cmd", "w") as fh:
                fh.write(f"# {'on the host' if on_host else 'in the test VM (QEMU TCG)'}, "
                         f"{shlex.join(argv)}\n{c['cmd']}\n")
            t = c["ticks"]
            if t.startswith("host:"):
                ticks = host_ticks.get(t[5:])
                hz = b.hz
            else:
                ticks = None if t == "-" else int(t)
                hz = c["hz"]
            m = H.cell_metrics(H.parse_fio(c["fio"]), ticks, hz)
            m.update({"backend": c["backend"], "workload": c["workload"], "column": c["column"],
                      "rep": c["rep"], "attempt": attempt, "discarded": False, "noisy": False,
                      "where": "host" if on_host else "tcg",
                      "fio_json": os.path.relpath(j, b.out),
                      "foreign_cores": foreign.get(c["seq"])})
            out.append(m)
        return out

    want_all = expected_keys(cols, backends, a.workloads, a.repeat)
    incidents = b.options.setdefault("vm_incidents", [])
    tag = "host kernel: " if on_host else ""
    boot_word = "pass" if on_host else "boot"
    cells = boot([], 0)
    attempt = 0
    # A guest that stopped early (a kernel oops, a timeout) or a script that
    # gave up leaves cells without a result: run those again, twice at most.
    for _ in range(2):
        lost = missing_keys(want_all, cells)
        if not lost:
            break
        sfx = f".a{attempt}" if attempt else ""
        why = guest_stop_reason(os.path.join(rawvm, f"{out_name}{sfx}.log"),
                                marks=() if on_host else STOP_MARKS)
        incidents.append(f"{tag}{boot_word} {attempt}: {'the script' if on_host else 'the guest'} "
                         f"stopped with {len(lost)} cells to go (next: {lost[0]}): {why}")
        attempt += 1
        log(f"{label}: {len(lost)} cells gave no result ({why}): running them again ({boot_word} {attempt})")
        cells += boot(lost, attempt)
    retry = a.noisy_cores > 0 and a.noisy_retries > 0
    for _ in range(a.noisy_retries if retry else 0):
        want = noisy_keys(cells, a.noisy_cores)
        if not want:
            break
        attempt += 1
        log(f"{label}: {len(want)} cells ran while other processes used more than "
            f"{a.noisy_cores} cores: running them again ({boot_word} {attempt})")
        cells += boot(want, attempt)
    lost = missing_keys(want_all, cells)
    if lost:
        incidents.append(f"{tag}{len(lost)} cells have no result after {attempt + 1} "
                         f"{'passes' if on_host else 'boots'}: " + " ".join(lost[:8]) + (" ..." if len(lost) > 8 else ""))
    mark_attempts(cells, a.noisy_cores)
    for p in daemons.values():
        b.stop(p)
    for p in files + (list(host_files.values()) if on_host else []):
        if os.path.exists(p):
            os.unlink(p)
    b.cells += cells
    b.save()
    log(f"{label}: {len(cells)} cells, {sum(1 for c in cells if c['discarded'])} superseded by reruns")


def expected_keys(cols, backends, workloads, reps):
    """Every cell one run of bench/kernel-paths.sh runs (cell_key words):
    null_blk under the backend 'any', every other column under each backend."""
    keys = []
    for rep in range(1, reps + 1):
        for b in ["any"] + list(backends):
            for col in cols:
                if col.endswith("/null_blk") != (b == "any"):
                    continue
                keys += [f"{b}:{col}:{wl}:{rep}" for wl in workloads]
    return keys


def missing_keys(want, cells):
    """The cells of `want` (cell_key words, in order) no boot has a result for."""
    have = {cell_key(c) for c in cells}
    return [k for k in want if k not in have]


STOP_MARKS = ("Kernel panic", "Oops:", "BUG:", "watchdog:", "timed out", "Out of memory")


def guest_stop_reason(console, marks=STOP_MARKS):
    """The first line of the guest's console (or the script's output on the
    host) that says why it stopped (a panic, an oops, a timeout; else the
    first failed check), without the timestamp; or a plain 'no reason on
    the console'."""
    try:
        with open(console, errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        lines = []
    for want in (marks, ("FAIL: ",)):
        for line in lines:
            if any(m in line for m in want):
                line = line.strip()
                if line.startswith("[") and "]" in line:
                    line = line[line.index("]") + 1:].strip()
                return line[:160]
    return "no reason on the console"


def noisy_keys(cells, limit):
    """The cells (cell_key words) none of whose attempts ran with others
    under `limit` cores, sorted."""
    best = {}
    for c in cells:
        k = cell_key(c)
        f = c.get("foreign_cores")
        f = 0.0 if f is None else f
        best[k] = min(best.get(k, f), f)
    return sorted(k for k, f in best.items() if f > limit)


def mark_attempts(cells, limit):
    """Of each cell's attempts, the least noisy counts (the others are
    discarded, as on the host); noisy marks those over the limit."""
    groups = {}
    for c in cells:
        groups.setdefault(cell_key(c), []).append(c)
    for cs in groups.values():
        keep = min(cs, key=lambda x: (x.get("foreign_cores") or 0.0, x["attempt"]))
        for c in cs:
            c["discarded"] = c is not keep
            c["noisy"] = limit > 0 and (c.get("foreign_cores") or 0.0) > limit
