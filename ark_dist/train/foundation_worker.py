"""Foundation X on every rank: `Run` (the checkpoints, resume, the loop over rounds) with the
method's passes as its rounds (DESIGN 8, ark_dist/method/foundation.py).

An epoch of the run is one cycle of the recipe's (dataset, task) steps; round i of a cycle is pass
i (a classification pass, or a lock or release pass of a localization or segmentation step), as
long as `pass_steps` says. The LR of each parameter group is a function of the optimizer steps
done (LambdaLR): the cycle's scale, times zero for the parts the current pass locks. So a resume
inside a lock pass needs nothing but the cursor. The teacher moves after every pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from ark_dist.config import Config
from ark_dist.data import Cursor, EvalLoader, RunLoader, dataset_entry, read_manifest, Store
from ark_dist.data.dense import DenseSpec
from ark_dist.data.runloader import Round
from ark_dist.data.stream import round_steps
from ark_dist.method import ArkSchedule, make_teacher
from ark_dist.method.foundation import (Clock, ema_module, parameter_groups, parse_steps, pass_steps, passes,
                                        ungrouped)
from ark_dist.model import load_pretrained
from ark_dist.model.foundation import FoundationModel
from ark_dist.train import engine as engines
from ark_dist.train.dense_metrics import BoxMeter, DiceMeter
from ark_dist.train.evaluate import evaluate, metric_classes
from ark_dist.train.foundation_step import dense_scores, foundation_loss
from ark_dist.train.worker import Run


class _Classifier(torch.nn.Module):
    """A Foundation X model as `evaluate` calls an Ark model: `model(x, heads=[d]).logits[d]`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, heads: list[str]):
        from types import SimpleNamespace

        return SimpleNamespace(logits={h: self.model(x, task="cls", dataset=h).logits[h] for h in heads})


FAMILIES = ("auc", "map50", "map", "dice", "dice_global")


def family_means(metrics: dict[str, float]) -> dict[str, float]:
    """`<family>/<split>/mean/<model>`: each metric family's mean over the recipe's steps (what a
    sweep can rank runs by, e.g. tune.metric=map50/val/mean/teacher); NaN values (a split without a
    class or a box) are left out, and a family with none left is NaN."""
    groups: dict[str, list[float]] = {}
    for key, value in metrics.items():
        family, split, _, model = key.split("/")
        if family in FAMILIES:
            groups.setdefault(f"{family}/{split}/mean/{model}", []).append(value)
    return {key: (float(np.mean(kept)) if (kept := [v for v in values if v == v]) else math.nan)
            for key, values in groups.items()}


def build_model(cfg: Config, entries: dict[str, dict], *, log=print):
    """(the model, its classification, box and mask label spaces) for the recipe's steps, from the
    manifest entries by name; the pretrained weights loaded where the recipe names them."""
    fx_steps = parse_steps(cfg.method.foundation)
    kinds = {task: [s.dataset for s in fx_steps if s.task == task] for task in ("cls", "loc", "seg")}
    for name in kinds["cls"]:
        metric_classes(entries[name], cfg.data)
    labels = {name: list(entries[name]["labels"]) for name in kinds["cls"]}
    boxes = {name: list(DenseSpec.of(entries[name]).box_classes) for name in kinds["loc"]}
    masks = {name: list(entries[name].get("masks") or []) for name in kinds["seg"]}
    for name, classes in masks.items():
        if not classes:
            raise ValueError(f"method.foundation.steps: {name}:seg, but the manifest lists no masks for {name}")
    model = FoundationModel(cfg.model, classes={n: len(v) for n, v in labels.items()},
                            boxes={n: len(v) for n, v in boxes.items()}, masks={n: len(v) for n, v in masks.items()})
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained, log=log)
    return model, labels, boxes, masks


