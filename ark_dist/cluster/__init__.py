"""Launchers for clusters: `launch.py slurm` (slurm.py) and `launch.py k8s render` (k8s.py)."""

from __future__ import annotations

import math

from ark_dist.config import Config


def spread(cfg: Config, *, hosts: int | None, gpus_per_host: int | None, concurrent: int,
           host: str) -> tuple[int, int, int]:
    """(hosts, GPUs per host, CPUs per host for the workers) for `concurrent` runs of
    `engine.num_workers` ranks each: GPU ranks fill hosts of `gpus_per_host` GPUs (default
    min(ranks, 8)); CPU ranks go on one host unless `hosts` says otherwise. `host` names a host in
    messages ("node", "pod")."""
    engine = cfg.engine
    workers = engine.num_workers * concurrent
    if not engine.use_gpu:
        if gpus_per_host:
            raise ValueError(f"--gpus-per-{host} needs engine.use_gpu=true")
        hosts = hosts or 1
        return hosts, 0, math.ceil(workers / hosts) * engine.cpus_per_worker
    gpus = gpus_per_host or min(workers, 8)
    hosts = hosts or math.ceil(workers / gpus)
    if hosts * gpus < workers:
        raise ValueError(f"{hosts} {host}(s) x {gpus} GPUs hold fewer than the {workers} GPU workers "
                         f"(engine.num_workers={engine.num_workers} x {concurrent} concurrent)")
    return hosts, gpus, gpus * engine.cpus_per_worker
