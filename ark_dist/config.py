"""The whole config tree: one section per component (DESIGN 2.3). YAML in `configs/` is a
serialisation of `Config`; `a.b=value` overrides and Ray Tune search spaces use the same keys."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ark_dist.configtree import load_config, to_dict
from ark_dist.data.config import DataConfig
from ark_dist.method.config import MethodConfig
from ark_dist.model.config import ModelConfig
from ark_dist.reuse.config import FinetuneConfig
from ark_dist.track.config import TrackingConfig
from ark_dist.tune.config import TuneConfig


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer and LR schedule: linear warm-up, then cosine to `min_lr` (or constant), stepped per
    optimizer step."""

    name: Literal["sgd", "adamw"] = "sgd"  # the optimizer (Ark: SGD)
    lr: float = 0.3  # peak learning rate, reached at the end of the warm-up
    momentum: float = 0.9  # SGD momentum (sgd only)
    nesterov: bool = True  # Nesterov momentum (sgd only)
    weight_decay: float = 0.0  # the optimizer's weight decay, on every trained parameter
    warmup_epochs: float = 20.0  # linear warm-up length in epochs (fractions allowed)
    min_lr: float = 1e-5  # where the cosine ends, at the last step
    clip_grad: float = 0.0  # 0 = off (Ark clips nothing; DeepSpeed would clip at 1.0 by default)
    schedule: Literal["cosine", "constant"] = "cosine"  # after the warm-up: cosine to min_lr, or lr throughout

    def validate(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.warmup_epochs < 0 or self.clip_grad < 0:
            raise ValueError("lr > 0, min_lr >= 0, warmup_epochs >= 0 and clip_grad >= 0 are required")


@dataclass(kw_only=True)
class EngineConfig:
    """DeepSpeed and the Ray workers that run it."""

    num_workers: int = 2  # data-parallel ranks (Ray Train workers)
    use_gpu: bool = False  # one GPU per worker, NCCL; else the CPU and gloo
    cpus_per_worker: int = 1  # CPU cores Ray reserves per worker (its torch threads on the CPU)
    zero_stage: Literal[0, 1, 2, 3] = 0  # DeepSpeed ZeRO stage; 0 = plain data parallel
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 on GPUs
    grad_accum: int = 1  # micro-batches per optimizer step (train.global_batch splits over workers x these)
    compile: bool = False  # torch.compile the student (DeepSpeed's engine.compile) and the teacher; GPUs, ZeRO 0-2

    def validate(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker < 1 or self.grad_accum < 1:
            raise ValueError("num_workers, cpus_per_worker and grad_accum must be at least 1")


@dataclass(kw_only=True)
class TrainConfig:
    """The run: length, batch, seed, evaluation and checkpoint cadence, where it is stored."""

    epochs: int = 200  # passes over the schedule: one round of every dataset each
    global_batch: int = 200  # images per optimizer step over all ranks
    seed: int = 0  # initial weights, data order, augmentations and LSR labels
    eval_every: int = 10  # epochs; the last epoch always evaluates
    checkpoint_every: int = 0  # steps within a round; 0 = only at round ends
    checkpoint_rounds: int = 1  # checkpoint at the end of every this many rounds, and at the run's end
    keep_checkpoints: int = 2  # the newest ones kept in storage
    storage_path: str = "runs"  # local folder or s3:// (Ray's storage_path)
    name: str = "ark"  # a stable name: re-running it resumes
    max_failures: int = 3  # worker-group restarts from the latest checkpoint (a lost worker or node) before the run fails

    def validate(self) -> None:
        if self.epochs < 1 or self.global_batch < 1 or self.eval_every < 1 or self.checkpoint_every < 0:
            raise ValueError("epochs, global_batch and eval_every must be at least 1, checkpoint_every >= 0")
        if self.checkpoint_rounds < 1:
            raise ValueError("train.checkpoint_rounds must be at least 1")
        if self.max_failures < 0:
            raise ValueError("max_failures must be >= 0")


@dataclass(kw_only=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)  # only `launch.py tune` reads it
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # with a target, the run fine-tunes

    def validate(self) -> None:
        target = self.finetune.target
        if target is not None and self.data.datasets != [target]:
            raise ValueError(f"finetune.target={target!r}: data.datasets must be [{target}] (it is {self.data.datasets})")
        steps = self.method.foundation.steps
        if steps:
            named = list(dict.fromkeys(step.split(":", 1)[0] for step in steps))
            if sorted(named) != sorted(self.data.datasets):
                raise ValueError(f"method.foundation.steps name {named}, data.datasets is {self.data.datasets}: "
                                 "each dataset of the recipe needs a step, and each step's dataset a place in data")
            if self.method.schedule != "cyclic" or target is not None:
                raise ValueError("method.foundation.steps: Foundation X runs its own passes (method.schedule cyclic, "
                                 "no finetune.target)")
            # The lock's zero LR follows the optimizer step: one step per batch, none skipped. Gradient
            # accumulation steps once per k batches, and fp16 skips a step on every overflow.
            if self.engine.grad_accum != 1 or self.engine.precision == "fp16":
                raise ValueError("method.foundation.steps: Foundation X needs engine.grad_accum=1 and precision fp32 "
                                 f"or bf16 (got {self.engine.grad_accum} and {self.engine.precision})")
        world = self.engine.num_workers
        if self.train.global_batch % (world * self.engine.grad_accum):
            raise ValueError(f"train.global_batch {self.train.global_batch} must split evenly over "
                             f"{world} workers x {self.engine.grad_accum} accumulation steps")


def _absolute(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def absolute_paths(cfg: Config) -> Config:
    """Local paths made absolute against the driver's folder: Ray workers run elsewhere."""
    store = replace(cfg.data.store, url=_absolute(cfg.data.store.url), cache_dir=_absolute(cfg.data.store.cache_dir))
    return replace(cfg, data=replace(cfg.data, store=store),
                   model=replace(cfg.model, pretrained=_absolute(cfg.model.pretrained)),
                   train=replace(cfg.train, storage_path=_absolute(cfg.train.storage_path)))


def load(path=None, overrides=None) -> Config:
    """A recipe (YAML) plus dotted overrides, validated, with local paths made absolute."""
    return absolute_paths(load_config(Config, path, overrides))


__all__ = ["Config", "OptimConfig", "EngineConfig", "TrainConfig", "load", "to_dict"]
