"""The driver: a Ray Train `TorchTrainer` over `train_loop`, resumable by name."""

from __future__ import annotations

import os
from pathlib import Path

from ark_dist.config import Config, to_dict


def storage(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def preflight(cfg: Config) -> None:
    """Fail in the driver, in one line, before any worker starts: the store, the manifest and
    every dataset of the recipe must be there."""
    from ark_dist.data import Store, dataset_entry, read_manifest

    manifest = read_manifest(Store(cfg.data.store))
    for name in cfg.data.datasets:
        dataset_entry(manifest, name)


def fit(cfg: Config, *, max_failures: int = 3):
    """Train; re-running with the same `train.name` and `train.storage_path` resumes."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ark_dist.train.worker import train_loop

    preflight(cfg)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)
    engine = cfg.engine
    resources = {"CPU": engine.cpus_per_worker, **({"GPU": 1} if engine.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=engine.num_workers, use_gpu=engine.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.train.name, storage_path=storage(cfg.train.storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)),
    )
    return trainer.fit()
