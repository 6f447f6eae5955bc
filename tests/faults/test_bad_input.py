"""Bad input to every command: one clear line naming the culprit, a non-zero exit, nothing written.

Each case runs `python launch.py ...` as a user would, in a fresh working folder whose contents are
compared before and after. The culprit (a key, a path, an endpoint, a name) must appear in the one
`error:` line; no traceback may reach the user."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SWIN, _free_port
from faultruns import error_lines

REPO = Path(__file__).resolve().parents[2]
TINY = str(TINY_SWIN).replace("'", "")
DEMO = str(REPO / "configs" / "demo.yaml")


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def run(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def assert_refused(done: subprocess.CompletedProcess, culprit: str) -> None:
    errors = error_lines(done.stderr)
    assert done.returncode != 0, done.stdout[-1500:]
    assert len(errors) == 1 and culprit in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-3000:]


@pytest.fixture
def work(tmp_path) -> Path:
    """The user's working folder: a recipe with a typo'd base, a malformed one, a raw CheXpert
    copy without one label column, and a run folder without metrics."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "broken.yaml").write_text("optim:\n  lr: [0.1,\n")
    (folder / "child.yaml").write_text("base: parnet.yaml\noptim: {lr: 0.1}\n")
    (folder / "empty-run").mkdir()
    return folder


@pytest.fixture
def chexpert_without_a_column(synth_root, tmp_path) -> Path:
    root = tmp_path / "chexpert-raw"
    shutil.copytree(synth_root / "chexpert", root)
    for path in root.rglob("train.csv"):
        rows = list(csv.DictReader(path.open()))
        fields = [f for f in rows[0] if f != "Cardiomegaly"]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return root


def tiny(store: Path | str, runs: Path | str) -> list[str]:
    return [f"data.store.url={store}", "data.datasets=[chexpert, shenzhen]", "data.num_workers=0",
            "data.views.image_size=64", "data.views.load_size=72", f"model.backbone_kwargs={TINY}",
            "model.projector_dim=32", "train.epochs=1", "train.global_batch=4", f"train.storage_path={runs}",
            "tracking.wandb=disabled"]


# (case, argv with {store} {work} {port} {raw} placeholders, culprit in the error line)
CASES = [
    ("unknown config key", ["train", "--config", DEMO, "optim.lrr=0.1"], "optim.lrr"),
    ("wrong type", ["train", "--config", DEMO, "train.epochs=many"], "train.epochs"),
    ("negative batch", ["train", "--config", DEMO, "train.global_batch=-4"], "global_batch"),
    ("value not allowed", ["train", "--config", DEMO, "engine.precision=fp64"], "engine.precision"),
    ("more workers than CPUs", ["train", "--config", DEMO, "{tiny}", "engine.num_workers=64",
                                "train.global_batch=64"], "engine.num_workers=64"),
    ("dataset not in the manifest", ["train", "--config", DEMO, "{tiny}", "data.datasets=[chexpert, padchest]"],
     "'padchest'"),
    ("store that does not exist", ["train", "--config", DEMO, "{tiny}", "data.store.url={work}/nostore"], "nostore"),
    ("unreachable S3 endpoint", ["train", "--config", DEMO, "{tiny}", "data.store.url=s3://ark/store",
                                 "data.store.endpoint_url=http://127.0.0.1:{port}", "data.store.retries=1"],
     "127.0.0.1:{port}"),
    ("config file missing", ["train", "--config", "{work}/nope.yaml"], "nope.yaml"),
    ("malformed YAML", ["train", "--config", "{work}/broken.yaml"], "broken.yaml"),
    ("base recipe missing", ["train", "--config", "{work}/child.yaml"], "parnet.yaml"),
    ("pretrained weights missing", ["train", "--config", DEMO, "{tiny}", "model.pretrained={work}/swin.pth"],
     "model.pretrained"),
    ("unknown backbone", ["train", "--config", DEMO, "{tiny}", "model.backbone=swin_tiny_nope"], "model.backbone"),
    ("dry run with a bad key", ["train", "--config", DEMO, "--dry-run", "data.views.image_sise=64"],
     "data.views.image_sise"),
    ("unknown source", ["shards", "build", "--source", "no_such_set", "--root", "{work}", "--out", "{work}/s"],
     "'no_such_set'"),
    ("missing label column", ["shards", "build", "--source", "chexpert", "--root", "{raw}", "--out", "{work}/s"],
     "missing column 'Cardiomegaly'"),
    ("dataset root missing", ["shards", "build", "--source", "chexpert", "--root", "{work}/CheXpert",
                              "--out", "{work}/s"], "CheXpert"),
    ("bad --max-bad", ["shards", "build", "--source", "chexpert", "--root", "{goodraw}", "--out", "{work}/s",
                       "--max-bad", "lots"], "--max-bad"),
    ("verify a store that does not exist", ["shards", "verify", "--store", "{work}/nostore"], "nostore"),
    ("build into an unreachable bucket", ["shards", "build", "--source", "chexpert", "--root", "{raw}",
                                          "--out", "s3://ark/store", "--endpoint-url", "http://127.0.0.1:{port}"],
     "127.0.0.1:{port}"),
    ("export a checkpoint that does not exist", ["export", "--checkpoint", "{work}/runs/none", "--out",
                                                 "{work}/t.safetensors"], "runs/none"),
    ("report a run that does not exist", ["report", "{work}/runs/none"], "runs/none"),
    ("report a run without metrics", ["report", "{work}/empty-run"], "metrics.jsonl"),
    ("sweep over an unknown key", ["tune", "--config", DEMO, "{tiny}", "tune.space={optim.lrr: {grid: [0.1]}}"],
     "optim.lrr"),
    ("sweep stopping before evaluating", ["tune", "--config", DEMO, "{tiny}", "train.eval_every=2",
                                          "tune.grace_period=1", "tune.space={optim.lr: {grid: [0.1]}}"],
     "grace_period"),
    ("sweep with a bad sampler", ["tune", "--config", DEMO, "{tiny}", "tune.space={optim.lr: {logunifrm: [0.1, 1]}}"],
     "logunifrm"),
    ("Slurm size too small", ["slurm", "--config", str(REPO / "configs" / "ark6.yaml"), "--nodes", "1",
                              "--gpus-per-node", "4", "--out", "{work}/j.sbatch"], "1 node(s) x 4 GPUs"),
    ("Kubernetes with a local store", ["k8s", "render", "train", "--config", DEMO, "--out", "{work}/j.yaml"],
     "data.store.url"),
    ("config --show of a missing file", ["config", "--show", "{work}/nope.yaml"], "nope.yaml"),
    ("demo with a bad override", ["demo", "--out", "{work}/demo", "train.epoch=2"], "train.epoch"),
    ("unknown command", ["trian", "--config", DEMO], "trian"),
]


@pytest.mark.parametrize("case, argv, culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, argv, culprit, work, six_store, synth_root,
                                                        chexpert_without_a_column):
    port = _free_port()  # nothing listens there
    values = {"store": str(six_store), "work": str(work), "port": str(port), "raw": str(chexpert_without_a_column),
              "goodraw": str(synth_root / "chexpert")}
    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text

    args = []
    for arg in argv:
        args += tiny(six_store, work / "runs") if arg == "{tiny}" else [fill(arg)]
    before = snapshot(work)
    done = run(args, cwd=work, env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert_refused(done, fill(culprit))
    assert snapshot(work) == before, f"{case}: wrote {set(snapshot(work)) - set(before)}"


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25
