"""One deterministic inference pass over a dataset's split, on one rank of `world`: what `embed`
and `zeroshot` (and the per-group evaluations) share.

Every sample is seen once across ranks (`EvalLoader`: sample g of the split goes to rank
g % world), through one view that draws nothing: `centre` (the evaluation's centre crop,
`data.views.eval_crop`) or `whole` (the whole canvas, as Ark+ scores its zero-shot sets).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as dist

from ark_dist.data import EvalLoader, canvases
from ark_dist.data.views import render_eval

VIEWS = ("centre", "whole")


def view_config(views, view: str):
    """The data config's views for one deterministic view: no ten-crop; `whole` crops nothing."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r} must be one of {VIEWS}")
    return dataclasses.replace(views, ten_crop=False, eval_crop=1.0 if view == "whole" else views.eval_crop)


@torch.no_grad()
def infer(model, entry: dict, split: str, *, data_config, rank: int, world: int, batch_size: int, device,
          heads: list[str] = (), features: bool = False, view: str = "centre") -> dict:
    """This rank's samples: `ids`, `target`/`mask` (N, K) by the dataset's label policy,
    `subgroups` (sex, age, view per sample), `scores` {head: (N, K_head) sigmoid of its logits}
    for each of `heads`, and with `features` the pooled `backbone` (N, F) and `projector` (N, P)
    features, all float32."""
    config = dataclasses.replace(data_config, views=view_config(data_config.views, view))
    loader = EvalLoader(entry=entry, config=config, split=split, seed=0, rank=rank, world=world, batch_size=batch_size)
    out = {"ids": [], "subgroups": [], "target": [], "mask": [], "scores": {h: [] for h in heads},
           "backbone": [], "projector": []}
    model = model.to(device).eval()
    for batch in loader:
        canvas = canvases(batch, device)  # first: a row the device cannot decode is no longer valid
        keep = batch["valid"].numpy()
        if not keep.any():
            continue
        images = render_eval(canvas, config.views)[:, 0]  # (B, 3, S, S): the one view
        pooled = model.backbone(images)
        projected = model.projector(pooled)
        for head in heads:
            out["scores"][head].append(torch.sigmoid(model.omni_heads[head](projected)).float().cpu().numpy()[keep])
        if features:
            out["backbone"].append(pooled.float().cpu().numpy()[keep])
            out["projector"].append(projected.float().cpu().numpy()[keep])
        out["ids"] += [i for i, k in zip(batch["ids"], keep) if k]
        out["subgroups"] += [g for g, k in zip(batch["subgroups"], keep) if k]
        out["target"].append(batch["target"].numpy()[keep])
        out["mask"].append(batch["mask"].numpy()[keep])
    merged = {"ids": out["ids"], "subgroups": out["subgroups"], "target": _stack(out["target"]),
              "mask": _stack(out["mask"]), "scores": {h: _stack(v) for h, v in out["scores"].items()}}
    if features:
        merged.update(backbone=_stack(out["backbone"]), projector=_stack(out["projector"]))
    return merged


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Row blocks -> one float32 array; (0, 0) for a rank that had no sample."""
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def gather(local: dict, world: int) -> dict:
    """Every rank's `infer` result merged (on every rank), in rank order."""
    if world == 1:
        return local
    parts = [None] * world
    dist.all_gather_object(parts, local)
    merged = {"ids": [i for p in parts for i in p["ids"]], "subgroups": [g for p in parts for g in p["subgroups"]]}
    for key in ("target", "mask", "backbone", "projector"):
        if key in local:
            merged[key] = _stack([p[key] for p in parts if len(p[key])])
    merged["scores"] = {h: _stack([p["scores"][h] for p in parts if len(p["scores"][h])]) for h in local["scores"]}
    return merged
