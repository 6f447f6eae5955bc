"""`launch.py zeroshot` and `launch.py embed` on Ray Train workers, against the same model run by hand
in this process: the zero-shot AUC equals one computed from the heads' sigmoid outputs and the map
(sklearn), and 2 workers' embeddings equal single-process ones, every sample once, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import look_alike, run_shards, tiny_export
from ark_dist.data import DataConfig, EvalLoader, Store, StoreConfig, read_manifest
from ark_dist.data.config import ViewConfig
from ark_dist.data.views import render_eval
from ark_dist.reuse import embed, zeroshot
from ark_dist.reuse.init import load_model

TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}
SIZE = 64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(synth_root, tmp_path_factory) -> Path:
    """ChestX-ray14's look-alike and NODE21's (an unseen set for zero-shot)."""
    out = tmp_path_factory.mktemp("store")
    for source, root in (("chestxray14", synth_root / "chestxray14"), ("node21", look_alike(tmp_path_factory, "node21"))):
        code, _, err = run_shards("build", "--source", source, "--root", root, "--out", out, "--quiet", "--workers", "1",
                                  "--max-side", "96", "--samples-per-shard", "4")
        assert code == 0, err
    return out


def _labels(store: Path, dataset: str) -> list[str]:
    return read_manifest(Store(StoreConfig(url=str(store))))[dataset]["labels"]


@pytest.fixture(scope="module")
def export(store, tmp_path_factory) -> str:
    """ChestX-ray14's, VinDr's and Shenzhen's heads."""
    labels = {"chestxray14": _labels(store, "chestxray14"),
              "vindr_cxr": ["Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"],
              "shenzhen": ["Tuberculosis"]}
    return tiny_export(tmp_path_factory.mktemp("export") / "teacher.safetensors", labels, seed=0)


def _by_hand(export: str, store: Path, dataset: str, split: str, *, eval_crop: float):
    """(ids, {head: sigmoid outputs}, backbone, projector, target, mask) of every sample, one process."""
    model, _ = load_model(export, log=lambda *_: None)
    config = DataConfig(store=StoreConfig(url=str(store)), num_workers=0,
                        views=ViewConfig(image_size=SIZE, load_size=SIZE if eval_crop == 1.0 else 73, eval_crop=eval_crop))
    entry = read_manifest(Store(config.store))[dataset]
    ids, heads, pooled, projected, target, mask = [], {h: [] for h in model.omni_heads}, [], [], [], []
    with torch.no_grad():
        for batch in EvalLoader(entry=entry, config=config, split=split, seed=0, rank=0, world=1, batch_size=5):
            x = render_eval(batch["image"], config.views)[:, 0]
            features = model.backbone(x)
            p = model.projector(features)
            for h in heads:
                heads[h].append(torch.sigmoid(model.omni_heads[h](p)).numpy())
            ids += batch["ids"]
            pooled.append(features.numpy())
            projected.append(p.numpy())
            target.append(batch["target"].numpy())
            mask.append(batch["mask"].numpy())
    return (ids, {h: np.concatenate(v) for h, v in heads.items()}, np.concatenate(pooled), np.concatenate(projected),
            np.concatenate(target), np.concatenate(mask))


@pytest.mark.slow
def test_zeroshot_auc_is_the_maps_mean_of_sigmoid_outputs(ray_cluster, store, export, tmp_path):
    out = tmp_path / "zs"
    code = zeroshot.main(["--checkpoint", export, "--target", "node21", "--map",
                          str(REPO / "configs/zeroshot/node21_nodule_mass_tumor.yaml"), "--store", str(store),
                          "--split", "train", "--out", str(out), "--image-size", str(SIZE), "--workers", "2",
                          "--loader-workers", "0", "--batch-size", "3", "--resamples", "200"])
    assert code == 0
    got = json.loads((out / "zeroshot.json").read_text())["classes"]["Nodule"]
    ids, heads, *_, target, mask = _by_hand(export, store, "node21", "train", eval_crop=1.0)
    xray = read_manifest(Store(StoreConfig(url=str(store))))["chestxray14"]["labels"]
    score = np.mean([heads["chestxray14"][:, xray.index("Nodule")], heads["chestxray14"][:, xray.index("Mass")],
                     heads["vindr_cxr"][:, 1]], axis=0)  # VinDr head: Lung tumor is its 2nd class
    labels = target[:, 0].astype(int)
    assert 0 < labels.sum() < len(labels), "the look-alike's train split has both outcomes"
    assert got["n"] == len(ids) and got["positives"] == labels.sum()
    assert got["auc"] == pytest.approx(roc_auc_score(labels, score), abs=1e-6)
    assert got["low"] <= got["auc"] <= got["high"]
    assert (out / "roc.png").stat().st_size > 0 and "| Nodule |" in (out / "zeroshot.md").read_text()


