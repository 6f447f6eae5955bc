"""Killed runs resume to the teacher of an uninterrupted one: a driver killed and re-run, and a Ray
Train worker killed under a live driver (FailureConfig restarts the group from the latest checkpoint).

Every driver runs in a session of its own: Ray's actor processes sit in process groups of their own,
so ending that session (not one process group) is what leaves no Ray process behind.
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
import pytest

from test_train import tiny_config, tiny_store  # noqa: F401 (tiny_store is a fixture)

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import sys
from ark_dist.config import load
from ark_dist.train.run import fit
result = fit(load(None, sys.argv[1:]), max_failures=3)
sys.exit(0 if result.error is None else 1)
"""
# Unbuffered, so the log file follows the run; undeduplicated, so every worker line is there.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
RESUMED = re.compile(r"\[ark-dist\] resumed at epoch (\d+), round (\d+), step (\d+)")
WORKER = "ray::RayTrainWorker"  # the process title of a Ray Train V2 worker actor
RUN_S = 300  # one tiny run on 2 busy cores takes ~100 s, half of it starting Ray and DeepSpeed


def _flat(cfg) -> dict:
    """A config as section=JSON overrides (JSON is YAML) for a driver on the command line."""
    from ark_dist.config import to_dict

    return {section: json.dumps(values) for section, values in to_dict(cfg).items()}


def _args(store: Path, runs: Path, name: str) -> list[str]:
    cfg = tiny_config(store, runs, name, "train.checkpoint_every=1")
    return [f"{k}={v}" for k, v in _flat(cfg).items()]


def _session(sid: int, title: str = "") -> list[psutil.Process]:
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


def _end_session(sid: int) -> None:
    """SIGKILL every process of a session and wait until none is left."""
    deadline = time.monotonic() + 30
    while procs := _session(sid):
        assert time.monotonic() < deadline, f"processes of the driver's session survived SIGKILL: {procs}"
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)


@contextmanager
def driver(args: list[str], log: Path):
    """A driver (and so its local Ray) in a new session, stdout and stderr to `log`; every process
    of the session is SIGKILLed on the way out, whatever happened."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=REPO, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        _end_session(proc.pid)
        proc.wait()


def _finish(proc: subprocess.Popen, log: Path) -> None:
    code = proc.wait(timeout=RUN_S)
    assert code == 0, f"the driver exited with {code}:\n{log.read_text()[-3000:]}"


def _cursors(run: Path) -> list[tuple[int, int, int]]:
    """The cursors of the run's checkpoints on disk (one still being copied in is left out)."""
    out = []
    for path in run.glob("checkpoint_2*/state.json"):
        try:
            out.append(tuple(json.loads(path.read_text())["cursor"].values()))
        except (OSError, ValueError):
            pass
    return out


def _wait_mid_round(run: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until a checkpoint inside the second round of the first epoch exists."""
    deadline = time.monotonic() + RUN_S
    while not any(e == 0 and r == 1 and s >= 1 for e, r, s in _cursors(run)):
        assert proc.poll() is None, f"the driver ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no mid-round checkpoint in time"
        time.sleep(0.2)


def _furthest(run: Path) -> Path:
    """The run's checkpoint with the furthest cursor (a finished run's last one)."""
    done = [p for p in run.glob("checkpoint_2*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: tuple(json.loads((p / "state.json").read_text())["cursor"].values()))


def _final_teacher(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(_furthest(run) / "teacher.safetensors")


def _round_starts(run: Path) -> dict[tuple[int, int], int]:
    """The global step at which every (epoch, round) starts, from a finished run's history."""
    rows = [json.loads(line) for line in (_furthest(run) / "metrics.jsonl").read_text().splitlines()]
    starts = {(row["epoch"], row["round"]): start for row, start in zip(rows, [0] + [row["step"] for row in rows])}
    starts[(rows[-1]["epoch"] + 1, 0)] = rows[-1]["step"]  # the cursor a finished run saves
    return starts


def _step(starts: dict[tuple[int, int], int], cursor: tuple[int, int, int]) -> int:
    """A cursor's global step: the steps done before it."""
    return starts[cursor[:2]] + cursor[2]


