#!/bin/sh
# vm-libvirt: Debian's libvirt runs a TCG guest whose disks blkgw serves,
# with the domain XML docs/libvirt.md gives: an NBD disk over a unix socket
# (<disk type='network'>, <host transport='unix'>) and a vhost-user-blk disk
# (<disk type='vhostuser'> with reconnect, memfd shared memory). The XML
# passes virt-xml-validate (the block-device form too), `virsh
# domxml-to-native` turns it into a QEMU command line, `virsh define` and
# `start` boot it; the guest (tests/vm/guest/libvirt-disks.sh) reads the NBD
# disk and writes both, and this script checks the image files.
#
# libvirt runs unprivileged (qemu:///session as nobody, its config, sockets
# and the domain's files under the test's folder): nothing of the host's
# libvirt is touched. blkgw runs as root and hands its sockets to nobody
# (socket-owner). The session daemon this starts is killed by its pid.
. "$(dirname "$0")/../lib.sh"
requires virsh virt-xml-validate setpriv jq md5sum
[ "$(id -u)" -eq 0 ] || skip "needs root (setpriv to nobody for libvirt's session)"
here=$(cd "$(dirname "$0")" && pwd)
qemu=$(command -v qemu-system-x86_64) || skip "no qemu-system-x86_64"

chmod 755 "$T"
lv=$T/lv
mkdir -p "$lv/home" "$lv/share"
chown 65534:65534 "$lv/home"
chmod 777 "$lv/share"
"$here/build-guest.sh" --out "$lv/guest" --script "$here/guest/libvirt-disks.sh" -q \
  >"$T/build.log" 2>&1 || { cat "$T/build.log"; fail "build-guest.sh failed"; }
chmod -R a+rX "$lv/guest"

# Images: d (NBD) with a pattern in its first MiB, e (vhost-user-blk) empty.
truncate -s 16M "$T/d.raw"
truncate -s 32M "$T/e.raw"
head -c 1048576 /dev/urandom >"$T/pat"
dd if="$T/pat" of="$T/d.raw" conv=notrunc 2>/dev/null
md5=$(md5sum <"$T/pat" | cut -d' ' -f1)
cat >"$T/m.yaml" <<YAML
version: 1
gateway: { run-dir: $T/run }
images:
  d: { backend: file, path: $T/d.raw }
  e: { backend: file, path: $T/e.raw }
exports:
  - { image: d, transports: [nbd], nbd: { socket: $lv/share/d.sock, socket-owner: 65534 } }
  - { image: e, transports: [vhost-user-blk], vhost-user-blk: { socket: $lv/share/e.sock, socket-owner: 65534 } }
YAML
start_blkgw "$T/m.yaml"

cat >"$lv/share/dom.xml" <<XML
<domain type='qemu'>
  <name>blkgw-vm-libvirt</name>
  <memory unit='MiB'>512</memory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$lv/guest/vmlinuz</kernel>
    <initrd>$lv/guest/initrd</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 oops=panic no_timer_check blkgw.md5=$md5</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$qemu</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='d'>
        <host transport='unix' socket='$lv/share/d.sock'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='vhostuser' device='disk'>
      <driver name='qemu' type='raw'/>
      <source type='unix' path='$lv/share/e.sock'>
        <reconnect enabled='yes' timeout='2'/>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$lv/share/console.log'/>
    </serial>
  </devices>
</domain>
XML
# The block-device form (a transport with a kernel device: ublk, VDUSE, attached NBD).
sed -e "/<disk type='network'/,/<\/disk>/d" -e "/<disk type='vhostuser'/,/<\/disk>/c\\
    <disk type='block' device='disk'>\\
      <driver name='qemu' type='raw' cache='none' io='native'/>\\
      <source dev='$T/run/dev/d'/>\\
      <target dev='vda' bus='virtio'/>\\
    </disk>" "$lv/share/dom.xml" >"$lv/share/dom-block.xml"
