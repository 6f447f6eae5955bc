"""`python launch.py train --config FILE [dotted.key=value ...] [--dry-run]`."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from ark_dist.config import load
from ark_dist.data.remote import ShardReadError
from ark_dist.fs import join


# A full, read-only, over-quota or forbidden disk: Ray's own checkpoint upload reports these without
# naming the file, so the line adds the run folder it was writing to.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES}


def failure(error: BaseException, *, run_folder: str | None = None) -> str:
    """One line for a failed run: the first failing rank's innermost exception (Ray wraps a worker's
    exception, with tracebacks in its text; the last line of that text is the exception itself)."""
    failures = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
    if failures:
        error = failures[min(failures)]
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    line = last if re.match(r"^[\w.]+(Error|Exception): ", last) else f"{type(error).__name__}: {last}"
    codes = {int(code) for code in re.findall(r"\[Errno (\d+)\]", line)}
    if run_folder and codes & DISK_ERRNOS and run_folder not in line:
        line += f" (writing the run folder {run_folder})"
    return line


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py train", description="Ark on Ray Train + DeepSpeed")
    p.add_argument("--config", help="a YAML recipe from configs/ (default: all defaults)")
    p.add_argument("--dry-run", action="store_true",
                   help="build everything and run one batch on the CPU (no Ray, no DeepSpeed), then stop")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true", help="print Ray's and the workers' log lines as they come "
                      "(the default unless stdout is a terminal and Ray is local)")
    talk.add_argument("--quiet", action="store_true", help="one progress line per round; Ray's logs go to the run "
                      "folder's ray_logs/ (the default on a terminal with a local Ray)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=0.1")
    args = p.parse_args(argv)
    # Quiet where a person watches a local run; a log file or a cluster job keeps every worker line.
    verbose = args.verbose or not (args.quiet or (sys.stdout.isatty() and not os.environ.get("RAY_ADDRESS")))
    try:
        cfg = load(args.config, args.overrides)
        from ark_dist.train.run import preflight, storage

        preflight(cfg)
    except (ValueError, ShardReadError) as exc:  # a mistake in the recipe, or a store it cannot read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        from ark_dist.train.dry_run import dry_run

        dry_run(cfg)
        return 0
    from ray.train import TrainingFailedError

    from ark_dist.train.console import fit_on_console

    try:
        error = fit_on_console(cfg, verbose=verbose).error
    except (ValueError, ShardReadError) as exc:  # a mistake in the recipe, or a store it cannot read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingFailedError as exc:  # a rank failed more often than FailureConfig allows
        error = exc
    if error:
        folder = join(storage(cfg.train.storage_path), cfg.train.name)
        print(f"error: training failed: {failure(error, run_folder=folder)}", file=sys.stderr)
        return 1
    print(f"done: {join(storage(cfg.train.storage_path), cfg.train.name)}")
    return 0
