# Sourced by the other scripts: make .venv with CarbonEdge and its test tools installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ..." >&2
  "$PY" -m venv .venv
fi
# Re-install only when pyproject.toml changed since the last install.
stamp=.venv/.carbonedge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing CarbonEdge and its dependencies (torch takes about a minute) ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
