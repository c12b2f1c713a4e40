#!/usr/bin/env bash
# The two Pythons `lattice-wasm bench` compares against, under
# target/references (reused when they have the pinned versions):
# - monty/bin/python: a venv with pydantic-monty (--monty-python);
# - eryx-python: a Python >= 3.12 with pyeryx (--eryx-python). pyeryx has
#   only cp312-abi3 wheels and Debian 12's Python is 3.11, so this is Debian
#   13's python3.13, its packages unpacked here (no system change) and run
#   with their own loader and libraries.
# Prints the two paths, one per line. Usage:
#   mapfile -t refs < <(scripts/reference-pythons.sh)
#   cargo run --release -- bench --monty-python "${refs[0]}" --eryx-python "${refs[1]}"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${LATTICE_REFERENCES:-$ROOT/target/references}
MONTY=1.4.0
ERYX=0.11.0
mkdir -p "$DIR"

if ! "$DIR/monty/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pydantic-monty') != '$MONTY')" 2>/dev/null; then
  python3 -m venv "$DIR/monty" >&2
  "$DIR/monty/bin/python" -m pip install --quiet "pydantic-monty==$MONTY" >&2
fi

ERYX_PY=$DIR/eryx-python
if ! "$ERYX_PY" -c "import eryx, sys; sys.exit(eryx.__version__ != '$ERYX')" 2>/dev/null; then
  T=$DIR/trixie
  rm -rf "$T" && mkdir -p "$T/lists/partial" "$T/cache/archives/partial" "$T/debs" "$T/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$T/sources.list"
  apt_opts=(-o Dir::Etc::SourceList="$T/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o Dir::State::Lists="$T/lists" -o Dir::Cache="$T/cache" -o Debug::NoLocking=1
            -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update >&2
  (cd "$T/debs" && apt-get "${apt_opts[@]}" download python3.13 python3.13-minimal \
    libpython3.13-minimal libpython3.13-stdlib libc6 libexpat1 libffi8 libgcc-s1 libstdc++6 \
    liblzma5 libbz2-1.0 libncursesw6 libtinfo6 libreadline8t64 libsqlite3-0 libssl3t64 \
    libuuid1 libzstd1 zlib1g media-types tzdata >&2)
  for deb in "$T"/debs/*.deb; do dpkg-deb -x "$deb" "$T/root"; done
  python3 -m pip install --quiet --root-user-action=ignore --target "$T/site" --python-version 3.13 --only-binary=:all: \
    --platform manylinux_2_17_x86_64 "pyeryx==$ERYX" >&2
  cat > "$ERYX_PY" <<EOF
#!/bin/sh
R=$T/root
PYTHONPATH=$T/site exec \$R/usr/lib64/ld-linux-x86-64.so.2 --library-path \$R/usr/lib/x86_64-linux-gnu \$R/usr/bin/python3.13 "\$@"
EOF
  chmod +x "$ERYX_PY"
  "$ERYX_PY" -c "import eryx" >&2
fi
echo "$DIR/monty/bin/python"
echo "$ERYX_PY"
