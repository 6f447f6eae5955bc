"""Resuming a run whose driver was killed at the worst moment.

Ray Train keeps the list of a run's checkpoints in `checkpoint_manager_snapshot.json` in the run
folder and rewrites it in place after every checkpoint (truncate, then write). A driver killed
between the two leaves it empty, and Ray then refuses to start the run at all
(`CheckpointManagerInitializationError: Expecting value`). So ark-dist keeps its own record of the
latest checkpoint, written whole-or-nothing after Ray has registered it (`Recorder`, on the Train
controller), and a driver that finds the snapshot unreadable moves it aside (`repair`) and lets
the workers resume from that record (`recorded_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import time

from ark_dist.fs import filesystem, join, write_atomic

log = logging.getLogger(__name__)

SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants, Ray 2.60
LATEST = "latest_checkpoint.json"  # ark-dist's record: {"checkpoint": "<folder name>"}


def recorder(run: str):
    """A Ray Train callback (it runs on the controller, after every rank's report is in and its
    checkpoint persisted) that records the latest checkpoint's folder name in `run`."""
    from ray.train import UserCallback

    class Recorder(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None:
                name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
                write_atomic(join(run, LATEST), json.dumps({"checkpoint": name}).encode())

    return Recorder()


def repair(run: str) -> None:
    """Before a (re)start: a snapshot that does not parse is moved aside, with one warning that
    says from where the run resumes instead. An unreadable snapshot and no record: one-line error."""
    fs, path = filesystem(join(run, SNAPSHOT))
    if not fs.exists(path):
        return
    try:
        json.loads(fs.cat_file(path))
        return
    except ValueError:
        pass
    latest = recorded(run)
    if latest is None:
        raise ValueError(f"{join(run, SNAPSHOT)}: Ray Train's list of checkpoints is cut off (a driver killed "
                         f"while writing it) and the run folder has no {LATEST}: move the folder aside to start over")
    aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    fs.mv(path, aside)
    log.warning("%s was cut off (a driver killed while writing it), moved to %s; resuming from %s",
                join(run, SNAPSHOT), aside.rsplit("/", 1)[-1], latest)


def recorded(run: str) -> str | None:
    """The URL of the latest checkpoint ark-dist recorded in `run`, if any and still there."""
    fs, path = filesystem(join(run, LATEST))
    try:
        name = json.loads(fs.cat_file(path))["checkpoint"]
    except FileNotFoundError:
        return None
    fs, path = filesystem(join(run, name))
    return join(run, name) if fs.exists(path) else None


def recorded_checkpoint(run: str):
    """The recorded latest checkpoint as a Ray `Checkpoint` (on the run's storage filesystem), for a
    worker that Ray Train gave none: None when there is no record."""
    import ray.train

    from ark_dist.train.run import storage_filesystem

    url = recorded(run)
    if url is None:
        return None
    path, fs = storage_filesystem(url)
    return ray.train.Checkpoint(path=path, filesystem=fs)
