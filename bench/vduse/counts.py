#!/usr/bin/python3
"""Read the console log of bench/vduse/counts.sh's guest and print, per cell,
IOPS and mean latency with what each request cost in counts (the server's
context switches, those of its io_uring io-wq workers, IPIs and context
switches of the whole guest, blkgw's worker counters), then the ratios of paired configs round by round, then,
from the ftrace sample, where a QD1 request's time went and on which vCPU
its completion interrupt ran.

    counts.py CONSOLE.LOG

Counts per request divide a difference of two /proc snapshots taken around
fio (its ramp included) by the requests the disk completed meanwhile (fio's
disk_util, ramp included).
"""
import json
import re
import statistics
import sys


def blocks(lines, tag):
    """DIAG-TAG-BEGIN key ... DIAG-TAG-END -> {key: [lines]}"""
    out, key, body = {}, None, []
    for line in lines:
        if key is None:
            m = re.match(rf"DIAG-{tag}-BEGIN (.*)", line)
            if m:
                key, body = m.group(1).strip(), []
        elif line.startswith(f"DIAG-{tag}-END"):
            out[key] = body
            key = None
        else:
            body.append(line)
    return out


def parse_snap(body):
    tasks, sysv, ipis = {}, {}, {}
    for line in body:
        f = line.split()
        if not f:
            continue
        if f[0] == "task" and len(f) >= 8:
            tasks[f[1]] = dict(comm=f[2], cs=int(f[3]) + int(f[4]), ticks=int(f[5]) + int(f[6]))
        elif f[0] in ("ctxt", "intr"):
            sysv[f[0]] = int(f[1])
        elif f[0].endswith(":") and f[0][:-1] in ("LOC", "RES", "CAL", "TLB"):
            ipis[f[0][:-1]] = sum(int(x) for x in f[1:] if x.isdigit())
    return tasks, sysv, ipis


def cells(lines):
    snaps = blocks(lines, "SNAP")
    fios = blocks(lines, "FIO")
    stats = blocks(lines, "STATUS")
    prev_worker = {}
    res = {}
    for key, body in fios.items():
        try:
            job = json.loads("\n".join(body))["jobs"][0]
        except (ValueError, KeyError, IndexError):
            continue
        c, wl, r = key.split()
        rd = job["read"] if job["read"]["iops"] else job["write"]
        if not rd["iops"]:
            continue
        qd = int(job.get("job options", {}).get("iodepth", 0))
        try:
            du = json.loads("\n".join(body))["disk_util"][0]
            n = du["read_ios"] + du["write_ios"]
        except (ValueError, KeyError, IndexError):
            n = rd["iops"] * (job["job_runtime"] / 1000.0 + 1.0)
        pre, post = parse_snap(snaps[f"{key} pre"]), parse_snap(snaps[f"{key} post"])
        # A thread that started during the cell (an io_uring io-wq worker,
        # iou-wrk-*) counts from zero; one that ended before the last
        # snapshot is lost.
        zero = dict(cs=0, ticks=0)
        dcs = {t: a["cs"] - pre[0].get(t, zero)["cs"] for t, a in post[0].items()}
        dticks = {t: a["ticks"] - pre[0].get(t, zero)["ticks"] for t, a in post[0].items()}
        wq = [t for t, a in post[0].items() if a["comm"].startswith("iou-wrk")]
        x = dict(qd=qd, iops=rd["iops"], lat_us=rd["lat_ns"]["mean"] / 1e3,
                 srv_cs=sum(dcs.values()) / n, srv_cpu_us=sum(dticks.values()) * 1e4 / n,
                 wq_threads=len(wq), wq_cs=sum(dcs[t] for t in wq) / n,
                 ctxt=(post[1]["ctxt"] - pre[1]["ctxt"]) / n,
                 ipi=sum(post[2].get(k, 0) - pre[2].get(k, 0) for k in ("RES", "CAL")) / n)
        if key in stats and stats[key] and "blkgw" in c:  # ublk has no worker loop
            try:
                w = json.loads(stats[key][0])["worker_loops"][0]
                cur = {k: w[k] for k in ("sleeps", "kicks", "ring_polls", "held_signals")}
                base = prev_worker.get((c, r), {k: 0 for k in cur})
                x.update({k: (cur[k] - base[k]) / n for k in cur})
                prev_worker[(c, r)] = cur
            except (ValueError, KeyError, IndexError):
                pass
        res[(c, wl, int(r))] = x
    return res


