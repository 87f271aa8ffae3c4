"""The pure half of bench/run: workloads, columns, fio JSON and /proc
parsing, aggregation over repeats, pairwise ratios, markdown tables, CSV and
gnuplot scripts. Nothing here starts a process or reads the clock, so
bench/lib/test_harness.py tests all of it without a server.

Standard library only (runs under Debian's /usr/bin/python3).
"""

import csv
import io
import json
import math
import statistics

# ---------------------------------------------------------------------------
# Workloads: rows of every table, in this order.
# name -> (fio rw, block size, iodepth, label as in Vitastor's table)
WORKLOADS = {
    "randread-4k-qd1": ("randread", "4k", 1, "Random read 4k T1Q1"),
    "randwrite-4k-qd1": ("randwrite", "4k", 1, "Random write 4k T1Q1"),
    "randread-4k-qd128": ("randread", "4k", 128, "Random read 4k T1Q128"),
    "randwrite-4k-qd128": ("randwrite", "4k", 128, "Random write 4k T1Q128"),
    "read-1m-qd8": ("read", "1m", 8, "Linear read 1M T1Q8"),
    "write-1m-qd8": ("write", "1m", 8, "Linear write 1M T1Q8"),
    "randread-512k-qd8": ("randread", "512k", 8, "Random read 512k T1Q8"),
    "randwrite-512k-qd8": ("randwrite", "512k", 8, "Random write 512k T1Q8"),
    # The queue-depth sweep of the IOPS-vs-QD plot (not in the default set).
    "randread-4k-qd4": ("randread", "4k", 4, "Random read 4k T1Q4"),
    "randread-4k-qd16": ("randread", "4k", 16, "Random read 4k T1Q16"),
    "randread-4k-qd32": ("randread", "4k", 32, "Random read 4k T1Q32"),
}
DEFAULT_WORKLOADS = [
    "randread-4k-qd1", "randwrite-4k-qd1", "randread-4k-qd128",
    "randwrite-4k-qd128", "read-1m-qd8", "write-1m-qd8",
    "randread-512k-qd8", "randwrite-512k-qd8",
]
QUICK_WORKLOADS = ["randread-4k-qd1", "randwrite-4k-qd128", "read-1m-qd8",
                   "randread-512k-qd8"]
SWEEP_WORKLOADS = ["randread-4k-qd4", "randread-4k-qd16", "randread-4k-qd32"]

BACKENDS = ["null", "memory", "file"]

