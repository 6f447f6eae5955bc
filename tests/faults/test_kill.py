"""Killed runs resume to the teacher of an uninterrupted one: a driver killed and re-run (W&B
continues the same run), and a Ray Train worker killed under a live driver (FailureConfig restarts
the group from the latest checkpoint)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

import faultruns as fr


def _rank_pid(log: Path, rank: int) -> int:
    """The pid of a rank of the current worker group, as Ray Train's controller logs it."""
    pids = re.findall(rf"pid=(\d+)\) world_rank={rank},", log.read_text())
    assert pids, f"no worker group in the log:\n{log.read_text()[-3000:]}"
    return int(pids[-1])


@pytest.mark.slow
def test_a_driver_killed_mid_round_resumes_to_the_same_teacher_and_w_and_b_run(six_store, tmp_path, clean):
    """SIGKILL the driver and its local Ray once a mid-round checkpoint exists, at the worst moment:
    while Ray Train rewrote its list of checkpoints, which is left empty. Re-running the same
    command moves that list aside, resumes from ark-dist's record of the latest checkpoint, ends
    with the teacher of an uninterrupted run, and logs to the same W&B run (offline here) from the
    resumed round on."""
    from wandbfiles import read_run

    from ark_dist.train.resume import LATEST, SNAPSHOT

    teacher, starts = clean
    runs, run = tmp_path / "runs", tmp_path / "runs" / "killed"
    argv = fr.args(six_store, runs, "killed", "tracking.wandb=offline")
    with fr.driver(argv, tmp_path / "killed.log") as proc:
        fr.wait_for("a mid-round checkpoint", lambda: fr.mid_round(run) and (run / LATEST).is_file(), proc,
                    tmp_path / "killed.log")
    reached = max(fr.checkpoints(run).values())
    assert reached[0] < 2, "killed too late: the run had finished"
    (run / SNAPSHOT).write_text("")  # what a SIGKILL between Ray's truncate and its write leaves
    with fr.driver(argv, tmp_path / "resumed.log") as proc:
        text = fr.finish(proc, tmp_path / "resumed.log")
    assert f"{SNAPSHOT} was cut off" in text, text[-3000:]
    [cursor] = fr.resumed(text)
    at_kill, resumed = fr.step(starts, reached), fr.step(starts, cursor)
    print(f"driver killed after global step {at_kill} (newest checkpoint on disk), resumed at {resumed}")
    assert 0 < resumed <= at_kill, "the re-run started from scratch, not from a checkpoint"
    fr.assert_same_teacher(teacher, fr.final_teacher(run))
    # W&B: the re-run continued the killed run (same id: the killed one's offline folder is named
    # after it, though SIGKILL may leave its file empty) and logged every round after the resume.
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2, folders
    ids = {folder.name.split("-", 3)[3] for folder in folders}
    [second] = [read_run(path) for path in folders[-1].glob("run-*.wandb")]
    assert ids == {second["id"]}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["_step"] for r in second["history"]] == [r["step"] for r in rows if r["step"] > resumed]


@pytest.mark.slow
def test_a_worker_killed_mid_round_is_restarted_to_the_same_teacher(six_store, tmp_path, clean):
    """SIGKILL one Ray Train worker once a mid-round checkpoint exists; the driver lives on, Ray Train
    restarts the worker group from the latest checkpoint (FailureConfig) and the run ends by itself
    with the teacher of an uninterrupted run."""
    teacher, starts = clean
    run, log = tmp_path / "runs" / "worker", tmp_path / "worker.log"
    with fr.driver(fr.args(six_store, tmp_path / "runs", "worker"), log) as proc:
        fr.wait_for("a mid-round checkpoint", lambda: fr.mid_round(run), proc, log)
        workers = {p.pid: p for p in fr.session(proc.pid, fr.WORKER)}
        victim = _rank_pid(log, 1)
        assert len(workers) == 2 and victim in workers, [p.name() for p in fr.session(proc.pid)]
        workers[victim].send_signal(signal.SIGKILL)
        killed, reached = time.monotonic(), max(fr.checkpoints(run).values())
        fr.wait_for("a resume", lambda: fr.resumed(log.read_text()), proc, log)
        recovered = time.monotonic() - killed
        text = fr.finish(proc, log)
    assert reached[0] < 2, "killed too late: the run had finished"
    [cursor] = fr.resumed(text)
    at_kill, resumed = fr.step(starts, reached), fr.step(starts, cursor)
    # Ray Train's "latest" is the latest checkpoint its controller has polled (every 2 s, one report
    # per worker per poll), so it may lag the newest folder on disk by a step or two.
    print(f"rank 1 (pid {victim}) killed after global step {at_kill} (newest checkpoint on disk); resumed at "
          f"{resumed} in {recovered:.1f} s: {at_kill - resumed} checkpointed step(s) redone, plus any in flight")
    assert 0 < resumed <= at_kill, "the group restarted from scratch, not from a checkpoint"
    fr.assert_same_teacher(teacher, fr.final_teacher(run))


def _client(port: int) -> psutil.Process:
    """The process whose TCP connection comes from local port `port`."""
    [pid] = {c.pid for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.pid}
    return psutil.Process(pid)


@pytest.mark.slow
def test_a_worker_killed_during_a_checkpoint_write_resumes_from_the_last_complete_one(six_store, tmp_path, clean,
                                                                                      stoppable_s3):
    """Checkpoints in a bucket. Once a mid-round checkpoint exists, the next checkpoint's upload is
    parked at the endpoint and the Ray Train worker sending it is SIGKILLed: that checkpoint stays
    partial. The group restarts from a checkpoint that was complete before the kill, never the
    partial one, and the run ends with the teacher of an uninterrupted run."""
    teacher, starts = clean
    runs, log = f"s3://{stoppable_s3.bucket}/runs", tmp_path / "upload-kill.log"
    run = f"{runs}/upload-kill"
    with fr.driver(fr.args(six_store, runs, "upload-kill"), log, fr.env(**stoppable_s3.env)) as proc:
        fr.wait_for("a mid-round checkpoint", lambda: fr.mid_round(run), proc, log)
        stoppable_s3.hold(r"/checkpoint_2")
        fr.wait_for("a checkpoint upload", stoppable_s3.held.is_set, proc, log)
        partial = re.search(r"checkpoint_2[^/]+", stoppable_s3.held_path).group(0)
        complete = {folder: c for folder, c in fr.checkpoints(run).items() if not folder.endswith(partial)}
        victim = _client(stoppable_s3.held_from)
        assert victim.pid in {p.pid for p in fr.session(proc.pid, fr.WORKER)}, victim.name()
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        stoppable_s3.release()
        fr.wait_for("a resume", lambda: fr.resumed(log.read_text()), proc, log)
        recovered = time.monotonic() - killed
        text = fr.finish(proc, log)
    [cursor] = fr.resumed(text)
    newest = max(complete.values())
    print(f"worker (pid {victim.pid}) killed uploading the checkpoint after global step {fr.step(starts, newest)}; "
          f"resumed at {fr.step(starts, cursor)} in {recovered:.1f} s")
    assert cursor in complete.values(), f"resumed at {cursor}, not a checkpoint complete before the kill ({partial})"
    assert fr.step(starts, cursor) > 0
    fr.assert_same_teacher(teacher, fr.final_teacher(run))
