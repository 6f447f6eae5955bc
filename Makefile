# Two commands: `make test` (set up + the suite) and `make demo` (set up + the main job, issue 4).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Every file that decides what is installed; a change to any of them re-runs the install.
REQUIREMENTS := requirements.txt requirements-dev.txt constraints.txt cluster/pip-install.sh
HASH := $(shell cat $(REQUIREMENTS) | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-runtime-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)

.PHONY: setup slurm test test-gpu gpu-check demo bench-shards clean

# The runtime stack only (requirements.txt), as the container image has it.
$(STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash cluster/pip-install.sh $(PY)
	rm -f $(VENV)/.installed-runtime-* && touch $(STAMP)

# The runtime stack and the test tools (requirements-dev.txt): what the tests need.
$(DEV_STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash cluster/pip-install.sh $(PY) --dev
	rm -f $(VENV)/.installed-* && touch $(STAMP) $(DEV_STAMP)

setup: $(STAMP)

# Debian's slurm-wlm and munge, for the tests that submit cluster/slurm/ark.sbatch to a real
# one-node Slurm cluster (tests/test_slurm.py). Installed once; needs root (CI runs as root).
slurm:
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "error: the Slurm tests need Debian's slurm-wlm and munge: sudo apt-get install -y slurm-wlm munge" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q slurm-wlm munge >/dev/null; }; \
	fi

test: $(DEV_STAMP) slurm
	$(PY) -m pytest -m "not gpu" --durations=15 $(PYTEST_ARGS)

test-gpu: $(DEV_STAMP)
	$(PY) -m pytest -m gpu --durations=15 $(PYTEST_ARGS)

# A GPU node's acceptance run: the gpu tests and the step, data and memory benches, logs in GPU_OUT.
GPU_OUT ?= out/gpu-check
gpu-check: $(DEV_STAMP)
	PY=$(PY) bash cluster/gpu-check.sh $(GPU_OUT)

# The main job on the embedded default: synthetic look-alikes of the six datasets -> shards ->
# Ark on a local Ray cluster (2 CPU workers, DeepSpeed) -> evaluation -> exported teacher -> AUC table.
demo: $(STAMP)
	$(PY) launch.py demo --out out/demo

bench-shards: $(STAMP)
	$(PY) launch.py bench shards

clean:
	rm -rf $(VENV) .pytest_cache
