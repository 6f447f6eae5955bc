# Two commands: `make test` (set up + the suite) and `make demo` (set up + the main job, issue 4).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt | sha256sum | cut -c1-12)

.PHONY: setup test test-gpu demo bench-shards clean

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
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
