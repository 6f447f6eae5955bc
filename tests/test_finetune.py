"""`launch.py finetune` on a real local Ray cluster (2 DeepSpeed workers, gloo): from an ark-dist export
on the visible-finding set it reaches test AUC >= 0.95; its early stopping, best epoch and the mean +-
std over trials follow from the files it wrote, computed here by hand; `freeze: backbone` leaves every
backbone tensor bitwise as loaded. Without Ray: the patient subsets (nested, seeded, whole patients),
the training streams under `data.train_only`, the flip view, the constant LR and the config checks."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ark_dist.config import load
from ark_dist.data import Cursor, DataConfig, Store, StoreConfig, read_manifest, round_steps, train_loader
from ark_dist.data.config import ViewConfig
from ark_dist.data.stream import subset_entries
from ark_dist.data.views import draw_views, render
from ark_dist.reuse import finetune
from ark_dist.train.schedule import lr_at
from conftest import TINY_SWIN, tiny_export

TINY = str(TINY_SWIN).replace("'", "")
PATIENCE = 0  # stop at the first epoch that brings no lower validation loss


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> str:
    """A tiny Swin with random weights and two heads (Shenzhen's and another), as `launch.py export` writes it."""
    return tiny_export(tmp_path_factory.mktemp("init") / "teacher.safetensors",
                       {"shenzhen": ["Tuberculosis"], "chestxray14": ["Atelectasis", "Nodule"]}, seed=3)


def args(store, runs, *extra) -> list[str]:
    return ["--config", "configs/finetune/demo.yaml", f"data.store.url={store}", "data.datasets=[shenzhen]",
            "finetune.target=shenzhen", f"train.storage_path={runs}", "train.name=ft", "train.global_batch=8",
            "data.views.load_size=64", "optim.lr=0.05", "optim.schedule=constant", *extra]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def stop_epoch(losses: list[float], patience: int) -> int | None:
    """BenchmarkTransformers' loop by hand: the epoch after which it breaks, or None."""
    best, waited = float("inf"), 0
    for epoch, loss in enumerate(losses):
        if loss < best:
            best, waited = loss, 0
        else:
            waited += 1
        if waited > patience:
            return epoch
    return None


def backbone(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if not k.startswith(("projector.", "omni_heads."))}


@pytest.mark.slow
def test_finetune_from_an_export_learns_stops_early_and_reports_trials(ray_cluster, signal_store, export, tmp_path,
                                                                      capsys):
    epochs = 10
    code = finetune.main(args(signal_store, tmp_path, f"finetune.init={export}", "finetune.trials=2",
                              f"finetune.patience={PATIENCE}", f"train.epochs={epochs}"))
    out = capsys.readouterr().out
    assert code == 0, out
    base = tmp_path / "ft"
    results = [json.loads((base / f"trial-{i}" / "results.json").read_text()) for i in range(2)]
    for i, result in enumerate(results):
        assert result["seed"] == i and result["test"]["auc"] >= 0.95, result
        history = [r for r in rows(base / f"trial-{i}") if "val_loss/shenzhen" in r]
        losses = [r["val_loss/shenzhen"] for r in history]
        stop = stop_epoch(losses, PATIENCE)
        assert len(history) == (epochs if stop is None else stop + 1), losses
        assert result["stopped_early"] == (stop is not None)
        assert result["best_epoch"] == int(np.argmin(losses)), losses
    assert any(r["stopped_early"] for r in results), "no trial stopped early: the test shows nothing of the rule"
    # The table's mean +- std: the trials' own test AUCs, population std (numpy's, BenchmarkTransformers').
    aucs = [r["test"]["auc"] for r in results]
    summary = json.loads((base / "finetune.json").read_text())["mean_std"]["mean AUC"]
    assert summary["mean"] == pytest.approx(statistics.fmean(aucs))
    assert summary["std"] == pytest.approx(statistics.pstdev(aucs))
    line = f"{statistics.fmean(aucs):.4f} ± {statistics.pstdev(aucs):.4f}"
    assert line in (base / "finetune.md").read_text() and line in out
    # A full fine-tune moves the backbone (the frozen test below could not tell otherwise).
    tuned = load_file(base / "trial-0" / "best.safetensors")
    assert any(not torch.equal(v, tuned[k]) for k, v in backbone(load_file(export)).items())
    # The best model is an ark-dist export with one head, for `evaluate`/`zeroshot` to load.
    assert sorted(k for k in tuned if k.startswith("omni_heads.")) == ["omni_heads.shenzhen.bias",
                                                                       "omni_heads.shenzhen.weight"]


@pytest.mark.slow
def test_a_frozen_backbone_stays_bitwise_as_loaded(ray_cluster, signal_store, export, tmp_path, capsys):
    code = finetune.main(args(signal_store, tmp_path, f"finetune.init={export}", "finetune.freeze=backbone",
                              "train.epochs=2", "finetune.patience=5"))
    assert code == 0, capsys.readouterr().out
    run = tmp_path / "ft" / "trial-0"
    assert [r["optim/steps"] for r in rows(run) if "optim/steps" in r][-1] > 0
    tuned, loaded = load_file(run / "best.safetensors"), backbone(load_file(export))
    assert backbone(tuned).keys() == loaded.keys()
    assert all(torch.equal(loaded[k], tuned[k]) for k in loaded)


def test_finetune_without_a_target_or_with_other_datasets_is_one_line(signal_store, tmp_path, capsys):
    code = finetune.main(["--config", "configs/demo.yaml", f"data.store.url={signal_store}"])
    assert code == 2 and "finetune.target is not set" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"finetune.target='shenzhen': data.datasets must be \[shenzhen\]"):
        load(None, ["finetune.target=shenzhen", "data.datasets=[shenzhen, chexpert]"])
    with pytest.raises(ValueError, match="train_subset=2.5"):
        load(None, ["finetune.train_subset=2.5"])


