#!/usr/bin/env bash
# A venv with the official clients the tests speak to lattice with: the MCP
# Python SDK (the `mcp` command) and SandboxFusion's client (`serve`'s
# /run_code): target/mcp-venv (reused when it has the pinned versions).
# Prints the venv's python.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LATTICE_MCP_VENV:-$ROOT/target/mcp-venv}
MCP=2.3.0
SANDBOX_FUSION=0.3.7
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP' or m.version('sandbox-fusion') != '$SANDBOX_FUSION')" 2>/dev/null; then
  base=${LATTICE_MCP_BASE_PYTHON:-python3}
  "$base" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet "mcp==$MCP" "sandbox-fusion==$SANDBOX_FUSION" >&2
fi
echo "$VENV/bin/python"
