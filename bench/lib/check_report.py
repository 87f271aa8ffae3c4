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
            hcells = [x.strip() for x in lines[idx[0]].strip("|").split("|")]
            for c in opts["columns"]:
                if H.heading(c) not in hcells:
                    errors.append(f"{b}: {title} table lacks column '{H.heading(c)}'")
            rows = {}
            for x in lines[idx[0] + 2:]:
                if not x.startswith("|"):
                    break
                r = [y.strip() for y in x.strip("|").split("|")]
                if len(r) != len(hcells):
                    errors.append(f"{b}: {title}: row '{r[0]}' has {len(r)} cells, header {len(hcells)}")
                rows[r[0]] = r
            for w in opts["workloads"]:
                label = H.WORKLOADS[w][3]
                if label not in rows:
                    errors.append(f"{b}: {title} table lacks row '{label}'")
                elif key == "iops":
                    for c, v in zip(hcells[1:], rows[label][1:]):
                        if v == "-":
                            errors.append(f"{b}: {label}: no IOPS for '{c}'")
        if plots:
            for name in ("iops-qd", "latency", "cpu"):
                for ext in ("svg", "png"):
                    p = os.path.join(out, "plots", f"{b}-{name}.{ext}")
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
    for d, _, files in os.walk(os.path.join(out, "raw")):
        if "blkgw_" in os.path.basename(d) and "manifest.yaml" not in files:
            errors.append(f"no manifest.yaml in {d}")
        if files and not any(f.endswith(".json") for f in files):
            errors.append(f"no fio JSON in {d}")
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