def _resumed(log: Path) -> list[tuple[int, int, int]]:
    """The cursors the run resumed at, in order (Ray Train's print patch doubles every worker line)."""
    return list(dict.fromkeys(tuple(map(int, m.groups())) for m in RESUMED.finditer(log.read_text())))


def _rank_pid(log: Path, rank: int) -> int:
    """The pid of a rank of the current worker group, as Ray Train's controller logs it."""
    pids = re.findall(rf"pid=(\d+)\) world_rank={rank},", log.read_text())
    assert pids, f"no worker group in the log:\n{log.read_text()[-3000:]}"
    return int(pids[-1])


def _assert_same_teacher(want: dict, got: dict) -> None:
    import torch

    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "the resumed teacher differs from the uninterrupted one"


@pytest.fixture(scope="module")
def clean(tiny_store, tmp_path_factory):
    """One uninterrupted run, the reference of every kill test: (teacher, round starts)."""
    runs = tmp_path_factory.mktemp("clean")
    with driver(_args(tiny_store, runs, "clean"), runs / "driver.log") as proc:
        _finish(proc, runs / "driver.log")
    assert not _resumed(runs / "driver.log")
    return _final_teacher(runs / "clean"), _round_starts(runs / "clean")


@pytest.mark.slow
def test_a_driver_killed_mid_round_resumes_to_the_same_teacher(tiny_store, tmp_path, clean):
    """SIGKILL the driver and its local Ray once a mid-round checkpoint exists; re-running the same
    command resumes from it and ends with the teacher of an uninterrupted run."""
    teacher, starts = clean
    runs, run = tmp_path / "runs", tmp_path / "runs" / "killed"
    with driver(_args(tiny_store, runs, "killed"), tmp_path / "killed.log") as proc:
        _wait_mid_round(run, proc, tmp_path / "killed.log")
    reached = max(_cursors(run))
    assert reached[0] < 2, "killed too late: the run had finished"
    with driver(_args(tiny_store, runs, "killed"), tmp_path / "resumed.log") as proc:
        _finish(proc, tmp_path / "resumed.log")
    [cursor] = _resumed(tmp_path / "resumed.log")
    at_kill, resumed = _step(starts, reached), _step(starts, cursor)
    print(f"driver killed after global step {at_kill} (newest checkpoint on disk), resumed at {resumed}")
    assert 0 < resumed <= at_kill, "the re-run started from scratch, not from a checkpoint"
    _assert_same_teacher(teacher, _final_teacher(run))


@pytest.mark.slow
def test_a_worker_killed_mid_round_is_restarted_to_the_same_teacher(tiny_store, tmp_path, clean):
    """SIGKILL one Ray Train worker once a mid-round checkpoint exists; the driver lives on, Ray Train
    restarts the worker group from the latest checkpoint (FailureConfig) and the run ends by itself
    with the teacher of an uninterrupted run."""
    teacher, starts = clean
    run, log = tmp_path / "runs" / "worker", tmp_path / "worker.log"
    with driver(_args(tiny_store, tmp_path / "runs", "worker"), log) as proc:
        _wait_mid_round(run, proc, log)
        workers = {p.pid: p for p in _session(proc.pid, WORKER)}
        victim = _rank_pid(log, 1)
        assert len(workers) == 2 and victim in workers, [p.name() for p in _session(proc.pid)]
        workers[victim].send_signal(signal.SIGKILL)
        killed, reached = time.monotonic(), max(_cursors(run))
        while not _resumed(log):
            assert proc.poll() is None, f"the driver ended without resuming:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < killed + RUN_S, "no resume in time"
            time.sleep(0.2)
        recovered = time.monotonic() - killed
        _finish(proc, log)
    assert reached[0] < 2, "killed too late: the run had finished"
    [cursor] = _resumed(log)
    at_kill, resumed = _step(starts, reached), _step(starts, cursor)
    # Ray Train's "latest" is the latest checkpoint its controller has polled (every 2 s, one report
    # per worker per poll), so it may lag the newest folder on disk by a step or two.
    print(f"rank 1 (pid {victim}) killed after global step {at_kill} (newest checkpoint on disk); resumed at "
          f"{resumed} in {recovered:.1f} s: {at_kill - resumed} checkpointed step(s) redone, plus any in flight")
    assert 0 < resumed <= at_kill, "the group restarted from scratch, not from a checkpoint"
    _assert_same_teacher(teacher, _final_teacher(run))