# ---------------------------------------------------------------------------
# Columns: (id, server, path, heading, where). "where" is host or tcg (the
# QEMU TCG test VM). The order is the tables' column order: the baseline,
# blkgw's paths, the peers, the ceilings. The kernel paths (block devices
# fio opens with io_uring and O_DIRECT, bench/kernel-paths.sh) run on the
# host as kernel/... when its kernel has them, or in the VM as vm/...
COLUMNS = [
    ("direct", "direct", "direct", "direct", "host"),
    ("blkgw/nbd-unix", "blkgw", "nbd-unix", "blkgw NBD unix", "host"),
    ("blkgw/nbd-tcp", "blkgw", "nbd-tcp", "blkgw NBD TCP", "host"),
    ("blkgw/vhost", "blkgw", "vhost", "blkgw vhost-user-blk", "host"),
    ("kernel/blkgw/nbd-attach", "blkgw", "nbd-attach", "blkgw NBD attached", "host"),
    ("kernel/blkgw/ublk", "blkgw", "ublk", "blkgw ublk", "host"),
    ("kernel/blkgw/vduse", "blkgw", "vduse", "blkgw VDUSE", "host"),
    ("kernel/blkgw/nbd-client", "blkgw", "nbd-client", "nbd-client + blkgw", "host"),
    ("qsd/nbd-unix", "qsd", "nbd-unix", "qsd NBD unix", "host"),
    ("qsd/nbd-tcp", "qsd", "nbd-tcp", "qsd NBD TCP", "host"),
    ("qsd/vhost", "qsd", "vhost", "qsd vhost-user-blk", "host"),
    ("kernel/qsd/vduse", "qsd", "vduse", "qsd vduse-blk", "host"),
    ("kernel/qsd/nbd-client", "qsd", "nbd-client", "nbd-client + qsd", "host"),
    ("nbdkit/nbd-unix", "nbdkit", "nbd-unix", "nbdkit NBD unix", "host"),
    ("nbdkit/nbd-tcp", "nbdkit", "nbd-tcp", "nbdkit NBD TCP", "host"),
    ("floor/nbd-unix", "floor", "nbd-unix", "ceiling: do-nothing NBD", "host"),
    ("kernel/null_blk", "null_blk", "null_blk", "ceiling: null_blk", "host"),
    # In the test VM (TCG): kernel block devices, fio with io_uring direct.
    ("vm/direct", "direct", "direct", "direct", "tcg"),
    ("vm/blkgw/nbd-attach", "blkgw", "nbd-attach", "blkgw NBD attached", "tcg"),
    ("vm/blkgw/ublk", "blkgw", "ublk", "blkgw ublk", "tcg"),
    ("vm/blkgw/vduse", "blkgw", "vduse", "blkgw VDUSE", "tcg"),
    ("vm/blkgw/vhost-guest", "blkgw", "vhost-guest", "blkgw vhost-user-blk guest", "tcg"),
    ("vm/blkgw/nbd-client", "blkgw", "nbd-client", "nbd-client + blkgw", "tcg"),
    ("vm/qsd/vduse", "qsd", "vduse", "qsd vduse-blk", "tcg"),
    ("vm/qsd/vhost-guest", "qsd", "vhost-guest", "qsd vhost-user-blk guest", "tcg"),
    ("vm/qsd/nbd-client", "qsd", "nbd-client", "nbd-client + qsd", "tcg"),
    ("vm/null_blk", "null_blk", "null_blk", "ceiling: null_blk", "tcg"),
]
COLUMN_IDS = [c[0] for c in COLUMNS]
# On the host: the userspace paths bench/run drives itself, and the kernel
# paths (kernel/...) bench/kernel-paths.sh runs there.
KERNEL_COLUMNS = [c[0] for c in COLUMNS if c[0].startswith("kernel/")]
HOST_COLUMNS = [c[0] for c in COLUMNS if c[4] == "host" and c[0] not in KERNEL_COLUMNS]
VM_COLUMNS = [c[0] for c in COLUMNS if c[4] == "tcg"]
CEILINGS = {"floor/nbd-unix", "vm/null_blk", "kernel/null_blk"}
PEERS = {"qsd", "nbdkit"}


def column(cid):
    for c in COLUMNS:
        if c[0] == cid:
            return {"id": c[0], "server": c[1], "path": c[2], "heading": c[3],
                    "where": c[4]}
    raise KeyError(cid)


# ---------------------------------------------------------------------------
# Where the kernel paths run: on the host when its kernel has them, else in
# the test VM. bench/run probes with `blkgw check` (blkgw's own transport
# probes) and these decide.

def kernel_twin(cid):
    """kernel/X <-> vm/X for the paths that can run in both places; None for
    the others (vm/direct, the vhost-user-blk guest disks, host columns)."""
    if cid.startswith("kernel/"):
        return "vm/" + cid[len("kernel/"):]
    if cid.startswith("vm/") and "kernel/" + cid[len("vm/"):] in KERNEL_COLUMNS:
        return "kernel/" + cid[len("vm/"):]
    return None


# What each kernel column needs besides its transport's kernel module: the
# probe's transport (blkgw check) or module, and the programs.
KERNEL_NEEDS = {
    "kernel/blkgw/nbd-attach": ("nbd-attach", []),
    "kernel/blkgw/ublk": ("ublk", []),
    "kernel/blkgw/vduse": ("vduse", []),
    "kernel/blkgw/nbd-client": ("nbd-attach", ["nbd-client"]),
    "kernel/qsd/vduse": ("vduse", ["qemu-storage-daemon", "vdpa"]),
    "kernel/qsd/nbd-client": ("nbd-attach", ["qemu-storage-daemon", "nbd-client"]),
    "kernel/null_blk": ("null_blk", []),
}


def check_reason(rc, stderr):
    """`blkgw check` on a one-export manifest -> None when its transport
    can serve here, else why not (the probe's words)."""
    if rc == 0:
        return None
    for line in stderr.splitlines():
        if "no transport could start: " in line:
            why = line.split("no transport could start: ", 1)[1]
            # "TRANSPORT: reason"
            return why.split(": ", 1)[1] if ": " in why else why
    lines = [x for x in stderr.splitlines() if x.strip()]
    return lines[0] if lines else f"blkgw check exited {rc}"


