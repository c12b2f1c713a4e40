#!/usr/bin/env bash
# Builds a local Python image for the docker tier without any registry: a
# rootfs of the host's own python3 (interpreter, stdlib, the shared
# libraries `ldd` names, the dynamic loader), imported with `docker import`.
#
#   scripts/docker-image.sh [IMAGE]     (default lattice/python:3.11)
#
# Where no registry is reachable, the image is also tagged python:3.11-slim
# (the docker tier's default image) unless that tag already exists.
set -euo pipefail
image="${1:-lattice/python:3.11}"
python="$(readlink -f /usr/bin/python3)"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

copy() { # copies a file or directory with its parents, resolving symlinks
  local src="$1"
  mkdir -p "$root$(dirname "$src")"
  cp -aL "$src" "$root$src"
}

copy "$python"
ln -s "$(basename "$python")" "$root/usr/bin/python3"
# The stdlib without its tests and caches (~40 MB instead of ~100).
mkdir -p "$root/usr/lib/python$version"
tar -C "/usr/lib/python$version" \
  --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
  --exclude=turtledemo --exclude=__pycache__ --exclude=ensurepip \
  -cf - . | tar -C "$root/usr/lib/python$version" -xf -
# Every shared library the interpreter and its extension modules need,
# and the dynamic loader itself.
{
  ldd "$python"
  find "/usr/lib/python$version/lib-dynload" -name '*.so' -exec ldd {} \;
} | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  [ -e "$lib" ] && copy "$lib"
done
mkdir -p "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

tar -C "$root" -cf - . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  - "$image" >/dev/null
echo "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  docker tag "$image" python:3.11-slim
  echo "tagged it python:3.11-slim (the docker tier's default image; no registry here)"
fi
