"""What rank 0 writes into the run folder (`<train.storage_path>/<train.name>`, local or s3://)
besides Ray's checkpoints: the resolved config and every round's metrics, for `launch.py report`."""

from __future__ import annotations

import hashlib
import json
import re
import resource
import sys

import yaml

from ark_dist.config import Config, to_dict
from ark_dist.fs import join, write_atomic

METRICS = "metrics.jsonl"  # one JSON object per round; the whole file is rewritten (atomically) each round
CONFIG = "config.yaml"  # the resolved config the run was started (or last resumed) with


def run_url(cfg: Config) -> str:
    return join(cfg.train.storage_path, cfg.train.name)


def run_id(cfg: Config) -> str:
    """A stable id for the run folder: a restarted run continues the same W&B run."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", cfg.train.name[:40])  # W&B refuses :;,#?/' in ids
    return f"{name}-{hashlib.sha256(run_url(cfg).encode()).hexdigest()[:10]}"


def write_config(cfg: Config) -> None:
    """The resolved config, as W&B gets it: credentials in URLs and secret-named keys removed."""
    from ark_dist.track.tracker import without_secrets

    text = yaml.safe_dump(without_secrets(to_dict(cfg)), sort_keys=False)
    write_atomic(join(run_url(cfg), CONFIG), text.encode())


def write_metrics(cfg: Config, history: list[dict]) -> None:
    write_atomic(join(run_url(cfg), METRICS), "".join(json.dumps(row) + "\n" for row in history).encode())


def memory_metrics(device) -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, the peak allocated by torch."""
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"memory/rss_peak_gb": peak / 2**30}
    if device.type == "cuda":
        out["memory/gpu_max_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out
