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


def start_ray() -> bool:
    """Join the cluster at RAY_ADDRESS, or start a local one; False when Ray was already up.
    Workers import ark_dist from this checkout wherever the driver's working folder is."""
    import ray

    if ray.is_initialized():
        return False
    code = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
    # The dashboard serves Ray's state API, which Train V2's placement-group cleaner polls: without
    # it, the workers' placement group of a run whose controller died (a Tune trial that ASHA
    # stopped) is never removed and starves every later trial.
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=True, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


def trainer(cfg: Config, *, max_failures: int = 3, callbacks=()):
    """The `TorchTrainer` of one run: `engine.num_workers` workers, checkpoints in the run folder."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ark_dist.train.worker import train_loop

    engine = cfg.engine
    resources = {"CPU": engine.cpus_per_worker, **({"GPU": 1} if engine.use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=engine.num_workers, use_gpu=engine.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.train.name, storage_path=storage(cfg.train.storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             callbacks=list(callbacks)),
    )


def fit(cfg: Config, *, max_failures: int = 3):
    """Train; re-running with the same `train.name` and `train.storage_path` resumes."""
    preflight(cfg)
    start_ray()
    return trainer(cfg, max_failures=max_failures).fit()
