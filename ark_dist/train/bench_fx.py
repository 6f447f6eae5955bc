"""`python launch.py bench step --task cls|loc|seg`: the Foundation X step of one task, side by side.

  plain     one process, plain PyTorch: the student under autocast (fp32 weights), the fp32 teacher,
            torch AdamW over the recipe's parameter groups (gradients clipped as the recipe clips),
            the teacher's EMA (buffers included) after every step
  ark-dist  the trainer's own parts on Ray Train workers: the student in a DeepSpeed engine over
            the same groups, the same `foundation_loss`, the buffers averaged over the ranks and
            the teacher updated from the optimizer's fp32 weights (gathered under ZeRO), as
            `FoundationRun` does after a step and a pass

Both run configs/foundation_x.yaml's model and optimizer with one dataset's heads of each kind
(ChestX-Det's 13 classes, boxes and masks), on synthetic batches of the chosen task already on the
device. The trainer moves the teacher once a pass; here it moves after every step, as in the Ark
bench, so the figures bound the EMA's cost from above.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ark_dist.config import Config, load
from ark_dist.configtree import from_dict
from ark_dist.data.config import ViewConfig
from ark_dist.data.views import draw_views
from ark_dist.method import make_teacher
from ark_dist.method.foundation import Step, ema_module, parameter_groups, parse_steps
from ark_dist.model.foundation import FoundationModel
from ark_dist.train.bench import precision_dtype, report_rates, timed_windows
from ark_dist.train.foundation_step import foundation_loss

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "foundation_x.yaml"
DATASET, NUM_CLASSES = "chestx_det", 13  # one dataset's heads of each kind: its findings, boxes and masks
ENTRY = {"name": DATASET, "task": "multilabel"}  # what `foundation_loss` reads of a manifest entry
STORED = 512  # the synthetic images' stored side (boxes are in its pixels)
# The test-sized Swin with Foundation X's four stages (the FPN reads stages 2-4).
TINY4 = '{"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4, "img_size": 64}'


def bench_config(args, *, overrides: list[str]) -> Config:
    """The recipe with one step, `chestx_det:<task>`, and the flags' backbone, input size, engine
    and batch (`overrides`); the canvas keeps the recipe's ratio to the input, 512 / 224."""
    fx = [f"data.datasets=[{DATASET}]", f"method.foundation.steps=[{DATASET}:{args.task}]", "model.pretrained=null",
          f"data.views.load_size={args.image_size * 16 // 7}"]
    if args.tiny:
        fx += ["model.dense.loc_channels=32", "model.dense.seg_channels=32"]
    return load(RECIPE, overrides + fx)


def the_step(cfg: Config) -> Step:
    step, = parse_steps(cfg.method.foundation)
    return step


def build_model(cfg: Config) -> FoundationModel:
    return FoundationModel(cfg.model, classes={DATASET: NUM_CLASSES}, boxes={DATASET: NUM_CLASSES},
                           masks={DATASET: NUM_CLASSES})