def _train_patients(store: Path, dataset: str) -> dict[str, set[str]]:
    """patient -> ids of the train split, read from the build's split file."""
    out: dict[str, set[str]] = {}
    with open(store / dataset / "splits.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train":
                out.setdefault(row["patient"], set()).add(f"{dataset}/{row['id']}")
    return out


def test_train_subsets_are_whole_patients_seeded_and_nested(six_store):
    store = Store(StoreConfig(url=str(six_store)))
    entry = read_manifest(store)["chestxray14"]
    patients = _train_patients(six_store, "chestxray14")
    assert any(len(ids) > 1 for ids in patients.values())  # patients with several images: the unit matters
    subsets = {size: set(finetune.subset_keys(store, entry, size=size, seed=0)) for size in (1, 2, 0.75)}
    for keys in subsets.values():  # whole patients, from the train split
        chosen = [p for p, ids in patients.items() if ids & keys]
        assert set().union(*(patients[p] for p in chosen)) == keys
    assert len([p for p, ids in patients.items() if ids & subsets[2]]) == 2
    assert len([p for p, ids in patients.items() if ids & subsets[0.75]]) == -(-len(patients) * 3 // 4)
    assert subsets[1] < subsets[2] < subsets[0.75]  # nested
    assert set(finetune.subset_keys(store, entry, size=2, seed=0)) == subsets[2]  # seeded
    assert len({frozenset(finetune.subset_keys(store, entry, size=2, seed=s)) for s in range(10)}) > 1
    with pytest.raises(ValueError, match="training patients"):
        finetune.subset_keys(store, entry, size=len(patients) + 1, seed=0)


def test_a_training_subset_is_all_a_round_reads_and_sizes_it(six_store, tmp_path):
    store = Store(StoreConfig(url=str(six_store)))
    entry = read_manifest(store)["chestxray14"]
    keys = finetune.subset_keys(store, entry, size=0.5, seed=0)
    (tmp_path / "subset.txt").write_text("".join(k + "\n" for k in keys) + "shenzhen/elsewhere\n")
    config = DataConfig(store=StoreConfig(url=str(six_store)), datasets=["chestxray14"], num_workers=2,
                        shuffle_buffer=8, views=ViewConfig(image_size=32, load_size=32),
                        train_only=str(tmp_path / "subset.txt"))
    (sized,) = subset_entries([entry], config)
    assert sized["splits"]["train"]["num_samples"] == len(keys) < entry["splits"]["train"]["num_samples"]
    assert subset_entries([read_manifest(store)["chexpert"]], config)[0] == read_manifest(store)["chexpert"]
    world, global_batch = 2, 4
    seen = []
    for rank in range(world):
        batches = list(train_loader(entry=sized, config=config, seed=0, cursor=Cursor(), rank=rank, world=world,
                                    global_batch=global_batch))
        assert len(batches) == round_steps(sized, global_batch=global_batch, max_steps=None) == len(keys) // 4
        seen += [f"chestxray14/{i}" for b in batches for i in b["ids"]]
    assert set(seen) <= set(keys) and len(seen) == len(keys) // 4 * 4


def test_a_flip_mirrors_the_crop_and_costs_recipes_without_it_nothing():
    image = torch.arange(16 * 16, dtype=torch.uint8).view(1, 1, 16, 16)
    whole = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), shift_scale_rotate_p=0.0, photometric_p=0.0)
    for flip, expected in ((1.0, torch.flip(image, dims=[3])), (0.0, image)):
        cfg = ViewConfig(**{**whole.__dict__, "hflip_p": flip})
        theta = torch.from_numpy(draw_views(np.random.default_rng(0), 16, 16, cfg)["theta_student"])[None]
        torch.testing.assert_close(render(image, theta=theta, size=16), render(expected, theta=torch.eye(3)[None, :2],
                                                                                 size=16))
    # hflip_p = 0 draws nothing: Ark's views are the ones drawn before the option existed.
    ark = ViewConfig()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    draw_views(a, 100, 80, ark)
    from ark_dist.data.views import _crop, _photometric, _shift_scale_rotate

    _crop(b, 100, 80, ark), _shift_scale_rotate(b, ark), _photometric(b, ark)
    assert a.uniform() == b.uniform()


