#!/usr/bin/python3
"""Turn a bench/nbd/run.sh results folder into results.json and results.md.

  nbd_report.py --machine OUT   record machine info into OUT/machine.json
  nbd_report.py --foreign DIR JOB   print the cores others used during one job
  nbd_report.py OUT             read OUT/raw/..., write OUT/results.{json,md}
                                and print the markdown

Standard library only. Layout read here (written by bench/nbd/run.sh):
  OUT/options.json, OUT/machine.json, OUT/load.{start,end}, OUT/date.{start,end}
  OUT/raw/roundR/SERVER/JOB.json     fio's JSON output
  OUT/raw/roundR/SERVER/JOB.cpu{0,1} "ID COMM UTIME STIME" lines, ID "total"
                                     for the whole process (clock ticks)
  OUT/raw/roundR/SERVER/JOB.load{0,1}, status, cmdline, map-totals.txt
  OUT/raw/rss/status, OUT/raw/rss/exports
"""
import json
import os
import platform
import statistics
import subprocess
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVERS = ["floor", "blkgw-null", "blkgw-mem", "qsd-null", "qsd-mem",
           "nbdkit-null", "nbdkit-mem"]
JOBS = ["randread-qd32", "randwrite-qd32", "randread-qd1", "seqread-1m"]
JOB_TITLE = {
    "randread-qd32": "4k randread QD32",
    "randwrite-qd32": "4k randwrite QD32",
    "randread-qd1": "4k randread QD1",
    "seqread-1m": "1 MiB seq read QD4",
}
DESC = {
    "floor": "nbd-floor (do-nothing, blocking, thread per connection)",
    "blkgw-null": "blkgw, null backend",
    "blkgw-mem": "blkgw, memory backend",
    "qsd-null": "qemu-storage-daemon, null-co (read-zeroes=on)",
    "qsd-mem": "qemu-storage-daemon, file on /dev/shm (O_DIRECT, aio=native)",
    "nbdkit-null": "nbdkit, null plugin",
    "nbdkit-mem": "nbdkit, memory plugin",
}
PEERS = {"null": ["qsd-null", "nbdkit-null"], "mem": ["qsd-mem", "nbdkit-mem"]}