@pytest.mark.slow
def test_zeroshot_from_a_published_ark_file_equals_zeroshot_from_our_export_of_it(ray_cluster, store, tmp_path):
    """A published Ark .pth.tar (numbered heads, no class names) scored through Ark-6's class lists
    and a recipe's model gives the AUC of ark-dist's export of the same weights."""
    import yaml
    from safetensors.torch import save_file

    from ark_dist.export import exported_tensors, metadata
    from ark_dist.reuse.init import ARK_RELEASE_LABELS
    from test_weights import ARK_ORDER, TINY2, ark, ark_release

    source = ark(TINY2, heads=ARK_ORDER, seed=5)
    torch.save(ark_release(source, swin=TINY2), tmp_path / "ark6.pth.tar")
    state = {"labels": ARK_RELEASE_LABELS, "cursor": {"epoch": 1, "round": 0, "step": 0}, "manifest_sha256": "0" * 64}
    save_file(exported_tensors(source), tmp_path / "ours.safetensors", metadata=metadata(source, state, source="t",
                                                                                         which="teacher"))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"model": {"backbone_kwargs": TINY2, "projector_dim": 32}}))
    found = {}
    for name, extra in (("ark6.pth.tar", ["--recipe", str(tmp_path / "recipe.yaml")]), ("ours.safetensors", [])):
        out = tmp_path / name.split(".")[0]
        assert zeroshot.main(["--checkpoint", str(tmp_path / name), "--target", "node21", "--map",
                              str(REPO / "configs/zeroshot/node21_nodule_mass_tumor.yaml"), "--store", str(store),
                              "--out", str(out), "--image-size", str(SIZE), "--loader-workers", "0",
                              "--resamples", "50", *extra]) == 0
        found[name] = json.loads((out / "zeroshot.json").read_text())["classes"]["Nodule"]["auc"]
    assert found["ours.safetensors"] is not None  # the look-alike's split has both outcomes
    assert found["ark6.pth.tar"] == found["ours.safetensors"]


