"""`python launch.py bench memory`: the largest micro-batch of the Ark step that fits on one GPU.

For each ZeRO stage (`--zero`) with and without activation checkpointing (`model.grad_checkpointing`),
one Ray Train rank builds the trainer's DeepSpeed engine and runs the full Ark step (student
forward and backward, teacher forward, optimizer step, EMA) at a few micro-batches (`--probes`),
reading the peaks of allocated and reserved GPU memory at each, each on a fresh engine (an OOM
can leave an engine's ZeRO bookkeeping half done). The peak is linear in the batch (a fixed part:
weights, gradients, optimizer state, workspaces; and a part per image: activations), so a
least-squares line through the reserved peaks (what the allocator really holds) predicts the
largest batch within `--fill` of the GPU's memory; one step at that batch checks it (stepping
down 10% while it runs out of memory). A configuration that fails otherwise is its row's error.

On one GPU ZeRO-2 has no other rank to shard optimizer state and gradients over; the fixed part
it would free on N ranks is (1 - 1/N) of those, which the table's `state MiB` column gives.
"""

from __future__ import annotations

import argparse
import gc
import json
from dataclasses import replace

import numpy as np
import torch

from ark_dist.config import Config
from ark_dist.configtree import from_dict

MIB = 2**20


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """(fixed, per image) of the least-squares line through {batch: peak bytes}."""
    batches = np.array(sorted(points), dtype=np.float64)
    peaks = np.array([points[int(b)] for b in batches])
    per_image, fixed = np.polyfit(batches, peaks, 1)
    return float(fixed), float(per_image)


