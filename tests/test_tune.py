"""`launch.py tune` on a real local Ray cluster of 2 CPUs: 4 trials, each a TorchTrainer with one
DeepSpeed worker, ASHA stopping the worst, no placement group left behind, the best trial found."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import yaml

from ark_dist.config import load
from ark_dist.tune.cli import main
from ark_dist.tune.sweep import check_space, trial_config, trial_resources
from conftest import TINY_SWIN

ROOT = Path(__file__).resolve().parents[1]
TINY = str(TINY_SWIN).replace("'", "")
# The scheduled LR at each report, warming up over the whole run: a metric whose order across trials
# and over time is known in advance (tiny data teaches nothing that would rank trials reliably), so
# the test can say which trials ASHA stops and which is best.
METRIC = "lr"
EPOCHS = 8  # rungs at epochs 1, 2 and 4: a trial stopped at the first has seven epochs left that it must not train


def sweep_args(store, runs, *extra) -> list[str]:
    return [f"data.store.url={store}", "data.datasets=[chexpert, shenzhen]", "data.num_workers=0",
            "data.views.image_size=64", "data.views.load_size=72", "data.shuffle_buffer=16",
            f"model.backbone_kwargs={TINY}", "model.projector_dim=32", f"train.epochs={EPOCHS}", "train.global_batch=4",
            "train.eval_every=1", f"train.storage_path={runs}", "optim.lr=0.05", f"optim.warmup_epochs={EPOCHS}",
            "engine.num_workers=1", "tracking.wandb=offline", "tune.name=lr", f"tune.metric={METRIC}",
            "tune.mode=max", "tune.grace_period=1", "tune.max_concurrent_trials=2",
            # Grid order is submission order: two trials reach the first rung, then the two tiny LRs
            # arrive below the rung's median and are stopped.
            "tune.space={optim.lr: {grid: [0.1, 0.05, 1.0e-8, 2.0e-8]}}", *extra]


@pytest.fixture(scope="module")
def ray_two_cpus():
    import ray

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)  # the state API frees stopped trials' workers
    yield
    ray.shutdown()


def test_space_keys_and_values_are_checked_before_anything_starts(six_store, tmp_path):
    cfg = load(None, sweep_args(six_store, tmp_path, "tune.space={optim.lrr: {grid: [0.1]}}"))
    with pytest.raises(ValueError, match=r"tune.space.optim.lrr .*unknown key"):
        check_space(cfg)
    cfg = load(None, sweep_args(six_store, tmp_path, "tune.space={engine.precision: {choice: [fp32, fp64]}}"))
    with pytest.raises(ValueError, match=r"tune.space.engine.precision .*'fp64'"):
        check_space(cfg)
    cfg = load(None, sweep_args(six_store, tmp_path, "train.eval_every=2"))
    with pytest.raises(ValueError, match="grace_period"):
        check_space(cfg)
    with pytest.raises(ValueError, match=r"space.optim.lr.loguniform"):
        load(None, sweep_args(six_store, tmp_path, "tune.space={optim.lr: {loguniform: [0, 1]}}"))


def test_a_trial_gets_its_values_its_own_run_folder_and_the_sweep_group(six_store, tmp_path):
    from ark_dist.configtree import to_dict

    cfg = load(None, sweep_args(six_store, tmp_path))
    trial = trial_config(to_dict(cfg), {"optim.lr": 0.01, "method.momentum": 0.99}, trial_id="abc_00001")
    assert (trial.optim.lr, trial.method.momentum) == (0.01, 0.99)
    assert trial.train.storage_path == f"{tmp_path}/lr/trials" and trial.train.name == "abc_00001"
    assert (trial.tracking.group, trial.tracking.run_name) == ("lr", "lr-abc_00001")


def _placement_groups_left() -> list[dict]:
    from ray.util import placement_group_table

    return [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_asha_sweep_stops_the_worst_frees_their_workers_and_exports_the_best(ray_two_cpus, six_store, tmp_path,
                                                                             capsys):
    code = main(["--config", "configs/demo.yaml", *sweep_args(six_store, tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    trials = sorted((tmp_path / "lr" / "trials").iterdir())
    assert len(trials) == 4
    runs = {t.name: _history(t) for t in trials}
    lrs = {t.name: yaml.safe_load((t / "config.yaml").read_text())["optim"]["lr"] for t in trials}
    assert sorted(lrs.values()) == [1e-8, 2e-8, 0.05, 0.1]
    # ASHA stopped the two tiny LRs at the first rung (they arrive below its median); 0.1 is never
    # below a rung's median, so it trains to the end. (0.05 may be stopped too if 0.1 reaches the rung
    # first.) Tune's table shows the epochs of the last report it took; a stopped trial's workers
    # may train a little further before Ray ends them, but none reaches the end.
    table = (tmp_path / "lr" / "trials.md").read_text()
    status = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    tiny = {name for name, lr in lrs.items() if lr < 1e-7}
    assert all(status[name] == "stopped" for name in tiny) and status[max(lrs, key=lrs.get)] == "done", table
    epochs = {name: max(row["epochs_done"] for row in rows) for name, rows in runs.items()}
    assert all(epochs[name] < EPOCHS for name in tiny), (epochs, out)
    assert all(any("auc/val/mean/teacher" in r for r in rows) for rows in runs.values())  # every trial evaluated
    # Stopped trials gave their workers back: no placement group is left (Ray removes them async).
    deadline = time.time() + 30
    while _placement_groups_left() and time.time() < deadline:
        time.sleep(1)
    assert _placement_groups_left() == []
    # The best trial is the one whose last reported metric is highest (mode max), by the trials' own files.
    last = {name: [row[METRIC] for row in rows if METRIC in row][-1] for name, rows in runs.items()}
    best = max(last, key=last.get)
    assert f"best trial {best}: {METRIC}={last[best]:.4g}" in out, out
    sweep = tmp_path / "lr"
    assert yaml.safe_load((sweep / "best.yaml").read_text())["optim"]["lr"] == lrs[best]
    assert (sweep / "best_teacher.safetensors").stat().st_size > 0 and (sweep / "best_teacher.pth.tar").is_file()
    assert lrs[best] == 0.1 and not math.isnan(last[best])

    # The same command again restores the finished sweep instead of starting new trials.
    assert main(["--config", "configs/demo.yaml", *sweep_args(six_store, tmp_path)]) == 0
    assert len(list((tmp_path / "lr" / "trials").iterdir())) == 4
    assert f"best trial {best}:" in capsys.readouterr().out


def test_the_demo_sweep_runs_on_the_store_make_demo_builds_as_the_readme_says(monkeypatch):
    """configs/sweep_demo.yaml, without running it (the tune command runs end to end above): the
    store and run folder are the ones `make demo` writes, the sweep would start (check_space), its
    trials fit two at a time on 2 CPUs, and the README states its LRs, epochs and ASHA rungs."""
    monkeypatch.chdir(ROOT)  # as the README runs it: relative paths are the repository's
    cfg = load("configs/sweep_demo.yaml")
    out = ROOT / re.search(r"launch\.py demo --out (\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert (cfg.data.store.url, cfg.train.storage_path) == (str(out / "store"), str(out / "runs"))
    assert cfg.data.datasets == load("configs/demo.yaml").data.datasets
    check_space(cfg)
    assert trial_resources(cfg) == {"CPU": 1} and cfg.tune.max_concurrent_trials == 2
    t = cfg.tune
    assert list(t.space) == ["optim.lr"] and t.scheduler == "asha" and t.metric == "auc/val/mean/teacher"
    lrs = t.space["optim.lr"]["grid"]
    rungs, rung = [], t.grace_period
    while rung < cfg.train.epochs:  # ASHA's milestones: grace x reduction_factor^k below max_t
        rungs.append(rung)
        rung = int(rung * t.reduction_factor)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "python launch.py tune --config configs/sweep_demo.yaml" in readme
    said = (f"`configs/sweep_demo.yaml` tries the learning rates {', '.join(f'{v:g}' for v in lrs[:-1])} and "
            f"{lrs[-1]:g} of the demo recipe on the demo's store for {cfg.train.epochs} epochs")
    assert said in readme, said
    assert f"with ASHA (rungs at epochs {' and '.join(map(str, rungs))})" in readme, rungs
    assert f"`{out.relative_to(ROOT)}/runs/{t.name}` gets `trials.md`" in readme