def test_a_map_naming_a_class_the_model_lacks_is_one_line(store, export, tmp_path, capsys):
    bad = tmp_path / "map.yaml"
    bad.write_text("target: node21\nclasses:\n  Nodule: [[chestxray14, Nodules]]\n")
    assert zeroshot.main(["--checkpoint", export, "--target", "node21", "--map", str(bad), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: map: 'Nodule' <- chestxray14/Nodules: no such class") and "\n" not in err


@pytest.mark.slow
def test_two_workers_embed_every_sample_once_as_one_process_does_and_resume(ray_cluster, store, export, tmp_path):
    out = tmp_path / "emb"
    argv = ["--checkpoint", export, "--store", str(store), "--datasets", "chestxray14", "node21", "--out", str(out),
            "--image-size", str(SIZE), "--load-size", "73", "--workers", "2", "--loader-workers", "0",
            "--batch-size", "3"]
    assert embed.main(argv) == 0
    manifest = read_manifest(Store(StoreConfig(url=str(store))))
    for dataset in ("chestxray14", "node21"):
        for split, info in manifest[dataset]["splits"].items():
            files = sorted((out / dataset / split).glob("*.parquet"))
            assert len(files) == len(info["shards"])
            table = pq.read_table(files).to_pydict()
            meta = json.loads(pq.read_schema(files[0]).metadata[b"ark_dist"])
            assert meta["labels"] == {dataset: manifest[dataset]["labels"]}
            ids, _, pooled, projected, target, mask = _by_hand(export, store, dataset, split, eval_crop=224 / 256)
            assert sorted(table["id"]) == sorted(ids) and len(set(table["id"])) == len(ids)  # every sample once
            row = {i: k for k, i in enumerate(table["id"])}
            order = [row[i] for i in ids]
            np.testing.assert_allclose(np.array(table["backbone"])[order], pooled, atol=1e-5)
            np.testing.assert_allclose(np.array(table["projector"])[order], projected, atol=1e-5)
            np.testing.assert_array_equal(np.array(table["target"])[order], target)
            np.testing.assert_array_equal(np.array(table["mask"])[order], mask)
    # chestxray14 carries sex and age; its view is PA/AP
    sample = pq.read_table(sorted((out / "chestxray14" / "train").glob("*.parquet"))).to_pydict()
    assert set(sample["sex"]) <= {"M", "F"} and all(a is not None for a in sample["age"])
    # resumable by shard: a lost file is the only one written again
    lost = sorted((out / "node21" / "train").glob("*.parquet"))[0]
    before = lost.read_bytes()
    lost.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert embed.main(argv) == 0
    assert lost.read_bytes() == before
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


@pytest.mark.slow
def test_bench_embed_runs_both_paths(ray_cluster, capsys):
    """`launch.py bench embed --tiny` (no timing asserted: the figures are for the notes)."""
    from ark_dist.reuse import bench

    assert bench.main(["--tiny", "--tiny-images", "16", "--workers", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "plain no_grad loop" in out and "embed, 1 worker(s)" in out


@pytest.mark.slow
def test_evaluate_gives_each_class_auc_and_the_forgetting_of_a_continual_run(ray_cluster, store, tmp_path):
    """`evaluate --before`: per-class AUCs and each old dataset's mean before minus after, equal to
    sklearn's on the heads' outputs computed by hand; a dataset new to the run has no 'before'."""
    from ark_dist.reuse import evaluate

    before = tiny_export(tmp_path / "before.safetensors", {"chestxray14": _labels(store, "chestxray14")}, seed=1)
    after = tiny_export(tmp_path / "after.safetensors", {"chestxray14": _labels(store, "chestxray14"),
                                                         "node21": _labels(store, "node21")}, seed=2)
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", after, "--before", before, "--datasets", "chestxray14", "node21",
                          "--store", str(store), "--split", "train", "--out", str(out), "--image-size", str(SIZE),
                          "--load-size", "73", "--workers", "2", "--loader-workers", "0", "--batch-size", "3",
                          "--resamples", "100"]) == 0
    doc = json.loads((out / "evaluate.json").read_text())

    def means(export: str, dataset: str) -> tuple[dict, float]:
        _, heads, *_, target, mask = _by_hand(export, store, dataset, "train", eval_crop=224 / 256)
        aucs = {}
        for k, name in enumerate(_labels(store, dataset)):
            known = mask[:, k] > 0
            y = target[known, k] >= 0.5
            if 0 < y.sum() < len(y):
                aucs[name] = roc_auc_score(y, heads[dataset][known, k])
        return aucs, float(np.mean(list(aucs.values())))

    after_aucs, after_mean = means(after, "chestxray14")
    _, before_mean = means(before, "chestxray14")
    got = doc["after"]["chestxray14"]
    assert {k: v["auc"] for k, v in got["classes"].items() if v["auc"] is not None} == pytest.approx(after_aucs)
    assert got["mean"] == pytest.approx(after_mean) and doc["before"]["chestxray14"]["mean"] == pytest.approx(before_mean)
    assert doc["forgetting"] == pytest.approx({"chestxray14": before_mean - after_mean})
    assert "node21" in doc["after"] and "node21" not in doc["before"]