def kernel_host_reasons(probes, have, root):
    """probes: {probe name: None or why not} (the transports from blkgw
    check, null_blk from /sys/module); have: programs found on PATH; root:
    whether bench/run runs as root. -> {kernel column: None (runs here) or
    why not}."""
    out = {}
    for cid, (probe, progs) in KERNEL_NEEDS.items():
        missing = [p for p in progs if p not in have]
        if not root:
            out[cid] = "needs root"
        elif probes.get(probe, "not probed"):
            out[cid] = probes.get(probe, "not probed")
        elif missing:
            out[cid] = "no " + ", ".join(missing) + " on PATH"
        else:
            out[cid] = None
    return out


def place_kernel_paths(mode, reasons, vm):
    """The default columns' kernel paths: mode auto, host or vm; reasons
    from kernel_host_reasons (ignored for mode vm); vm: whether the test VM
    runs (--vm). -> (kernel/... columns for the host, vm/... columns for the
    VM, errors, notes). auto: each path on the host when its kernel has it,
    else in the VM (with --vm), else nowhere (a note says why). host: every
    path on the host, an error for each it cannot run there. vm: in the VM
    only (with --vm). The null_blk ceiling goes wherever a path goes (the
    VM keeps its own for vm/direct and the vhost-user-blk guest disks); a
    host without null_blk only loses the ceiling."""
    here, there, errors, notes = [], [], [], []
    for cid in KERNEL_COLUMNS:
        if cid == "kernel/null_blk":
            continue
        why = None if mode == "vm" else reasons.get(cid, "not probed")
        if mode == "host":
            if why:
                errors.append(f"{cid}: {why}")
            else:
                here.append(cid)
        elif mode == "auto" and not why:
            here.append(cid)
        elif vm:
            there.append(kernel_twin(cid))
            if mode == "auto":
                notes.append(f"{kernel_twin(cid)} in the test VM: not on this host ({why})")
        else:
            notes.append(f"{cid} not run: "
                         + (f"not on this host ({why}); " if mode == "auto" else "")
                         + "the test VM runs it (--vm, or the column group vm)")
    if here:
        why = reasons.get("kernel/null_blk", "not probed")
        if why:
            notes.append(f"kernel/null_blk not run: {why} (the host paths have no ceiling)")
        else:
            here.append("kernel/null_blk")
    if vm:
        there.append("vm/null_blk")
    return here, there, errors, notes


def heading(cid):
    c = column(cid)
    return c["heading"] + (" (TCG)" if c["where"] == "tcg" else "")


def fio_workload_args(name, numjobs=1):
    """fio options of one workload, as a list of --opt=value."""
    rw, bs, qd, _ = WORKLOADS[name]
    a = [f"--name={name}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}",
         "--norandommap=1", "--randrepeat=0"]
    if numjobs > 1:
        a += [f"--numjobs={numjobs}", "--group_reporting=1"]
    return a


def parse_list(text, allowed, what):
    """'a,b' -> ['a', 'b'], each checked against allowed (ValueError)."""
    out = []
    for x in text.split(","):
        x = x.strip()
        if not x:
            continue
        if x not in allowed:
            raise ValueError(f"unknown {what} '{x}' (known: {', '.join(allowed)})")
        if x not in out:
            out.append(x)
    if not out:
        raise ValueError(f"no {what} given")
    return out


# ---------------------------------------------------------------------------
# Parsing.

