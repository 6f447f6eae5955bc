"""DeepSpeed around a model, inside a Ray Train worker: the only place that knows about both."""

from __future__ import annotations

import contextlib

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
    """SGD (Nesterov) or AdamW over parameters or parameter groups (dicts, each with its own `lr`
    and `weight_decay` if it says so); fused kernels on GPUs (one launch for all parameters)."""
    o = cfg.optim
    params = list(params)
    first = params[0]["params"][0] if params and isinstance(params[0], dict) else (params[0] if params else None)
    fused = first is not None and first.is_cuda
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                               fused=fused or None)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused or None)


def compile_models(engine, teacher: torch.nn.Module) -> None:
    """torch.compile the student inside its engine and the teacher, in place (state-dict keys unchanged)."""
    engine.compile()
    teacher.compile()


def build(model: torch.nn.Module, cfg: Config, *, micro_batch: int, total_steps: int, warmup_steps: int,
          groups: list[dict] | None = None, lr_scale=None):
    """-> DeepSpeed engine; the LR follows `lr_at` per optimizer step, or `lr_scale` (a function of
    the optimizer steps done, or one per group, times each group's own LR) over `groups`."""
    import deepspeed

    opt = optimizer(cfg, groups if groups is not None else [p for p in model.parameters() if p.requires_grad])
    if lr_scale is None:
        lr_scale = lambda step: lr_at(step, total=total_steps, warmup=warmup_steps, lr=cfg.optim.lr,  # noqa: E731
                                      min_lr=cfg.optim.min_lr, schedule=cfg.optim.schedule) / cfg.optim.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_scale)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=scheduler,
                                      config=deepspeed_config(cfg, micro_batch=micro_batch))
    return engine


def cpu_threads(cfg: Config) -> None:
    """On the CPU, use the cores Ray gave this worker (Ray's default would leave one thread)."""
    if not cfg.engine.use_gpu:
        torch.set_num_threads(cfg.engine.cpus_per_worker)


def _fp16_optimizer_masters(optimizer) -> dict[int, torch.Tensor]:
    """id(low-precision param) -> its fp32 master, for DeepSpeed's FP16_Optimizer and
    FP16_UnfusedOptimizer (bf16 or fp16 without ZeRO), which keep no per-parameter mapping: one
    flat fp32 tensor per group (fused) or one fp32 tensor per parameter (unfused)."""
    from torch._utils import _unflatten_dense_tensors

    if hasattr(optimizer, "fp32_groups_flat"):
        masters = [_unflatten_dense_tensors(flat, group)
                   for group, flat in zip(optimizer.fp16_groups, optimizer.fp32_groups_flat)]
    else:
        masters = getattr(optimizer, "fp32_groups", [])
    return {id(p): m for group, fp32 in zip(optimizer.fp16_groups, masters) for p, m in zip(group, fp32)}


@contextlib.contextmanager
def master_parameters(engine):
    """The student's parameters as the optimizer holds them, whole, in `engine.module.parameters()`
    order: the fp32 master weights under bf16/fp16 (a late update smaller than the low-precision
    step exists only there), the module's own under fp32. Every rank must enter (ZeRO gathers)."""
    from deepspeed.utils import safe_get_full_fp32_param

    with gathered_parameters(engine):
        params = list(engine.module.parameters())
        if engine.bfloat16_enabled() or engine.fp16_enabled():
            # safe_get_full_fp32_param: ZeRO 1-3 and DeepSpeed's BF16_Optimizer (a collective on ZeRO).
            full = [safe_get_full_fp32_param(p) if p.requires_grad else None for p in params]
            flat = _fp16_optimizer_masters(engine.optimizer) if hasattr(engine.optimizer, "fp16_groups") else {}
            params = [f if f is not None else flat.get(id(p), p) for p, f in zip(params, full)]
        yield params


def update_teacher(engine, teacher: torch.nn.Module, m: float) -> None:
    """teacher = m teacher + (1 - m) student, from the optimizer's fp32 weights; every rank calls it."""
    from ark_dist.method import ema_update

    with master_parameters(engine) as student:
        ema_update(teacher.parameters(), student=student, m=m)


def gathered_parameters(engine):
    """A context in which `engine.module.parameters()` are whole on every rank (ZeRO-3 shards them)."""
    import deepspeed

    if engine.zero_optimization_stage() == 3:
        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()
