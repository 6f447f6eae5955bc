"""On a CUDA machine only (`make test-gpu`): the trainer in bf16 with NCCL, a fused optimizer and
torch.compile, and the step benchmark on the GPU path."""

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
                      "engine.compile=true", "train.epochs=2", "train.global_batch=4", "train.eval_every=1",
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