def sh(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode:
            return "n/a"
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return "unavailable (%s)" % e


def machine(out, blkgw):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    lib = sh("nbdinfo", "--version").splitlines()
    info = {
        "hostname": platform.node(),
        "cpu_model": cpu,
        "cpus_online": os.cpu_count(),
        "mem_total_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "os": sh("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "fio": sh("fio", "--version"),
        "libnbd": lib[1] if len(lib) > 1 else " ".join(lib),
        "qemu_storage_daemon": sh("qemu-storage-daemon", "--version").splitlines()[0],
        "nbdkit": sh("nbdkit", "--version"),
        "blkgw": sh(blkgw, "--version") if blkgw and os.access(blkgw, os.X_OK) else "n/a",
        "bench_tree_git": sh("git", "-C", os.path.dirname(os.path.abspath(__file__)),
                        "describe", "--always", "--dirty"),
        "clk_tck": CLK_TCK,
    }
    with open(os.path.join(out, "machine.json"), "w") as f:
        json.dump(info, f, indent=1)


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def cpu_snapshot(path):
    snap = {}
    for line in (read(path) or "").splitlines():
        p = line.split()
        if len(p) == 4:
            snap[p[0]] = (p[1], int(p[2]) + int(p[3]), int(p[2]), int(p[3]))
    return snap


def one_run(d, job):
    fio = json.loads(read(os.path.join(d, job + ".json")))
    j = fio["jobs"][0]
    if j.get("error"):
        raise SystemExit("%s/%s: fio reported error %s" % (d, job, j["error"]))
    side = "write" if j["write"]["total_ios"] else "read"
    s = j[side]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    runtime_s = j["job_runtime"] / 1000.0
    c0 = cpu_snapshot(os.path.join(d, job + ".cpu0"))
    c1 = cpu_snapshot(os.path.join(d, job + ".cpu1"))
    ticks = c1["total"][1] - c0["total"][1]
    threads = {}
    for tid, (comm, t1, u1, s1) in c1.items():
        if tid == "total":
            continue
        _, t0, u0, s0 = c0.get(tid, (comm, 0, 0, 0))
        if t1 - t0:
            threads[tid] = {"comm": comm, "utime_s": (u1 - u0) / CLK_TCK,
                            "stime_s": (s1 - s0) / CLK_TCK}
    cpu_s = ticks / CLK_TCK
    pct = s["clat_ns"].get("percentile", {})
    client_cores = (j["usr_cpu"] + j["sys_cpu"]) / 100.0
    # CPU the rest of the machine used meanwhile: all busy time minus the
    # server's and fio's job (fio's own main thread counts as foreign).
    foreign = None
    s0 = (read(os.path.join(d, job + ".sys0")) or "").split()
    s1 = (read(os.path.join(d, job + ".sys1")) or "").split()
    if len(s0) == 2 and len(s1) == 2:
        busy = (int(s1[0]) - int(s0[0])) / CLK_TCK
        wall = (int(s1[1]) - int(s0[1])) / CLK_TCK / (os.cpu_count() or 1)
        if wall > 0:
            foreign = max(0.0, busy - cpu_s - client_cores * runtime_s) / wall
    busy0 = (read(os.path.join(d, job + ".busy0")) or "").strip()
    noisy = [f for f in os.listdir(d)
             if f.startswith(job + ".noisy") and f.endswith(".json")]
    return {
        "iops": s["iops"],
        "mib_s": s["bw_bytes"] / 2**20,
        "lat_mean_us": s["lat_ns"]["mean"] / 1000.0,
        "clat_p50_us": pct.get("50.000000", 0) / 1000.0,
        "clat_p99_us": pct.get("99.000000", 0) / 1000.0,
        "requests": ios,
        "runtime_s": runtime_s,
        "server_cpu_s": cpu_s,
        "server_utime_s": (c1["total"][2] - c0["total"][2]) / CLK_TCK,
        "server_stime_s": (c1["total"][3] - c0["total"][3]) / CLK_TCK,
        "server_cpu_us_per_req": cpu_s * 1e6 / ios if ios else None,
        "server_cores_busy": cpu_s / runtime_s if runtime_s else None,
        "client_cores_busy": client_cores,
        "foreign_cores_busy": foreign,
        "machine_busy_pct_before": int(busy0) if busy0.isdigit() else None,
        "noisy_attempts_discarded": len(noisy),
        "server_threads": threads,
        "load_before": (read(os.path.join(d, job + ".load0")) or "").split(),
        "load_after": (read(os.path.join(d, job + ".load1")) or "").split(),
    }


METRICS = ["iops", "mib_s", "lat_mean_us", "clat_p50_us", "clat_p99_us",
           "server_cpu_us_per_req", "server_cores_busy", "client_cores_busy",
           "foreign_cores_busy"]


def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals),
            "max": max(vals), "n": len(vals)}


def med(summary, server, job, metric):
    s = summary.get(server, {}).get(job, {}).get(metric)
    return s["median"] if s else None


def fmt_iops(v):
    return "—" if v is None else "%.0fk" % (v / 1000) if v >= 10000 else "%.0f" % v


def fmt(v, spec="%.2f"):
    return "—" if v is None else spec % v


def ratio(a, b):
    return a / b if a is not None and b else None


def best_peer(summary, kind, job, metric, lower_is_better):
    vals = [(med(summary, p, job, metric), p) for p in PEERS[kind]]
    vals = [v for v in vals if v[0] is not None]
    if not vals:
        return None, None
    return (min if lower_is_better else max)(vals)