def test_the_constant_schedule_holds_the_lr_after_its_warmup():
    assert lr_at(0, total=100, warmup=10, lr=0.3, min_lr=0.0, schedule="constant") == pytest.approx(0.03)
    assert [lr_at(s, total=100, warmup=10, lr=0.3, min_lr=0.0, schedule="constant") for s in (10, 50, 99, 150)] \
        == [0.3] * 4


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/finetune/*.yaml")),
                         ids=lambda p: p.name)
def test_every_finetune_recipe_is_benchmark_transformers_protocol_on_its_dataset(path):
    cfg = load(str(path))
    if path.stem not in ("benchmark", "demo"):
        assert cfg.data.datasets == [cfg.finetune.target] and cfg.train.name == path.stem
        assert cfg.finetune.target == path.stem or (path.stem.startswith(cfg.finetune.target) and cfg.finetune.train_where)
    o, v = cfg.optim, cfg.data.views
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.01, 0.9, False, 0.0)
    assert (v.hflip_p, v.rotate_deg, v.shift, v.scale, v.shift_scale_rotate_p, v.photometric_p) == (0.5, 7, 0, 0, 1, 0)
    assert v.eval_crop == 224 / 256 and cfg.finetune.test_ten_crop and cfg.train.eval_every == 1
    if path.stem != "demo":
        assert (cfg.train.global_batch, cfg.finetune.patience, v.image_size, v.crop_scale) == (64, 10, 224, (0.08, 1.0))


def test_train_where_keeps_the_training_samples_whose_facts_match_and_composes_with_a_subset(six_store, tmp_path):
    from conftest import read_store_samples

    store = Store(StoreConfig(url=str(six_store)))
    entry = read_manifest(store)["chestxray14"]
    facts = read_store_samples(six_store, "chestxray14")
    female = {f"chestxray14/{i}" for i, f in facts.items() if f["_split"] == "train" and f.get("sex") == "F"}
    assert 0 < len(female) < sum(f["_split"] == "train" for f in facts.values())
    assert set(finetune.where_keys(store, entry, {"sex": ["F"]})) == female
    cfg = load(None, [f"data.store.url={six_store}", "data.datasets=[chestxray14]", "finetune.target=chestxray14",
                      "finetune.train_subset=0.75", "finetune.train_where={sex: [F]}"])
    url = finetune.training_subset(cfg, store, entry, str(tmp_path))
    patients = set(finetune.subset_keys(store, entry, size=0.75, seed=0))
    assert set(Path(url).read_text().split()) == patients & female
    with pytest.raises(ValueError, match="no training sample of chestxray14 is left by sex in \\['X'\\]"):
        finetune.training_subset(load(None, [f"data.store.url={six_store}", "data.datasets=[chestxray14]",
                                             "finetune.target=chestxray14", "finetune.train_where={sex: [X]}"]),
                                 store, entry, str(tmp_path))
    with pytest.raises(ValueError, match="train_where"):
        load(None, ["finetune.train_where={race: [x]}"])


def test_the_trials_table_gives_each_subgroup_mean_and_std_over_trials():
    results = [{"seed": i, "best_epoch": 3, "test": {"auc": a, "auc_class/A": a, "groups": g}}
               for i, (a, g) in enumerate([(0.8, {"sex=F": 0.9, "sex=M": 0.7, "gap/sex": 0.2}),
                                           (0.6, {"sex=F": 0.8, "sex=M": 0.75, "gap/sex": 0.05})])]
    table, data = finetune.summary(results, labels=["A"])
    f = (statistics.fmean([0.9, 0.8]), statistics.pstdev([0.9, 0.8]))
    assert f"| sex=F | 2 | {f[0]:.4f} ± {f[1]:.4f} |" in table
    assert data["mean_std"]["group gap/sex"]["mean"] == pytest.approx(0.125)
    assert data["mean_std"]["mean AUC"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.1)}


@pytest.mark.slow
def test_a_finetune_resumed_by_its_name_ends_as_the_uninterrupted_one(ray_cluster, signal_store, export, tmp_path,
                                                                     capsys):
    """Stopped after 2 of 4 epochs and run again under the same name, a fine-tune continues from
    its checkpoint (engine, best epoch, patience) and ends with the uninterrupted run's weights."""
    common = [f"finetune.init={export}", "finetune.patience=10", "train.checkpoint_rounds=1"]
    assert finetune.main(args(signal_store, tmp_path / "whole", *common, "train.epochs=4")) == 0
    assert finetune.main(args(signal_store, tmp_path / "parts", *common, "train.epochs=2")) == 0
    assert finetune.main(args(signal_store, tmp_path / "parts", *common, "train.epochs=4")) == 0
    capsys.readouterr()
    whole, parts = (tmp_path / name / "ft" / "trial-0" for name in ("whole", "parts"))
    assert [r["epoch"] for r in rows(parts)] == [0, 1, 2, 3]  # the second run trained epochs 2 and 3 only
    a, b = load_file(whole / "best.safetensors"), load_file(parts / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss/shenzhen"] for r in rows(parts)] == [r["val_loss/shenzhen"] for r in rows(whole)]