def parse_proc_stat(text):
    """One /proc/PID/stat line -> utime + stime in clock ticks. The command
    name may hold spaces and parentheses: fields are counted after the last
    ')'."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]) + int(rest[12])


def parse_sys_stat(text):
    """/proc/stat -> (busy, total) clock ticks over all CPUs; idle and iowait
    are not busy."""
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            v = [int(x) for x in f[1:9]]
            user, nice, system, idle, iowait, irq, softirq, steal = v
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    raise ValueError("no cpu line in /proc/stat")


def _pct(clat, key):
    p = (clat or {}).get("percentile") or {}
    for k, v in p.items():
        if abs(float(k) - key) < 1e-9:
            return v / 1000.0
    return None


def parse_fio(doc):
    """fio --output-format=json (a dict) -> one cell's metrics, summed over
    jobs and directions: ios, iops, bw (bytes/s), runtime_s, latency in us
    (mean, p50, p99, p99.9 of completion latency, from the busiest
    direction), client CPU seconds. Missing latencies are None."""
    ios = 0
    iops = 0.0
    bw = 0.0
    client_cpu = 0.0
    runtime_s = 0.0
    best = None  # (ios, dir dict) of the direction with most requests
    for job in doc.get("jobs", []):
        job_rt = 0.0
        for d in ("read", "write", "trim"):
            x = job.get(d) or {}
            n = int(x.get("total_ios", 0))
            ios += n
            iops += float(x.get("iops", 0.0))
            bw += float(x.get("bw_bytes", x.get("bw", 0) * 1024))
            job_rt = max(job_rt, float(x.get("runtime", 0)) / 1000.0)
            if n and (best is None or n > best[0]):
                best = (n, x)
        if not job_rt:
            job_rt = float(job.get("job_runtime", 0)) / 1000.0
        runtime_s = max(runtime_s, job_rt)
        client_cpu += (float(job.get("usr_cpu", 0)) + float(job.get("sys_cpu", 0))) / 100.0 \
            * float(job.get("job_runtime", job_rt * 1000)) / 1000.0
    lat = {"lat_mean_us": None, "lat_p50_us": None, "lat_p99_us": None,
           "lat_p999_us": None}
    if best:
        x = best[1]
        clat = x.get("clat_ns") or {}
        total = x.get("lat_ns") or {}
        if total.get("mean"):
            lat["lat_mean_us"] = total["mean"] / 1000.0
        lat["lat_p50_us"] = _pct(clat, 50.0)
        lat["lat_p99_us"] = _pct(clat, 99.0)
        lat["lat_p999_us"] = _pct(clat, 99.9)
    out = {"ios": ios, "iops": iops, "bw_bytes": bw, "runtime_s": runtime_s,
           "client_cpu_s": client_cpu}
    out.update(lat)
    return out


def cell_metrics(fio, server_ticks, hz, sys0=None, sys1=None, wall_s=None):
    """Metrics of one measured cell: fio's, plus the server's CPU per request
    (us) from its /proc ticks over the run and the cores other processes
    used meanwhile (machine busy - server - fio), when /proc/stat snapshots
    are given."""
    m = dict(fio)
    n = fio["ios"]
    m["server_cpu_us_per_req"] = (server_ticks / hz * 1e6 / n
                                  if server_ticks is not None and n else None)
    m["client_cpu_us_per_req"] = fio["client_cpu_s"] * 1e6 / n if n else None
    m["foreign_cores"] = None
    if sys0 and sys1 and wall_s:
        busy = (sys1[0] - sys0[0]) / hz
        other = busy - (server_ticks or 0) / hz - fio["client_cpu_s"]
        m["foreign_cores"] = max(0.0, other / wall_s)
    return m


# ---------------------------------------------------------------------------
# Aggregation.

METRICS = [
    # key, heading, unit for the table
    ("iops", "IOPS", ""),
    ("bw_bytes", "bandwidth", "MiB/s"),
    ("lat_mean_us", "mean latency", "us"),
    ("lat_p50_us", "p50 latency", "us"),
    ("lat_p99_us", "p99 latency", "us"),
    ("lat_p999_us", "p99.9 latency", "us"),
    ("server_cpu_us_per_req", "server CPU per request", "us"),
]


def spread(values):
    """[v...] -> (min, median, max) of the values that are not None, or
    (None, None, None)."""
    v = [x for x in values if x is not None]
    if not v:
        return (None, None, None)
    return (min(v), statistics.median(v), max(v))


def kept(cells):
    """The cells a summary counts: not superseded by a rerun."""
    return [c for c in cells if not c.get("discarded")]


def summarize(cells):
    """cells (dicts with backend, workload, column, rep and the metrics) ->
    {(backend, workload, column): {metric: (min, median, max), 'n': reps}}."""
    groups = {}
    for c in kept(cells):
        groups.setdefault((c["backend"], c["workload"], c["column"]), []).append(c)
    out = {}
    for k, cs in groups.items():
        s = {"n": len(cs)}
        for key, _, _ in METRICS + [("client_cpu_us_per_req", "", ""),
                                    ("foreign_cores", "", "")]:
            s[key] = spread([c.get(key) for c in cs])
        out[k] = s
    return out


def pair_ratios(cells, backend, workload, a, b, metric):
    """blkgw-vs-peer ratios taken pair by pair: for every repeat in which
    both column a and column b ran, a/b of the metric; -> (min, median, max)
    or None."""
    by = {}
    for c in kept(cells):
        if c["backend"] == backend and c["workload"] == workload and \
                c["column"] in (a, b) and c.get(metric):
            by.setdefault(c["rep"], {})[c["column"]] = c[metric]
    r = [v[a] / v[b] for v in by.values() if a in v and b in v and v[b]]
    return spread(r) if r else None


def ratio_pairs(columns):
    """(blkgw column, peer column) pairs over the same path among columns;
    ceilings are compared to in a separate table."""
    out = []
    for a in columns:
        ca = column(a)
        if ca["server"] != "blkgw":
            continue
        for b in columns:
            cb = column(b)
            if cb["server"] in PEERS and cb["path"] == ca["path"] and cb["where"] == ca["where"]:
                out.append((a, b))
    return out


def ceiling_pairs(columns):
    """(column, ceiling) pairs: host NBD paths against the do-nothing NBD
    server, block devices against null_blk in the same place."""
    out = []
    for a in columns:
        ca = column(a)
        if a in CEILINGS or ca["server"] == "direct":
            continue
        if a in KERNEL_COLUMNS:
            if "kernel/null_blk" in columns:
                out.append((a, "kernel/null_blk"))
        elif ca["where"] == "host" and ca["path"].startswith("nbd") and "floor/nbd-unix" in columns:
            out.append((a, "floor/nbd-unix"))
        if ca["where"] == "tcg" and "vm/null_blk" in columns:
            out.append((a, "vm/null_blk"))
    return out


# ---------------------------------------------------------------------------
# Formatting.

def fmt_num(v, key="iops"):
    """A metric value for a table: IOPS as 12.3k / 1.23M, bandwidth in MiB/s,
    latencies and CPU in us with 3 significant digits; None -> '-'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "bw_bytes":
        v = v / 1048576.0
    if key == "iops":
        if v >= 1e6:
            return f"{v / 1e6:.2f}M"
        if v >= 1e4:
            return f"{v / 1e3:.0f}k"
        if v >= 1e3:
            return f"{v / 1e3:.1f}k"
        return f"{v:.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_cell(s, key, with_spread):
    if s is None:
        return "-"
    lo, med, hi = s[key]
    if med is None:
        return "-"
    t = fmt_num(med, key)
    if with_spread and lo is not None and s["n"] > 1:
        t += f" ({fmt_num(lo, key)}-{fmt_num(hi, key)})"
    return t


