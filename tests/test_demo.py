"""`make demo`'s command path, end to end, at a smaller size: `python launch.py demo` from nothing to
an AUC table, an exported teacher and a report, with one progress line per round on the console and
Ray's own logs in the run folder."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen"]


@pytest.mark.slow
def test_launch_demo_goes_from_nothing_to_an_auc_table_weights_and_a_report(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as on a fresh machine
    done = subprocess.run([sys.executable, "launch.py", "demo", "--out", str(out), "--per-source", "20",
                           "train.epochs=2", "train.eval_every=1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    # Progress through the five steps, in order.
    marks = [text.index(f"] {n}/5 ") for n in range(1, 6)]
    assert marks == sorted(marks), text
    # The AUC table: one row per dataset plus the mean, with the run's own numbers.
    run = out / "runs" / "demo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "auc/val/mean/teacher" in r][-1]
    assert last["epochs_done"] == 2
    tail = text[text.rindex("| dataset | teacher val"):].splitlines()  # the last table: the demo's own
    table = list(itertools.takewhile(lambda line: line.startswith("|"), tail))
    assert [line.split("|")[1].strip() for line in table[2:]] == [*SOURCES, "mean"]
    for line in table[2:]:
        name, *cells = [c.strip() for c in line.split("|")[1:-1]]
        value = last.get(f"auc/test/{name}/teacher")
        assert cells[1] == ("-" if value is None or value != value else f"{value:.3f}"), line
    # Training shows one progress line per round (an interleaved epoch is one round), and nothing of
    # Ray's: no worker-prefixed lines, no colour codes; those are in the run folder's ray_logs/.
    progress = [line for line in text.splitlines() if line.startswith("train ")]
    assert [line.split()[1] for line in progress] == ["1/2", "2/2"], text
    assert "loss" in progress[-1] and "img/s" in progress[-1], progress
    assert f"AUC {last['auc/val/mean/teacher']:.3f}" in progress[-1], progress
    assert not re.search(r"\((RayTrainWorker|TrainController|raylet)|pid=\d+", text), text
    assert "\x1b[" not in text and "\x1b[" not in done.stderr, done.stderr[-3000:]
    logs = list((run / "ray_logs").glob("session_*/worker-*"))
    assert any("[ark-dist] loss/interleaved=" in path.read_text(errors="replace") for path in logs), logs
    # Everything it says it wrote is there.
    assert json.loads((out / "store" / "manifest.json").read_text())["datasets"].keys() >= set(SOURCES)
    with safe_open(str(out / "teacher.safetensors"), "pt") as f:
        assert any(k.startswith("omni_heads.shenzhen.") for k in f.keys())
    assert (out / "teacher.pth.tar").is_file()
    # It ends by releasing the teacher and scoring one raw look-alike file with the release.
    assert {p.name for p in (out / "release").iterdir()} >= {"model.safetensors", "config.json", "ark_heads.safetensors",
                                                            "README.md"}
    scored = text[text.index("one raw file through the released model"):]
    assert re.search(r"\| \S+\.png \| chestxray14 \| \w+ 0\.\d{3}, \w+ 0\.\d{3} \|", scored), scored
    assert all((out / "report" / name).stat().st_size > 0 for name in ("losses.png", "auc.png", "summary.md"))
    for path in (out / "store", run, out / "report"):
        assert str(path) in text
