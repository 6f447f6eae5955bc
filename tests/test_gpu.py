"""On a CUDA machine only (`make test-gpu`): the trainer in bf16 and fp16 with NCCL, a fused optimizer
and torch.compile, nvJPEG decode, render and export on the GPU, and the step and memory benchmarks.
W&B is off here (the CPU suite tests it): a GPU node then needs no wandb, S3 or Foundation X package.
Every gpu-marked test lives in this file: cluster/gpu-check.sh collects it alone, since other test
modules import the S3 and W&B test tools at their top."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ARK6, TINY_SWIN

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.fail("a gpu-marked test ran without a CUDA device: run `make test-gpu` on a GPU machine")


def test_bf16_compiled_training_on_one_gpu(six_store, tmp_path):
    import ray
    from safetensors.torch import load_file

    from ark_dist.config import load
    from ark_dist.train.run import fit

    kwargs = str(TINY_SWIN).replace("'", "")
    cfg = load(None, [f"data.store.url={six_store}", f"data.datasets=[{', '.join(ARK6)}]", "data.num_workers=2",
                      "data.views.image_size=64", "data.views.load_size=72", f"model.backbone_kwargs={kwargs}",
                      "model.projector_dim=32", "engine.num_workers=1", "engine.use_gpu=true", "engine.precision=bf16",
                      "engine.compile=true", "train.epochs=2", "train.global_batch=4", "train.eval_every=1", "tracking.wandb=disabled",
                      f"train.storage_path={tmp_path / 'runs'}", "train.name=gpu"])
    try:
        result = fit(cfg)
    finally:
        ray.shutdown()
    assert result.error is None, result.error
    assert all(0.0 <= result.metrics[f"auc/test/{n}/teacher"] <= 1.0 for n in ("chexpert", "shenzhen"))
    teacher = load_file(Path(result.checkpoint.path) / "teacher.safetensors")
    assert all(str(t.dtype) == "torch.float32" for t in teacher.values()), "the teacher stays fp32 under bf16"


def test_bench_step_on_the_gpu(tmp_path, capsys):
    from ark_dist.train.bench import main

    assert main(["--tiny", "--device", "cuda", "--precision", "bf16", "--batch", "16", "--steps", "3",
                 "--repeats", "2", "--storage", str(tmp_path / "runs")]) == 0
    assert "ratio ark-dist / plain" in capsys.readouterr().out


def _signal_config(store, runs, name: str, *extra):
    from ark_dist.config import load

    kwargs = str(TINY_SWIN).replace("'", "")
    return load(None, [f"data.store.url={store}", "data.datasets=[shenzhen]", "data.num_workers=2",
                       "data.views.image_size=64", "data.views.load_size=72", "data.shuffle_buffer=16",
                       f"model.backbone_kwargs={kwargs}", "model.projector_dim=32", "engine.num_workers=1",
                       "engine.use_gpu=true", "train.epochs=6", "train.eval_every=6", "train.global_batch=8",
                       "optim.lr=0.05", "optim.warmup_epochs=0.5", f"train.storage_path={runs}", f"train.name={name}",
                       "tracking.wandb=disabled", *extra])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_learns_the_visible_finding_as_on_the_cpu_and_exports(precision, signal_store, tmp_path,
                                                                               capsys):
    """The CPU's bar (tests/test_train.py: held-out AUC >= 0.95 for student and teacher) on one
    NCCL rank in bf16 and fp16, JPEGs decoded on the GPU (nvJPEG); then the teacher exports and
    plain timm reloads it: the same pooled features as the checkpoint's fp32 teacher."""
    import json

    import ray
    import timm
    import torch
    from safetensors.torch import load_file

    from ark_dist.configtree import from_dict
    from ark_dist.config import Config
    from ark_dist.export import main as export
    from ark_dist.model import ArkModel
    from ark_dist.train.run import fit

    try:
        result = fit(_signal_config(signal_store, tmp_path / "runs", precision, f"engine.precision={precision}",
                                    "data.decode=device"))
    finally:
        ray.shutdown()
    assert result.error is None, result.error
    for model in ("student", "teacher"):
        for split in ("val", "test"):
            assert result.metrics[f"auc/{split}/shenzhen/{model}"] >= 0.95, (split, model, result.metrics)

    final = Path(result.checkpoint.path)
    assert export(["--checkpoint", str(final), "--out", str(tmp_path / "ark.safetensors")]) == 0, capsys.readouterr()
    state = json.loads((final / "state.json").read_text())
    teacher = ArkModel(from_dict(Config, state["config"]).model, heads={n: len(v) for n, v in state["labels"].items()})
    teacher.load_state_dict(load_file(final / "teacher.safetensors"), strict=True)
    m = timm.create_model("swin_base_patch4_window7_224", num_classes=0, pretrained=False, **TINY_SWIN)
    missing, _ = m.load_state_dict(load_file(tmp_path / "ark.safetensors"), strict=False)
    assert not missing
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m.eval()(x), teacher.eval().backbone(x))


def test_render_on_the_gpu_matches_the_cpu():
    import torch

    from ark_dist.data import render
    from ark_dist.data.config import ViewConfig
    from ark_dist.train.bench import synthetic_batch

    views = ViewConfig(image_size=224, load_size=256)
    batch = synthetic_batch(16, views, seed=3)
    cpu = render(batch["image"], theta=batch["theta_student"], size=224, photo=batch["photo"])
    gpu = render(batch["image"].cuda(), theta=batch["theta_student"].cuda(), size=224, photo=batch["photo"].cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


def test_nvjpeg_canvases_match_the_loaders(signal_store):
    """The device decode on the GPU against the loader's PIL canvas (stored 64 px, canvas 72).
    nvJPEG's IDCT is not libjpeg-turbo's, so the bound is looser than the CPU's one level
    (tests/test_device_decode.py)."""
    import torch

    from ark_dist.data import Cursor, DataConfig, Store, StoreConfig, canvases, dataset_entry, read_manifest
    from ark_dist.data import train_loader
    from ark_dist.data.config import ViewConfig

    configs = [DataConfig(store=StoreConfig(url=str(signal_store)), views=ViewConfig(image_size=64, load_size=72),
                          num_workers=0, decode=mode) for mode in ("loader", "device")]
    entry = dataset_entry(read_manifest(Store(configs[0].store)), "shenzhen", splits=("train",))
    loaders = [train_loader(entry=entry, config=c, seed=0, cursor=Cursor(), rank=0, world=1, global_batch=4)
               for c in configs]
    pairs = list(zip(*loaders))
    assert pairs
    for ours, theirs in pairs:
        diff = (canvases(theirs, torch.device("cuda")).cpu().int() - ours["image"].int()).abs()
        assert diff.float().mean() < 0.5 and diff.max() <= 4, (diff.float().mean(), diff.max())


def test_bench_memory_finds_a_batch_that_runs(tmp_path):
    import json

    from ark_dist.train.bench_memory import main

    figures = tmp_path / "memory.json"
    assert main(["--tiny", "--probes", "2,4,8", "--zero", "0,2", "--fill", "0.05", "--json", str(figures),
                 "--storage", str(tmp_path / "runs")]) == 0
    rows = json.loads(figures.read_text())["rows"]
    assert [(r["zero"], r["checkpointing"]) for r in rows] == [(0, False), (0, True), (2, False), (2, True)]
    for row in rows:  # a largest batch ran in every configuration, and checkpointing costs less per image
        assert "error" not in row and row["largest"] and row["largest"] >= 0.5 * row["predicted"], row
    assert rows[1]["per_image_mib"] < rows[0]["per_image_mib"], rows