def phases(trace):
    """Per QD1 request: issue -> daemon's VQ_INJECT_IRQ ioctl -> the vduse irq work
    starting -> completion -> next issue; and whether the irq work ran on the
    vCPU that issued the request."""
    ev = []
    for line in trace:
        m = re.match(r"\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+\.\d+): (\w+)[:(] ?(.*)", line)
        if m:
            ev.append((float(m.group(4)), int(m.group(3)), m.group(5), m.group(6)))
    ph = {k: [] for k in ("issue-inject", "inject-irqwork", "irqwork-complete", "complete-issue", "total")}
    local = remote = 0
    t_issue = t_inj = t_kw = t_cpl = None
    issue_cpu = None
    for t, cpu, name, rest in ev:
        if name == "block_rq_issue":
            if t_cpl is not None:
                ph["complete-issue"].append((t - t_cpl) * 1e6)
            t_issue, issue_cpu, t_inj, t_kw, t_cpl = t, cpu, None, None, None
        elif t_issue is None:
            continue
        elif name == "sys_ioctl" and "40048117" in rest and t_inj is None:  # VDUSE_VQ_INJECT_IRQ
            t_inj = t
        elif name == "workqueue_queue_work" and "vduse_vq_irq_inject" in rest:
            m = re.search(r" cpu=(\d+)", rest)
            if m and int(m.group(1)) == issue_cpu:
                local += 1
            else:
                remote += 1
        elif name == "workqueue_execute_start" and "vduse_vq_irq_inject" in rest and t_inj and not t_kw:
            t_kw = t
        elif name == "block_rq_complete" and t_cpl is None:
            t_cpl = t
            ph["total"].append((t - t_issue) * 1e6)
            if t_inj:
                ph["issue-inject"].append((t_inj - t_issue) * 1e6)
            if t_inj and t_kw:
                ph["inject-irqwork"].append((t_kw - t_inj) * 1e6)
                ph["irqwork-complete"].append((t - t_kw) * 1e6)
    return ph, local, remote


def med(v):
    return statistics.median(v) if v else float("nan")


def main():
    lines = [ln.rstrip("\r\n").replace("\r", "") for ln in open(sys.argv[1], errors="replace")]
    res = cells(lines)
    cfgs = list(dict.fromkeys(c for c, _, _ in sorted(res, key=lambda k: k[2])))
    wls = list(dict.fromkeys(w for _, w, _ in sorted(res, key=lambda k: k[2])))
    rounds = sorted({r for _, _, r in res})
    for wl in wls:
        print(f"\n{wl}: per round IOPS, mean latency, then per request: "
              "server context switches, server CPU, guest IPIs (RES+CAL), guest context switches,"
              " the server's io_uring io-wq workers (threads, their context switches)"
              " [blkgw: worker sleeps, kicks, held signals]")
        for c in cfgs:
            row = []
            for r in rounds:
                x = res.get((c, wl, r))
                if not x:
                    continue
                s = (f"{x['iops']:.0f} {x['lat_us']:.0f}us cs {x['srv_cs']:.2f} cpu {x['srv_cpu_us']:.0f}us"
                     f" ipi {x['ipi']:.2f} ctxt {x['ctxt']:.1f}")
                if x["wq_threads"]:
                    s += f" io-wq {x['wq_threads']}t cs {x['wq_cs']:.2f}"
                if "kicks" in x:
                    s += f" [{x['sleeps']:.2f} {x['kicks']:.2f} {x['held_signals']:.3f}]"
                row.append(s)
            print(f"  {c:16s} " + " | ".join(row))
    print("\nratios, round by round (first config over second): mean latency at QD1, IOPS "
          "deeper, and IPIs per request")
    pairs = [(a, b) for a in cfgs for b in cfgs
             if a != b and "blkgw" in a and a.replace("blkgw", "qsd") == b]
    pairs += [(a, b) for a in cfgs for b in cfgs
              if a != b and "ublk" in a and a.replace("ublk", "blkgw") == b]
    pairs += [(a, b) for a in cfgs for b in cfgs if a.endswith("-local") and b == a[:-6] + "-remote"]
    metrics = []
    for wl in wls:
        qds = {x["qd"] for (c, w, r), x in res.items() if w == wl}
        metrics += [(wl, "lat_us" if qds == {1} else "iops"), (wl, "ipi")]
    for a, b in pairs:
        for wl, key in metrics:
            rs = [res[(a, wl, r)][key] / res[(b, wl, r)][key] for r in rounds
                  if (a, wl, r) in res and (b, wl, r) in res and res[(b, wl, r)][key]]
            if rs:
                print(f"  {a}/{b} {wl} {key}: " + " ".join(f"{v:.2f}" for v in rs)
                      + f"  (median {med(rs):.2f}, {len(rs)} rounds)")
    traces = blocks(lines, "TRACE")
    if traces:
        print("\nftrace, 1 s of QD1 4k random reads per config: medians in us, and the vCPU "
              "the completion interrupt's work was queued on")
    for c, body in traces.items():
        ph, local, remote = phases(body)
        print(f"  {c:16s} n={len(ph['total'])} " + " ".join(f"{k} {med(v):.0f}" for k, v in ph.items())
              + f"; irq work on the issuing vCPU {local}, on the other {remote}")


if __name__ == "__main__":
    main()