def fmt_ratio(r):
    if r is None or r[1] is None:
        return "-"
    lo, med, hi = r
    if lo == hi:
        return f"{med:.2f}x"
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def present(cells, backend):
    """(workloads, columns) that have cells for this backend, in table
    order; ceilings (backend-independent) count for every backend."""
    ws = {c["workload"] for c in cells if c["backend"] in (backend, "any")}
    cs = {c["column"] for c in cells if c["backend"] in (backend, "any")}
    return ([w for w in WORKLOADS if w in ws], [c for c in COLUMN_IDS if c in cs])


def for_backend(cells, backend):
    """The backend's cells, with the ceilings' (backend 'any') copied in."""
    out = []
    for c in cells:
        if c["backend"] == backend:
            out.append(c)
        elif c["backend"] == "any":
            d = dict(c)
            d["backend"] = backend
            out.append(d)
    return out


def backend_tables(cells, backend, columns=None, metrics=None):
    """Markdown for one backend: one table per metric in Vitastor's layout
    (rows: workloads; columns: direct, blkgw's paths, the peers, the
    ceilings), then blkgw's ratios to each peer and each path's fraction of
    its ceiling. columns forces the column set (every requested column is
    shown, '-' where nothing ran)."""
    bc = for_backend(cells, backend)
    ws, cs = present(bc, backend)
    if columns is not None:
        cs = [c for c in COLUMN_IDS if c in columns]
    groups = [(w, [c for c in cs if column(c)["where"] == w]) for w in ("host", "tcg")]
    groups = [(w, g) for w, g in groups if g]
    if len(groups) < 2:
        return _backend_tables(bc, backend, ws, cs, "", metrics)
    return "\n\n".join(
        _backend_tables(bc, backend, ws, g, ", host" if w == "host" else ", test VM (TCG)",
                        metrics)
        for w, g in groups)


