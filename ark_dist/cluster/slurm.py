"""`python launch.py slurm`: fill in `cluster/slurm/ark.sbatch` for a recipe and a size, and submit it.

The filled-in copy holds the #SBATCH resources (nodes, GPUs and CPUs per node, time, partition...)
and the exact `launch.py` command, with the recipe's path made absolute. Submitting it again later,
or Slurm requeueing it, runs the same command with the same `train.name`, which resumes."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ark_dist.cluster import spread
from ark_dist.config import Config, load
from ark_dist.fs import write_atomic

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "cluster" / "slurm" / "ark.sbatch"
MARK = "# (launch.py slurm puts the command here when it fills in this script.)"


@dataclass(frozen=True)
class Size:
    nodes: int
    gpus_per_node: int
    cpus_per_node: int


def size(cfg: Config, *, nodes: int | None, gpus_per_node: int | None, cpus_per_node: int | None,
         concurrent: int = 1) -> Size:
    """The allocation for `concurrent` runs; each node also gets one CPU for the driver and Ray."""
    nodes, gpus, cpus = spread(cfg, hosts=nodes, gpus_per_host=gpus_per_node, concurrent=concurrent, host="node")
    return Size(nodes=nodes, gpus_per_node=gpus, cpus_per_node=cpus_per_node or cpus + 1)


def job_name(args: argparse.Namespace, cfg: Config) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", args.job_name or cfg.train.name)


def sbatch_options(cfg: Config, s: Size, args: argparse.Namespace) -> list[str]:
    opts = [f"--job-name={job_name(args, cfg)}", f"--nodes={s.nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={s.cpus_per_node}", f"--time={args.time}"]
    if s.gpus_per_node:
        opts.append(f"--gpus-per-node={s.gpus_per_node}")
    for flag in ("partition", "account", "qos", "constraint", "mem"):
        if value := getattr(args, flag):
            opts.append(f"--{flag}={value}")
    opts.append(f"--signal=B:USR1@{args.requeue_before}")
    if args.log:
        opts.append(f"--output={args.log}")
    return opts + list(args.sbatch_arg)


def fill(command: list[str], options: list[str], *, home: Path, python: str) -> str:
    """The template with `options` as #SBATCH lines (after the template's own, so they win) and the
    command as the script's default arguments."""
    text = TEMPLATE.read_text()
    for option in options:
        if "\n" in option:
            raise ValueError(f"an sbatch option holds a line break: {option!r}")
    header = "\n".join(f"#SBATCH {o}" for o in options)
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH "))
    lines.insert(last + 1, header)
    text = "\n".join(lines) + "\n"
    body = (f"# Filled in by `python launch.py slurm`: the command and where it runs.\n"
            f"[[ $# -gt 0 ]] || set -- {shlex.join(command)}\n"
            f"export ARK_HOME=${{ARK_HOME:-{shlex.quote(str(home))}}} ARK_PYTHON=${{ARK_PYTHON:-{shlex.quote(python)}}}")
    if MARK not in text:
        raise RuntimeError(f"{TEMPLATE}: the line {MARK!r} is missing")
    return text.replace(MARK, body)


def launch_command(args: argparse.Namespace) -> list[str]:
    config = str(Path(args.config).resolve())
    return ["tune" if args.tune else "train", "--config", config, *args.overrides]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py slurm", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the recipe, e.g. configs/ark6.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, as for `launch.py train`")
    p.add_argument("--tune", action="store_true", help="run `launch.py tune` (a sweep) instead of `train`")
    p.add_argument("--nodes", type=int, help="default: enough for engine.num_workers (x concurrent trials)")
    p.add_argument("--gpus-per-node", type=int, help="default: min(workers, 8) when engine.use_gpu")
    p.add_argument("--cpus-per-node", type=int, help="default: the workers' engine.cpus_per_worker + 1")
    p.add_argument("--time", default="24:00:00", help="the job's time limit (default 24:00:00)")
    p.add_argument("--requeue-before", type=int, default=300,
                   help="seconds before the time limit at which the job stops and requeues itself (default 300)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--mem", help="memory per node, e.g. 500G (default: the partition's)")
    p.add_argument("--job-name", help="default: train.name")
    p.add_argument("--log", help="the job's log file (default: ark-<job name>-<job id>.log in the submit folder)")
    p.add_argument("--sbatch-arg", action="append", default=[],
                   help="any other sbatch option, repeatable, e.g. --sbatch-arg=--container-image=ark-dist.sqsh")
    p.add_argument("--python", default=sys.executable, help="the Python on the nodes (default: this one)")
    p.add_argument("--out", help="where to write the filled-in script (default: slurm-<job name>.sbatch)")
    p.add_argument("--submit", action="store_true", help="submit it with sbatch and print the job id")
    args = p.parse_args(argv)
    try:
        cfg = load(Path(args.config), args.overrides)
        concurrent = max(cfg.tune.max_concurrent_trials, 1) if args.tune else 1
        s = size(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                 concurrent=concurrent)
        options = sbatch_options(cfg, s, args)
        script = fill(launch_command(args), options, home=ROOT, python=args.python)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"slurm-{job_name(args, cfg)}.sbatch")
    write_atomic(str(out), script.encode())
    out.chmod(0o755)
    print(f"wrote {out}: {s.nodes} node(s) x {s.gpus_per_node} GPUs, {s.cpus_per_node} CPUs per node, "
          f"python launch.py {' '.join(launch_command(args)[:3])} ...")
    if not args.submit:
        print(f"submit with: sbatch {out}")
        return 0
    try:
        done = subprocess.run(["sbatch", "--parsable", str(out)], capture_output=True, text=True)
    except FileNotFoundError:
        print("error: sbatch not found: run this on a Slurm login node", file=sys.stderr)
        return 2
    if done.returncode:
        print(f"error: sbatch refused {out}: {done.stderr.strip()}", file=sys.stderr)
        return 2
    print(f"submitted job {done.stdout.strip().split(';')[0]}")
    return 0
