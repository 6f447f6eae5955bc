"""`launch.py train --dry-run`: build everything the run needs and push one batch through the
student and teacher on the CPU, without Ray or DeepSpeed. Catches a broken recipe in seconds."""

from __future__ import annotations

from dataclasses import replace

import torch

from ark_dist.config import Config
from ark_dist.data import Cursor, Store, canvas_warnings, dataset_entry, read_manifest, train_loader
from ark_dist.method import ArkSchedule, make_teacher
from ark_dist.model import ArkModel, load_pretrained
from ark_dist.train.engine import optimizer
from ark_dist.train.evaluate import metric_classes
from ark_dist.train.schedule import steps_per_round
from ark_dist.train.step import ark_loss, micro_batches


def dry_run(cfg: Config, *, log=print) -> float:
    """One optimizer step of the first dataset's round on the CPU, batched as rank 0 of the
    configured workers would be (its share of the global batch, in `grad_accum` micro-batches),
    with the loss the trainer uses at that round; returns the mean loss."""
    if cfg.method.foundation.steps:
        from ark_dist.train.foundation_worker import dry_run as foundation_dry_run

        return foundation_dry_run(cfg, log=log)
    manifest = read_manifest(Store(cfg.data.store))
    entries = [dataset_entry(manifest, n) for n in cfg.data.datasets]
    for entry in entries:
        metric_classes(entry, cfg.data)
    for line in canvas_warnings(entries, load_size=cfg.data.views.load_size):
        log(f"warning: {line}")
    torch.manual_seed(cfg.train.seed)
    model = ArkModel(cfg.model, heads={e["name"]: len(e["labels"]) for e in entries})
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained, log=log)
    teacher = make_teacher(model)
    entry, world, accum = entries[0], cfg.engine.num_workers, cfg.engine.grad_accum
    steps = steps_per_round(entries, global_batch=cfg.train.global_batch, max_steps=cfg.data.max_steps_per_round)
    schedule = ArkSchedule(config=cfg.method, steps=tuple(steps), epochs=cfg.train.epochs)
    data = replace(cfg.data, num_workers=0, max_steps_per_round=1)
    batch = next(iter(train_loader(entry=entry, config=data, seed=cfg.train.seed, cursor=Cursor(), rank=0, world=world,
                                   global_batch=cfg.train.global_batch)))
    heads = [(entry["name"], entry["task"])]
    opt = optimizer(cfg, model.parameters())
    losses = []
    for micro in micro_batches(batch, accum):
        loss, _ = ark_loss(model, teacher, micro, heads=heads, c=schedule.consistency(0, 0),
                           size=cfg.data.views.image_size, dtype=torch.float32, device=torch.device("cpu"))
        (loss / accum).backward()
        losses.append(loss.item())
    opt.step()
    params = sum(p.numel() for p in model.parameters())
    size = cfg.data.views.image_size
    split = f" in {accum} micro-batches" if accum > 1 else ""
    log(f"dry run: {len(entries)} datasets, {params / 1e6:.2f} M parameters, one batch of {len(batch['valid'])} from "
        f"{entry['name']}{split} {(len(micro['valid']), 3, size, size)}: loss {sum(losses) / len(losses):.4f}")
    return sum(losses) / len(losses)
