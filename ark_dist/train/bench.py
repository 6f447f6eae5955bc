"""`python launch.py bench step`: throughput of the full Ark step, side by side in one run.

  plain     one process, plain PyTorch: the student under autocast (fp32 weights), the fp32 teacher,
            torch SGD, the EMA after every step: the loop a researcher writes first
  ark-dist  the trainer's own parts on Ray Train workers: the student in a DeepSpeed engine
            (ZeRO stage, precision and `--compile` as configured), the same `ark_loss`, the
            teacher updated from the optimizer's fp32 weights (gathered under ZeRO)

Both run the same model, batch per rank and precision on synthetic batches already on the device
(this measures the step, not the data plane: `bench data` does that). Figures are medians over
`--repeats` windows of `--steps` steps after `--warmup` steps. On a GPU it also counts the step's
FLOPs (student forward and backward, teacher forward) and reports the share of the bf16 peak.
`--task cls|loc|seg` runs a Foundation X step of that task instead (ark_dist/train/bench_fx.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ark_dist.config import Config, load, to_dict
from ark_dist.configtree import from_dict
from ark_dist.data.config import ViewConfig
from ark_dist.data.views import draw_views
from ark_dist.method import ema_update, make_teacher
from ark_dist.model import ArkModel
from ark_dist.train.step import ark_loss

HEADS = {"mimic_cxr": 14, "chexpert": 14, "chestxray14": 14, "rsna_pneumonia": 3, "vindr_cxr": 6, "shenzhen": 1}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
TINY = '{"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}'


def _args(argv):
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="launch.py bench step", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="swin_base_patch4_window7_224" if gpu else "swin_tiny_patch4_window7_224")
    p.add_argument("--backbone-kwargs", default="{}", help=f"JSON, e.g. the test-sized Swin: '{TINY}'")
    p.add_argument("--tiny", action="store_true",
                   help="the test-sized Swin at 64 px (a smoke run; with --task four stages and 32-wide dense heads)")
    p.add_argument("--task", choices=["cls", "loc", "seg"],
                   help="a Foundation X step of this task (configs/foundation_x.yaml, one dataset's heads) "
                        "instead of the Ark step")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64 if gpu else 8, help="images per rank and step")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16" if gpu else "fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if gpu else "cpu")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (ranks) on the ark-dist path")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    p.add_argument("--compile", action="store_true", help="torch.compile the student (engine.compile) and teacher")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of each path (CPU runs)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--storage", default="out/bench", help="Ray's run folder for the ark-dist path")
    args = p.parse_args(argv)
    if args.tiny:
        from ark_dist.train.bench_fx import TINY4  # Foundation X's heads read four stages

        args.backbone, args.image_size = "swin_base_patch4_window7_224", 64
        args.backbone_kwargs = TINY4 if args.task else TINY
    return args


def shared_overrides(args) -> list[str]:
    """The config keys both steps take from the flags: backbone, input size, engine and batch."""
    kwargs = json.loads(args.backbone_kwargs)
    return [f"model.backbone={args.backbone}", f"model.backbone_kwargs={json.dumps(kwargs)}",
            f"data.views.image_size={args.image_size}", f"engine.num_workers={args.workers}",
            f"engine.use_gpu={str(args.device == 'cuda').lower()}",
            f"engine.cpus_per_worker={max(1, args.threads // args.workers)}", f"engine.zero_stage={args.zero}",
            f"engine.precision={args.precision}", f"engine.compile={str(args.compile).lower()}",
            f"train.global_batch={args.batch * args.workers}", "optim.warmup_epochs=0"]


def bench_config(args) -> Config:
    """The trainer's config for this benchmark (DeepSpeed is built from it exactly as in training):
    Ark's defaults with its six heads, or with `--task` the Foundation X recipe (bench_fx)."""
    if args.task:
        from ark_dist.train import bench_fx

        return bench_fx.bench_config(args, overrides=shared_overrides(args))
    return load(None, shared_overrides(args) + [f"data.views.load_size={args.image_size * 8 // 7}",
                                                f"data.datasets=[{', '.join(HEADS)}]"])


