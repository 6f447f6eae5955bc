"""`python launch.py bench loc [--steps 1000] [--images 256] [--side 64] [--batch 16] [--seed 0] [--threads 1]`:
the two candidates for Foundation X's localization head, trained from scratch side by side on the
same look-alike box set, then scored on a held-out set with the project's COCO evaluator.

    fcos             FoundationModel: Swin stages 2-4 -> loc_neck (FPN + P6, P7) -> Localizer (torchvision FCOS)
    deformable_detr  the same Swin stages 2-4 (+ the library's stride-2 extra level) ->
                     transformers' DeformableDetrForObjectDetection (its loss, its post-processing)

Both get the same backbone with the same initial weights, the same batches in the same order, AdamW
with the same warm-up + cosine LR and the same gradient clipping. Their steps are interleaved (one
of each, alternating which goes first), so the machine's noise falls on both alike and the ratio of
their median step times holds even on a busy machine; one torch thread by default, as a busy 2-core
machine times one thread steadily and two not at all. Nothing is downloaded and no file is written.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from ark_dist.model.config import DenseConfig, ModelConfig
from ark_dist.model.foundation import FoundationModel
from ark_dist.train.dense_metrics import BoxMeter
from ark_dist.train.schedule import lr_at

CLASSES = ["horizontal", "vertical"]  # the stripes' direction
DATASET = "look_alike"
NEGATIVE, TWO = 0.25, 0.3  # shares of images with no finding and with two (the rest have one)
PERIOD, AMPLITUDE = 6, 0.25  # stripes: pixels per cycle, added brightness
LR, WEIGHT_DECAY, CLIP = 1e-3, 1e-4, 1.0  # 1e-3: the best of 2e-4, 5e-4, 1e-3 for both at 300 steps
WARMUP_STEPS = 3  # step times before these are left out of the median
# A tiny Swin with four stages (strides 4-32), so both heads get multi-scale features.
SWIN = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}
FCOS = DenseConfig(loc_channels=64, loc_convs=2, seg_channels=16)  # seg: built by FoundationModel, unused here
DETR = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256, "num_queries": 50,
        "num_feature_levels": 4, "auxiliary_loss": True, "with_box_refine": True, "dropout": 0.0,
        "class_cost": 2}  # DINO's matching costs (class 2, L1 5, GIoU 2); dropout 0 as DINO


def look_alike(rng: np.random.Generator, *, count: int, side: int) -> tuple[torch.Tensor, list[dict]]:
    """`count` radiograph look-alikes, (count, 3, side, side) normalised, and per image {"boxes" (M, 4)
    xyxy pixels, "labels" (M,)}: M = 0, 1 or 2 striped patches (horizontal: class 0, vertical: 1) of
    12-28 px a side at 64 px (scaled with `side`), not overlapping."""
    from shards import synth

    low, high = round(side * 12 / 64), round(side * 28 / 64)
    images, truths = [], []
    for _ in range(count):
        pixels = synth.radiograph(rng, side, side)  # (side, side) in [0, 1]
        boxes, labels = [], []
        for _ in range(int(rng.choice(3, p=[NEGATIVE, 1 - NEGATIVE - TWO, TWO]))):
            for _ in range(20):  # a place clear of the first patch
                w, h = rng.integers(low, high + 1, size=2)
                x, y = rng.integers(0, side - w + 1), rng.integers(0, side - h + 1)
                if all(x + w + 2 <= b[0] or b[2] + 2 <= x or y + h + 2 <= b[1] or b[3] + 2 <= y for b in boxes):
                    break
            else:
                continue
            label = int(rng.integers(len(CLASSES)))
            along = np.arange(h if label == 0 else w) + rng.integers(PERIOD)
            stripes = AMPLITUDE * np.sign(np.sin(2 * np.pi * along / PERIOD))
            patch = np.broadcast_to(stripes[:, None] if label == 0 else stripes[None, :], (h, w))
            pixels[y:y + h, x:x + w] = np.clip(pixels[y:y + h, x:x + w] + patch, 0, 1)
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        images.append(torch.from_numpy(pixels.astype(np.float32)))
        truths.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                       "labels": torch.tensor(labels, dtype=torch.int64)})
    batch = (torch.stack(images)[:, None] - 0.5) / 0.25  # (count, 1, side, side)
    return batch.expand(-1, 3, -1, -1).contiguous(), truths


def swin(*, side: int, seed: int) -> FoundationModel:
    """A FoundationModel with one box head; seeded, so both candidates start from the same backbone."""
    torch.manual_seed(seed)
    config = ModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs={**SWIN, "img_size": side},
                         projector="none", dense=FCOS)
    return FoundationModel(config, classes={}, boxes={DATASET: len(CLASSES)})


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class FcosCandidate:
    """FoundationModel's own path: backbone -> loc_neck -> Localizer (torchvision FCOS)."""

    name = "fcos"

    def __init__(self, *, side: int, seed: int):
        self.model = swin(side=side, seed=seed)
        self.trained = nn.ModuleList([self.model.backbone, self.model.loc_neck, self.model.loc_heads])
        self.head_params = count(self.model.loc_neck) + count(self.model.loc_heads)

    def loss(self, images: torch.Tensor, truths: list[dict]) -> torch.Tensor:
        out = self.model(images, task="loc", dataset=DATASET)
        return sum(self.model.loc_heads[DATASET].loss(out.loc, truths).values())

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict]:
        out = self.model(images, task="loc", dataset=DATASET)
        return self.model.loc_heads[DATASET].detect(out.loc)


