#!/usr/bin/python3
"""Unit tests of bench/lib/harness.py: fio JSON and /proc parsing,
aggregation over rounds, pairwise ratios, the markdown tables, CSV and the
gnuplot data. Run: /usr/bin/python3 bench/lib/test_harness.py"""

import csv
import io
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def fio_doc(read_ios=0, write_ios=0, iops=0.0, bw=0, mean_ns=0, p50=0, p99=0, p999=0,
            usr=10.0, sys_=5.0, runtime_ms=2000, jobs=1):
    def d(n):
        if not n:
            return {"total_ios": 0, "iops": 0.0, "bw_bytes": 0, "runtime": 0,
                    "clat_ns": {"mean": 0}, "lat_ns": {"mean": 0}}
        return {"total_ios": n, "iops": iops, "bw_bytes": bw, "runtime": runtime_ms,
                "lat_ns": {"mean": mean_ns},
                "clat_ns": {"mean": mean_ns, "percentile": {
                    "1.000000": 1, "50.000000": p50, "99.000000": p99, "99.900000": p999}}}
    return {"jobs": [{"read": d(read_ios), "write": d(write_ios), "trim": d(0),
                      "usr_cpu": usr, "sys_cpu": sys_, "job_runtime": runtime_ms}
                     for _ in range(jobs)]}


def cell(backend, wl, col, rep, iops, cpu=None, **kw):
    c = {"backend": backend, "workload": wl, "column": col, "rep": rep, "iops": iops,
         "bw_bytes": iops * 4096, "lat_mean_us": 10.0, "lat_p50_us": 9.0,
         "lat_p99_us": 20.0, "lat_p999_us": 30.0, "server_cpu_us_per_req": cpu,
         "client_cpu_us_per_req": 1.0, "foreign_cores": 0.0, "attempt": 0,
         "discarded": False}
    c.update(kw)
    return c


