# A throwaway single-node Ceph cluster for the rbd tests. Source it after
# tests/lib.sh, then call ceph_start.
#
#   ceph_start      one mon and one memstore OSD, no cephx, bound to
#                   $CEPH_ADDR (default 127.0.0.1; the VM test binds a tap
#                   link's address inside a network namespace of its own),
#                   everything under $T/ceph; sets CEPH_CONF (exported) and
#                   creates pool "rbd". About a second on an idle machine.
#   ceph_stop       SIGTERM the OSD, then the mon (also run on exit)
#   CEPH_OSD_PID, CEPH_MON_PID
#
# Facts and settings: /work/shared/reference/ceph-test-cluster.md (the paxos
# intervals are what makes it fast; memstore keeps data in RAM, ~3.4x what is
# written, so keep images small).
requires ceph-mon ceph-osd monmaptool ceph rbd uuidgen
# The ceph CLI is Python and needs Debian's modules.
PATH=/usr/bin:$PATH
export PATH

CEPH_MON_PID=""
CEPH_OSD_PID=""
CEPH_ADDR=${CEPH_ADDR:-127.0.0.1}

_ceph_alive() { # pid
  [ -n "$1" ] && [ -e "/proc/$1/exe" ] && [ "$(readlink "/proc/$1/exe" 2>/dev/null)" != "" ] &&
    ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

ceph_stop() {
  for p in "$CEPH_OSD_PID" "$CEPH_MON_PID"; do
    [ -n "$p" ] || continue
    kill -CONT "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || true
    i=0
    while _ceph_alive "$p" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    _ceph_alive "$p" && kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null || true
  done
  CEPH_OSD_PID="" CEPH_MON_PID=""
}

ceph_start() {
  d=$T/ceph
  mkdir -p "$d/mon" "$d/osd" "$d/run" "$d/log"
  p2=$(free_port) p1=$(free_port) lo=$(free_port)
  # Daemon ports: a private range above the one the kernel gave us.
  hi=$((lo + 40))
  fsid=$(uuidgen)
  CEPH_CONF=$d/ceph.conf
  export CEPH_CONF
  cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:$CEPH_ADDR:$p2,v1:$CEPH_ADDR:$p1]
public addr = $CEPH_ADDR
cluster addr = $CEPH_ADDR
ms bind port min = $lo
ms bind port max = $hi
auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
run dir = $d/run
admin socket = $d/run/\$name.asok
log file = $d/log/\$name.log
crash dir = $d/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon mgr mkfs grace = 31536000
[mon]
mon data = $d/mon/\$cluster-\$id
paxos propose interval = 0.05
paxos min wait = 0.01
[osd]
osd data = $d/osd/\$cluster-\$id
osd objectstore = memstore
osd op num shards = 2
osd op num threads per shard = 1
# A PG's read lease is osd_heartbeat_grace x 0.8 (16 s). The stall test
# SIGSTOPs the only OSD; stopped past the lease, its PGs sat "waiting for
# readable" for good after SIGCONT (seen under ASan, 180 s+). One OSD has no
# peers to fail over to, so a long lease costs nothing here.
osd heartbeat grace = 600
[client]
log file = /dev/null
admin socket =
EOF
  monmaptool --create --fsid "$fsid" --addv a "[v2:$CEPH_ADDR:$p2,v1:$CEPH_ADDR:$p1]" "$d/monmap" >/dev/null ||
    fail "monmaptool failed"
  ceph-mon --mkfs -i a --monmap "$d/monmap" --keyring /dev/null || fail "ceph-mon --mkfs failed"
  ceph-mon -f -i a 2>>"$d/log/mon.err" &
  CEPH_MON_PID=$!
  on_exit ceph_stop
  uuid=$(uuidgen)
  # One Python process (the ceph CLI's start-up is the slow part) makes the
  # OSD's id and the pool; the pool's PGs become active once the OSD boots.
  id=$(timeout 60 /usr/bin/python3 - "$CEPH_CONF" "$uuid" <<'PY'
import json, sys, rados
c = rados.Rados(conffile=sys.argv[1])
c.connect(timeout=30)
def cmd(**kw):
    rc, out, err = c.mon_command(json.dumps(kw), b"")
    if rc < 0:
        sys.exit("%s: %s" % (kw["prefix"], err))
    return out
print(json.loads(cmd(prefix="osd new", uuid=sys.argv[2], format="json"))["osdid"])
cmd(prefix="osd pool create", pool="rbd", pg_num=8, pgp_num=8)
cmd(prefix="osd pool application enable", pool="rbd", app="rbd")
c.shutdown()
PY
) || fail "cannot make the OSD and pool (mon log: $d/log)"
  mkdir -p "$d/osd/ceph-$id"
  ceph-osd -i "$id" --mkfs --osd-uuid "$uuid" >/dev/null 2>&1 || fail "ceph-osd --mkfs failed"
  ceph-osd -f -i "$id" 2>>"$d/log/osd.err" &
  CEPH_OSD_PID=$!
}

# rbd with a bound: a command that waits on a stopped cluster must not hang the test.
rbd_t() { timeout 120 rbd "$@"; }