class SwinLevels(nn.Module):
    """The shared Swin in the place of Deformable DETR's conv encoder: stages 2-4 (strides 8, 16,
    32) as the library's list of (feature map, pixel mask) pairs; its input projections add the
    stride-64 level from the last one, as DINO's Swin setup does."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.model = backbone
        self.intermediate_channel_sizes = [i["num_chs"] for i in backbone.feature_info][1:]

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        _, stages = self.model.forward_intermediates(pixel_values)  # 4 x (B, C_i, H/2^(i+2), W/2^(i+2))
        # the mask at each level, as the library's own encoder makes it: (B, h, w) bool
        return [(s, nn.functional.interpolate(pixel_mask[None].float(), size=s.shape[-2:]).bool()[0])
                for s in stages[1:]]


class DetrCandidate:
    """transformers' Deformable DETR on the same Swin (same initial weights as the FCOS one)."""

    name = "deformable_detr"

    def __init__(self, *, side: int, seed: int):
        try:
            from transformers import (DeformableDetrConfig, DeformableDetrForObjectDetection,
                                      DeformableDetrImageProcessor, ResNetConfig)
        except ImportError as e:
            raise SystemExit(f"bench loc: the Deformable DETR candidate needs transformers "
                             f"(`pip install -r requirements-dev.txt`): {e}") from None
        levels = SwinLevels(swin(side=side, seed=seed).backbone)
        # The model builds its backbone from a config: a random ResNet whose three stages have the
        # Swin stages' widths gives the input projections their sizes, then the Swin replaces it.
        # Config objects throughout, no model name, so nothing asks the Hub for anything.
        stand_in = ResNetConfig(embedding_size=8, hidden_sizes=levels.intermediate_channel_sizes, depths=[1, 1, 1],
                                layer_type="basic", out_features=["stage1", "stage2", "stage3"])
        config = DeformableDetrConfig(backbone_config=stand_in, num_labels=len(CLASSES), **DETR)
        self.model = DeformableDetrForObjectDetection(config)
        if self.model.model.backbone.intermediate_channel_sizes != levels.intermediate_channel_sizes:
            raise RuntimeError("the stand-in backbone's widths differ from the Swin stages'")
        self.model.model.backbone = levels
        self.trained = self.model
        self.head_params = count(self.model) - count(levels)
        self.processor = DeformableDetrImageProcessor()
        self.threshold = FCOS.loc_score_threshold  # the score FCOS's detections are cut at, for both

    def loss(self, images: torch.Tensor, truths: list[dict]) -> torch.Tensor:
        side = images.shape[-1]  # square images: boxes to normalised (cx, cy, w, h)
        labels = [{"class_labels": t["labels"],
                   "boxes": torch.cat([(t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2,
                                       t["boxes"][:, 2:] - t["boxes"][:, :2]], dim=1) / side} for t in truths]
        return self.model(pixel_values=images, labels=labels).loss

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict]:
        out = self.model(pixel_values=images)
        return self.processor.post_process_object_detection(out, threshold=self.threshold,
                                                            target_sizes=[tuple(images.shape[-2:])] * len(images))


