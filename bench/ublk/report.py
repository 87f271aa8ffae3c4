#!/usr/bin/python3
"""bench/ublk: turn the guest's console log into a markdown table.

Each block is BENCH-BEGIN transport backend job cpu_ticks ticks_per_s, fio's
JSON, BENCH-END. Reported: IOPS (MiB/s for 1 MiB jobs), mean latency
(fio's lat_ns: submit to completion) for QD1 jobs, and blkgw's CPU per
request (its utime+stime over the job, divided by the requests fio
completed, ramp time included in the CPU but not in fio's count: an upper
bound).
"""
import json
import sys


def blocks(path):
    cur = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith("BENCH-BEGIN "):
                cur = (line.split()[1:], [])
            elif line.startswith("BENCH-END") and cur:
                yield cur
                cur = None
            elif cur is not None:
                cur[1].append(line)


def main():
    rows = []
    for (t, b, job, ticks, hz), text in blocks(sys.argv[1]):
        try:
            j = json.loads("\n".join(text)[("\n".join(text)).index("{"):])
        except ValueError:
            rows.append((t, b, job, "fio failed", "", ""))
            continue
        jb = j["jobs"][0]
        side = jb["read"] if jb["read"]["total_ios"] else jb["write"]
        ios = side["total_ios"]
        cpu_us = int(ticks) / int(hz) * 1e6 / ios if ios else 0
        if job.startswith("seq"):
            perf = "%.0f MiB/s" % (side["bw_bytes"] / 1048576)
        else:
            perf = "%.0f IOPS" % side["iops"]
        lat = "%.0f µs" % (side["lat_ns"]["mean"] / 1000) if job.endswith("qd1") else ""
        rows.append((t, b, job, perf, lat, "%.1f µs" % cpu_us))
    print("| transport | backend | job | throughput | mean latency (QD1) | blkgw CPU / request |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| %s |" % " | ".join(r))


main()