def synthetic_batch(batch: int, views: ViewConfig, *, task: str, seed: int = 0) -> dict:
    """A ChestX-Det-like batch of one task as the dense loader yields it: uint8 canvases (B, 1, L, L),
    drawn views, every sample valid; cls: target and mask (B, K); loc: one or two boxes per image
    inside it, in stored pixels, with their labels and the stored size (B, 2); seg: a square of
    (L/8)^2 pixels for one or two classes of each image, every class known."""
    rng = np.random.default_rng(seed)
    drawn = [draw_views(rng, STORED, STORED, views) for _ in range(batch)]
    load = views.load_size
    out = {"image": torch.from_numpy(rng.integers(0, 256, (batch, 1, load, load), dtype=np.uint8)),
           "theta_student": torch.from_numpy(np.stack([d["theta_student"] for d in drawn])),
           "theta_teacher": torch.from_numpy(np.stack([d["theta_teacher"] for d in drawn])),
           "photo": torch.from_numpy(np.stack([d["photo"] for d in drawn])),
           "valid": torch.ones(batch, dtype=torch.bool)}
    if task == "cls":
        out["target"] = torch.from_numpy((rng.random((batch, NUM_CLASSES)) < 0.3).astype(np.float32))
        out["mask"] = torch.ones(batch, NUM_CLASSES)
    elif task == "loc":
        boxes, labels = [], []
        for _ in range(batch):
            n = int(rng.integers(1, 3))
            sides = rng.uniform(0.15, 0.4, (n, 2)) * STORED  # (n, 2) w, h
            low = rng.uniform(0, 1, (n, 2)) * (STORED - sides)
            boxes.append(torch.from_numpy(np.concatenate([low, low + sides], 1).astype(np.float32)))  # (n, 4) xyxy
            labels.append(torch.from_numpy(rng.integers(0, NUM_CLASSES, n)))
        out.update(boxes=boxes, box_labels=labels, size=torch.full((batch, 2), STORED, dtype=torch.int64))
    else:
        masks, side = np.zeros((batch, NUM_CLASSES, load, load), dtype=np.uint8), max(1, load // 8)
        for b in range(batch):
            for k in rng.choice(NUM_CLASSES, size=int(rng.integers(1, 3)), replace=False):
                y, x = rng.integers(0, load - side + 1, 2)
                masks[b, k, y:y + side, x:x + side] = 1
        out.update(masks=torch.from_numpy(masks), mask_known=torch.ones(batch, NUM_CLASSES, dtype=torch.bool))
    return out


def on_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on the device; the box lists and stored sizes stay on the CPU, where
    `foundation_loss` warps them (as the trainer's batches arrive)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) and k != "size" else v for k, v in batch.items()}


def _loss(student, teacher, batch: dict, cfg: Config, *, dtype, device):
    fx = cfg.method.foundation
    return foundation_loss(student, teacher, batch, step=the_step(cfg), entry=ENTRY, c=fx.consistency,
                           dice_bce=fx.dice_bce, views=cfg.data.views, dtype=dtype, device=device)


def step_flops(cfg: Config, batch: dict, device: torch.device) -> float:
    """FLOPs of one step: the student's forward (its idle parts included) and backward, the
    teacher's forward."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    teacher = make_teacher(model)
    with FlopCounterMode(display=False) as counter:
        loss, _ = _loss(model, teacher, batch, cfg, dtype=torch.float32, device=device)
        loss.backward()
    return float(counter.get_total_flops())


def plain_loop(cfg: Config, args) -> list[float]:
    """The reference point: single process, autocast, torch AdamW over the same groups, EMA every step."""
    device, dtype, fx = torch.device(args.device), precision_dtype(args.precision), cfg.method.foundation
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    teacher = make_teacher(model)
    groups = parameter_groups(model, lr=cfg.optim.lr, backbone_lr_scale=fx.backbone_lr_scale,
                              weight_decay=cfg.optim.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    batch = on_device(synthetic_batch(args.batch, cfg.data.views, task=the_step(cfg).task), device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = _loss(model, teacher, batch, cfg, dtype=torch.float32, device=device)
        loss.backward()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_module(teacher, student_params=model.parameters(), student_buffers=model.buffers(), m=fx.momentum)

    return timed_windows(step, device=device, warmup=args.warmup, steps=args.steps, repeats=args.repeats,
                         images_per_step=args.batch)


def ark_dist_worker(spec: dict) -> None:
    """One Ray Train rank: `FoundationRun`'s engine over the recipe's groups, loss, buffer
    averaging and EMA on a synthetic batch."""
    from types import SimpleNamespace

    import deepspeed
    import ray.train

    from ark_dist.train import engine as engines
    from ark_dist.train.foundation_worker import FoundationRun

    cfg = from_dict(Config, spec["config"])
    fx = cfg.method.foundation
    engines.cpu_threads(cfg)
    deepspeed.init_distributed(dist_backend="nccl" if cfg.engine.use_gpu else "gloo")
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.engine.use_gpu else torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg)
    teacher = make_teacher(model).to(device)
    groups = parameter_groups(model, lr=cfg.optim.lr, backbone_lr_scale=fx.backbone_lr_scale,
                              weight_decay=cfg.optim.weight_decay)
    micro = cfg.train.global_batch // world
    engine = engines.build(model.to(device), cfg, micro_batch=micro, total_steps=0, warmup_steps=0, groups=groups,
                           lr_scale=lambda step: 1.0)  # a release pass: every group at its own LR
    if cfg.engine.compile:
        engines.compile_models(engine, teacher)
    batch = on_device(synthetic_batch(micro, cfg.data.views, task=the_step(cfg).task, seed=ctx.get_world_rank()),
                      device)
    dtype = precision_dtype(cfg.engine.precision)
    run = SimpleNamespace(engine=engine, teacher=teacher, world=world)  # what FoundationRun's step-end methods read

    def step():
        loss, _ = _loss(engine, teacher, batch, cfg, dtype=dtype, device=device)
        engine.backward(loss)
        engine.step()
        FoundationRun.average_buffers(run)  # the trainer's own code, not a copy of it
        FoundationRun.update_teacher(run, fx.momentum)

    report_rates(timed_windows(step, device=device, warmup=spec["warmup"], steps=spec["steps"],
                               repeats=spec["repeats"], images_per_step=micro * world))