def report(out):
    opts = json.loads(read(os.path.join(out, "options.json")))
    mach = json.loads(read(os.path.join(out, "machine.json"), "{}"))
    raw = os.path.join(out, "raw")
    runs = []
    for rd in sorted(os.listdir(raw)):
        if not rd.startswith("round"):
            continue
        rnd = int(rd[5:])
        for server in os.listdir(os.path.join(raw, rd)):
            d = os.path.join(raw, rd, server)
            for job in JOBS:
                if os.path.exists(os.path.join(d, job + ".json")):
                    r = one_run(d, job)
                    r.update(round=rnd, server=server, job=job)
                    runs.append(r)
    servers = [s for s in SERVERS if any(r["server"] == s for r in runs)]
    jobs = [j for j in JOBS if any(r["job"] == j for r in runs)]

    summary = {}
    for s in servers:
        for j in jobs:
            rs = [r for r in runs if r["server"] == s and r["job"] == j]
            if rs:
                summary.setdefault(s, {})[j] = {
                    m: stats([r[m] for r in rs]) for m in METRICS}

    # Ratios against the floor, taken round by round (same conditions).
    for s in servers:
        for j in jobs:
            per = []
            for r in runs:
                if r["server"] != s or r["job"] != j:
                    continue
                f = [x for x in runs if x["server"] == "floor" and
                     x["job"] == j and x["round"] == r["round"]]
                if f and f[0]["iops"]:
                    per.append(r["iops"] / f[0]["iops"])
            if per and j in summary.get(s, {}):
                summary[s][j]["iops_vs_floor_per_round"] = stats(per)

    rss = None
    st = read(os.path.join(raw, "rss", "status"))
    if st:
        rss = {"exports": int(read(os.path.join(raw, "rss", "exports")).strip())}
        for line in st.splitlines():
            k, v = line.split(":", 1)
            v = v.split()
            rss[k] = int(v[0]) if len(v) == 1 or v[1] != "kB" else int(v[0]) * 1024

    goals = []

    def goal(name, kind, value, target, ok, detail):
        goals.append({"goal": name, "backend": kind, "value": value,
                      "target": target, "met": ok, "detail": detail})

    for kind in ("null", "mem"):
        gw = "blkgw-" + kind
        if gw not in summary:
            continue
        for j in ("randread-qd32", "randwrite-qd32"):
            v, fl = med(summary, gw, j, "iops"), med(summary, "floor", j, "iops")
            if v is not None and fl:
                goal("%s IOPS >= 0.95x floor" % JOB_TITLE[j], kind, v / fl, 0.95,
                     v / fl >= 0.95, "%s vs %s IOPS" % (fmt_iops(v), fmt_iops(fl)))
            v = med(summary, gw, j, "server_cpu_us_per_req")
            b, p = best_peer(summary, kind, j, "server_cpu_us_per_req", True)
            if v is not None and b:
                goal("%s CPU/request <= 0.7x best peer" % JOB_TITLE[j], kind, v / b,
                     0.7, v / b <= 0.7, "%.2f us vs %s %.2f us (target %.2f us)"
                     % (v, p, b, 0.7 * b))
        v = med(summary, gw, "randread-qd1", "lat_mean_us")
        b, p = best_peer(summary, kind, "randread-qd1", "lat_mean_us", True)
        if v is not None and b:
            goal("4k randread QD1 mean latency <= best peer", kind, v / b, 1.0,
                 v <= b, "%.1f us vs %s %.1f us" % (v, p, b))
        v = med(summary, gw, "seqread-1m", "mib_s")
        b, p = best_peer(summary, kind, "seqread-1m", "mib_s", False)
        if v is not None and b:
            goal("1 MiB seq read >= best peer" + (" (real data)" if kind == "mem"
                 else " (zeros; the goal is on memory)"), kind, v / b, 1.0,
                 v >= b, "%.0f MiB/s vs %s %.0f MiB/s" % (v, p, b))
    if rss:
        v = rss.get("VmRSS", 0) / 2**20
        goal("idle RSS with %d exports < 32 MiB" % rss["exports"], "mixed", v, 32,
             v < 32, "VmRSS %.1f MiB (anon %.1f, file %.1f), %d threads"
             % (v, rss.get("RssAnon", 0) / 2**20, rss.get("RssFile", 0) / 2**20,
                rss.get("Threads", 0)))

    loads = [float(x) for r in runs for x in r["load_before"][:1] + r["load_after"][:1]]
    result = {
        "options": opts, "machine": mach,
        "date_start": (read(os.path.join(out, "date.start")) or "").strip(),
        "date_end": (read(os.path.join(out, "date.end")) or "").strip(),
        "load_start": (read(os.path.join(out, "load.start")) or "").split(),
        "load_end": (read(os.path.join(out, "load.end")) or "").split(),
        "load1_during": stats(loads),
        "servers": {s: DESC[s] for s in servers},
        "cmdlines": {s: (read(os.path.join(raw, "round1", s, "cmdline")) or "").split("\n")
                     for s in servers},
        "summary": summary, "goals": goals, "rss": rss, "runs": runs,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result, servers, jobs)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    sys.stdout.write(md)