def synthetic_batch(batch: int, views: ViewConfig, seed: int = 0) -> dict:
    """A CheXpert-like batch as the loader yields it: uint8 canvases, drawn views, labels."""
    rng = np.random.default_rng(seed)
    drawn = [draw_views(rng, 512, 512, views) for _ in range(batch)]
    load = views.load_size
    return {"image": torch.from_numpy(rng.integers(0, 256, (batch, 1, load, load), dtype=np.uint8)),
            "theta_student": torch.from_numpy(np.stack([d["theta_student"] for d in drawn])),
            "theta_teacher": torch.from_numpy(np.stack([d["theta_teacher"] for d in drawn])),
            "photo": torch.from_numpy(np.stack([d["photo"] for d in drawn])),
            "target": torch.from_numpy((rng.random((batch, 14)) < 0.3).astype(np.float32)),
            "mask": torch.ones(batch, 14)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_windows(step, *, device, warmup: int, steps: int, repeats: int, images_per_step: int) -> list[float]:
    """img/s of each timed window."""
    for _ in range(warmup):
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(images_per_step * steps / (time.perf_counter() - start))
    return rates


def precision_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def step_flops(cfg: Config, batch: dict, device: torch.device) -> float:
    """FLOPs of one step: the student's forward and backward and the teacher's forward."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = ArkModel(cfg.model, heads=HEADS).to(device)
    teacher = make_teacher(model)
    with FlopCounterMode(display=False) as counter:
        loss, _ = ark_loss(model, teacher, batch, heads=[("chexpert", "multilabel")], c=0.5,
                           size=cfg.data.views.image_size, dtype=torch.float32, device=device)
        loss.backward()
    return float(counter.get_total_flops())


def plain_loop(cfg: Config, args) -> list[float]:
    """The reference point: single process, autocast, torch SGD, EMA every step."""
    device = torch.device(args.device)
    dtype = precision_dtype(args.precision)
    torch.manual_seed(0)
    model = ArkModel(cfg.model, heads=HEADS).to(device)
    teacher = make_teacher(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batch = {k: v.to(device) for k, v in synthetic_batch(args.batch, cfg.data.views).items()}
    size = cfg.data.views.image_size

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = ark_loss(model, teacher, batch, heads=[("chexpert", "multilabel")], c=0.5, size=size,
                               dtype=torch.float32, device=device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(teacher.parameters(), student=model.parameters(), m=0.999)

    return timed_windows(step, device=device, warmup=args.warmup, steps=args.steps, repeats=args.repeats,
                         images_per_step=args.batch)


def trainer_step(cfg: Config, *, micro: int, device: torch.device, seed: int = 0):
    """(engine, step): the trainer's DeepSpeed engine over a fresh student with the six heads, and
    one full Ark step on a synthetic batch of `micro` (loss, backward, optimizer step, the EMA from
    the fp32 master weights), compiled as `engine.compile` says."""
    from ark_dist.train import engine as engines

    torch.manual_seed(0)
    model = ArkModel(cfg.model, heads=HEADS)
    teacher = make_teacher(model).to(device)
    engine = engines.build(model.to(device), cfg, micro_batch=micro, total_steps=10**6, warmup_steps=0)
    if cfg.engine.compile:
        engines.compile_models(engine, teacher)
    batch = synthetic_batch(micro, cfg.data.views, seed=seed)
    dtype = precision_dtype(cfg.engine.precision)

    def step():
        loss, _ = ark_loss(engine, teacher, batch, heads=[("chexpert", "multilabel")], c=0.5,
                           size=cfg.data.views.image_size, dtype=dtype, device=device)
        engine.backward(loss)
        engine.step()
        engines.update_teacher(engine, teacher, 0.999)

    return engine, step


def _ark_dist_worker(spec: dict) -> None:
    """One Ray Train rank: the trainer's engine, loss and EMA on a synthetic batch."""
    import deepspeed
    import ray.train

    from ark_dist.train import engine as engines

    cfg = from_dict(Config, spec["config"])
    engines.cpu_threads(cfg)
    deepspeed.init_distributed(dist_backend="nccl" if cfg.engine.use_gpu else "gloo")
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.engine.use_gpu else torch.device("cpu")
    micro = cfg.train.global_batch // world
    _, step = trainer_step(cfg, micro=micro, device=device, seed=ctx.get_world_rank())
    report_rates(timed_windows(step, device=device, warmup=spec["warmup"], steps=spec["steps"],
                               repeats=spec["repeats"], images_per_step=micro * world))


def report_rates(rates) -> None:
    """Hand a rank's img/s per window (or any JSON figures) to the driver; every rank calls it
    (`ray.train.report` is a collective), rank 0's travel."""
    import tempfile

    import ray.train

    with tempfile.TemporaryDirectory() as folder:  # Train V2 keeps metrics only with a checkpoint
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            Path(folder, "rates.json").write_text(json.dumps(rates))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"rates": rates}, checkpoint=checkpoint)


