#!/bin/bash
# Incremental backup costs (docs/backup.md, issue: changed-block tracking):
# 4k random writes over NBD (fio's nbd engine) to a file image with tracking
# off, on with every chunk already marked, on with every write landing in a
# new chunk (rw=write:60k after a checkpoint: one 4k write per 64K chunk,
# against the same pattern with tracking off),
# and on while a copy-before-write backup of it is read at full speed with
# nbdcopy; then the backup's read throughput (nbdcopy to null:) against
# nbdcopy reading the image file itself. QD1 and QD32, interleaved
# repetitions, one table with medians and the ratios against tracking off.
#
#   bench/backup/run.sh [--runtime S] [--repeat N] [--out DIR] [--dir DIR] [--ab BLKGW]
#                       [--rate R] [--qsd]
#
# --dir: where the image and run dir go (default /tmp). On XFS or btrfs the
# backup's view is a reflink copy instead of copy-before-write.
# --ab BLKGW: A/B against another blkgw binary (say, main's before a change):
# each repetition runs every case with it ("A") and then with this tree's
# ("B"), one table each and the B/A ratios, so load on the machine hits both.
# --rate R: one case more, the backup read meanwhile with `backup start
# --rate R` (this tree's blkgw only; the other cases read it uncapped).
# --qsd: the peer, in the same repetitions: qemu-storage-daemon's fleecing
# (a copy-before-write filter over the image, a sparse temporary file as its
# target, snapshot-access exported for the backup; buffered, as blkgw's
# image is here) with the same fio writes and nbdcopy loop, against qsd
# exporting the image alone; and its backup read against the file's.
#
# Each timed case starts after a sync (the cases before leave a GiB or more
# dirty in the page cache, whose writeback would land in it).
#
# Measurements, never tests: nothing here fails because something is slow.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BLKGW=${BLKGW:-$ROOT/build/blkgw}
RUNTIME=5
REPEAT=3
OUT=""
DIR=/tmp
AB=""
RATE=""
QSD=""
while [ $# -gt 0 ]; do
	case $1 in
	--runtime) RUNTIME=$2; shift 2 ;;
	--repeat) REPEAT=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--dir) DIR=$2; shift 2 ;;
	--ab) AB=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	--qsd) QSD=1; shift ;;
	-h | --help) sed -n 2,27p "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
