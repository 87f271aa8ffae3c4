#!/bin/bash
# Build a test guest for QEMU: DIR/vmlinuz (Debian bookworm-backports 6.12) and
# DIR/initrd (an uncompressed cpio with busybox as /init shell, the kernel
# modules the block transports need, guest-lib.sh, the guest script and any host
# binaries a test asks for, with their shared libraries).
#
# The kernel package is fetched once through a private apt configuration into a
# cache outside the source tree; a warm run needs no network. See README.md.
set -euo pipefail

me=build-guest
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
	cat <<EOF
usage: $0 --out DIR --script GUEST_SCRIPT [options]
       $0 --fetch-only [options]
       $0 --qemu [--cache DIR] [--refresh] [-q]

  --out DIR            write DIR/vmlinuz, DIR/initrd, DIR/manifest.txt
  --script FILE        guest script, run by /init as /test/main.sh
  --bin PATH|NAME      add an executable as /usr/local/bin/NAME with the shared
                       libraries ldd lists and the loader (repeatable); a NAME
                       without a slash is looked up in PATH
  --file SRC:DST       copy a file or directory to DST in the guest (repeatable);
                       ELF files get their libraries too
  --python             add Debian's python3 as /usr/bin/python3 with its standard
                       library (without its tests, build config, IDLE and Tk)
  --module NAME        also include kernel module NAME and its dependencies
                       (repeatable; the default set is always included:
                       $default_modules)
  --cache DIR          kernel cache (default \$BLKGW_VM_CACHE, else
                       /var/cache/blkgw-vm, else ~/.cache/blkgw-vm for non-root)
  --kernel-version V   use kernel V (uname -r form, e.g. 6.12.95+deb12-amd64)
  --refresh            ask the mirror again which 6.12 kernel is current
  --fetch-only         only fill the kernel cache, build nothing
  --qemu               fetch the newest QEMU in bookworm-backports (10.x:
                       qemu-system-x86, -common, -data) into CACHE/qemu once,
                       unpacked, never installed; print the path of its
                       qemu-system-x86_64 (for run-vm.sh's QEMU_SYSTEM)
  -q, --quiet          print only errors
  -h, --help           this text

Environment: BLKGW_VM_CACHE, BLKGW_VM_MIRROR (override the Debian mirror URI),
BLKGW_VM_BUSYBOX (path of a static busybox, default /bin/busybox).
EOF
}

default_modules="virtio_blk nbd ublk_drv vhost_iotlb vdpa vduse virtio_vdpa"
kernel_series=6.12

die() { echo "$me: error: $*" >&2; exit 1; }
say() { [ "$quiet" = 1 ] || echo "$me: $*"; }

# Default cache: /var/cache/blkgw-vm, or the user's cache dir when that is not
# writable (not root).
default_cache=/var/cache/blkgw-vm
if [ "$(id -u)" != 0 ] && ! { mkdir -p "$default_cache" && [ -w "$default_cache" ]; } 2>/dev/null; then
	default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/blkgw-vm"
fi
out="" script="" cache="${BLKGW_VM_CACHE:-$default_cache}" kver="" refresh=0
fetch_only=0 quiet=0 qemu=0 python=0
bins=() files=() modules=()
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=${2:?}; shift 2 ;;
	--script) script=${2:?}; shift 2 ;;
	--bin) bins+=("${2:?}"); shift 2 ;;
	--file) files+=("${2:?}"); shift 2 ;;
	--module) modules+=("${2:?}"); shift 2 ;;
	--python) python=1; shift ;;
	--cache) cache=${2:?}; shift 2 ;;
	--kernel-version) kver=${2:?}; shift 2 ;;
	--refresh) refresh=1; shift ;;
	--fetch-only) fetch_only=1; shift ;;
	--qemu) qemu=1; shift ;;
	-q|--quiet) quiet=1; shift ;;
	-h|--help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
done
if [ "$fetch_only" = 0 ] && [ "$qemu" = 0 ]; then
	[ -n "$out" ] || { usage >&2; die "--out is required"; }
	[ -n "$script" ] || { usage >&2; die "--script is required"; }
	[ -f "$script" ] || die "guest script '$script' not found"
fi