def ark_dist_loop(cfg: Config, args, *, worker=_ark_dist_worker, extra: dict | None = None):
    """img/s per window of `worker` (one Ray Train rank's step loop) on `cfg.engine.num_workers`
    ranks: what rank 0 reported. `extra`: more keys for the worker's spec."""
    import ray

    from ark_dist.train.run import start_ray

    started = start_ray()
    try:
        return _fit_ark_dist(cfg, args, worker=worker, extra=extra or {})
    finally:
        if started:
            ray.shutdown()


def _fit_ark_dist(cfg: Config, args, *, worker, extra: dict):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.engine.cpus_per_worker, **({"GPU": 1} if cfg.engine.use_gpu else {})}
    spec = {"config": to_dict(cfg), "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats, **extra}
    trainer = TorchTrainer(worker, train_loop_config=spec,
                           scaling_config=ScalingConfig(num_workers=cfg.engine.num_workers, use_gpu=cfg.engine.use_gpu,
                                                        resources_per_worker=resources),
                           run_config=RunConfig(name=f"bench-step-{os.getpid()}-{time.time_ns()}",
                                                storage_path=os.path.abspath(args.storage)))
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"the ark-dist path failed: {result.error}")
    with result.checkpoint.as_directory() as folder:
        return json.loads(Path(folder, "rates.json").read_text())


def _peak(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)


def main(argv: list[str]) -> int:
    args = _args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", flush=True)
        return 2
    torch.set_num_threads(args.threads)
    cfg = bench_config(args)
    device = torch.device(args.device)
    what = (f"{args.backbone} {json.loads(args.backbone_kwargs) or ''} {args.image_size}px, batch {args.batch}/rank, "
            f"{args.precision}, {args.device}, {args.workers} worker(s), ZeRO {args.zero}"
            f"{', compiled' if args.compile else ''}")
    if args.task:
        from ark_dist.train import bench_fx

        step = f"FX {bench_fx.the_step(cfg)}"
        print(f"bench step --task {args.task}: Foundation X {bench_fx.the_step(cfg)}, {what}", flush=True)
        batch = bench_fx.synthetic_batch(args.batch, cfg.data.views, task=args.task)
        flops = bench_fx.step_flops(cfg, bench_fx.on_device(batch, device), device)
        plain = bench_fx.plain_loop(cfg, args)
        ours = ark_dist_loop(cfg, args, worker=bench_fx.ark_dist_worker)
    else:
        step = "Ark"
        print(f"bench step: {what}", flush=True)
        flops = step_flops(cfg, {k: v.to(device) for k, v in synthetic_batch(args.batch, cfg.data.views).items()},
                           device)
        plain = plain_loop(cfg, args)
        ours = ark_dist_loop(cfg, args)
    p, o = statistics.median(plain), statistics.median(ours)
    figures = {"what": what, "step": step, "plain_img_per_s": plain, "ark_dist_img_per_s": ours, "plain_median": p,
               "ark_dist_median": o, "ratio": o / p, "step_gflops_per_image": flops / args.batch / 1e9}
    rows = [("plain PyTorch loop", p, plain), ("ark-dist (Ray + DeepSpeed)", o, ours)]
    width = max(len(step), 4)
    print(f"{'path':<28} {'step':<{width}} {'img/s (median)':>15} {'TFLOP/s':>9}  windows")
    for name, median, windows in rows:
        per_rank = median / (args.workers if name.startswith("ark") else 1)
        tflops = per_rank * flops / args.batch / 1e12
        print(f"{name:<28} {step:<{width}} {median:>15.1f} {tflops:>9.2f}  {' '.join(f'{r:.1f}' for r in windows)}")
    print(f"ratio ark-dist / plain ({step}): {o / p:.3f} "
          f"(per image, ark-dist costs {100 * (p / o - 1):+.1f}% vs plain)")
    peak = _peak(args)
    if peak:
        share = (o / args.workers) * flops / args.batch / 1e12 / peak
        figures.update(peak_tflops=peak, share_of_peak=share)
        print(f"share of the bf16 peak ({peak:.0f} TFLOP/s per GPU): {100 * share:.1f}% (ark-dist), "
              f"{100 * p * flops / args.batch / 1e12 / peak:.1f}% (plain)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0