for c in fio nbdcopy jq ${QSD:+qemu-storage-daemon}; do command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }; done
OUT=${OUT:-/tmp/blkgw-bench-backup.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
W=$(mktemp -d "$DIR/blkgw-bench-backup-w.XXXXXX")
PID=""
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
export PATH="/usr/bin:$PATH"

# One daemon per tracking setting; the image is 4 GiB, written in its first 1 GiB.
serve() { # track: true|false
	[ -n "$PID" ] && { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
	rm -rf "$W/run"
	cat >"$W/m.yaml" <<-YAML
	version: 1
	gateway: { run-dir: $W/run }
	images:
	  disk: { backend: file, path: $W/disk.img, size: 4G, track-changes: $1 }
	exports:
	  - { image: disk, transports: [nbd], nbd: { socket: $W/disk.sock } }
	YAML
	"$BLKGW" serve "$W/m.yaml" 2>>"$OUT/blkgw.log" &
	PID=$!
	export BLKGW_CONTROL=$W/run/control.sock
	for _ in $(seq 100); do "$BLKGW" status >/dev/null 2>&1 && return; sleep 0.1; done
	echo "blkgw did not start" >&2; exit 1
}
# The peer: qsd exporting the image as "disk"; with fleece, writes go through
# a copy-before-write filter whose point-in-time view is exported as "backup".
qsd_serve() { # plain|fleece
	[ -n "$PID" ] && { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
	rm -f "$W/disk.sock" "$W/tmp.img"
	local node=disk0 extra=() backup=()
	if [ "$1" = fleece ]; then
		truncate -s 4G "$W/tmp.img"
		extra=(--blockdev "driver=file,node-name=tmp-file,filename=$W/tmp.img"
			--blockdev "driver=raw,node-name=tmp,file=tmp-file"
			--blockdev "driver=copy-before-write,node-name=cbw,file=disk0,target=tmp"
			--blockdev "driver=snapshot-access,node-name=acc,file=cbw")
		backup=(--export "type=nbd,id=b,node-name=acc,name=backup")
		node=cbw
	fi
	qemu-storage-daemon \
		--blockdev "driver=file,node-name=disk0-file,filename=$W/disk.img" \
		--blockdev "driver=raw,node-name=disk0,file=disk0-file" "${extra[@]}" \
		--nbd-server "addr.type=unix,addr.path=$W/disk.sock" \
		--export "type=nbd,id=w,node-name=$node,name=disk,writable=on" "${backup[@]}" \
		2>>"$OUT/qsd.log" &
	PID=$!
	for _ in $(seq 100); do [ -S "$W/disk.sock" ] && return; sleep 0.1; done
	echo "qemu-storage-daemon did not start" >&2; exit 1
}
URI="nbd+unix:///disk?socket=$W/disk.sock"
fio_run() { # name qd rw [extra...] -> prints "iops mean_us"
	local name=$1 qd=$2 rw=$3; shift 3
	# Every case starts with nothing dirty in the page cache: otherwise the
	# writeback of the cases before (1 GiB and more) lands in this one.
	sync
	fio --name="$name" --ioengine=nbd --uri="$URI" --rw="$rw" --bs=4k --iodepth="$qd" \
		--size=1G --runtime="$RUNTIME" --time_based --randrepeat=0 "$@" \
		--output-format=json --output="$OUT/$name.json" >/dev/null 2>&1
	jq -r '.jobs[0].write | "\(.iops) \(.clat_ns.mean / 1000)"' "$OUT/$name.json"
}

truncate -s 4G "$W/disk.img"
ck=0
if [ -n "$AB" ]; then VARIANTS="A B"; else VARIANTS="B"; fi
for v in $VARIANTS; do : >"$OUT/raw.$v.txt"; done
NEW=$BLKGW
for r in $(seq "$REPEAT"); do
for v in $VARIANTS; do
	if [ "$v" = A ]; then BLKGW=$AB; else BLKGW=$NEW; fi
	RAW=$OUT/raw.$v.txt
	for qd in 1 32; do
		serve false
		echo "off qd$qd $(fio_run off-qd$qd-r$r-$v $qd randwrite)" >>"$RAW"
		echo "offseq qd$qd $(fio_run offseq-qd$qd-r$r-$v $qd write:60k)" >>"$RAW"
		serve true
		# Every chunk of the 1 GiB marked first (one sequential pass).
		fio --name=mark --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=1G \
			>/dev/null 2>&1
		echo "marked qd$qd $(fio_run marked-qd$qd-r$r-$v $qd randwrite)" >>"$RAW"
		ck=$((ck + 1))
		"$BLKGW" checkpoint create disk "k$ck" --no-snapshot >/dev/null
		echo "first qd$qd $(fio_run first-qd$qd-r$r-$v $qd write:60k)" >>"$RAW"
		# A backup of a new checkpoint (copy-before-write, or a reflink copy on
		# XFS/btrfs), read in a loop while fio writes.
		ck=$((ck + 1))
		url=$("$BLKGW" backup start disk "k$ck" --socket "$W/b.sock")
		(while [ ! -e "$W/stop" ]; do nbdcopy "$url" null: || break; done) &
		reader=$!
		echo "backup qd$qd $(fio_run backup-qd$qd-r$r-$v $qd randwrite)" >>"$RAW"
		touch "$W/stop"; wait $reader || true; rm -f "$W/stop"
		copied=$("$BLKGW" status --json | jq '.exports[] | select(.id == "disk") | .tracking.copy_before_write.copied_bytes // 0')
		echo "copied qd$qd $copied 0" >>"$RAW"
		"$BLKGW" backup stop "disk@k$ck" >/dev/null
		if [ -n "$RATE" ] && [ "$v" = B ]; then
			ck=$((ck + 1))
			url=$("$BLKGW" backup start disk "k$ck" --socket "$W/b.sock" --rate "$RATE")
			(while [ ! -e "$W/stop" ]; do nbdcopy "$url" null: || break; done) &
			reader=$!
			echo "backuprate qd$qd $(fio_run backuprate-qd$qd-r$r-$v $qd randwrite)" >>"$RAW"
			touch "$W/stop"; wait $reader || true; rm -f "$W/stop"
			"$BLKGW" backup stop "disk@k$ck" >/dev/null
		fi
	done
	# Backup read throughput: the export (a new checkpoint's view, idle guest) vs the file.
	ck=$((ck + 1))
	url=$("$BLKGW" backup start disk "k$ck" --socket "$W/b.sock")
	t0=$(date +%s.%N); nbdcopy "$url" null:; t1=$(date +%s.%N)
	echo "readbackup - $(echo "4096 / ($t1 - $t0)" | bc -l) 0" >>"$RAW"
	"$BLKGW" backup stop "disk@k$ck" >/dev/null
	t0=$(date +%s.%N); nbdcopy "$W/disk.img" null:; t1=$(date +%s.%N)
	echo "readfile - $(echo "4096 / ($t1 - $t0)" | bc -l) 0" >>"$RAW"
	if [ -n "$QSD" ] && [ "$v" = B ]; then
		kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
		for qd in 1 32; do
			qsd_serve plain
			echo "qsdoff qd$qd $(fio_run qsdoff-qd$qd-r$r $qd randwrite)" >>"$RAW"
			qsd_serve fleece
			(while [ ! -e "$W/stop" ]; do nbdcopy "nbd+unix:///backup?socket=$W/disk.sock" null: || break; done) &
			reader=$!
			echo "qsdbackup qd$qd $(fio_run qsdbackup-qd$qd-r$r $qd randwrite)" >>"$RAW"
			touch "$W/stop"; wait $reader || true; rm -f "$W/stop"
		done
		qsd_serve fleece
		t0=$(date +%s.%N); nbdcopy "nbd+unix:///backup?socket=$W/disk.sock" null:; t1=$(date +%s.%N)
		echo "qsdreadbackup - $(echo "4096 / ($t1 - $t0)" | bc -l) 0" >>"$RAW"
		kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
	fi
done
done
BLKGW=$NEW

/usr/bin/python3 - $(for v in $VARIANTS; do echo "$OUT/raw.$v.txt"; done) <<'PY' | tee "$OUT/table.md"
import statistics, sys
med = lambda v, i: statistics.median(x[i] for x in v)
allrows = {}
for path in sys.argv[1:]:
    rows = allrows[path.rsplit(".", 2)[-2]] = {}
    for line in open(path):
        k, qd, a, b = line.split()
        rows.setdefault((k, qd), []).append((float(a), float(b)))
for variant, rows in allrows.items():
  if len(allrows) > 1:
    print(f"\n### {variant}: {'--ab binary' if variant == 'A' else 'this tree'}\n")
  print("| case | pattern | QD | write IOPS (median) | mean latency us | vs tracking off, same pattern | runs |")
  print("|---|---|---|---|---|---|---|")
  for k, base_k, pat, label in (
          ("off", "off", "randwrite", "tracking off"),
          ("marked", "off", "randwrite", "tracking on, chunks already marked"),
          ("backup", "off", "randwrite", "tracking on, a backup of it read meanwhile (nbdcopy loop)"),
          ("backuprate", "off", "randwrite", "the same, the backup started with --rate"),
          ("qsdoff", "qsdoff", "randwrite", "qsd: the image exported alone"),
          ("qsdbackup", "qsdoff", "randwrite", "qsd: fleecing, its backup read meanwhile (vs qsd alone)"),
          ("offseq", "offseq", "write:60k", "tracking off"),
          ("first", "offseq", "write:60k", "tracking on, every write a new chunk")):
      for qd in ("qd1", "qd32"):
          v = rows.get((k, qd))
          if not v:
              continue
          base = med(rows[(base_k, qd)], 0)
          print(f"| {label} | {pat} | {qd[2:]} | {med(v, 0):,.0f} | {med(v, 1):.1f} | "
                f"{med(v, 0) / base:.2f}x | {', '.join(f'{x[0]:,.0f}' for x in v)} |")
  for qd in ("qd1", "qd32"):
      v = rows.get(("copied", qd))
      if v:
          print(f"\ncopied aside during the backup at QD{qd[2:]}: median {med(v, 0) / 2**20:.0f} MiB")
  rb, rf = rows.get(("readbackup", "-")), rows.get(("readfile", "-"))
  if rb and rf:
      print(f"\nbackup read (nbdcopy of IMAGE@CHECKPOINT to null:): median {med(rb, 0):,.0f} MiB/s; "
            f"nbdcopy of the image file: {med(rf, 0):,.0f} MiB/s; ratio {med(rb, 0) / med(rf, 0):.2f}x")
  qb = rows.get(("qsdreadbackup", "-"))
  if qb and rf:
      print(f"\nqsd's backup read (nbdcopy of its snapshot-access export): median {med(qb, 0):,.0f} MiB/s; "
            f"ratio to the file {med(qb, 0) / med(rf, 0):.2f}x; blkgw / qsd {med(rb, 0) / med(qb, 0):.2f}x")
if len(allrows) > 1:
    a, b = allrows["A"], allrows["B"]
    print("\n### B/A (medians)\n")
    for k in ("backup", "off", "marked"):
        for qd in ("qd1", "qd32"):
            if (k, qd) in a and (k, qd) in b:
                print(f"- {k} QD{qd[2:]}: B/A {med(b[(k, qd)], 0) / med(a[(k, qd)], 0):.2f}x IOPS"
                      f" (A {med(a[(k, qd)], 0):,.0f}, B {med(b[(k, qd)], 0):,.0f})")
    if ("readbackup", "-") in a and ("readbackup", "-") in b:
        print(f"- backup read: B/A {med(b[('readbackup', '-')], 0) / med(a[('readbackup', '-')], 0):.2f}x MiB/s")
PY
echo "results in $OUT"
