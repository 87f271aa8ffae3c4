#!/usr/bin/python3
"""Summarise bench/vhost/run.sh's results.csv: median over the repetitions,
the spread (min-max, and max/min), and blkgw's ratio to
qemu-storage-daemon's; then, run by run, what blkgw's worker loops did per
request (context switches, kicks, polling slices that found work, sleeps,
held signals) and how strongly each moves with IOPS across the runs of a
cell, to see which mode a run ran in (issue 23); and the CPU-to-CPU
cache-line round trip before each run, against IOPS.

    report.py results.csv
"""
import csv
import statistics
import sys
from collections import defaultdict


LOOP_FIELDS = [("fio cs", "client_ctxsw_per_req"), ("ctxsw", "ctxsw_per_req"),
               ("kicks", "kicks_per_req"),
               ("polls", "polls_per_req"), ("found", "polls_found_per_req"),
               ("sleeps", "sleeps_per_req"), ("held", "held_per_req")]


def pearson(xs, ys):
    if len(xs) < 3:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sx = sum((x - mx) ** 2 for x in xs) ** 0.5
    sy = sum((y - my) ** 2 for y in ys) ** 0.5
    if not sx or not sy:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy)


def loops(rows):
    """blkgw's per-request loop counters, run by run, with each one's
    correlation with IOPS over the cell's runs (r; nan under 3 runs)."""
    cells = sorted(k for k in rows if k[2] == "blkgw")
    if not cells or "kicks_per_req" not in rows[cells[0]][0]:
        return
    print()
    print("blkgw's worker loops per request, run by run (status --json worker_loops)")
    print(f"{'backend':8} {'job':15} {'rep':>3} {'IOPS':>10} " +
          " ".join(f"{n:>7}" for n, _ in LOOP_FIELDS))
    for b, j, d in cells:
        runs = rows[(b, j, d)]
        for r in runs:
            vals = " ".join(f"{float(r[f]):7.3f}" if r.get(f, "") != "" else f"{'-':>7}"
                            for _, f in LOOP_FIELDS)
            print(f"{b:8} {j:15} {r['rep']:>3} {float(r['iops']):10.0f} {vals}")
        iops = [float(r["iops"]) for r in runs]
        cor = []
        for _, f in LOOP_FIELDS:
            v = [float(r[f]) if r.get(f, "") != "" else float("nan") for r in runs]
            c = pearson(v, iops) if all(x == x for x in v) else float("nan")
            cor.append(f"{c:7.2f}" if c == c else f"{'-':>7}")
        print(f"{'':8} {'':15} {'r':>3} {'vs IOPS':>10} " + " ".join(cor))


def pingpong(rows):
    """CPU 0 <-> CPU 1 cache-line round trip measured before each run
    (cpu-pingpong), per cell and daemon: its range, and how it moves with
    IOPS over the cell's runs."""
    have = [k for k, v in rows.items() if all(r.get("pingpong_ns", "") != "" for r in v)]
    if not have:
        return
    print()
    print("CPU 0 <-> CPU 1 cache-line round trip before each run (ns), and r against IOPS")
    for k in sorted(have):
        runs = rows[k]
        pp = [float(r["pingpong_ns"]) for r in runs]
        iops = [float(r["iops"]) for r in runs]
        c = pearson(pp, iops)
        print(f"{k[0]:8} {k[1]:15} {k[2]:6} {min(pp):7.0f}-{max(pp):<7.0f} r "
              + (f"{c:6.2f}" if c == c else "     -"))


def main():
    rows = defaultdict(list)
    with open(sys.argv[1]) as f:
        for r in csv.DictReader(f):
            rows[(r["backend"], r["job"], r["daemon"])].append(r)

    def med(key, field):
        # An empty field is a value fio did not measure (latency under
        # gtod_reduce): nan, printed as such.
        v = [float(r[field]) for r in rows.get(key, []) if r[field] != ""]
        return (statistics.median(v), min(v), max(v)) if v else (float("nan"),) * 3

    def ratio(a, b, width):
        r = a / b if b else float("nan")
        return f"{'-':>{width}} " if r != r else f"{r:{width}.2f}x"

    print(f"{'backend':8} {'job':15} {'daemon':6} {'IOPS':>10} {'lat us':>8} {'CPU us/req':>10}"
          f"   spread (IOPS min-max, max/min)")
    keys = sorted({(b, j) for b, j, _ in rows})
    for b, j in keys:
        for d in ("blkgw", "qsd"):
            i = med((b, j, d), "iops")
            lat = med((b, j, d), "lat_us")
            c = med((b, j, d), "cpu_us_per_req")
            lat_s = "-" if lat[0] != lat[0] else f"{lat[0]:.1f}"
            spread = f"{i[2] / i[1]:.2f}x" if i[1] else "-"
            print(f"{b:8} {j:15} {d:6} {i[0]:10.0f} {lat_s:>8} {c[0]:10.2f}   "
                  f"{i[1]:.0f}-{i[2]:.0f} {spread}")
        bi, qi = med((b, j, "blkgw"), "iops")[0], med((b, j, "qsd"), "iops")[0]
        bl, ql = med((b, j, "blkgw"), "lat_us")[0], med((b, j, "qsd"), "lat_us")[0]
        bc, qc = med((b, j, "blkgw"), "cpu_us_per_req")[0], med((b, j, "qsd"), "cpu_us_per_req")[0]
        print(f"{'':8} {'':15} {'ratio':6} {ratio(bi, qi, 10)} {ratio(bl, ql, 7)} {ratio(bc, qc, 9)}")
    loops(rows)
    pingpong(rows)
    busy = [int(r["busy_pct_before"]) for v in rows.values() for r in v]
    if min(busy) < 0:
        print("machine load before each run: not checked (--no-wait)")
    else:
        print(f"machine busy before each run: median {statistics.median(busy)}%, max {max(busy)}%")


if __name__ == "__main__":
    main()