for tool in apt-get apt-cache dpkg-deb xz cpio flock ldd; do
	command -v "$tool" >/dev/null 2>&1 ||
		die "'$tool' is missing (scripts/deps.sh test installs what the VM tests need)"
done

t_start=$(date +%s.%N)
tmp_dirs=()
cleanup() {
	local d
	for d in "${tmp_dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# --- the kernel cache --------------------------------------------------------

mkdir -p "$cache" 2>/dev/null || true
if [ ! -d "$cache" ] || [ ! -w "$cache" ]; then
	die "kernel cache '$cache' is not writable (set BLKGW_VM_CACHE or --cache)"
fi
cache=$(cd "$cache" && pwd)

# The Debian mirror the host already uses, so that the download goes where the
# host's own apt goes. Reads deb822 .sources files, then one-line lists.
host_mirror() {
	if [ -n "${BLKGW_VM_MIRROR:-}" ]; then
		echo "$BLKGW_VM_MIRROR"
		return
	fi
	local f uri=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		uri=$(awk -v suite="$codename" '
			function flush() {
				if (uris != "" && (" " suites " ") ~ (" " suite " ") && uris !~ /security/) {
					split(uris, u, " "); print u[1]; found = 1; exit
				}
				uris = ""; suites = ""
			}
			/^[ \t]*$/ { flush(); next }
			/^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
			/^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
			END { if (!found) flush() }' "$f")
		[ -n "$uri" ] && break
	done
	if [ -z "$uri" ]; then
		uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			sed -e 's/\[[^]]*\]//' |
			awk -v suite="$codename" '$1 == "deb" && $3 == suite && $2 !~ /security/ { print $2; exit }')
	fi
	echo "${uri:-http://deb.debian.org/debian}"
}

host_keyring() {
	local k
	k=$(grep -h '^Signed-By:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 |
		sed 's/^Signed-By:[ \t]*//')
	case "$k" in
	/*) [ -f "$k" ] && { echo "$k"; return; } ;;
	esac
	echo /usr/share/keyrings/debian-archive-keyring.gpg
}

apt_opts=()
setup_apt() {
	local a="$cache/apt"
	mkdir -p "$a/sources" "$a/preferences" "$a/lists/partial" "$a/cache/archives/partial"
	cat >"$a/sources/blkgw-vm.sources" <<EOF
Types: deb
URIs: $(host_mirror)
Suites: $codename-backports
Components: main
Signed-By: $(host_keyring)
EOF
	apt_opts=(
		-o "Dir::Etc::SourceList=/dev/null"
		-o "Dir::Etc::SourceParts=$a/sources"
		-o "Dir::Etc::Preferences=/dev/null"
		-o "Dir::Etc::PreferencesParts=$a/preferences"
		-o "Dir::State::Lists=$a/lists"
		-o "Dir::Cache=$a/cache"
		-o "Dir::Cache::pkgcache=$a/cache/pkgcache.bin"
		-o "Dir::Cache::srcpkgcache=$a/cache/srcpkgcache.bin"
		-o "Acquire::Retries=3"
	)
	# apt drops privileges to _apt for downloads, which cannot write our cache.
	[ "$(id -u)" = 0 ] && apt_opts+=(-o "APT::Sandbox::User=root")
	return 0
}

# Private apt configuration, lists fetched fresh.
apt_update() {
	setup_apt
	say "apt-get update (bookworm-backports, private lists in $cache/apt)"
	apt-get "${apt_opts[@]}" -q update >"$cache/apt/update.log" 2>&1 || {
		cat "$cache/apt/update.log" >&2
		die "apt-get update for $codename-backports failed (is the Debian mirror reachable?)"
	}
}

# Fetch and unpack the kernel package into $cache/kernel/$kver.
fetch_kernel() {
	local work pkg
	# we hold the lock: any tmp.* left here is from a killed run
	rm -rf "$cache"/tmp.*
	apt_update
	if [ -z "$kver" ]; then
		pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
			sed -n "s/^ *Depends: \(linux-image-${kernel_series}[.0-9]*[^ ]*-amd64\)\$/\1/p" |
			sort -V | tail -n1)
		[ -n "$pkg" ] || die "no linux-image-$kernel_series.*-amd64 found through linux-image-amd64 in $codename-backports"
		kver=${pkg#linux-image-}
	fi
	pkg=linux-image-$kver
	work=$(mktemp -d "$cache/tmp.XXXXXX")
	tmp_dirs+=("$work")
	say "downloading $pkg"
	(cd "$work" && apt-get "${apt_opts[@]}" -q download "$pkg") >"$work/download.log" 2>&1 || {
		cat "$work/download.log" >&2
		die "apt-get download $pkg failed"
	}
	local deb
	deb=$(find "$work" -maxdepth 1 -name "linux-image-*.deb" | head -n1)
	[ -n "$deb" ] || die "apt-get download produced no .deb"
	say "unpacking $(basename "$deb")"
	dpkg-deb -x "$deb" "$work/root"
	local k="$work/kernel"
	mkdir -p "$k"
	[ -f "$work/root/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
	mv "$work/root/boot/vmlinuz-$kver" "$k/vmlinuz"
	mv "$work/root/boot/config-$kver" "$k/config"
	mv "$work/root/lib/modules/$kver" "$k/modules"
	# name (dashes folded to underscores, as the kernel does) and path of every module
	(cd "$k/modules" && find kernel -name '*.ko*' | while read -r p; do
		n=${p##*/}; n=${n%%.ko*}; echo "${n//-/_} $p"
	done) | LC_ALL=C sort >"$k/modules.idx"
	{
		echo "package=$pkg"
		echo "deb=$(basename "$deb")"
		echo "sha256=$(sha256sum "$deb" | cut -d' ' -f1)"
		echo "fetched=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	} >"$k/SOURCE"
	mkdir -p "$cache/kernel"
	rm -rf "$cache/kernel/$kver"
	mv "$k" "$cache/kernel/$kver"
	touch "$cache/kernel/$kver/.complete"
	rm -rf "$work"
}

