#!/bin/sh
# The man pages, made at build time from what the project already keeps, so
# there is no second copy to drift (lowdown turns markdown into roff):
#   scripts/gen-man.sh manifest VERSION docs/manifest.md OUT    blkgw-manifest(5)
#   scripts/gen-man.sh blkgw VERSION BLKGW docs/control.md OUT   blkgw(8): the
#       binary's own --help texts, then the control socket's protocol
set -eu
lowdown=${LOWDOWN:-lowdown}
kind=${1:?usage: see the header of $0}
version=$2
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

# A markdown file's body: without its title, every heading one level deeper
# (so that its sections become subsections of the page's).
body() { sed -e '1{/^# /d}' -e 's/^\(#\{1,5\}\) /\1# /' "$1"; }

case $kind in
manifest)
  src=$3 out=$4 title=blkgw-manifest section=5
  {
    printf '# NAME\n\nblkgw-manifest - the YAML manifest that blkgw(8) serves\n\n'
    printf '# DESCRIPTION\n\n'
    # Its sections are the page's sections: only the title goes.
    sed -e '1{/^# /d}' -e 's/^## /# /' -e 's/^### /## /' -e 's/^#### /### /' "$src"
    printf '\n# SEE ALSO\n\nblkgw(8), qemu-img(1), nbdinfo(1)\n'
  } >"$tmp"
  ;;
blkgw)
  blkgw=$3 control=$4 out=$5 title=blkgw section=8
  {
    printf '# NAME\n\nblkgw - block export gateway: serves disk images over NBD and vhost-user-blk\n\n'
    printf '# SYNOPSIS\n\n**blkgw** *COMMAND* [*OPTIONS*]\n\n'
    printf '**blkgw serve** *MANIFEST*\n\n**blkgw check** *MANIFEST*\n\n**blkgw status** [*OPTIONS*]\n\n'
    printf '# DESCRIPTION\n\n'
    printf 'One daemon reads a YAML manifest (blkgw-manifest(5)) and exports each declared disk image over the transports it asks for.\n\n'
    printf '```\n'; "$blkgw" --help; printf '```\n\n'
    printf '# COMMANDS\n\n'
    for c in serve check status version; do
      printf '## %s\n\n```\n' "$c"; "$blkgw" help "$c"; printf '```\n\n'
    done
    printf '# CONTROL SOCKET\n\n'
    body "$control"
    printf '\n# EXIT STATUS\n\n0 on success; 1 when the manifest has problems or serving failed; 2 for a usage error.\n\n'
    printf '# FILES\n\n*/run/blkgw* (as root), the default run dir: sockets, *control.sock*, device links in *dev/*.\n\n'
    printf '# SEE ALSO\n\nblkgw-manifest(5), qemu-storage-daemon(1), qemu-nbd(8), nbdinfo(1)\n'
  } >"$tmp"
  ;;
*) echo "usage: see the header of $0" >&2; exit 2 ;;
esac
"$lowdown" -s -Tman -M "title=$title" -M "section=$section" -M "source=blkgw $version" \
  -M "volume=blkgw manual" -o "$out" "$tmp"
