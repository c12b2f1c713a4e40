#!/usr/bin/env bash
# A venv with the official MCP Python SDK, the client the `mcp` command's
# tests use: target/mcp-venv (reused when it has the pinned version).
# Prints the venv's python.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LATTICE_MCP_VENV:-$ROOT/target/mcp-venv}
VERSION=2.3.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$VERSION')" 2>/dev/null; then
  base=${LATTICE_MCP_BASE_PYTHON:-python3}
  "$base" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet "mcp==$VERSION" >&2
fi
echo "$VENV/bin/python"
