"""Running a reuse command's pass on Ray Train workers: the stack training runs on (a local Ray
cluster, or the one at RAY_ADDRESS), with torch.distributed set up among the workers (gloo on the
CPU, NCCL on GPUs), and Ray's bookkeeping in the command's output folder."""

from __future__ import annotations

import json
import sys

from ark_dist.fs import filesystem, join, write_atomic


def run(loop, config: dict, *, workers: int, use_gpu: bool, out: str, name: str, cpus: int = 1) -> list[dict]:
    """`loop(config)` on every one of `workers` workers (`cpus` CPUs each); returns what each rank
    passed to `report`, in rank order (Ray Train keeps metrics only with checkpoints, and these
    passes save none)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ark_dist.train.run import fast_reports, start_ray, storage_filesystem

    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    start_ray(verbose=False)
    fast_reports()
    path, storage = storage_filesystem(join(out, "ray"))
    config = {**config, "reports": join(out, "ray", name)}
    trainer = TorchTrainer(loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                        resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
                           run_config=RunConfig(name=name, storage_path=path, storage_filesystem=storage,
                                                failure_config=FailureConfig(max_failures=0)))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"{name} failed on a worker: {result.error}") from result.error
    found = []
    for rank in range(workers):
        fs, path = filesystem(join(config["reports"], f"rank-{rank}.json"))
        found.append(json.loads(fs.cat_file(path)))
    return found


def report(config: dict, metrics: dict) -> None:
    """This rank's results, where `run` reads them back (and to Ray Train)."""
    import ray.train

    rank, _ = context(config)
    write_atomic(join(config["reports"], f"rank-{rank}.json"), json.dumps(metrics).encode())
    ray.train.report(metrics)


def context(config: dict) -> tuple[int, int]:
    """(rank, world) of this worker, whose torch uses the CPUs Ray gave it (Ray's default is one thread)."""
    import ray.train
    import torch

    if not config.get("use_gpu"):
        torch.set_num_threads(config.get("cpus", 1))
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def device(use_gpu: bool):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")


def show(out: str, table: str, *written: str) -> int:
    """Print rank 0's table from the output folder and what was written; exit status 0."""
    fs, path = filesystem(join(out, table))
    print(fs.cat_file(path).decode(), end="")
    print(f"wrote {', '.join(join(out, name) for name in (table, *written))}")
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
