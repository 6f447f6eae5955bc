"""Foundation X survives a killed worker: a Ray Train worker SIGKILLed once a checkpoint inside a
lock pass exists is restarted from the latest checkpoint, and the run ends with the teacher of an
uninterrupted one (the lock's zero LR and the cycle's LR are functions of the step; the loader,
the BatchNorm statistics and the teacher come back from the checkpoint)."""

from __future__ import annotations

import json
import signal

import pytest

import faultruns as fr
from test_kill import _rank_pid

TINY4 = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4, "img_size": 64}
LOCKS = (1, 3)  # the loc and seg lock passes of the cycle [cls, loc lock, loc release, seg lock, seg release]


def _args(store, runs, name: str) -> list[str]:
    from ark_dist.config import load, to_dict

    cfg = load(None, [f"data.store.url={store}", "data.datasets=[chestx_det]", "data.num_workers=0",
                      "data.shuffle_buffer=64", "data.views.image_size=64", "data.views.load_size=64",
                      "data.max_steps_per_round=6", f"model.backbone_kwargs={json.dumps(TINY4)}",
                      "model.projector=none", "model.dense.loc_channels=32", "model.dense.loc_convs=1",
                      "model.dense.seg_channels=32",
                      "method.foundation.steps=[chestx_det:cls, chestx_det:loc, chestx_det:seg]",
                      "method.foundation.warmup_cycles=0", "optim.name=adamw", "optim.lr=0.002",
                      "train.global_batch=16", "train.epochs=2", "train.eval_every=100", "train.checkpoint_every=1",
                      "train.keep_checkpoints=1000", f"train.storage_path={runs}", f"train.name={name}",
                      "tracking.wandb=disabled"])
    return [f"{section}={json.dumps(values)}" for section, values in to_dict(cfg).items()]


def _inside_a_lock(run) -> bool:
    return any(r in LOCKS and s >= 1 for _, r, s in fr.checkpoints(run).values())


@pytest.mark.slow
def test_a_worker_killed_inside_a_lock_pass_is_restarted_to_the_same_teacher(visible_store, tmp_path):
    with fr.driver(_args(visible_store, tmp_path / "runs", "clean"), tmp_path / "clean.log") as proc:
        fr.finish(proc, tmp_path / "clean.log")
    teacher = fr.final_teacher(tmp_path / "runs" / "clean")
    run, log = tmp_path / "runs" / "killed", tmp_path / "killed.log"
    with fr.driver(_args(visible_store, tmp_path / "runs", "killed"), log) as proc:
        fr.wait_for("a checkpoint inside a lock pass", lambda: _inside_a_lock(run), proc, log)
        victim = _rank_pid(log, 1)
        workers = {p.pid: p for p in fr.session(proc.pid, fr.WORKER)}
        assert victim in workers, [p.name() for p in fr.session(proc.pid)]
        workers[victim].send_signal(signal.SIGKILL)
        fr.wait_for("a resume", lambda: fr.resumed(log.read_text()), proc, log)
        text = fr.finish(proc, log)
    [cursor] = fr.resumed(text)
    print(f"rank 1 killed inside a lock pass; resumed at epoch {cursor[0]}, pass {cursor[1]}, step {cursor[2]}")
    assert cursor != (0, 0, 0), "the group restarted from scratch, not from a checkpoint"
    fr.assert_same_teacher(teacher, fr.final_teacher(run))