def _backend_tables(bc, backend, ws, cs, where, metrics=None):
    summ = summarize(bc)
    parts = []
    for key, title, unit in METRICS:
        if metrics is not None and key not in metrics:
            continue
        head = [f"{title}{' (' + unit + ')' if unit else ''}"] + [heading(c) for c in cs]
        rows = []
        for w in ws:
            rows.append([WORKLOADS[w][3]] + [
                fmt_cell(summ.get((backend, w, c)), key, key == "iops") for c in cs])
        parts.append(f"#### {backend}{where}: {title}\n\n" + md_table(head, rows))
    pairs = ratio_pairs(cs)
    if pairs:
        head = ["blkgw / peer, pair by pair"] + [
            f"{heading(a)} / {column(b)['server']}: {m}" for a, b in pairs
            for m in ("IOPS", "CPU/req")]
        rows = []
        for w in ws:
            row = [WORKLOADS[w][3]]
            for a, b in pairs:
                row.append(fmt_ratio(pair_ratios(bc, backend, w, a, b, "iops")))
                row.append(fmt_ratio(pair_ratios(bc, backend, w, a, b, "server_cpu_us_per_req")))
            rows.append(row)
        parts.append(f"#### {backend}{where}: ratios (median of per-repeat ratios, min-max)\n\n"
                     + md_table(head, rows))
    cp = ceiling_pairs(cs)
    if cp:
        head = ["IOPS as a fraction of the ceiling"] + [
            f"{heading(a)} / {column(b)['heading'].replace('ceiling: ', '')}" for a, b in cp]
        rows = [[WORKLOADS[w][3]] + [fmt_ratio(pair_ratios(bc, backend, w, a, b, "iops"))
                                     for a, b in cp] for w in ws]
        parts.append(f"#### {backend}{where}: fraction of the ceiling\n\n" + md_table(head, rows))
    return "\n\n".join(parts)


CSV_FIELDS = ["backend", "workload", "column", "where", "rep", "attempt",
              "discarded", "iops", "bw_bytes", "lat_mean_us", "lat_p50_us",
              "lat_p99_us", "lat_p999_us", "server_cpu_us_per_req",
              "client_cpu_us_per_req", "foreign_cores", "ios", "runtime_s",
              "fio_json"]


def cells_csv(cells):
    f = io.StringIO()
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for c in cells:
        d = dict(c)
        d["where"] = column(c["column"])["where"]
        w.writerow({k: ("" if d.get(k) is None else d.get(k)) for k in CSV_FIELDS})
    return f.getvalue()


def summary_csv(cells, backends):
    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    keys = [k for k, _, _ in METRICS] + ["client_cpu_us_per_req"]
    w.writerow(["backend", "workload", "column", "where", "reps"] +
               [f"{k}_{s}" for k in keys for s in ("min", "median", "max")])
    for b in backends:
        bc = for_backend(cells, b)
        summ = summarize(bc)
        ws, cs = present(bc, b)
        for wl in ws:
            for c in cs:
                s = summ.get((b, wl, c))
                if not s:
                    continue
                row = [b, wl, c, column(c)["where"], s["n"]]
                for k in keys:
                    row += ["" if x is None else f"{x:.6g}" for x in s[k]]
                w.writerow(row)
    return f.getvalue()


# ---------------------------------------------------------------------------
# Plots: gnuplot scripts over small data files.

def _q(s):
    return s.replace('"', "'")


