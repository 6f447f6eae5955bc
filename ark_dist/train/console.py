"""What the driver's console shows while a run trains, and where Ray's own output goes.

Quiet (`launch.py demo`; `launch.py train` on a terminal): one progress line per round, taken from
the run folder's `metrics.jsonl` (rank 0 rewrites it after every round), while every worker's
output (DeepSpeed, Ray Train, our round lines) stays in Ray's session logs, which are copied into
the run folder (`ray_logs/<session>/`) when the run ends. Verbose (`--verbose`): Ray's lines as
they come, as before, and no progress line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

from ark_dist.config import Config
from ark_dist.fs import filesystem, is_local, join
from ark_dist.track.runfolder import METRICS, run_url

BAR = "{desc} {n_fmt}/{total_fmt} rounds |{bar:10}| {elapsed}<{remaining}{postfix}"  # postfix: ", ..."


def rounds_per_epoch(cfg: Config) -> int:
    """Cyclic: one round per dataset; interleaved: one round of all of them."""
    return 1 if cfg.method.schedule == "interleaved" else len(cfg.data.datasets)


def round_text(row: dict, auc: float | None) -> str:
    """`epoch 2.33 chexpert loss 0.412 AUC 0.861 812 img/s` from one metrics.jsonl row (an
    interleaved round's loss has no dataset); `auc` is the teacher's mean val AUC of the last
    evaluation so far (None before the first)."""
    losses = {k[5:]: v for k, v in row.items() if k.startswith("loss/") and not k.startswith("loss/task/")}
    parts = [f"epoch {row.get('epochs_done', 0):.2f}".rstrip("0").rstrip(".")]
    parts += [f"{'' if name == 'interleaved' else name + ' '}loss {value:.3f}" for name, value in losses.items()]
    if auc is not None:
        parts.append(f"AUC {auc:.3f}")
    if "throughput/img_per_s" in row:
        parts.append(f"{row['throughput/img_per_s']:.0f} img/s")
    return " ".join(parts)


def _auc(row: dict, last: float | None) -> float | None:
    """The mean val AUC of an evaluation row (the teacher's; a fine-tune has only its model), else `last`."""
    return row.get("auc/val/mean/teacher", row.get("auc/val/mean/student", last))


class RoundProgress:
    """Follows `<run folder>/metrics.jsonl` from a thread while the run trains (`with
    RoundProgress(cfg): fit(cfg)`): one tqdm update per round with the round's loss, the teacher's
    (a fine-tune's model's) mean val AUC of the last evaluation and the round's img/s. On a terminal the bar redraws one
    line; written to a file or a pipe, every round is a line of its own. Rounds already in the
    file when it starts (a resumed run) count as done."""

    def __init__(self, cfg: Config, *, file=None, poll_s: float = 0.5):
        self.url = join(run_url(cfg), METRICS)
        self.total = cfg.train.epochs * rounds_per_epoch(cfg)
        self.file = file or sys.stdout
        self.poll_s = poll_s
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.seen, self.auc = 0, None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="round-progress", daemon=True)
        self.bar = None

    def __enter__(self) -> RoundProgress:
        from tqdm import tqdm

        done = self._rows()
        self.seen = len(done)
        for row in done:
            self.auc = _auc(row, self.auc)
        # Not on a terminal tqdm draws into a buffer and each round's line is printed whole (and
        # uncut). A terminal's size is given: tqdm draws nothing where it reads it as -1 (a pty
        # without one).
        size = shutil.get_terminal_size() if self.tty else os.terminal_size((0, 0))
        self.bar = tqdm(total=self.total, initial=self.seen, desc="train", bar_format=BAR, mininterval=0,
                        file=self.file if self.tty else io.StringIO(), ascii=not self.tty,
                        ncols=size.columns or None, nrows=size.lines or None)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self._poll()  # the rows written just before the run returned
        self.bar.close()

    def _rows(self) -> list[dict]:
        fs, path = filesystem(self.url)
        try:
            text = fs.cat_file(path).decode()
        except FileNotFoundError:
            return []
        # Rank 0 replaces the file atomically, so every line is whole.
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _update(self) -> None:
        rows = self._rows()
        for row in rows[self.seen:]:
            self.auc = _auc(row, self.auc)
            self.bar.set_postfix_str(round_text(row, self.auc), refresh=False)
            self.bar.update(1)
            if not self.tty:
                print(str(self.bar), file=self.file, flush=True)
        self.seen = max(self.seen, len(rows))

    def _poll(self) -> None:
        try:
            self._update()
        except OSError:  # the run folder unreachable for a moment (an object store's outage): next poll
            pass

    def _follow(self) -> None:
        while not self.stopped.wait(self.poll_s):
            self._poll()


def fit_on_console(cfg: Config, *, verbose: bool):
    """`fit` as a command runs it; returns its result. Ray is started here unless it is up (quiet
    unless `verbose`). Quiet: one progress line per round, and the logs of the local cluster
    started here copied into the run folder at the end, also after a failure."""
    import ray

    from ark_dist.train.run import fit, local_cluster, start_ray

    started = start_ray(verbose=verbose)
    logs = ray_logs_dir() if local_cluster() and not verbose else None
    try:
        with contextlib.nullcontext() if verbose else RoundProgress(cfg):
            return fit(cfg)
    finally:
        if started:
            ray.shutdown()  # the workers' log files are complete now (verbose: their last lines are out)
        copy_ray_logs(cfg, logs)


def ray_logs_dir() -> Path | None:
    """This driver's Ray session log folder (on this machine), or None when Ray is not up."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    folder = Path(context.get_temp_dir()) / context.get_session_name() / "logs"
    return folder if folder.is_dir() else None


def copy_ray_logs(cfg: Config, source: Path | None) -> str | None:
    """Copy a Ray session's log folder (every worker's stdout/stderr, Ray Train's, the raylet's) into
    `<run folder>/ray_logs/<session>/`; returns where, or None when there is nothing to copy (no
    logs, or no run folder: the run never started). Call it after `ray.shutdown()`, when the
    workers' files are complete. A copy that fails (a full disk) is a note, not the run's error."""
    fs, run = filesystem(run_url(cfg))
    if source is None or not source.is_dir() or not fs.exists(run):
        return None
    dest = join(run_url(cfg), "ray_logs", source.parent.name)
    try:
        if is_local(dest):
            shutil.copytree(source, filesystem(dest)[1], dirs_exist_ok=True, symlinks=True)
        else:
            fs.put(f"{source}/", filesystem(dest)[1], recursive=True)
    except OSError as exc:
        print(f"note: Ray's logs stay in {source}: copying them to {dest} failed ({exc})", file=sys.stderr)
        return None
    return dest
