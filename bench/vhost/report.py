#!/usr/bin/python3
"""Summarise bench/vhost/run.sh's results.csv: median over the repetitions,
the spread (min-max), and blkgw's ratio to qemu-storage-daemon's.

    report.py results.csv
"""
import csv
import statistics
import sys
from collections import defaultdict


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
          f"   spread (IOPS min-max)")
    keys = sorted({(b, j) for b, j, _ in rows})
    for b, j in keys:
        for d in ("blkgw", "qsd"):
            i = med((b, j, d), "iops")
            lat = med((b, j, d), "lat_us")
            c = med((b, j, d), "cpu_us_per_req")
            lat_s = "-" if lat[0] != lat[0] else f"{lat[0]:.1f}"
            print(f"{b:8} {j:15} {d:6} {i[0]:10.0f} {lat_s:>8} {c[0]:10.2f}   {i[1]:.0f}-{i[2]:.0f}")
        bi, qi = med((b, j, "blkgw"), "iops")[0], med((b, j, "qsd"), "iops")[0]
        bl, ql = med((b, j, "blkgw"), "lat_us")[0], med((b, j, "qsd"), "lat_us")[0]
        bc, qc = med((b, j, "blkgw"), "cpu_us_per_req")[0], med((b, j, "qsd"), "cpu_us_per_req")[0]
        print(f"{'':8} {'':15} {'ratio':6} {ratio(bi, qi, 10)} {ratio(bl, ql, 7)} {ratio(bc, qc, 9)}")
    busy = [int(r["busy_pct_before"]) for v in rows.values() for r in v]
    if min(busy) < 0:
        print("machine load before each run: not checked (--no-wait)")
    else:
        print(f"machine busy before each run: median {statistics.median(busy)}%, max {max(busy)}%")


if __name__ == "__main__":
    main()
