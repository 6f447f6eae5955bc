# Two commands: `make test` (set up + the suite) and `make demo` (set up + the main job, issue 4).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt | sha256sum | cut -c1-12)

.PHONY: setup slurm test test-gpu demo bench-shards clean

$(STAMP): requirements.txt constraints.txt cluster/pip-install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash cluster/pip-install.sh $(PY)
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# Debian's slurm-wlm and munge, for the tests that submit cluster/slurm/ark.sbatch to a real
# one-node Slurm cluster (tests/test_slurm.py). Installed once; needs root (CI runs as root).
slurm:
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "error: the Slurm tests need Debian's slurm-wlm and munge: sudo apt-get install -y slurm-wlm munge" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q slurm-wlm munge >/dev/null; }; \
	fi

test: $(STAMP) slurm
	$(PY) -m pytest -m "not gpu" --durations=15 $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu --durations=15 $(PYTEST_ARGS)

# The main job on the embedded default: synthetic look-alikes of the six datasets -> shards ->
# Ark on a local Ray cluster (2 CPU workers, DeepSpeed) -> evaluation -> exported teacher -> AUC table.
demo: $(STAMP)
	$(PY) launch.py demo --out out/demo

bench-shards: $(STAMP)
	$(PY) launch.py bench shards

clean:
	rm -rf $(VENV) .pytest_cache