chmod 644 "$lv/share/"*.xml
virt-xml-validate "$lv/share/dom.xml" domain || fail "the domain XML does not validate"
virt-xml-validate "$lv/share/dom-block.xml" domain || fail "the block-device domain XML does not validate"
echo "ok - virt-xml-validate: NBD + vhost-user-blk, and block device"

lvsh() {
  setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$lv/home" XDG_RUNTIME_DIR="$lv/home/run" XDG_CONFIG_HOME="$lv/home/config" \
    XDG_CACHE_HOME="$lv/home/cache" timeout 120 virsh -q -c qemu:///session "$@"
}
lv_cleanup() {
  lvsh destroy blkgw-vm-libvirt >/dev/null 2>&1 || true
  lvsh undefine blkgw-vm-libvirt >/dev/null 2>&1 || true
  # The session daemon (libvirtd --timeout=120): ours, by its pid file.
  for pf in "$lv"/home/run/libvirt/*.pid; do
    pid=$(cat "$pf" 2>/dev/null) || continue
    kill "$pid" 2>/dev/null || continue
    j=0
    while kill -0 "$pid" 2>/dev/null && [ $j -lt 100 ]; do j=$((j + 1)); sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    echo "# stopped libvirt's session daemon (pid $pid, $pf)"
  done
}
on_exit lv_cleanup

lvsh domxml-to-native qemu-argv "$lv/share/dom.xml" >"$T/argv" 2>&1 || { cat "$T/argv"; fail "virsh domxml-to-native refused the XML"; }
grep -q '"driver":"nbd","server":{"type":"unix","path":"'"$lv/share/d.sock"'"}' "$T/argv" ||
  fail "domxml-to-native: no NBD blockdev on d.sock: $(cat "$T/argv")"
grep -q 'vhost-user-blk-pci' "$T/argv" || fail "domxml-to-native: no vhost-user-blk-pci: $(cat "$T/argv")"
grep -q 'memory-backend-memfd' "$T/argv" || fail "domxml-to-native: no memfd memory: $(cat "$T/argv")"
echo "ok - virsh domxml-to-native: NBD blockdev, vhost-user-blk-pci, memfd"

lvsh define "$lv/share/dom.xml" >"$T/define.out" 2>&1 || { cat "$T/define.out"; fail "virsh define failed"; }
lvsh start blkgw-vm-libvirt >"$T/start.out" 2>&1 || {
  cat "$T/start.out" "$lv/home/cache/libvirt/qemu/log/blkgw-vm-libvirt.log" 2>/dev/null
  fail "virsh start failed"
}
echo "ok - virsh define + start"
"$BLKGW" status --json >"$T/s.json"
i=0
until [ "$(lvsh domstate blkgw-vm-libvirt 2>/dev/null)" = "shut off" ]; do
  i=$((i + 1))
  if [ $i -ge 300 ]; then
    cat "$lv/share/console.log" "$lv/home/cache/libvirt/qemu/log/blkgw-vm-libvirt.log" 2>/dev/null
    fail "the guest did not power off within 300 s"
  fi
  sleep 1
done
grep -E 'PASS|FAIL|SKIP' "$lv/share/console.log" || true
grep -q 'BLKGW-VM-RESULT: 0' "$lv/share/console.log" ||
  { cat "$lv/share/console.log"; fail "the guest's checks failed"; }
jq -e '[.exports[] | select(.clients > 0) | .id] | sort == ["d", "e"]' "$T/s.json" >/dev/null ||
  fail "while the guest ran, blkgw did not see QEMU on both exports: $(jq -c '[.exports[] | [.id, .clients]]' "$T/s.json")"
yes blkgw-libvirt | head -c 1048576 >"$T/p"
cmp -n 1048576 "$T/p" "$T/e.raw" || fail "e.raw does not hold what the guest wrote over vhost-user-blk"
dd if="$T/d.raw" bs=1M skip=1 count=1 2>/dev/null | cmp - "$T/p" || fail "d.raw does not hold what the guest wrote over NBD"
cmp -n 1048576 "$T/pat" "$T/d.raw" || fail "d.raw's first MiB changed"
echo "ok - the guest read the NBD disk and wrote both; the image files hold it"
stop_blkgw