def train(candidates: list, images: torch.Tensor, truths: list[dict], *, steps: int, batch: int,
          seed: int) -> dict[str, dict]:
    """`steps` interleaved steps of each candidate on the same batches; per candidate its step times
    (s: zero_grad, forward, loss, backward, clip, AdamW, LR) and last losses."""
    order = np.random.default_rng(seed + 1)
    cursor, permutation = len(images), None
    state = {}
    for c in candidates:
        optimizer = torch.optim.AdamW(c.trained.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_at(s, total=steps, warmup=warmup, lr=1.0, min_lr=0.01))
        state[c.name] = {"optimizer": optimizer, "schedule": schedule, "times": [], "losses": []}
    for step in range(steps):
        if cursor + batch > len(images):  # a new epoch: a new order, the same for both
            cursor, permutation = 0, torch.from_numpy(order.permutation(len(images)))
        chosen = permutation[cursor:cursor + batch]
        cursor += batch
        x, y = images[chosen], [truths[i] for i in chosen]
        for c in candidates if step % 2 == 0 else candidates[::-1]:
            s = state[c.name]
            c.trained.train()
            began = time.perf_counter()
            s["optimizer"].zero_grad(set_to_none=True)
            loss = c.loss(x, y)
            loss.backward()
            nn.utils.clip_grad_norm_(c.trained.parameters(), CLIP)
            s["optimizer"].step()
            s["schedule"].step()
            s["times"].append(time.perf_counter() - began)
            s["losses"].append(loss.item())
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            print(f"  step {step + 1}/{steps}: " + ", ".join(
                f"{c.name} loss {statistics.mean(state[c.name]['losses'][-10:]):.3f}" for c in candidates), flush=True)
    return state


def evaluate(candidate, images: torch.Tensor, truths: list[dict], *, batch: int) -> dict[str, float]:
    """COCO mAP@0.5 and mAP@[.50:.95] on the held-out set (the project's BoxMeter)."""
    candidate.trained.eval()
    meter = BoxMeter()
    for i in range(0, len(images), batch):
        meter.update(candidate.detect(images[i:i + batch]), truths=truths[i:i + batch])
    return meter.compute(class_names=CLASSES)


def measure(args: argparse.Namespace) -> list[tuple]:
    """Per candidate (name, head parameters, median step ms, mAP@0.5, mAP@[.50:.95], mean of the last
    10 losses), both trained on the same look-alike set and scored on the same held-out one."""
    batch = min(args.batch, args.images)
    rng = np.random.default_rng(args.seed)
    train_images, train_truths = look_alike(rng, count=args.images, side=args.side)
    eval_images, eval_truths = look_alike(rng, count=max(8, args.images // 2), side=args.side)
    candidates = [FcosCandidate(side=args.side, seed=args.seed), DetrCandidate(side=args.side, seed=args.seed)]
    print(f"bench loc: {args.steps} steps of {batch} from {args.images} look-alike images ({args.side} px, "
          f"{len(CLASSES)} classes), held-out {len(eval_images)}; Swin backbone "
          f"{count(candidates[0].model.backbone):,} parameters; {torch.get_num_threads()} thread(s); "
          f"seed {args.seed}", flush=True)
    state = train(candidates, train_images, train_truths, steps=args.steps, batch=batch, seed=args.seed)
    rows = []
    for c in candidates:
        times, losses = state[c.name]["times"], state[c.name]["losses"]
        median = statistics.median(times[WARMUP_STEPS:] if len(times) > WARMUP_STEPS else times) * 1000
        scores = evaluate(c, eval_images, eval_truths, batch=batch)
        rows.append((c.name, c.head_params, median, scores["map50"], scores["map"], statistics.mean(losses[-10:])))
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py bench loc", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of each candidate")
    p.add_argument("--images", type=int, default=256, help="training images (held-out: half as many, at least 8)")
    p.add_argument("--side", type=int, default=64, help="pixels a side (a multiple of 32)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one CPU core)")
    args = p.parse_args(argv)
    if args.side % 32 or min(args.steps, args.images, args.batch, args.threads) < 1:
        p.error("--side must be a multiple of 32; --steps, --images, --batch and --threads positive")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = measure(args)
    finally:
        torch.set_num_threads(threads)  # a caller's own setting (e.g. the test process) is left as it was
    print(f"{'candidate':<16} {'head params':>11} {'step ms':>8} {'mAP@0.5':>8} {'mAP@.5:.95':>10} {'loss':>6}")
    for name, params, median, map50, map_, loss in rows:
        print(f"{name:<16} {params:>11,} {median:>8.1f} {map50:>8.3f} {map_:>10.3f} {loss:>6.3f}")
    print(f"step time deformable_detr / fcos: {rows[1][2] / rows[0][2]:.2f}x (medians of steps interleaved in "
          f"this run; loss: mean of the last 10 steps, each candidate's own loss)")
    return 0
