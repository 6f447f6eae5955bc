#!/usr/bin/env bash
# The one way ark-dist's Python environment is built. `make setup` (and so CI) and the container
# image (cluster/Containerfile) both run it, on the same two files:
#   requirements.txt  the direct dependencies, pinned
#   constraints.txt   everything they pull in, frozen
# Usage: cluster/pip-install.sh PYTHON     (the python of the environment to fill)
set -euo pipefail
python=${1:?usage: pip-install.sh PYTHON}
root=$(cd "$(dirname "$0")/.." && pwd)
"$python" -m pip install -q --disable-pip-version-check -r "$root/requirements.txt" -c "$root/constraints.txt"