class ParseTest(unittest.TestCase):
    def test_proc_stat_comm_with_spaces_and_parens(self):
        line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 3 0 100\n"
        self.assertEqual(H.parse_proc_stat(line), 325)

    def test_sys_stat(self):
        text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
        busy, total = H.parse_sys_stat(text)
        self.assertEqual(busy, 100 + 5 + 50 + 3 + 2 + 1)
        self.assertEqual(total, busy + 1000 + 20)

    def test_sys_stat_without_cpu_line(self):
        with self.assertRaises(ValueError):
            H.parse_sys_stat("intr 1 2 3\n")

    def test_fio_read(self):
        m = H.parse_fio(fio_doc(read_ios=1000, iops=500.0, bw=2048000, mean_ns=2000,
                                p50=1500, p99=9000, p999=12000))
        self.assertEqual(m["ios"], 1000)
        self.assertAlmostEqual(m["iops"], 500.0)
        self.assertEqual(m["bw_bytes"], 2048000)
        self.assertAlmostEqual(m["lat_mean_us"], 2.0)
        self.assertAlmostEqual(m["lat_p50_us"], 1.5)
        self.assertAlmostEqual(m["lat_p99_us"], 9.0)
        self.assertAlmostEqual(m["lat_p999_us"], 12.0)
        # 15% of 2 s
        self.assertAlmostEqual(m["client_cpu_s"], 0.3)
        self.assertAlmostEqual(m["runtime_s"], 2.0)

    def test_fio_write_picks_write_latency(self):
        m = H.parse_fio(fio_doc(write_ios=10, iops=5.0, mean_ns=7000, p50=6000, p99=8000,
                                p999=9000))
        self.assertAlmostEqual(m["lat_p50_us"], 6.0)
        self.assertEqual(m["ios"], 10)

    def test_fio_several_jobs_sum(self):
        m = H.parse_fio(fio_doc(read_ios=100, iops=50.0, bw=1000, jobs=3))
        self.assertEqual(m["ios"], 300)
        self.assertAlmostEqual(m["iops"], 150.0)
        self.assertEqual(m["bw_bytes"], 3000)

    def test_fio_without_percentiles(self):
        doc = fio_doc(read_ios=10, iops=5.0)
        doc["jobs"][0]["read"]["clat_ns"] = {}
        doc["jobs"][0]["read"]["lat_ns"] = {}
        m = H.parse_fio(doc)
        self.assertIsNone(m["lat_p99_us"])
        self.assertIsNone(m["lat_mean_us"])

    def test_cell_metrics(self):
        fio = H.parse_fio(fio_doc(read_ios=1000, iops=500.0, usr=50.0, sys_=0.0))
        # server used 20 ticks at 100 Hz = 0.2 s over 1000 requests = 200 us each
        m = H.cell_metrics(fio, 20, 100, (0, 0), (400, 1000), 2.0)
        self.assertAlmostEqual(m["server_cpu_us_per_req"], 200.0)
        self.assertAlmostEqual(m["client_cpu_us_per_req"], 1000.0)
        # busy 4 s - server 0.2 s - fio 1 s over 2 s = 1.4 cores
        self.assertAlmostEqual(m["foreign_cores"], 1.4)

    def test_cell_metrics_without_server(self):
        fio = H.parse_fio(fio_doc(read_ios=10, iops=5.0))
        m = H.cell_metrics(fio, None, 100)
        self.assertIsNone(m["server_cpu_us_per_req"])
        self.assertIsNone(m["foreign_cores"])

    def test_parse_list(self):
        self.assertEqual(H.parse_list("null, file,null", H.BACKENDS, "backend"),
                         ["null", "file"])
        with self.assertRaises(ValueError):
            H.parse_list("nul", H.BACKENDS, "backend")
        with self.assertRaises(ValueError):
            H.parse_list(",", H.BACKENDS, "backend")

    def test_workload_args(self):
        a = H.fio_workload_args("randwrite-4k-qd128", numjobs=4)
        self.assertIn("--rw=randwrite", a)
        self.assertIn("--iodepth=128", a)
        self.assertIn("--numjobs=4", a)
        self.assertIn("--group_reporting=1", a)
        self.assertNotIn("--numjobs=1", H.fio_workload_args("read-1m-qd8"))


class AggregateTest(unittest.TestCase):
    def test_spread(self):
        self.assertEqual(H.spread([3, None, 1, 2]), (1, 2, 3))
        self.assertEqual(H.spread([None]), (None, None, None))

    def test_summarize_skips_discarded(self):
        cells = [cell("null", "read-1m-qd8", "blkgw/nbd-unix", 1, 100.0),
                 cell("null", "read-1m-qd8", "blkgw/nbd-unix", 1, 1.0, discarded=True),
                 cell("null", "read-1m-qd8", "blkgw/nbd-unix", 2, 300.0)]
        s = H.summarize(cells)[("null", "read-1m-qd8", "blkgw/nbd-unix")]
        self.assertEqual(s["n"], 2)
        self.assertEqual(s["iops"], (100.0, 200.0, 300.0))

    def test_pair_ratios_round_by_round(self):
        w, a, b = "randread-4k-qd1", "blkgw/nbd-unix", "qsd/nbd-unix"
        cells = [cell("null", w, a, 1, 200.0), cell("null", w, b, 1, 100.0),
                 cell("null", w, a, 2, 300.0), cell("null", w, b, 2, 100.0),
                 cell("null", w, a, 3, 999.0)]  # no peer in round 3
        self.assertEqual(H.pair_ratios(cells, "null", w, a, b, "iops"), (2.0, 2.5, 3.0))
        self.assertIsNone(H.pair_ratios(cells, "null", w, a, b, "server_cpu_us_per_req"))

    def test_ratio_and_ceiling_pairs(self):
        cols = ["direct", "blkgw/nbd-unix", "blkgw/vhost", "qsd/nbd-unix", "qsd/vhost",
                "nbdkit/nbd-unix", "floor/nbd-unix", "vm/blkgw/ublk", "vm/null_blk",
                "vm/qsd/vduse", "vm/blkgw/vduse"]
        self.assertEqual(H.ratio_pairs(cols), [
            ("blkgw/nbd-unix", "qsd/nbd-unix"), ("blkgw/nbd-unix", "nbdkit/nbd-unix"),
            ("blkgw/vhost", "qsd/vhost"), ("vm/blkgw/vduse", "vm/qsd/vduse")])
        cp = H.ceiling_pairs(cols)
        self.assertIn(("blkgw/nbd-unix", "floor/nbd-unix"), cp)
        self.assertIn(("vm/blkgw/ublk", "vm/null_blk"), cp)
        self.assertNotIn(("blkgw/vhost", "floor/nbd-unix"), cp)
        self.assertNotIn(("direct", "floor/nbd-unix"), cp)

    def test_ceiling_shared_by_backends(self):
        cells = [cell("any", "randread-4k-qd1", "floor/nbd-unix", 1, 50.0),
                 cell("memory", "randread-4k-qd1", "blkgw/nbd-unix", 1, 25.0)]
        mem = H.for_backend(cells, "memory")
        self.assertEqual({c["backend"] for c in mem}, {"memory"})
        self.assertEqual(H.pair_ratios(mem, "memory", "randread-4k-qd1", "blkgw/nbd-unix",
                                       "floor/nbd-unix", "iops"), (0.5, 0.5, 0.5))