class FoundationRun(Run):
    """One rank of a Foundation X run."""

    def build_model(self) -> torch.nn.Module:
        """Foundation X's model with every dataset's class, box and mask heads."""
        model, self.labels, self.box_classes, self.mask_classes = build_model(
            self.cfg, {e["name"]: e for e in self.entries}, log=self.log)
        return model

    def plan_rounds(self) -> None:
        """A round per (dataset, task) pass of the cycle, with its Lock-Release LR clock."""
        cfg, fx = self.cfg, self.cfg.method.foundation
        by_name = {e["name"]: e for e in self.entries}
        self.fx_steps, self.passes = parse_steps(fx), passes(fx)
        self.interleaved = False
        rounds = {e["name"]: round_steps(e, global_batch=cfg.train.global_batch, max_steps=cfg.data.max_steps_per_round)
                  for e in self.entries}
        self.steps = [pass_steps(p, round_steps=rounds[p.step.dataset]) for p in self.passes]
        self.plan = [Round(entry=by_name[p.step.dataset], steps=n, dense=p.step.task != "cls")
                     for p, n in zip(self.passes, self.steps)]
        self.schedule = ArkSchedule(config=cfg.method, steps=tuple(self.steps), epochs=cfg.train.epochs)
        self.clock = Clock(passes=tuple(self.passes), steps=tuple(self.steps), cycles=cfg.train.epochs,
                           warmup_cycles=fx.warmup_cycles, warmup_scale=fx.warmup_scale)

    def optimizer_plan(self, model: torch.nn.Module) -> dict:
        """AdamW's parameter groups (backbone, each shared part, each head) on the clock's LR."""
        cfg = self.cfg
        groups = parameter_groups(model, lr=cfg.optim.lr, backbone_lr_scale=cfg.method.foundation.backbone_lr_scale,
                                  weight_decay=cfg.optim.weight_decay)
        left = ungrouped(model, groups)
        if left:
            raise RuntimeError(f"parameters in no optimizer group: {', '.join(left)}")
        return {"total_steps": 0, "warmup_steps": 0, "groups": groups, "lr_scale": self.clock.lr_scales(groups)}

    def extra_state(self) -> dict:
        return {"boxes": self.box_classes, "masks": self.mask_classes}

    def loader(self) -> RunLoader:
        cfg = self.cfg
        return RunLoader(entries=self.entries, interleaved=False, config=cfg.data, seed=cfg.train.seed,
                         cursor=self.cursor, rank=self.rank, world=self.world, global_batch=cfg.train.global_batch,
                         epochs=cfg.train.epochs, plan=self.plan)

    def round_heads(self, index: int) -> list[tuple[str, str]]:
        step = self.passes[index].step
        return [(step.dataset, step.task)]

    def average_buffers(self) -> None:
        """The student's floating buffers (BatchNorm's running statistics) averaged over the ranks
        after every step: each rank's BatchNorm saw its own batches, and a checkpoint holds rank 0's
        module only, so this keeps the teachers identical and a resumed run exact."""
        buffers = [b for b in self.engine.module.buffers() if b.is_floating_point()]
        if self.world > 1 and buffers:
            from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

            flat = _flatten_dense_tensors(buffers)  # one collective, not one per buffer
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for buffer, mean in zip(buffers, _unflatten_dense_tensors(flat.div_(self.world), buffers)):
                buffer.copy_(mean)

    def update_teacher(self, m: float) -> None:
        """The parameters' EMA from the fp32 masters, the buffers' from the student's (already
        averaged over the ranks)."""
        with engines.master_parameters(self.engine) as params:
            ema_module(self.teacher, student_params=params, student_buffers=self.engine.module.buffers(), m=m)

    def train_round(self, loader: RunLoader, epoch: int, index: int, start: int) -> dict:
        """One pass; the teacher moves after it with the fixed momentum."""
        import time

        fx, item = self.cfg.method.foundation, self.passes[index]
        entry = next(e for e in self.entries if e["name"] == item.step.dataset)
        losses, tasks, step_s = [], [], []
        lrs = self.engine.get_lr()  # this pass's, per group (the first group is the backbone's)
        for step, batch in enumerate(self.meter.wrap(loader.round(epoch, index)), start=start):
            began = time.perf_counter()
            global_step = self.schedule.first_step(epoch, index) + step
            torch.manual_seed(hash((self.cfg.train.seed, global_step, self.rank)) % 2**63)
            loss, task = foundation_loss(self.engine, self.teacher, batch, step=item.step, entry=entry,
                                         c=fx.consistency, dice_bce=fx.dice_bce, views=self.cfg.data.views,
                                         dtype=self.dtype, device=self.device)
            self.engine.backward(loss)
            self.engine.step()
            self.average_buffers()
            losses.append(loss.item())
            tasks.append(task.item())
            step_s.append(time.perf_counter() - began)
            if self.cfg.train.checkpoint_every and (step + 1) % self.cfg.train.checkpoint_every == 0 \
                    and step + 1 < self.steps[index]:
                self.save(Cursor(epoch, index, step + 1), {"loss": losses[-1], "epoch": epoch, "round": index})
        self.update_teacher(fx.momentum)
        name = f"{item.step}/{item.kind}"
        return {f"loss/{name}": float(np.mean(losses)) if losses else math.nan,
                f"loss/task/{name}": float(np.mean(tasks)) if tasks else math.nan,
                "ema/momentum": fx.momentum, "lr": lrs[0], "lr/head": lrs[-1],
                "optim/steps": self.engine.global_steps, "epoch": epoch, "round": index,
                **({"time/step_median_s": float(np.median(step_s))} if step_s else {}), **self.meter.metrics()}

    def evaluate(self, *, final: bool = False) -> dict:
        """Per step of the recipe, val and test, student and teacher: AUC (classification, all
        classes), COCO mAP at 0.5 and 0.50:0.95 (boxes), Dice (masks)."""
        out = {}
        student = self.engine.module
        student.eval()
        models = {"student": student, "teacher": self.teacher}
        for step in self.fx_steps:
            entry = next(e for e in self.entries if e["name"] == step.dataset)
            for split in ("val", "test"):
                if not entry["splits"].get(split, {}).get("num_samples"):
                    continue
                if step.task == "cls":
                    results = evaluate({k: _Classifier(m) for k, m in models.items()}, entry, split,
                                       data_config=self.cfg.data, seed=self.cfg.train.seed, rank=self.rank,
                                       world=self.world, batch_size=self.micro, device=self.device, dtype=self.dtype)
                    for model, summary in results.items():
                        out[f"auc/{split}/{step.dataset}/{model}"] = summary["auc"]
                else:
                    out.update(self._evaluate_dense(models, entry, split, step))
        student.train()
        return out | family_means(out)

    def _evaluate_dense(self, models: dict, entry: dict, split: str, step) -> dict:
        loader = EvalLoader(entry=entry, config=self.cfg.data, split=split, seed=self.cfg.train.seed, rank=self.rank,
                            world=self.world, batch_size=self.micro, dense=True)
        meters = {name: BoxMeter() if step.task == "loc" else DiceMeter() for name in models}
        for batch in loader:
            for name, model in models.items():
                scored = dense_scores(model, batch, step=step, views=self.cfg.data.views, dtype=self.dtype,
                                      device=self.device)
                meters[name].update(**scored)
        out = {}
        for name, meter in meters.items():
            states = [None] * self.world
            dist.all_gather_object(states, meter.state())
            merged = type(meter).merge(states)
            if step.task == "loc":
                values = merged.compute(class_names=self.box_classes[step.dataset])
                out[f"map50/{split}/{step.dataset}/{name}"] = values["map50"]
                out[f"map/{split}/{step.dataset}/{name}"] = values["map"]
            else:
                values = merged.compute(class_names=self.mask_classes[step.dataset])
                out[f"dice/{split}/{step.dataset}/{name}"] = values["dice"]
                out[f"dice_global/{split}/{step.dataset}/{name}"] = values["dice_global"]
        return out