# Fetch and unpack QEMU from backports into $cache/qemu/$ver (the packages
# with the same version: the binary, its common helpers, its data files).
fetch_qemu() {
	local work ver d
	rm -rf "$cache"/tmp.*
	apt_update
	ver=$(apt-cache "${apt_opts[@]}" madison qemu-system-x86 2>/dev/null |
		awk -F'|' -v s="$codename-backports" 'index($3, s) { gsub(/ /, "", $2); print $2 }' |
		sort -V | tail -n1)
	[ -n "$ver" ] || die "no qemu-system-x86 in $codename-backports"
	work=$(mktemp -d "$cache/tmp.XXXXXX")
	tmp_dirs+=("$work")
	say "downloading qemu-system-x86 $ver"
	(cd "$work" && apt-get "${apt_opts[@]}" -q download "qemu-system-x86=$ver" \
		"qemu-system-common=$ver" "qemu-system-data=$ver") >"$work/download.log" 2>&1 || {
		cat "$work/download.log" >&2
		die "apt-get download of QEMU $ver failed"
	}
	for d in "$work"/*.deb; do dpkg-deb -x "$d" "$work/root"; done
	[ -x "$work/root/usr/bin/qemu-system-x86_64" ] || die "no qemu-system-x86_64 in the QEMU $ver packages"
	{
		echo "version=$ver"
		(cd "$work" && sha256sum ./*.deb)
		echo "fetched=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	} >"$work/root/SOURCE"
	ver=${ver//[:~+]/_}
	mkdir -p "$cache/qemu"
	rm -rf "$cache/qemu/$ver"
	mv "$work/root" "$cache/qemu/$ver"
	touch "$cache/qemu/$ver/.complete"
	echo "$ver" >"$cache/qemu/current.tmp.$$" && mv -f "$cache/qemu/current.tmp.$$" "$cache/qemu/current"
	rm -rf "$work"
}

pinned=$kver
# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

if [ "$qemu" = 1 ]; then
	qemu_ready() {
		[ -f "$cache/qemu/current" ] && [ -f "$cache/qemu/$(cat "$cache/qemu/current")/.complete" ]
	}
	if [ "$refresh" = 1 ] || ! qemu_ready; then
		exec 9>"$cache/.lock"
		flock -w 1200 9 || die "timed out waiting for the lock on $cache/.lock"
		if [ "$refresh" = 1 ] || ! qemu_ready; then
			fetch_qemu
		fi
		exec 9>&-
	fi
	bin="$cache/qemu/$(cat "$cache/qemu/current")/usr/bin/qemu-system-x86_64"
	"$bin" --version >/dev/null 2>&1 || die "$bin does not run (missing libraries? ldd it)"
	say "QEMU $("$bin" --version | head -n1)"
	echo "$bin"
	exit 0
fi

kernel_ready() {
	[ -n "$kver" ] && [ -f "$cache/kernel/$kver/.complete" ]
}
if [ -z "$kver" ] && [ "$refresh" = 0 ] && [ -f "$cache/current" ]; then
	kver=$(cat "$cache/current")
fi
if [ "$refresh" = 1 ] || ! kernel_ready; then
	# Concurrent builds (ctest -j) queue here; the first one downloads.
	exec 9>"$cache/.lock"
	flock -w 1200 9 || die "timed out waiting for the lock on $cache/.lock"
	if [ -z "$kver" ] && [ "$refresh" = 0 ] && [ -f "$cache/current" ]; then
		kver=$(cat "$cache/current")
	fi
	if [ "$refresh" = 1 ] || ! kernel_ready; then
		if [ "$refresh" = 1 ] && [ -z "$pinned" ]; then kver=""; fi
		t0=$(date +%s.%N)
		fetch_kernel
		say "kernel $kver cached in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
	fi
	echo "$kver" >"$cache/current.tmp.$$" && mv -f "$cache/current.tmp.$$" "$cache/current"
	exec 9>&-
fi
kdir="$cache/kernel/$kver"

if [ "$fetch_only" = 1 ]; then
	say "kernel $kver ready in $kdir"
	exit 0
fi

# --- the initrd --------------------------------------------------------------

mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "$out/.stage.XXXXXX")
tmp_dirs+=("$stage")

# Same merged-/usr layout as the host, so library paths from ldd just work.
for d in bin sbin lib lib64; do
	if [ -L "/$d" ]; then
		mkdir -p "$stage/usr/$d"
		ln -s "usr/$d" "$stage/$d"
	else
		mkdir -p "$stage/$d"
	fi
done
mkdir -p "$stage"/{dev,proc,sys,run,tmp,root,etc,test,mnt,var} "$stage/usr/local/bin" \
	"$stage/lib/blkgw-vm/modules"
ln -s ../run "$stage/var/run"
ln -s ../run/lock "$stage/var/lock"
chmod 1777 "$stage/tmp"

busybox=${BLKGW_VM_BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "no busybox at $busybox (apt-get install busybox-static)"
bb_ldd=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
if [ "${bb_ldd#*not a dynamic executable}" = "$bb_ldd" ]; then
	die "$busybox is dynamically linked; install busybox-static"
fi
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"

# libraries of ELF files, collected into one list and copied once
libs_list="$stage/.libs"
: >"$libs_list"
add_libs() {
	local f=$1 l
	[ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || return 0
	l=$(LC_ALL=C ldd "$f" 2>/dev/null) || return 0
	printf '%s\n' "$l" | awk '
		$2 == "=>" && $3 ~ /^\// { print $3; next }
		$1 ~ /^\// { print $1 }' >>"$libs_list"
}

for b in "${bins[@]}"; do
	src=$b
	case "$b" in
	*/*) ;;
	*) src=$(PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$b" 2>/dev/null) ||
		die "--bin $b: not found in PATH" ;;
	esac
	if [ ! -f "$src" ] || [ ! -x "$src" ]; then
		die "--bin $b: '$src' is not an executable file"
	fi
	cp -L "$src" "$stage/usr/local/bin/$(basename "$src")"
	add_libs "$src"
done

for spec in "${files[@]}"; do
	src=${spec%%:*}
	dst=${spec#*:}
	if [ "$src" = "$spec" ] || [ -z "$dst" ]; then
		die "--file wants SRC:DST, got '$spec'"
	fi
	case "$dst" in /*) ;; *) die "--file $spec: DST must be an absolute guest path" ;; esac
	[ -e "$src" ] || die "--file $spec: '$src' does not exist"
	mkdir -p "$stage$(dirname "$dst")"
	if [ -d "$src" ]; then
		cp -a "$src" "$stage$dst"
		while IFS= read -r -d '' f; do add_libs "$f"; done < <(find "$src" -type f -perm -u+x -print0)
	else
		cp -L "$src" "$stage$dst"
		add_libs "$src"
	fi
done

if [ "$python" = 1 ]; then
	py=$(readlink -f /usr/bin/python3 2>/dev/null) || true
	[ -x "$py" ] || die "--python: no /usr/bin/python3 (apt-get install python3)"
	pyver=$(basename "$py")
	[ -d "/usr/lib/$pyver" ] || die "--python: no /usr/lib/$pyver"
	cp -L "$py" "$stage/usr/bin/$pyver"
	ln -sf "$pyver" "$stage/usr/bin/python3"
	add_libs "$py"
	cp -a "/usr/lib/$pyver" "$stage/usr/lib/"
	(cd "$stage/usr/lib/$pyver" && rm -rf config-* test idlelib tkinter turtledemo ensurepip \
		lib2to3 pydoc_data distutils unittest/test ctypes/test sqlite3/test site-packages)
	while IFS= read -r -d '' f; do add_libs "$f"; done < <(find "$stage/usr/lib/$pyver/lib-dynload" -name '*.so' -print0)
fi

if [ -s "$libs_list" ]; then
	LC_ALL=C sort -u "$libs_list" | xargs cp -L --parents -t "$stage"
fi
rm -f "$libs_list"

# kernel modules: the closure over depends= of the default set plus --module
moddir="$stage/lib/blkgw-vm/modules"
declare -A mod_done=()
add_module() {
	local name=${1//-/_} path deps d
	[ -n "${mod_done[$name]:-}" ] && return 0
	mod_done[$name]=1
	path=$(awk -v n="$name" '$1 == n { print $2; exit }' "$kdir/modules.idx")
	if [ -z "$path" ]; then
		if grep -q "/$name.ko\$" "$kdir/modules/modules.builtin" 2>/dev/null ||
			grep -q "/${name//_/-}.ko\$" "$kdir/modules/modules.builtin" 2>/dev/null; then
			echo "$name:builtin" >>"$moddir/modules.dep"
			return 0
		fi
		die "kernel $kver has no module '$name'"
	fi
	case "$path" in
	*.xz) xz -dc "$kdir/modules/$path" >"$moddir/$name.ko" ;;
	*.zst) zstd -dqc "$kdir/modules/$path" >"$moddir/$name.ko" ;;
	*.gz) gzip -dc "$kdir/modules/$path" >"$moddir/$name.ko" ;;
	*) cp "$kdir/modules/$path" "$moddir/$name.ko" ;;
	esac
	deps=$(tr '\0' '\n' <"$moddir/$name.ko" | sed -n 's/^depends=//p' | head -n1)
	echo "$name:${deps//,/ }" >>"$moddir/modules.dep"
	for d in ${deps//,/ }; do add_module "$d"; done
}
: >"$moddir/modules.dep"
# shellcheck disable=SC2086
for m in $default_modules "${modules[@]}"; do add_module "$m"; done
echo "$kver" >"$stage/lib/blkgw-vm/kernel-version"

cp "$here/guest-lib.sh" "$stage/lib/blkgw-vm/guest-lib.sh"
cp "$script" "$stage/test/main.sh"
chmod 755 "$stage/test/main.sh"
cat >"$stage/init" <<'EOF'
#!/bin/sh
# blkgw test guest: set up, run /test/main.sh, report, power off.
. /lib/blkgw-vm/guest-lib.sh
vm_init_main /test/main.sh
EOF
chmod 755 "$stage/init"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
	>"$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
echo blkgw-vm >"$stage/etc/hostname"

# manifest: what went in, for the test log
(cd "$stage" && find . -type f -printf '%s %P\n' | LC_ALL=C sort -k2) >"$out/manifest.txt.tmp"

(cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
	cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out/initrd.tmp"
mv -f "$out/initrd.tmp" "$out/initrd"
mv -f "$out/manifest.txt.tmp" "$out/manifest.txt"
if [ ! "$out/vmlinuz" -ef "$kdir/vmlinuz" ]; then
	rm -f "$out/vmlinuz.tmp"
	ln "$kdir/vmlinuz" "$out/vmlinuz.tmp" 2>/dev/null || cp "$kdir/vmlinuz" "$out/vmlinuz.tmp"
	mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"
fi
echo "$kver" >"$out/kernel-version"

size=$(stat -c %s "$out/initrd")
say "$out/initrd: $((size / 1024 / 1024)) MiB, kernel $kver, built in $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
