"""Driving tiny training runs from the outside, for the fault tests: a driver in a session of its
own (so that everything it started can be SIGKILLed), and reading a run folder's checkpoints,
local or in a bucket.

Every driver runs in a session of its own: Ray's actor processes sit in process groups of their
own, so ending that session (not one process group) is what leaves no Ray process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from test_train import tiny_config

REPO = Path(__file__).resolve().parents[1]
DRIVER = """
import sys
from ark_dist.train.cli import main
sys.exit(main(sys.argv[1:]))
"""
RESUMED = re.compile(r"\[ark-dist\] resumed at epoch (\d+), round (\d+), step (\d+)")
WORKER = "ray::RayTrainWorker"  # the process title of a Ray Train V2 worker actor
RUN_S = 300  # one tiny run on 2 busy cores takes ~100 s, half of it starting Ray and DeepSpeed


def env(**extra: str) -> dict:
    """The drivers' environment: unbuffered, so the log file follows the run; undeduplicated, so
    every worker line is there."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0", **extra}


def args(store, runs, name: str, *extra: str) -> list[str]:
    """`launch.py train` overrides of a tiny run checkpointing every step (config sections as JSON,
    which is YAML)."""
    from ark_dist.config import to_dict

    # Every checkpoint is kept: a test that waits for one (mid-round, say) polls every 0.2 s, while
    # the default 2 kept at a checkpoint a step would live for a few tiny steps and could be missed.
    cfg = tiny_config(store, runs, name, "train.checkpoint_every=1", "train.keep_checkpoints=1000", *extra)
    return [f"{section}={json.dumps(values)}" for section, values in to_dict(cfg).items()]


def session(sid: int, title: str = "") -> list[psutil.Process]:
    """The live processes of a session whose title starts with `title` (zombies are left out:
    they wait for a reaper, not a signal)."""
    procs = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith(title):
                procs.append(proc)
        except (OSError, psutil.Error):  # it ended while we looked
            pass
    return procs


def end_session(sid: int) -> None:
    """SIGKILL every process of a session and wait until none is left."""
    deadline = time.monotonic() + 30
    while procs := session(sid):
        assert time.monotonic() < deadline, f"processes of the driver's session survived SIGKILL: {procs}"
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)


@contextmanager
def driver(argv: list[str], log: Path, environ: dict | None = None):
    """`launch.py train ARGV` (and so its local Ray) in a new session, stdout and stderr to `log`;
    every process of the session is SIGKILLed on the way out, whatever happened."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, *argv], cwd=REPO, env=environ or env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        end_session(proc.pid)
        proc.wait()


def finish(proc: subprocess.Popen, log: Path, code: int = 0) -> str:
    """Wait for the driver; it must exit with `code`. Returns its output."""
    got = proc.wait(timeout=RUN_S)
    text = log.read_text()
    assert got == code, f"the driver exited with {got}, not {code}:\n{text[-3000:]}"
    return text


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def wait_for(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = RUN_S):
    """Poll `ready()` until it returns something true (returned); the driver must still be running."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert proc.poll() is None, f"the driver ended ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s"
        time.sleep(0.2)
    return value


# -- a run folder's checkpoints, local or s3:// --------------------------------------------------
def _fs(run: str):
    from ark_dist.fs import filesystem

    return filesystem(str(run))


def checkpoints(run) -> dict[str, tuple[int, int, int]]:
    """{checkpoint folder: cursor} of the run's checkpoints whose state.json is there (a folder
    still being written may lack it)."""
    fs, root = _fs(run)
    out = {}
    for path in fs.glob(f"{root}/checkpoint_2*/state.json"):
        try:
            out[path.rsplit("/", 1)[0]] = tuple(json.loads(fs.cat_file(path))["cursor"].values())
        except (OSError, ValueError):
            pass
    return out


def mid_round(run) -> bool:
    """A checkpoint inside the second round of the first epoch exists."""
    return any(e == 0 and r == 1 and s >= 1 for e, r, s in checkpoints(run).values())


def furthest(run) -> str:
    """The checkpoint folder with the furthest cursor (a finished run's last one)."""
    found = checkpoints(run)
    return max(found, key=found.get)


def final_teacher(run) -> dict:
    from safetensors.torch import load

    fs, _ = _fs(run)
    return load(fs.cat_file(f"{furthest(run)}/teacher.safetensors"))


def round_starts(run) -> dict[tuple[int, int], int]:
    """The global step at which every (epoch, round) starts, from a finished run's history."""
    fs, _ = _fs(run)
    rows = [json.loads(line) for line in fs.cat_file(f"{furthest(run)}/metrics.jsonl").decode().splitlines()]
    starts = {(row["epoch"], row["round"]): start for row, start in zip(rows, [0] + [row["step"] for row in rows])}
    starts[(rows[-1]["epoch"] + 1, 0)] = rows[-1]["step"]  # the cursor a finished run saves
    return starts


def step(starts: dict[tuple[int, int], int], cursor: tuple[int, int, int]) -> int:
    """A cursor's global step: the steps done before it."""
    return starts[cursor[:2]] + cursor[2]


def resumed(text: str) -> list[tuple[int, int, int]]:
    """The cursors a run resumed at, in order (Ray Train's print patch doubles every worker line)."""
    return list(dict.fromkeys(tuple(map(int, m.groups())) for m in RESUMED.finditer(text)))


def assert_same_teacher(want: dict, got: dict) -> None:
    import torch

    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "the resumed teacher differs from the uninterrupted one"
