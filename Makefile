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
# Ark on a local Ray cluster (2 CPU workers, DeepSpeed) -> per-dataset AUCs.
demo: $(STAMP)
	$(PY) -m shards synth --out out/demo/raw --per-source 48 --scale 0.25
	for s in mimic_cxr chexpert chestxray14 rsna_pneumonia vindr_cxr shenzhen; do \
	  $(PY) -m shards build --source $$s --root out/demo/raw/$$s --out out/demo/store --max-side 96 --samples-per-shard 16 || exit 1; done
	$(PY) -m shards ls --store out/demo/store
	$(PY) launch.py train --config configs/demo.yaml

bench-shards: $(STAMP)
	$(PY) launch.py bench shards

clean:
	rm -rf $(VENV) .pytest_cache
