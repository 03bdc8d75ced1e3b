#!/usr/bin/env bash
# Makes a busybox root filesystem tarball from Debian's busybox-static:
#   scripts/make-busybox-image.sh OUT.tar
# then: flotilla import OUT.tar busybox:latest
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT.tar}
bb=/bin/busybox
[ -x "$bb" ] || { echo "missing $bb: apt-get install busybox-static" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir"/{bin,etc,proc,sys,dev,tmp,root,www}
cp "$bb" "$dir/bin/busybox"
for a in sh ash echo cat ls env hostname id ps true false sleep httpd nc wget mount grep head tail kill \
         touch mkdir rm cp mv dd seq wc sed printf test top uname df du find tr sort uniq date vi less; do
  ln -sf busybox "$dir/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
echo '<h1>Hello from Flotilla</h1>' > "$dir/www/index.html"
chmod 1777 "$dir/tmp"
find "$dir" -exec touch -h -d @0 {} +
chown -hR 0:0 "$dir"
tar --sort=name -C "$dir" -cf "$out" .
