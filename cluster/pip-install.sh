#!/usr/bin/env bash
# The one way ark-dist's Python environment is built. `make setup`/`make demo`, `make test` (and so
# CI) and the container image (cluster/Containerfile) all run it, on these files:
#   requirements.txt      the runtime dependencies, pinned (what `pip install ark-dist` pulls)
#   requirements-dev.txt  the test tools, pinned (the `dev` extra); only with --dev
#   constraints.txt       everything they pull in, frozen
# Usage: cluster/pip-install.sh PYTHON [--dev]   (the python of the environment to fill)
set -euo pipefail
python=${1:?usage: pip-install.sh PYTHON [--dev]}
root=$(cd "$(dirname "$0")/.." && pwd)
files=(-r "$root/requirements.txt")
case "${2:-}" in
  "") ;;
  --dev) files+=(-r "$root/requirements-dev.txt") ;;
  *) echo "usage: pip-install.sh PYTHON [--dev]" >&2; exit 2 ;;
esac
"$python" -m pip install -q --disable-pip-version-check "${files[@]}" -c "$root/constraints.txt"
