"""The driver's console while a run trains (ark_dist/train/console.py), in-process and without Ray:
the progress line follows the run folder's metrics.jsonl as rank 0's own writer rewrites it, the
train command picks quiet or verbose, and Ray's logs land in the run folder. `launch.py demo` runs
all of it for real in tests/test_demo.py."""

from __future__ import annotations

import io
import re
import threading
import time
from types import SimpleNamespace

import pytest

from ark_dist.config import load
from ark_dist.track.runfolder import write_metrics
from ark_dist.train import console


def config(runs, *extra):
    return load("configs/demo.yaml", [f"train.storage_path={runs}", "train.name=r", "train.epochs=3",
                                      "method.schedule=cyclic", "data.datasets=[chexpert, shenzhen]", *extra])


def row(n: int, **extra) -> dict:
    """What rank 0 logs for round n (1-based) of a cyclic run of chexpert and shenzhen."""
    name = ("chexpert", "shenzhen")[(n - 1) % 2]
    return {"step": n, f"loss/{name}": 1.0 / n, f"loss/task/{name}": 1.0 / n, "throughput/img_per_s": 100.0 + n,
            "epochs_done": n / 2, **extra}


def test_one_progress_line_per_round_as_rank_0_writes_them(tmp_path):
    cfg = config(tmp_path)
    history = [row(1)]
    write_metrics(cfg, history)  # a resumed run: round 1 was done before
    out = io.StringIO()  # not a terminal: a line per round
    with console.RoundProgress(cfg, file=out, poll_s=0.02):
        for n in range(2, 7):
            history.append(row(n, **({"auc/val/mean/teacher": 0.75} if n == 4 else {})))
            write_metrics(cfg, history)
            if n != 5:  # rounds 5 and 6 land between two polls: still a line each
                time.sleep(0.15)
    lines = out.getvalue().splitlines()
    assert [re.search(r"train (\d+)/6 rounds", line).group(1) for line in lines] == ["2", "3", "4", "5", "6"], lines
    name = {2: "shenzhen", 3: "chexpert", 4: "shenzhen", 5: "chexpert", 6: "shenzhen"}
    for n, line in zip(range(2, 7), lines):
        assert f"epoch {n / 2:g} {name[n]} loss {1 / n:.3f}" in line and f"{100 + n} img/s" in line, line
        assert ("AUC 0.750" in line) == (n >= 4), line  # the last evaluation's, from the round that made it on
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_run_that_writes_nothing_prints_nothing_and_the_thread_ends(tmp_path):
    out = io.StringIO()
    with console.RoundProgress(config(tmp_path), file=out, poll_s=0.01) as progress:
        time.sleep(0.05)
    assert out.getvalue() == "" and not progress.thread.is_alive()


def test_interleaved_epochs_are_one_round_each(tmp_path):
    assert console.RoundProgress(config(tmp_path, "method.schedule=interleaved")).total == 3
    assert console.RoundProgress(config(tmp_path)).total == 6


@pytest.mark.parametrize("flags, tty, address, verbose", [
    ([], True, None, False),  # a person at a terminal, local Ray: the progress line
    ([], False, None, True),  # a log file or a pipe keeps every worker line (tests/faults read them)
    ([], True, "10.0.0.1:6379", True),  # a cluster job: its workers' lines are on other nodes
    (["--quiet"], False, None, False),
    (["--verbose"], True, None, True),
])
def test_the_train_command_is_quiet_only_where_a_person_watches_a_local_run(tmp_path, monkeypatch, flags, tty,
                                                                              address, verbose):
    from ark_dist.train import cli, run

    seen = []
    monkeypatch.setattr(run, "preflight", lambda cfg: None)
    monkeypatch.setattr(console, "fit_on_console", lambda cfg, *, verbose: seen.append(verbose) or
                        SimpleNamespace(error=None))
    terminal = SimpleNamespace(isatty=lambda: tty, write=lambda text: None, flush=lambda: None)
    monkeypatch.setattr(cli.sys, "stdout", terminal)
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["--config", "configs/demo.yaml", f"train.storage_path={tmp_path}", *flags]) == 0
    assert seen == [verbose]


def test_ray_logs_are_copied_into_the_run_folder_once_it_exists(tmp_path):
    cfg = config(tmp_path / "runs")
    session = tmp_path / "ray" / "session_2026-01-01_00-00-00_1" / "logs"
    (session / "train").mkdir(parents=True)
    (session / "worker-01.out").write_text("[ark-dist] loss/chexpert=0.5\n")
    (session / "train" / "controller.log").write_text("started\n")
    assert console.copy_ray_logs(cfg, session) is None  # no run folder: the run never started
    assert not (tmp_path / "runs").exists()
    write_metrics(cfg, [row(1)])
    dest = tmp_path / "runs" / "r" / "ray_logs" / "session_2026-01-01_00-00-00_1"
    assert console.copy_ray_logs(cfg, session) == str(dest)
    assert (dest / "worker-01.out").read_text() == "[ark-dist] loss/chexpert=0.5\n"
    assert (dest / "train" / "controller.log").read_text() == "started\n"


def test_the_progress_thread_never_outlives_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError, match="rank 1 died"):
        with console.RoundProgress(config(tmp_path), file=io.StringIO(), poll_s=0.01):
            raise RuntimeError("rank 1 died")
    assert not any(t.name == "round-progress" for t in threading.enumerate())