class FormatTest(unittest.TestCase):
    def test_fmt_num(self):
        self.assertEqual(H.fmt_num(1234567.0), "1.23M")
        self.assertEqual(H.fmt_num(45678.0), "46k")
        self.assertEqual(H.fmt_num(4567.0), "4.6k")
        self.assertEqual(H.fmt_num(456.0), "456")
        self.assertEqual(H.fmt_num(None), "-")
        self.assertEqual(H.fmt_num(float("nan")), "-")
        self.assertEqual(H.fmt_num(2 * 1048576.0, "bw_bytes"), "2.00")
        self.assertEqual(H.fmt_num(12.345, "lat_mean_us"), "12.3")

    def test_fmt_ratio(self):
        self.assertEqual(H.fmt_ratio((1.0, 1.5, 2.0)), "1.50x (1.00-2.00)")
        self.assertEqual(H.fmt_ratio((2.0, 2.0, 2.0)), "2.00x")
        self.assertEqual(H.fmt_ratio(None), "-")

    def tables(self, cols):
        cells = []
        for rep in (1, 2):
            for w in ("randread-4k-qd1", "read-1m-qd8"):
                for c in cols:
                    b = "any" if c in H.CEILINGS else "null"
                    cells.append(cell(b, w, c, rep, 1000.0 * rep, cpu=2.0))
        return cells, H.backend_tables(cells, "null", cols)

    def test_tables_have_every_column_and_row(self):
        cols = H.HOST_COLUMNS + ["vm/blkgw/ublk", "vm/null_blk"]
        _, md = self.tables(cols)
        lines = md.splitlines()
        heads = [x for x in lines if x.startswith("| IOPS |") or x.startswith("| mean latency")
                 or x.startswith("| server CPU")]
        # host and VM (TCG) columns never share a table
        self.assertEqual(len(heads), 6)
        for h in heads:
            tcg = "(TCG)" in h
            for c in cols:
                if (H.column(c)["where"] == "tcg") == tcg:
                    self.assertIn(H.heading(c), h)
                else:
                    self.assertNotIn(H.heading(c), h)
        self.assertIn("#### null, host: IOPS", md)
        self.assertIn("#### null, test VM (TCG): IOPS", md)
        self.assertIn("| Random read 4k T1Q1 |", md)
        self.assertIn("| Linear read 1M T1Q8 |", md)
        # median (min-max) of 1000 and 2000
        self.assertIn("1.5k (1.0k-2.0k)", md)
        self.assertIn("blkgw ublk (TCG)", md)
        self.assertIn("blkgw / peer, pair by pair", md)
        self.assertIn("fraction of the ceiling", md)
        # every table row has as many cells as its header
        for block in md.split("\n\n"):
            rows = [x for x in block.splitlines() if x.startswith("|")]
            if rows:
                self.assertEqual(len({r.count("|") for r in rows}), 1, block)

    def test_merge(self):
        d1 = {"options": {"backends": ["file"], "columns": ["blkgw/nbd-unix"],
                          "workloads": ["read-1m-qd8"], "command": "a"},
              "machine": {"cpus": 2}, "cells": [cell("file", "read-1m-qd8", "blkgw/nbd-unix", 1, 1.0)]}
        d2 = {"options": {"backends": ["null", "file"], "columns": ["vm/blkgw/ublk", "direct"],
                          "workloads": ["randread-4k-qd1"], "command": "b"},
              "machine": {"cpus": 2}, "cells": [cell("null", "randread-4k-qd1", "vm/blkgw/ublk", 1, 2.0)]}
        m = H.merge([d1, d2])
        self.assertEqual(m["options"]["backends"], ["null", "file"])
        self.assertEqual(m["options"]["columns"], ["direct", "blkgw/nbd-unix", "vm/blkgw/ublk"])
        self.assertEqual(m["options"]["workloads"], ["randread-4k-qd1", "read-1m-qd8"])
        self.assertEqual(len(m["cells"]), 2)
        self.assertEqual(m["options"]["command"], "a ; b")

    def test_vm_console(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import vmbench
        text = ("noise\r\nBENCH-FILE-BEGIN manifest.yaml\r\nversion: 1\r\nBENCH-FILE-END\r\n"
                "BENCH-CMD fio --rw=randread\r\n"
                "BENCH-BEGIN null vm/blkgw/ublk randread-4k-qd1 1 42 100\r\n"
                "note: fio says hello\r\n{\"jobs\": []}\r\nBENCH-END\r\n"
                "BENCH-HOST-START 1 qsd:null\r\n"
                "BENCH-BEGIN null vm/qsd/vhost-guest randread-4k-qd1 1 host:1 100\r\n"
                "{ broken\r\nBENCH-END\r\n")
        cells, files = vmbench.parse_console(text)
        self.assertEqual(len(cells), 1)  # the broken one is dropped
        self.assertEqual(cells[0]["ticks"], "42")
        self.assertEqual(cells[0]["cmd"], "fio --rw=randread")
        self.assertEqual(cells[0]["fio"], {"jobs": []})
        self.assertEqual(files, [(0, "manifest.yaml", "version: 1\n")])

    def test_vm_console_seq(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import vmbench
        text = ("BENCH-T0 7\nBENCH-T1 7\n"
                "BENCH-BEGIN null vm/blkgw/ublk randread-4k-qd1 2 42 100 7\n{}\nBENCH-END\n")
        cells, _ = vmbench.parse_console(text)
        self.assertEqual(cells[0]["seq"], "7")
        self.assertEqual(vmbench.cell_key(cells[0]), "null:vm/blkgw/ublk:randread-4k-qd1:2")

    def test_vm_noisy_reruns(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import vmbench

        def c(col, rep, attempt, fc):
            x = cell("null", "randread-4k-qd1", col, rep, 1.0)
            x.update({"attempt": attempt, "foreign_cores": fc})
            return x
        cells = [c("vm/blkgw/ublk", 1, 0, 0.9), c("vm/blkgw/ublk", 2, 0, 0.1),
                 c("vm/blkgw/vduse", 1, 0, None), c("vm/qsd/vduse", 1, 0, 1.5)]
        self.assertEqual(vmbench.noisy_keys(cells, 0.5),
                         ["null:vm/blkgw/ublk:randread-4k-qd1:1",
                          "null:vm/qsd/vduse:randread-4k-qd1:1"])
        # the rerun: ublk round 1 quiet now, qsd still noisy but less so
        cells += [c("vm/blkgw/ublk", 1, 1, 0.2), c("vm/qsd/vduse", 1, 1, 0.8)]
        self.assertEqual(vmbench.noisy_keys(cells, 0.5), ["null:vm/qsd/vduse:randread-4k-qd1:1"])
        vmbench.mark_attempts(cells, 0.5)
        kept = [(x["column"], x["rep"], x["attempt"]) for x in cells if not x["discarded"]]
        self.assertEqual(sorted(kept), [("vm/blkgw/ublk", 1, 1), ("vm/blkgw/ublk", 2, 0),
                                        ("vm/blkgw/vduse", 1, 0), ("vm/qsd/vduse", 1, 1)])
        self.assertEqual([x["noisy"] for x in cells], [True, False, False, True, False, True])

    def test_vm_lost_cells(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tempfile
        import vmbench

        want = vmbench.expected_keys(["vm/blkgw/ublk", "vm/null_blk"], ["null", "file"],
                                     ["randread-4k-qd1", "write-1m-qd8"], 2)
        # null_blk once per round under 'any', ublk under each backend
        self.assertEqual(len(want), 2 * (2 + 2 * 2))
        self.assertEqual(want[:3], ["any:vm/null_blk:randread-4k-qd1:1",
                                    "any:vm/null_blk:write-1m-qd8:1",
                                    "null:vm/blkgw/ublk:randread-4k-qd1:1"])
        # the guest died after three cells; a rerun boot got one more
        got = [cell(k.split(":")[0], k.split(":")[2], k.split(":")[1], int(k.split(":")[3]), 1.0)
               for k in want[:3]]
        lost = vmbench.missing_keys(want, got)
        self.assertEqual(lost, want[3:])
        got.append(cell("file", "write-1m-qd8", "vm/blkgw/ublk", 2, 1.0, attempt=1))
        self.assertNotIn("file:vm/blkgw/ublk:write-1m-qd8:2", vmbench.missing_keys(want, got))
        self.assertEqual(len(vmbench.missing_keys(want, got)), len(want) - 4)
        with tempfile.TemporaryDirectory() as d:
            con = os.path.join(d, "console.log")
            with open(con, "w") as fh:
                fh.write("BENCH-END\n[  518.009783] traps: PANIC: double fault, error_code: 0x0\n"
                         "[  518.010961] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI\n"
                         "[  518.014147] Kernel panic - not syncing: Fatal exception\n")
            self.assertEqual(vmbench.guest_stop_reason(con),
                             "Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI")
            with open(con, "w") as fh:
                fh.write("BENCH-END\n")
            self.assertEqual(vmbench.guest_stop_reason(con), "no reason on the console")
            self.assertEqual(vmbench.guest_stop_reason(os.path.join(d, "none")),
                             "no reason on the console")
            # no panic: the first failed check says it (the script on a host)
            with open(con, "w") as fh:
                fh.write("[12.5] FAIL: kernel/blkgw/ublk (memory): no device\n"
                         "[13.0] FAIL: kernel/qsd/vduse (memory): no device\n")
            self.assertEqual(vmbench.guest_stop_reason(con, marks=()),
                             "FAIL: kernel/blkgw/ublk (memory): no device")
            # a panic after a failed check is the reason in the VM
            with open(con, "a") as fh:
                fh.write("[20.1] Kernel panic - not syncing: Fatal exception\n")
            self.assertEqual(vmbench.guest_stop_reason(con),
                             "Kernel panic - not syncing: Fatal exception")

    def test_check_reason(self):
        # blkgw check's words on a host without the module, and with it.
        err = ("m.yaml:7:5: export 1 (n): no transport could start: ublk: the ublk_drv kernel "
               "module is not loaded, no /dev/ublk-control (modprobe ublk_drv; Linux 6.5 or later)\n"
               "1 problem found\n")
        self.assertEqual(H.check_reason(1, err),
                         "the ublk_drv kernel module is not loaded, no /dev/ublk-control "
                         "(modprobe ublk_drv; Linux 6.5 or later)")
        self.assertIsNone(H.check_reason(0, ""))
        self.assertEqual(H.check_reason(1, "\nm.yaml:2:3: gateway: run dir: bad\n"),
                         "m.yaml:2:3: gateway: run dir: bad")
        self.assertEqual(H.check_reason(2, ""), "blkgw check exited 2")

    def test_kernel_host_reasons(self):
        ok = {"nbd-attach": None, "ublk": None, "vduse": None, "null_blk": None}
        every = {"qemu-storage-daemon", "nbd-client", "vdpa"}
        r = H.kernel_host_reasons(ok, every, True)
        self.assertEqual(set(r), set(H.KERNEL_COLUMNS))
        self.assertTrue(all(v is None for v in r.values()))
        self.assertTrue(all(v == "needs root" for v in H.kernel_host_reasons(ok, every, False).values()))
        r = H.kernel_host_reasons(dict(ok, vduse="no vduse"), every - {"vdpa"}, True)
        self.assertEqual(r["kernel/blkgw/vduse"], "no vduse")
        self.assertEqual(r["kernel/qsd/vduse"], "no vduse")
        self.assertIsNone(r["kernel/blkgw/ublk"])
        r = H.kernel_host_reasons(ok, every - {"vdpa"}, True)
        self.assertEqual(r["kernel/qsd/vduse"], "no vdpa on PATH")
        self.assertIsNone(r["kernel/blkgw/vduse"])
        # nbd-client rides on the nbd module: blkgw's attach probe says whether it is there
        r = H.kernel_host_reasons(dict(ok, **{"nbd-attach": "no nbd"}), every, True)
        self.assertEqual(r["kernel/blkgw/nbd-client"], "no nbd")
        self.assertEqual(r["kernel/qsd/nbd-client"], "no nbd")

    def test_place_kernel_paths(self):
        every = {c: None for c in H.KERNEL_COLUMNS}
        only_ublk = {c: "missing" for c in H.KERNEL_COLUMNS}
        only_ublk.update({"kernel/blkgw/ublk": None, "kernel/null_blk": None})
        # auto on a host with everything: all on the host, the VM keeps its ceiling only
        here, there, err, _ = H.place_kernel_paths("auto", every, True)
        self.assertEqual(here, H.KERNEL_COLUMNS)
        self.assertEqual(there, ["vm/null_blk"])
        self.assertEqual(err, [])
        # auto with ublk only: ublk and null_blk here, the rest in the VM, each with a note
        here, there, err, notes = H.place_kernel_paths("auto", only_ublk, True)
        self.assertEqual(here, ["kernel/blkgw/ublk", "kernel/null_blk"])
        self.assertIn("vm/blkgw/vduse", there)
        self.assertNotIn("vm/blkgw/ublk", there)
        self.assertEqual(there[-1], "vm/null_blk")
        self.assertTrue(any("vm/blkgw/vduse in the test VM" in n and "missing" in n for n in notes))
        # ... and without --vm the rest runs nowhere, and the notes say so
        here, there, err, notes = H.place_kernel_paths("auto", only_ublk, False)
        self.assertEqual((here, there), (["kernel/blkgw/ublk", "kernel/null_blk"], []))
        self.assertTrue(any(n.startswith("kernel/blkgw/vduse not run") for n in notes))
        # no kernel path here: no host ceiling either
        none = {c: "missing" for c in H.KERNEL_COLUMNS}
        self.assertEqual(H.place_kernel_paths("auto", none, False)[0], [])
        # host: an error for each path the host lacks; no null_blk only loses the ceiling
        _, _, err, _ = H.place_kernel_paths("host", only_ublk, True)
        self.assertEqual(len(err), len(H.KERNEL_COLUMNS) - 2)
        here, _, err, notes = H.place_kernel_paths("host", dict(every, **{"kernel/null_blk": "x"}), False)
        self.assertEqual(err, [])
        self.assertNotIn("kernel/null_blk", here)
        self.assertTrue(any("kernel/null_blk not run" in n for n in notes))
        # vm: the host is not asked
        here, there, err, _ = H.place_kernel_paths("vm", {}, True)
        self.assertEqual(here, [])
        self.assertEqual(set(there), {H.kernel_twin(c) for c in H.KERNEL_COLUMNS})
        self.assertEqual(H.place_kernel_paths("vm", {}, False)[:2], ([], []))

    def test_kernel_columns(self):
        self.assertEqual(H.kernel_twin("kernel/blkgw/ublk"), "vm/blkgw/ublk")
        self.assertEqual(H.kernel_twin("vm/qsd/vduse"), "kernel/qsd/vduse")
        self.assertIsNone(H.kernel_twin("vm/blkgw/vhost-guest"))
        self.assertIsNone(H.kernel_twin("vm/direct"))
        self.assertIsNone(H.kernel_twin("blkgw/nbd-unix"))
        self.assertFalse(set(H.KERNEL_COLUMNS) & set(H.HOST_COLUMNS))
        for c in H.KERNEL_COLUMNS:
            self.assertEqual(H.column(c)["where"], "host")
            self.assertNotIn("TCG", H.heading(c))
        cols = ["blkgw/nbd-unix", "floor/nbd-unix", "kernel/blkgw/nbd-attach", "kernel/blkgw/vduse",
                "kernel/qsd/vduse", "kernel/null_blk", "vm/blkgw/vduse", "vm/null_blk"]
        # host block devices against the host's null_blk, never the NBD floor
        self.assertEqual(sorted(H.ceiling_pairs(cols)), sorted([
            ("blkgw/nbd-unix", "floor/nbd-unix"), ("kernel/blkgw/nbd-attach", "kernel/null_blk"),
            ("kernel/blkgw/vduse", "kernel/null_blk"), ("kernel/qsd/vduse", "kernel/null_blk"),
            ("vm/blkgw/vduse", "vm/null_blk")]))
        # a peer in the same place only
        self.assertEqual(H.ratio_pairs(cols), [("kernel/blkgw/vduse", "kernel/qsd/vduse")])
        # the host's null_blk runs once per round too, under 'any'
        import vmbench
        self.assertEqual(vmbench.expected_keys(["kernel/blkgw/ublk", "kernel/null_blk"], ["null"],
                                               ["randread-4k-qd1"], 1),
                         ["any:kernel/null_blk:randread-4k-qd1:1",
                          "null:kernel/blkgw/ublk:randread-4k-qd1:1"])

    def test_merge_keeps_vm_incidents(self):
        d1 = {"options": {"backends": ["file"], "columns": ["direct"], "workloads": ["randread-4k-qd1"],
                          "command": "a"}, "machine": {}, "cells": []}
        d2 = {"options": {"backends": ["file"], "columns": ["vm/blkgw/ublk"],
                          "workloads": ["randread-4k-qd1"], "command": "b",
                          "vm_incidents": ["boot 0: the guest stopped"]}, "machine": {}, "cells": []}
        self.assertEqual(H.merge([d1, d2])["options"]["vm_incidents"], ["boot 0: the guest stopped"])

    def test_report_merge_twice(self):
        # bench/run --report DIR --merge VM, run twice: the VM cells count once.
        import json
        import subprocess
        import tempfile
        run = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "run")

        def doc(col, where):
            c = cell("null", "randread-4k-qd1", col, 1, 100.0, where=where, noisy=False,
                     fio_json="raw/x.json", ios=200, runtime_s=2.0)
            return {"options": {"command": f"bench/run {where}", "date": "2026-12-07T00:00:00Z",
                                "backends": ["null"], "columns": [col],
                                "workloads": ["randread-4k-qd1"], "runtime": 2, "ramp": 1,
                                "repeat": 1, "numjobs": 1, "size": "1G"},
                    "machine": {"cpus": 2}, "cells": [c]}
        with tempfile.TemporaryDirectory() as d:
            host, vm = os.path.join(d, "host"), os.path.join(d, "vm")
            for p, x in ((host, doc("blkgw/nbd-unix", "host")), (vm, doc("vm/blkgw/ublk", "tcg"))):
                os.makedirs(p)
                with open(os.path.join(p, "results.json"), "w") as fh:
                    json.dump(x, fh)
            for _ in range(2):
                r = subprocess.run([sys.executable, run, "--report", host, "--merge", vm],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(host, "results.json")) as fh:
                merged = json.load(fh)
            self.assertEqual(sorted(c["column"] for c in merged["cells"]),
                             ["blkgw/nbd-unix", "vm/blkgw/ublk"])
            self.assertEqual(merged["options"]["command"], "bench/run host ; bench/run tcg")

    def test_forced_columns_show_dashes(self):
        cells = [cell("null", "randread-4k-qd1", "blkgw/nbd-unix", 1, 10.0)]
        md = H.backend_tables(cells, "null", ["blkgw/nbd-unix", "qsd/vhost"])
        self.assertIn("qsd vhost-user-blk", md)
        self.assertIn("| 10 | - |", md)

    def test_csv(self):
        cells, _ = self.tables(["blkgw/nbd-unix", "floor/nbd-unix"])
        rows = list(csv.DictReader(io.StringIO(H.cells_csv(cells))))
        self.assertEqual(len(rows), len(cells))
        self.assertEqual(rows[0]["where"], "host")
        srows = list(csv.DictReader(io.StringIO(H.summary_csv(cells, ["null", "file"]))))
        # two workloads x two columns, and the ceiling counts for file too
        self.assertEqual(len([r for r in srows if r["backend"] == "null"]), 4)
        r = [r for r in srows if r["column"] == "blkgw/nbd-unix"][0]
        self.assertEqual((r["iops_min"], r["iops_median"], r["iops_max"]),
                         ("1000", "1500", "2000"))

    def test_plot_data_by_place(self):
        cells = [cell("null", "randread-4k-qd1", "blkgw/nbd-unix", 1, 10.0),
                 cell("null", "randread-4k-qd1", "vm/blkgw/ublk", 1, 20.0),
                 cell("any", "randread-4k-qd1", "vm/null_blk", 1, 30.0)]
        host = H.plot_data(cells, "null", "host")["latency"][0]
        tcg = H.plot_data(cells, "null", "tcg")["latency"][0]
        self.assertIn("blkgw NBD unix", host)
        self.assertNotIn("ublk", host)
        self.assertIn("blkgw ublk (TCG)", tcg)
        self.assertIn("null_blk", tcg)
        self.assertNotIn("NBD unix", tcg)
        # nothing measured: no plot at all (gnuplot fails on empty data)
        self.assertEqual(H.plot_data([], "null", "tcg"), {})

    def test_plot_data(self):
        cells = []
        for qd in (1, 4, 128):
            cells.append(cell("null", f"randread-4k-qd{qd}", "blkgw/nbd-unix", 1, 100.0 * qd,
                              cpu=1.5))
        cells.append(cell("null", "randwrite-4k-qd128", "blkgw/nbd-unix", 1, 5.0, cpu=2.5))
        p = H.plot_data(cells, "null")
        self.assertEqual(set(p), {"iops-qd", "latency", "cpu"})
        data = p["iops-qd"][0].splitlines()
        self.assertEqual([x.split()[0] for x in data[1:]], ["1", "4", "128"])
        self.assertIn('"blkgw NBD unix" 1.500 2.500', p["cpu"][0])
        s = H.gnuplot_script("/x.dat", p["cpu"][1], "/x.svg", "/x.png")
        self.assertIn("set terminal svg", s)
        self.assertIn("pngcairo", s)


if __name__ == "__main__":
    unittest.main()