def plot_data(cells, backend, where=None):
    """-> {name: (data text, gnuplot body)} for one backend: IOPS vs queue
    depth (4k random read), latency percentiles (4k random read QD1) and
    server CPU per request (4k random read and write QD128), per path;
    where (host or tcg) keeps only those columns."""
    bc = for_backend(cells, backend)
    summ = summarize(bc)
    ws, cs = present(bc, backend)
    bkey = backend
    if where:
        cs = [c for c in cs if column(c)["where"] == where]
        backend = f"{backend}, {'host' if where == 'host' else 'test VM (TCG)'}"
    out = {}
    qds = sorted({WORKLOADS[w][2] for w in ws if WORKLOADS[w][0] == "randread" and
                  WORKLOADS[w][1] == "4k"})
    if qds:
        lines = ["qd " + " ".join(f'"{_q(heading(c))}"' for c in cs)]
        for qd in qds:
            w = f"randread-4k-qd{qd}"
            row = [str(qd)]
            for c in cs:
                s = summ.get((bkey, w, c))
                v = s["iops"][1] if s else None
                row.append("NaN" if v is None else f"{v:.0f}")
            lines.append(" ".join(row))
        body = ("set logscale x 2\nset xrange [0.7:180]\nset xlabel 'queue depth'\nset ylabel 'IOPS'\n"
                "set key outside right\n"
                f"set title '{backend}: 4k random read, IOPS vs queue depth'\n"
                "plot " + ", ".join(
                    f"DATA using 1:{i + 2} with linespoints title columnhead({i + 2})"
                    for i in range(len(cs))))
        if any("NaN" != v for x in lines[1:] for v in x.split()[1:]):
            out["iops-qd"] = ("\n".join(lines) + "\n", body)
    w = "randread-4k-qd1"
    if w in ws:
        lines = ["# path p50 p99 p99.9"]
        for c in cs:
            s = summ.get((bkey, w, c))
            if not s:
                continue
            v = [s[k][1] for k in ("lat_p50_us", "lat_p99_us", "lat_p999_us")]
            lines.append(f'"{_q(heading(c))}" ' + " ".join(
                "NaN" if x is None else f"{x:.3f}" for x in v))
        body = ("set style data histograms\nset style histogram clustered\n"
                "set style fill solid 0.8\nset ylabel 'latency (us)'\nset logscale y\n"
                "set xtics rotate by -30\nset key top left\n"
                f"set title '{backend}: 4k random read QD1, latency percentiles'\n"
                "plot DATA using 2:xtic(1) title 'p50', '' using 3 title 'p99', "
                "'' using 4 title 'p99.9'")
        if len(lines) > 1:
            out["latency"] = ("\n".join(lines) + "\n", body)
    cw = [x for x in ("randread-4k-qd128", "randwrite-4k-qd128") if x in ws]
    if cw:
        lines = ["# path " + " ".join(cw)]
        for c in cs:
            v = []
            for x in cw:
                s = summ.get((bkey, x, c))
                v.append(s["server_cpu_us_per_req"][1] if s else None)
            if all(x is None for x in v):
                continue
            lines.append(f'"{_q(heading(c))}" ' + " ".join(
                "NaN" if x is None else f"{x:.3f}" for x in v))
        body = ("set style data histograms\nset style histogram clustered\n"
                "set style fill solid 0.8\nset ylabel 'server CPU per request (us)'\n"
                "set xtics rotate by -30\nset key top left\n"
                f"set title '{backend}: server CPU per request, QD128'\n"
                "plot " + ", ".join(
                    (f"DATA using {i + 2}:xtic(1)" if i == 0 else f"'' using {i + 2}")
                    + f" title '{x}'" for i, x in enumerate(cw)))
        if len(lines) > 1:
            out["cpu"] = ("\n".join(lines) + "\n", body)
    return out


def gnuplot_script(data_path, body, svg, png):
    return (f'DATA = "{data_path}"\n'
            "set terminal svg size 960,540 dynamic\n"
            f'set output "{svg}"\n'
            f"{body}\n"
            "set terminal pngcairo size 960,540\n"
            f'set output "{png}"\n'
            "replot\n")


def merge(docs):
    """Several results.json documents -> one: the cells of all, the first
    one's options and machine, with backends, columns and workloads the
    union (in table order) and the commands listed."""
    out = {"options": dict(docs[0]["options"]), "machine": docs[0]["machine"], "cells": []}
    for key, order in (("backends", BACKENDS), ("columns", COLUMN_IDS),
                       ("workloads", list(WORKLOADS))):
        have = set()
        for d in docs:
            have |= set(d["options"][key])
        out["options"][key] = [x for x in order if x in have]
    out["options"]["command"] = " ; ".join(d["options"]["command"] for d in docs)
    out["options"]["vm_incidents"] = [x for d in docs for x in d["options"].get("vm_incidents", [])]
    for d in docs:
        out["cells"] += d["cells"]
    return out
