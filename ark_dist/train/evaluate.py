"""Evaluation: per-class ROC-AUC (and accuracy for multi-class heads) over a whole split, exact
across ranks (the eval stream gives each sample to one rank; results are gathered)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ark_dist.data import EvalLoader, canvases, render_eval



def metric_classes(entry: dict, data_config) -> list[str]:
    """The classes of `entry`'s headline AUC (`data.metric_labels`, else all), checked against
    the manifest's label names."""
    names = data_config.metric_labels.get(entry["name"])
    if names is None:
        return list(entry["labels"])
    unknown = [n for n in names if n not in entry["labels"]]
    if unknown or not names:
        raise ValueError(f"data.metric_labels.{entry['name']}: {unknown or 'an empty list'} not among its labels "
                         f"({', '.join(entry['labels'])})")
    return list(names)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann-Whitney ROC-AUC with average ranks for ties; None when a class is absent or always present."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarize(entry: dict, scores: np.ndarray, targets: np.ndarray, masks: np.ndarray, *,
              metric: list[str]) -> dict[str, float]:
    """scores/targets/masks: (N, K). `auc`: the mean AUC over the `metric` classes that have both
    outcomes (the headline); `auc_all`: over all classes, when `metric` is a subset; per-class
    AUC; and for multi-class heads the accuracy."""
    out = {}
    aucs = {}
    for k, name in enumerate(entry["labels"]):
        keep = masks[:, k] > 0
        value = roc_auc(scores[keep, k], (targets[keep, k] >= 0.5).astype(np.int64))
        if value is not None:
            aucs[name] = value
            out[f"auc_class/{name}"] = value
    headline = [aucs[c] for c in metric if c in aucs]
    out["auc"] = float(np.mean(headline)) if headline else float("nan")
    if len(metric) < len(entry["labels"]):
        out["auc_all"] = float(np.mean(list(aucs.values()))) if aucs else float("nan")
    if entry["task"] == "multiclass":
        keep = masks[:, 0] > 0
        out["accuracy"] = float((scores[keep].argmax(1) == targets[keep].argmax(1)).mean()) if keep.any() else float("nan")
    out["loss"] = task_loss_of(scores, targets, masks, task=entry["task"])
    return out


def task_loss_of(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray, *, task: str) -> float:
    """The training loss (`method.task_loss`) from predicted probabilities: the masked mean BCE, or
    for a multi-class head the masked mean cross-entropy; probabilities clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    if task == "multiclass":
        per_sample, weight = -(targets * np.log(p)).sum(1), masks[:, 0]
        return float((per_sample * weight).sum() / max(weight.sum(), 1.0))
    per_label = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    return float((per_label * masks).sum() / max(masks.sum(), 1.0))


@torch.no_grad()
def evaluate(models: dict[str, torch.nn.Module], entry: dict, split: str, *, data_config, seed: int, rank: int,
             world: int, batch_size: int, device, dtype, intervals: tuple[str, ...] = ()) -> dict[str, dict]:
    """{model name: summary} for one dataset and split; every rank runs it (collectives inside).
    Where samples carry sex, age or view, a summary's `groups` holds each group's headline AUC and
    the gaps (`subgroups.group_aucs`); for the models named in `intervals`, `subgroup_rows` holds
    every class's AUC per group with its bootstrap interval (`subgroups.interval_rows`)."""
    from ark_dist.train import subgroups
    loader = EvalLoader(entry=entry, config=data_config, split=split, seed=seed, rank=rank, world=world,
                        batch_size=batch_size)
    collected = {name: [] for name in models}
    targets, masks, facts = [], [], []
    for batch in loader:
        views = render_eval(canvases(batch, device), data_config.views)  # (B, V, 3, S, S)
        b, v = views.shape[:2]
        valid = batch["valid"].numpy()
        for name, model in models.items():  # fp32 inputs; autocast runs bf16/fp16 students and fp32 teachers alike
            with torch.autocast(views.device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(views.flatten(0, 1), heads=[entry["name"]]).logits[entry["name"]]
            logits = logits.float().view(b, v, -1)
            probs = torch.softmax(logits, -1) if entry["task"] == "multiclass" else torch.sigmoid(logits)
            collected[name].append(probs.mean(1).cpu().numpy()[valid])  # ten-crop: mean over views
        targets.append(batch["target"].numpy()[valid])
        masks.append(batch["mask"].numpy()[valid])
        facts += [f for f, ok in zip(batch["subgroups"], valid) if ok]
    local = {"targets": np.concatenate(targets), "masks": np.concatenate(masks),
             **{name: np.concatenate(v) for name, v in collected.items()}}
    gathered = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, (local, facts))
    else:
        gathered = [(local, facts)]
    merged = {k: np.concatenate([g[k] for g, _ in gathered]) for k in local}
    facts = [f for _, part in gathered for f in part]
    metric = metric_classes(entry, data_config)
    out = {}
    for name in models:
        out[name] = summarize(entry, merged[name], merged["targets"], merged["masks"], metric=metric)
        groups = subgroups.group_aucs(merged[name], merged["targets"], merged["masks"], facts,
                                      labels=list(entry["labels"]), metric=metric)
        if groups:
            out[name]["groups"] = groups
        if name in intervals:
            out[name]["subgroup_rows"] = subgroups.interval_rows(merged[name], merged["targets"], merged["masks"],
                                                                 facts, labels=list(entry["labels"]))
    return out
