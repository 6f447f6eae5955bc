"""DeepSpeed around a model, inside a Ray Train worker: the only place that knows about both."""

from __future__ import annotations

import torch

from ark_dist.config import Config
from ark_dist.train.schedule import lr_at


def deepspeed_config(cfg: Config, *, micro_batch: int) -> dict:
    engine = cfg.engine
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": engine.grad_accum,
        "gradient_clipping": cfg.optim.clip_grad,  # 0 = off; DeepSpeed's own default would be 1.0
        "zero_optimization": {"stage": engine.zero_stage},
        "zero_allow_untested_optimizer": True,  # a torch optimizer instance (no JIT-built fused op)
        "bf16": {"enabled": engine.precision == "bf16"},
        "fp16": {"enabled": engine.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; fused kernels on GPUs (one launch for all parameters)."""
    o = cfg.optim
    params = list(params)
    fused = bool(params) and params[0].is_cuda
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                               fused=fused or None)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused or None)


def compile_models(engine, teacher: torch.nn.Module) -> None:
    """torch.compile the student inside its engine and the teacher, in place (state-dict keys unchanged)."""
    engine.compile()
    teacher.compile()


def build(model: torch.nn.Module, cfg: Config, *, micro_batch: int, total_steps: int, warmup_steps: int):
    """-> DeepSpeed engine; the LR follows `lr_at` per optimizer step."""
    import deepspeed

    opt = optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scale = lambda step: lr_at(step, total=total_steps, warmup=warmup_steps, lr=cfg.optim.lr,  # noqa: E731
                               min_lr=cfg.optim.min_lr) / cfg.optim.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, scale)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=scheduler,
                                      config=deepspeed_config(cfg, micro_batch=micro_batch))
    return engine


def cpu_threads(cfg: Config) -> None:
    """On the CPU, use the cores Ray gave this worker (Ray's default would leave one thread)."""
    if not cfg.engine.use_gpu:
        torch.set_num_threads(cfg.engine.cpus_per_worker)


def gathered_parameters(engine):
    """A context in which `engine.module.parameters()` are whole on every rank (ZeRO-3 shards them)."""
    import contextlib

    import deepspeed

    if engine.zero_optimization_stage() == 3:
        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()
