"""Untrusted files: a checkpoint carrying a pickle payload is refused, and the payload never runs.

DeepSpeed's loader would unpickle anything in a checkpoint folder on every rank at resume; ark-dist
routes those reads through torch's weights-only unpickler (ark_dist/train/safeload.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import faultruns as fr
from ark_dist.train.safeload import safe_load
from conftest import TINY_SWIN

TINY = str(TINY_SWIN).replace("'", "")


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_deepspeed_optimizer_state_loads_and_a_payload_is_refused_without_running(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    plain = tmp_path / "optim_states.pt"
    state = {"optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                                      "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}]},
             "module": {"w": torch.arange(4.0)}, "ds_version": "0.19.8"}
    torch.save(state, plain)
    loaded = safe_load(plain)
    assert torch.equal(loaded["module"]["w"], torch.arange(4.0))
    assert loaded["optimizer_state_dict"]["zero_stage"] == ZeroStageEnum.gradients

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "extra": Payload(marker)}, evil)
    with pytest.raises(ValueError, match=r"refused to unpickle posix\.system"):
        safe_load(evil)
    assert not marker.exists()


def _train(store, runs: Path, epochs: int) -> subprocess.CompletedProcess:
    argv = [f"data.store.url={store}", "data.datasets=[chexpert, shenzhen]", "data.num_workers=0",
            "data.views.image_size=64", "data.views.load_size=72", f"model.backbone_kwargs={TINY}",
            "model.projector_dim=32", f"train.epochs={epochs}", "train.global_batch=4", "train.eval_every=4",
            f"train.storage_path={runs}", "train.name=tampered", "tracking.wandb=disabled",
            "train.max_failures=0"]  # the refusal is not transient: no restarts to wait through
    return subprocess.run([sys.executable, "launch.py", "train", "--config", "configs/demo.yaml", *argv], cwd=fr.REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_DEDUP_LOGS": "0"})


@pytest.mark.slow
def test_resuming_from_a_tampered_checkpoint_is_refused_and_the_payload_never_runs(six_store, tmp_path):
    runs = tmp_path / "runs"
    done = _train(six_store, runs, epochs=1)
    assert done.returncode == 0, done.stderr[-3000:]
    marker = tmp_path / "payload-ran"
    tampered = 0
    for path in (runs / "tampered").glob("checkpoint_*/engine/*model_states.pt"):
        state = torch.load(path, weights_only=False)  # our own file, from the run above
        state["extra"] = Payload(marker)
        torch.save(state, path)
        tampered += 1
    assert tampered
    done = _train(six_store, runs, epochs=2)  # the same name: it resumes from the last checkpoint
    errors = fr.error_lines(done.stderr)
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-3000:]
    assert "refused to unpickle posix.system" in errors[0] and "model_states.pt" in errors[0], errors
    assert not marker.exists()
