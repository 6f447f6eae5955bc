"""`launch.py train --dry-run`: build everything the run needs and push one batch through the
student and teacher on the CPU, without Ray or DeepSpeed. Catches a broken recipe in seconds."""

from __future__ import annotations

from dataclasses import replace

import torch

from ark_dist.config import Config
from ark_dist.data import Cursor, Store, dataset_entry, read_manifest, render, train_loader
from ark_dist.method import consistency_loss, make_teacher, task_loss
from ark_dist.model import ArkModel, load_pretrained
from ark_dist.train.engine import optimizer


def dry_run(cfg: Config, *, log=print) -> float:
    """One optimizer step of the first dataset's round on the CPU; returns the loss."""
    manifest = read_manifest(Store(cfg.data.store))
    entries = [dataset_entry(manifest, n) for n in cfg.data.datasets]
    torch.manual_seed(cfg.train.seed)
    model = ArkModel(cfg.model, {e["name"]: len(e["labels"]) for e in entries})
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained, log=log)
    teacher = make_teacher(model)
    entry = entries[0]
    micro = max(1, cfg.train.global_batch // (cfg.engine.num_workers * cfg.engine.grad_accum))
    data = replace(cfg.data, num_workers=0, max_steps_per_round=1)
    batch = next(iter(train_loader(entry=entry, config=data, seed=cfg.train.seed, cursor=Cursor(), rank=0, world=1,
                                   global_batch=micro)))
    size = cfg.data.views.image_size
    student_in = render(batch["image"], batch["theta_student"], size, batch["photo"])  # (B, 3, S, S)
    out = model(student_in, heads=[entry["name"]])
    with torch.no_grad():
        target = teacher(render(batch["image"], batch["theta_teacher"], size), heads=[]).projection
    loss = 0.5 * task_loss(out.logits[entry["name"]], batch["target"], batch["mask"], entry["task"]) \
        + 0.5 * consistency_loss(out.projection, target)
    loss.backward()
    optimizer(cfg, model.parameters()).step()
    params = sum(p.numel() for p in model.parameters())
    log(f"dry run: {len(entries)} datasets, {params / 1e6:.2f} M parameters, one batch of {micro} from "
        f"{entry['name']} {tuple(student_in.shape)}: loss {loss.item():.4f}")
    return loss.item()