def predicted_batch(points: dict[int, float], capacity: float) -> int:
    """The largest batch whose predicted peak is within `capacity` bytes (0 if none is)."""
    fixed, per_image = fit_line(points)
    if per_image < 1:  # under a byte an image: flat, up to float noise
        raise ValueError(f"the peak does not grow with the batch ({points}): probe larger batches")
    return max(0, int((capacity - fixed) // per_image))


def _args(argv):
    from ark_dist.train.bench import TINY

    p = argparse.ArgumentParser(prog="launch.py bench memory", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="swin_base_patch4_window7_224")
    p.add_argument("--backbone-kwargs", default="{}", help='JSON, e.g. Ark+\'s Swin-L at 768: \'{"img_size": 768}\'')
    p.add_argument("--tiny", action="store_true", help="the test-sized Swin at 64 px (a smoke run)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--zero", default="0,2", help="ZeRO stages, e.g. 0,2")
    p.add_argument("--probes", default="8,16,32", help="micro-batches measured to fit the line")
    p.add_argument("--fill", type=float, default=0.92, help="share of the GPU's memory the batch may use")
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--storage", default="out/bench", help="Ray's run folder")
    args = p.parse_args(argv)
    if args.tiny:
        args.backbone, args.backbone_kwargs, args.image_size = "swin_base_patch4_window7_224", TINY, 64
    args.zero = [int(z) for z in args.zero.split(",")]
    args.probes = sorted({int(b) for b in args.probes.split(",")})
    if len(args.probes) < 2 or not 0 < args.fill <= 1:
        p.error("--probes needs two batches at least and --fill a share in (0, 1]")
    return args


def _state_bytes(engine) -> int:
    """Bytes of the optimizer's state and its fp32 master copies (DeepSpeed's bf16/fp16 and ZeRO
    wrappers name them differently): what ZeRO-1/2 shard over the ranks."""
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    tensors = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    for name in ("fp32_groups_flat_partition", "single_partition_of_fp32_groups", "fp32_groups_flat", "fp32_groups"):
        for item in getattr(engine.optimizer, name, None) or []:
            tensors += [t for t in (item if isinstance(item, (list, tuple)) else [item]) if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def _memory_worker(spec: dict) -> None:
    """One Ray Train rank: a row per (ZeRO stage, checkpointing); a row that fails records why
    and the others still run."""
    import deepspeed

    from ark_dist.train.bench import report_rates

    base = from_dict(Config, spec["config"])
    deepspeed.init_distributed(dist_backend="nccl")
    device = torch.device("cuda", torch.cuda.current_device())
    capacity = spec["fill"] * torch.cuda.get_device_properties(device).total_memory
    rows = []
    for zero in spec["zero"]:
        for checkpointing in (False, True):
            cfg = replace(base, engine=replace(base.engine, zero_stage=zero),
                          model=replace(base.model, grad_checkpointing=checkpointing))
            row = {"zero": zero, "checkpointing": checkpointing}
            try:
                row.update(_measure(cfg, probes=spec["probes"], device=device, capacity=capacity))
            except Exception as exc:  # noqa: BLE001 - one configuration's failure is its row, not the run's
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            rows.append(row)
    report_rates({"capacity_mib": capacity / MIB, "gpu": torch.cuda.get_device_name(device), "rows": rows})


def _peak(cfg: Config, batch_size: int, *, device: torch.device) -> dict | None:
    """{"allocated", "reserved": peak bytes over two full Ark steps at this batch, "state": the
    optimizer's bytes} on a fresh engine (an OOM can leave an engine's ZeRO bookkeeping half
    done), or None if it ran out."""
    from ark_dist.train.bench import trainer_step

    engine, step = trainer_step(cfg, micro=batch_size, device=device)
    out_of_memory = False
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step()
        step()
        torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        out_of_memory = True  # handled below, once the traceback no longer holds the activations
    peak = {"allocated": float(torch.cuda.max_memory_allocated(device)),
            "reserved": float(torch.cuda.max_memory_reserved(device)), "state": float(_state_bytes(engine))}
    engine.destroy()
    del engine, step  # the step's closure holds the teacher and the batch
    gc.collect()
    torch.cuda.empty_cache()
    return None if out_of_memory else peak


def _measure(cfg: Config, *, probes: list[int], device: torch.device, capacity: float) -> dict:
    """Peaks at the probes, the batch a line through the reserved peaks predicts within
    `capacity`, and the largest that ran (the prediction, then 10% less after each OOM)."""
    points = {b: _peak(cfg, b, device=device) for b in probes}
    reserved = {b: p["reserved"] for b, p in points.items() if p is not None}
    row = {"peaks_mib": {b: p and p["allocated"] / MIB for b, p in points.items()},
           "reserved_mib": {b: p and p["reserved"] / MIB for b, p in points.items()},
           "state_mib": max((p["state"] for p in points.values() if p), default=0.0) / MIB}
    if len(reserved) < 2:
        return row
    fixed, per_image = fit_line(reserved)
    batch = predicted = predicted_batch(reserved, capacity)
    largest = None
    for _ in range(4):
        if batch < 1:
            break
        if _peak(cfg, batch, device=device) is not None:
            largest = batch
            break
        batch = int(batch * 0.9)
    return {**row, "fixed_mib": fixed / MIB, "per_image_mib": per_image / MIB, "predicted": predicted,
            "largest": largest}


def main(argv: list[str]) -> int:
    from ark_dist.train.bench import ark_dist_loop, bench_config

    args = _args(argv)
    if not torch.cuda.is_available():
        print("error: bench memory measures GPU memory, and no CUDA device is visible", flush=True)
        return 2
    step_args = argparse.Namespace(task=None, backbone=args.backbone, backbone_kwargs=args.backbone_kwargs,
                                   image_size=args.image_size, workers=1, device="cuda", threads=4, zero=args.zero[0],
                                   precision=args.precision, compile=False, batch=args.probes[0], warmup=0, steps=0,
                                   repeats=0, storage=args.storage)
    cfg = bench_config(step_args)
    spec = {"zero": args.zero, "probes": args.probes, "fill": args.fill}
    figures = ark_dist_loop(cfg, step_args, worker=_memory_worker, extra=spec)
    print(f"bench memory: {args.backbone} {json.loads(args.backbone_kwargs) or ''} {args.image_size}px, "
          f"{args.precision}, one rank on {figures['gpu']} ({figures['capacity_mib'] / 1024:.1f} GiB at --fill "
          f"{args.fill})")
    print("fixed and per-image MiB: the line through the reserved peaks; peaks: allocated MiB at each probe")
    print(f"{'ZeRO':>4} {'checkpointing':>13} {'fixed MiB':>10} {'MiB/image':>10} {'state MiB':>10} "
          f"{'predicted':>9} {'largest':>8}  peaks at {args.probes}")
    for r in figures["rows"]:
        if "error" in r:
            print(f"{r['zero']:>4} {str(r['checkpointing']):>13}  failed: {r['error']}")
            continue
        peaks = " ".join("OOM" if v is None else f"{v:.0f}" for v in r["peaks_mib"].values())
        if "fixed_mib" in r:
            print(f"{r['zero']:>4} {str(r['checkpointing']):>13} {r['fixed_mib']:>10.0f} {r['per_image_mib']:>10.1f} "
                  f"{r['state_mib']:>10.0f} {r['predicted']:>9} {str(r['largest']):>8}  {peaks}")
        else:
            print(f"{r['zero']:>4} {str(r['checkpointing']):>13} {'(too few probes fit: try smaller ones)':>45}  {peaks}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **figures}, f, indent=1)
    return 0