def dry_run(cfg: Config, *, log=print) -> float:
    """`--dry-run` for Foundation X: one optimizer step on the first step of each task kind of the
    recipe, one batch each as rank 0 would get it, on the CPU without Ray or DeepSpeed; returns
    the mean loss."""
    from dataclasses import replace

    from ark_dist.data import train_loader
    from ark_dist.train.engine import optimizer

    manifest = read_manifest(Store(cfg.data.store))
    entries = {n: dataset_entry(manifest, n) for n in cfg.data.datasets}
    fx = cfg.method.foundation
    torch.manual_seed(cfg.train.seed)
    model, *_ = build_model(cfg, entries, log=log)
    teacher = make_teacher(model)
    groups = parameter_groups(model, lr=cfg.optim.lr, backbone_lr_scale=fx.backbone_lr_scale,
                              weight_decay=cfg.optim.weight_decay)
    opt = optimizer(cfg, groups)
    data = replace(cfg.data, num_workers=0, max_steps_per_round=1)
    firsts = list({s.task: s for s in reversed(parse_steps(fx))}.values())[::-1]
    losses = []
    for step in firsts:
        batch = next(iter(train_loader(entry=entries[step.dataset], config=data, seed=cfg.train.seed, cursor=Cursor(),
                                       rank=0, world=cfg.engine.num_workers, global_batch=cfg.train.global_batch,
                                       dense=step.task != "cls")))
        loss, _ = foundation_loss(model, teacher, batch, step=step, entry=entries[step.dataset], c=fx.consistency,
                                  dice_bce=fx.dice_bce, views=cfg.data.views, dtype=torch.float32,
                                  device=torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        log(f"dry run: {step} one batch of {len(batch['valid'])}: loss {losses[-1]:.4f}")
    params = sum(p.numel() for p in model.parameters())
    log(f"dry run: Foundation X, {len(fx.steps)} steps over {len(entries)} datasets, {params / 1e6:.2f} M parameters")
    return sum(losses) / len(losses)
