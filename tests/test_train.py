"""Ark on a real local Ray cluster with real DeepSpeed engines (gloo, CPU) and a tiny Swin."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ark_dist.config import load
from ark_dist.train.schedule import lr_at
from conftest import run_shards

DATASETS = ["chexpert", "rsna_pneumonia", "shenzhen"]
TINY = "{embed_dim: 24, depths: [1, 1], num_heads: [1, 2], window_size: 4, img_size: 64}"


@pytest.fixture(scope="module")
def tiny_store(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainstore")
    for source in DATASETS:
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", out, "--quiet",
                                  "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
        assert code == 0, err
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_config(store, runs, name, *extra):
    return load(None, [f"data.store.url={store}", f"data.datasets=[{', '.join(DATASETS)}]", "data.num_workers=0",
                       "data.views.image_size=64", "data.views.load_size=72", "data.shuffle_buffer=16",
                       f"model.backbone_kwargs={TINY}", "model.projector_dim=32", "train.epochs=2",
                       "train.global_batch=4", "train.eval_every=1", f"train.storage_path={runs}", f"train.name={name}",
                       "optim.lr=0.05", "optim.warmup_epochs=0.5", *extra])


def test_lr_schedule_matches_its_formula():
    assert lr_at(0, total=100, warmup=10, lr=0.3, min_lr=1e-5) == pytest.approx(0.03)
    assert lr_at(9, total=100, warmup=10, lr=0.3, min_lr=1e-5) == pytest.approx(0.3)
    for step in (10, 55, 99):
        expected = 1e-5 + (0.3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert lr_at(step, total=100, warmup=10, lr=0.3, min_lr=1e-5) == pytest.approx(expected)


@pytest.mark.slow
def test_two_workers_train_evaluate_and_checkpoint(tiny_store, tmp_path, ray_cluster):
    from ark_dist.train.run import fit

    result = fit(tiny_config(tiny_store, tmp_path / "runs", "two"))
    assert result.error is None
    metrics = result.metrics
    assert metrics["teacher/ranks_identical"] == 1.0
    assert metrics["epoch"] == 1 and metrics["round"] == len(DATASETS) - 1
    for name in DATASETS:
        for model in ("student", "teacher"):
            assert f"auc/test/{name}/{model}" in metrics
    assert metrics["ema/momentum"] == pytest.approx(1.0) and metrics["lr"] == pytest.approx(1e-5)
    folder = Path(result.checkpoint.path)
    state = json.loads((folder / "state.json").read_text())
    assert state["cursor"] == {"epoch": 2, "round": 0, "step": 0}
    assert (folder / "teacher.safetensors").is_file() and (folder / "engine").is_dir()
    assert state["config"]["data"]["datasets"] == DATASETS


def test_dry_run_and_bad_config_are_one_line(tiny_store, capsys):
    from ark_dist.train.cli import main

    args = [f"data.store.url={tiny_store}", f"data.datasets=[{', '.join(DATASETS)}]"]
    assert main(["--dry-run", *args]) == 0
    assert main(["--dry-run", *args, "optim.lrr=0.1"]) == 2
    assert "config key 'optim.lrr': unknown key" in capsys.readouterr().err
    assert main(["--dry-run", f"data.store.url={tiny_store}", "data.datasets=[chexpert, mimic_cxr]"]) == 2
    assert "'mimic_cxr' is in the recipe but not in the manifest" in capsys.readouterr().err
