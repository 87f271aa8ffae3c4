#!/usr/bin/python3
"""Check a bench/run results folder for completeness (the bench smoke
test): every requested backend has its tables, every table has every
requested column and every workload row, every cell of the IOPS tables
holds a figure, the CSV has a row per cell, the raw fio JSON sits next to
its command line, blkgw's manifests are kept, and the plots exist. It never
looks at how fast anything was.

    check_report.py OUT_DIR [--no-plots]
"""

import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def main():
    out = sys.argv[1]
    plots = "--no-plots" not in sys.argv
    errors = []
    doc = json.load(open(os.path.join(out, "results.json")))
    opts, cells = doc["options"], doc["cells"]
    md = open(os.path.join(out, "results.md")).read()
    for b in opts["backends"]:
        sec = md.split(f"### Backend: {b}\n", 1)
        if len(sec) != 2:
            errors.append(f"no section for backend {b}")
            continue
        sec = sec[1].split("### Backend:", 1)[0]
        for key, title, unit in H.METRICS:
            head = f"| {title}{' (' + unit + ')' if unit else ''} |"
            lines = sec.splitlines()
            idx = [i for i, x in enumerate(lines) if x.startswith(head)]
            if not idx:
                errors.append(f"{b}: no {title} table")
                continue
            # host and VM columns are in separate tables
            allh = set()
            for i0 in idx:
                hcells = [x.strip() for x in lines[i0].strip("|").split("|")]
                allh |= set(hcells)
                rows = {}
                for x in lines[i0 + 2:]:
                    if not x.startswith("|"):
                        break
                    r = [y.strip() for y in x.strip("|").split("|")]
                    if len(r) != len(hcells):
                        errors.append(f"{b}: {title}: row '{r[0]}' has {len(r)} cells, "
                                      f"header {len(hcells)}")
                    rows[r[0]] = r
                for w in opts["workloads"]:
                    label = H.WORKLOADS[w][3]
                    if label not in rows:
                        errors.append(f"{b}: {title} table lacks row '{label}'")
                    elif key == "iops":
                        for c, v in zip(hcells[1:], rows[label][1:]):
                            if v == "-":
                                errors.append(f"{b}: {label}: no IOPS for '{c}'")
            for c in opts["columns"]:
                if H.heading(c) not in allh:
                    errors.append(f"{b}: {title} tables lack column '{H.heading(c)}'")
        wheres = {H.column(c)["where"] for c in opts["columns"]}
        for where in sorted(wheres) if plots else []:
            wl = set(opts["workloads"])
            need = {"iops-qd": any(w.startswith("randread-4k-") for w in wl),
                    "latency": "randread-4k-qd1" in wl,
                    "cpu": bool(wl & {"randread-4k-qd128", "randwrite-4k-qd128"})}
            for name in [n for n, v in need.items() if v]:
                for ext in ("svg", "png"):
                    p = os.path.join(out, "plots", f"{b}-{where}-{name}.{ext}")
                    if not os.path.getsize(p) if os.path.exists(p) else True:
                        errors.append(f"missing or empty plot {p}")
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    if len(rows) != len(cells):
        errors.append(f"results.csv has {len(rows)} rows for {len(cells)} cells")
    for c in cells:
        j = os.path.join(out, c["fio_json"])
        for p in (j, j + ".cmd"):
            if not os.path.exists(p):
                errors.append(f"missing {p}")
    for c in cells:
        col = H.column(c["column"])
        d = os.path.dirname(os.path.join(out, c["fio_json"]))
        if col["server"] == "blkgw" and col["path"] != "vhost-guest" and os.path.isdir(d) and \
                not any(f.endswith("manifest.yaml") for f in os.listdir(d)):
            errors.append(f"no blkgw manifest in {d}")
    for c in cells:
        if c["column"].endswith("/vhost-guest"):
            # raw/vm/BACKEND/COLUMN/x.json -> raw/vm/host-daemons
            d = os.path.join(out, os.path.dirname(os.path.dirname(os.path.dirname(
                c["fio_json"]))), "host-daemons")
            if not os.path.exists(os.path.join(d, "manifest.yaml")):
                errors.append(f"no {d}/manifest.yaml (the VM's vhost-user-blk daemons)")
            break
    if not os.path.exists(os.path.join(out, "summary.csv")):
        errors.append("no summary.csv")
    for e in errors:
        print(f"check_report: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"check_report: {out}: {len(opts['backends'])} backends, {len(opts['columns'])} "
          f"columns, {len(opts['workloads'])} workloads, {len(cells)} cells: complete")


if __name__ == "__main__":
    main()