def markdown(res, servers, jobs):
    sm, o, m = res["summary"], res["options"], res["machine"]
    L = []
    L.append("Run %s to %s; `%s`" % (res["date_start"], res["date_end"], o["command"]))
    L.append("")
    L.append("%d round(s) x %d s per job, image %d MiB, blkgw workers %d, pinning: %s. "
             "Medians over rounds; CPU/req = server utime+stime over the job / requests."
             % (o["repeat"], o["runtime_s"], o["size_bytes"] >> 20, o["workers"], o["pin"]))
    L.append("")
    L.append("| server | 4k randread QD32: IOPS (x floor), CPU/req | "
             "4k randwrite QD32: IOPS (x floor), CPU/req | "
             "4k randread QD1: mean latency, CPU/req | "
             "1 MiB seq read QD4: MiB/s, CPU/req |")
    L.append("|---|---|---|---|---|")
    for s in servers:
        cells = []
        for j in ("randread-qd32", "randwrite-qd32"):
            iops = med(sm, s, j, "iops")
            fl = med(sm, "floor", j, "iops")
            r = ratio(iops, fl)
            cells.append("%s (%s), %s us" % (fmt_iops(iops), fmt(r), fmt(
                med(sm, s, j, "server_cpu_us_per_req"))) if iops is not None else "—")
        lat = med(sm, s, "randread-qd1", "lat_mean_us")
        cells.append("%s us, %s us" % (fmt(lat, "%.1f"), fmt(med(
            sm, s, "randread-qd1", "server_cpu_us_per_req"))) if lat is not None else "—")
        bw = med(sm, s, "seqread-1m", "mib_s")
        cells.append("%s, %s us" % (fmt(bw, "%.0f"), fmt(med(
            sm, s, "seqread-1m", "server_cpu_us_per_req"), "%.0f")) if bw is not None else "—")
        L.append("| %s | %s |" % (res["servers"][s], " | ".join(cells)))
    L.append("")

    # blkgw against the best peer of the same backend kind.
    rows = []
    for kind in ("null", "mem"):
        gw = "blkgw-" + kind
        if gw not in sm:
            continue
        for j, metric, lower, label in (
                ("randread-qd32", "iops", False, "4k randread QD32 IOPS"),
                ("randread-qd32", "server_cpu_us_per_req", True, "4k randread QD32 CPU/req (us)"),
                ("randwrite-qd32", "iops", False, "4k randwrite QD32 IOPS"),
                ("randwrite-qd32", "server_cpu_us_per_req", True, "4k randwrite QD32 CPU/req (us)"),
                ("randread-qd1", "lat_mean_us", True, "4k randread QD1 mean latency (us)"),
                ("seqread-1m", "mib_s", False, "1 MiB seq read (MiB/s)")):
            v = med(sm, gw, j, metric)
            if v is None:
                continue
            b, p = best_peer(sm, kind, j, metric, lower)
            fl = med(sm, "floor", j, metric)
            f = "%.0f" if metric in ("iops", "mib_s") else "%.2f"
            rows.append("| %s | %s | %s | %s | %s | %s |" % (
                gw, label, fmt(v, f), "%s (%s)" % (fmt(b, f), p) if b else "—",
                fmt(ratio(v, b)), fmt(ratio(v, fl))))
    if rows:
        L.append("| blkgw | metric | blkgw | best peer | x best peer | x floor |")
        L.append("|---|---|---|---|---|---|")
        L.extend(rows)
        L.append("")

    if res["goals"]:
        L.append("| goal (issue 2) | backend | measured | met? |")
        L.append("|---|---|---|---|")
        for g in res["goals"]:
            L.append("| %s | %s | %s: %.2f (target %s) | %s |" % (
                g["goal"], g["backend"], g["detail"], g["value"], g["target"],
                "yes" if g["met"] else "**no**"))
        L.append("")

    L.append("Spread over rounds, median [min–max]; IOPS x floor is taken round by round:")
    L.append("")
    L.append("| server | job | IOPS | IOPS x floor | CPU/req (us) | mean lat (us) | p99 (us) "
             "| server cores | fio cores | others' cores |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")

    def spread(st, spec):
        if not st:
            return "—"
        return ("%s [%s–%s]" % (spec % st["median"], spec % st["min"], spec % st["max"])
                if st["n"] > 1 else spec % st["median"])
    for s in servers:
        for j in jobs:
            x = sm.get(s, {}).get(j)
            if not x:
                continue
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                s, j, spread(x["iops"], "%.0f"),
                spread(x.get("iops_vs_floor_per_round"), "%.2f"),
                spread(x["server_cpu_us_per_req"], "%.2f"),
                spread(x["lat_mean_us"], "%.1f"), spread(x["clat_p99_us"], "%.0f"),
                spread(x["server_cores_busy"], "%.2f"),
                spread(x["client_cores_busy"], "%.2f"),
                spread(x["foreign_cores_busy"], "%.2f")))
    L.append("")
    ld = res["load1_during"]
    L.append("Machine: %s, %s CPUs, %d MiB RAM; %s; kernel %s." % (
        m.get("cpu_model"), m.get("cpus_online"), m.get("mem_total_mib", 0),
        m.get("os"), m.get("kernel")))
    L.append("Versions: %s; %s; %s; %s; %s%s (harness from tree %s)." % (
        m.get("fio"), m.get("libnbd"), m.get("qemu_storage_daemon"), m.get("nbdkit"),
        m.get("blkgw"), ", " + o["note"] if o.get("note") else "",
        m.get("bench_tree_git", m.get("blkgw_git"))))
    L.append("Load average (1/5/15 min; includes the benchmark itself) at start %s, at end %s; "
             "1-min load around the jobs %s." % ("/".join(res["load_start"]), "/".join(res["load_end"]),
                      "%.2f–%.2f (median %.2f)" % (ld["min"], ld["max"], ld["median"])
                      if ld else "n/a"))
    nz = sum(r["noisy_attempts_discarded"] for r in res["runs"])
    L.append("Jobs rerun because other processes used more than %s cores meanwhile "
             "(`--retry-noisy`): %d attempt(s) discarded (kept in raw/)."
             % (o.get("retry_noisy", "?").split(",")[0], nz))
    if res["rss"]:
        r = res["rss"]
        L.append("Idle blkgw with %d exports: VmRSS %.1f MiB (anon %.1f, file %.1f), "
                 "VmHWM %.1f MiB, %d threads." % (
                     r["exports"], r.get("VmRSS", 0) / 2**20, r.get("RssAnon", 0) / 2**20,
                     r.get("RssFile", 0) / 2**20, r.get("VmHWM", 0) / 2**20,
                     r.get("Threads", 0)))
    L.append("")
    return "\n".join(L)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--machine":
        machine(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--foreign":
        r = one_run(sys.argv[2], sys.argv[3])
        print("%.2f" % (r["foreign_cores_busy"] or 0.0))
    elif len(sys.argv) == 2:
        report(sys.argv[1])
    else:
        sys.exit("usage: nbd_report.py [--machine OUT BLKGW | --foreign DIR JOB | OUT]")


if __name__ == "__main__":
    main()
