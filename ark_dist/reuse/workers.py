"""Running a reuse command's pass on Ray Train workers: the stack training runs on (a local Ray
cluster, or the one at RAY_ADDRESS), with torch.distributed set up among the workers (gloo on the
CPU, NCCL on GPUs), and Ray's bookkeeping in the command's output folder."""

from __future__ import annotations

import sys

from ark_dist.fs import join


def run(loop, config: dict, *, workers: int, use_gpu: bool, out: str, name: str) -> dict:
    """`loop(config)` on every one of `workers` workers; returns the metrics rank 0 reported last."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ark_dist.train.run import fast_reports, start_ray, storage_filesystem

    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    start_ray(verbose=False)
    fast_reports()
    path, filesystem = storage_filesystem(join(out, "ray"))
    trainer = TorchTrainer(loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                           run_config=RunConfig(name=name, storage_path=path, storage_filesystem=filesystem,
                                                failure_config=FailureConfig(max_failures=0)))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"{name} failed on a worker: {result.error}") from result.error
    return result.metrics or {}


def context() -> tuple[int, int]:
    """(rank, world) of this worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def device(use_gpu: bool):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
