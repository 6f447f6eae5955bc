"""`python launch.py bench embed`: `embed` on Ray Train workers against a plain loop.

Side by side in one run, over the same shards of one dataset and split: a plain single-process
`torch.no_grad()` loop (read each shard, decode and resize every image with PIL, normalise, run
the backbone and projector) at the threads one worker gets, and `launch.py embed` on 1..n workers,
whose rate is each worker's own (images over the seconds its loop took, Ray's and the model's
start-up left out). The goal: at least 0.9x the plain loop per worker, and linear scaling.

`--tiny` makes everything it needs (a look-alike ChestX-ray14 store and a tiny random model), so
the command runs anywhere; otherwise give `--checkpoint`, `--store` and `--dataset`.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ark_dist.reuse import embed

TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}


def plain_rate(checkpoint: str, store: str, entry: dict, split: str, *, image_size: int, batch_size: int,
               threads: int, repeats: int) -> float:
    """Images/s of the plain loop (median of `repeats` passes)."""
    from ark_dist.data import Store, StoreConfig
    from ark_dist.data.views import IMAGENET_MEAN, IMAGENET_STD
    from ark_dist.reuse.init import load_model
    from shards.samples import read_tar

    torch.set_num_threads(threads)
    model, _ = load_model(checkpoint, log=lambda *_: None)
    reader = Store(StoreConfig(url=store))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def one_pass() -> tuple[int, float]:
        began, count, batch = time.perf_counter(), 0, []

        def flush():
            x = torch.from_numpy(np.stack(batch)).float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)
            with torch.no_grad():
                model.projector(model.backbone((x - mean) / std))

        for shard in entry["splits"][split]["shards"]:
            for _, parts in read_tar(reader.read_bytes(shard["url"])):
                img = Image.open(io.BytesIO(parts.get("jpg", parts.get("png"))))
                img.draft("L", (image_size, image_size))
                batch.append(np.asarray(img.convert("L").resize((image_size, image_size), Image.BILINEAR)))
                count += 1
                if len(batch) == batch_size:
                    flush()
                    batch = []
        if batch:
            flush()
        return count, time.perf_counter() - began

    one_pass()  # warm-up
    runs = [one_pass() for _ in range(repeats)]
    return runs[0][0] / statistics.median(t for _, t in runs)


def tiny_setup(folder: Path, *, images: int, backbone: str | None = None) -> tuple[str, str, str]:
    """(export, store, dataset): a look-alike ChestX-ray14 and a random model exported: the tiny
    test Swin, or timm's `backbone` at its own size."""
    from safetensors.torch import save_file

    from ark_dist.export import exported_tensors, metadata
    from ark_dist.model import ArkModel
    from ark_dist.model.config import ModelConfig
    from shards.cli import main as shards

    shards(["synth", "--out", str(folder / "raw"), "--per-source", str(images), "--scale", "0.125",
            "--sources", "chestxray14"])
    store = str(folder / "store")
    shards(["build", "--source", "chestxray14", "--root", str(folder / "raw" / "chestxray14"), "--out", store,
            "--quiet", "--max-side", "96" if backbone is None else "256", "--samples-per-shard", "32"])
    torch.manual_seed(0)
    config = (ModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY, projector_dim=32)
              if backbone is None else ModelConfig(backbone=backbone))
    model = ArkModel(config, heads={"chestxray14": 14})
    state = {"labels": {"chestxray14": [f"c{i}" for i in range(14)]}, "cursor": {"epoch": 0, "round": 0, "step": 0},
             "manifest_sha256": "0" * 64}
    export = str(folder / "tiny.safetensors")
    save_file(exported_tensors(model), export, metadata=metadata(model, state, source="bench", which="teacher"))
    return export, store, "chestxray14"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py bench embed", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a look-alike store and a tiny model, made here")
    p.add_argument("--tiny-images", type=int, default=256, help="look-alike images with --tiny (256)")
    p.add_argument("--tiny-backbone", help="with --tiny: this timm model at 224 (random weights) instead of the "
                   "tiny test Swin at 64, e.g. swin_base_patch4_window7_224")
    p.add_argument("--checkpoint")
    p.add_argument("--store")
    p.add_argument("--dataset")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (1,2)")
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--image-size", type=int, help="default 224, or 64 with --tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="plain-loop passes; the median is reported")
    args = p.parse_args(argv)
    if not args.tiny and not (args.checkpoint and args.store and args.dataset):
        p.error("give --tiny, or --checkpoint, --store and --dataset")
    counts = sorted({int(w) for w in args.workers.split(",")})
    from ark_dist.data import Store, StoreConfig, read_manifest

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        checkpoint, store, dataset = (tiny_setup(Path(tmp), images=args.tiny_images, backbone=args.tiny_backbone)
                                      if args.tiny else (args.checkpoint, args.store, args.dataset))
        size = args.image_size or (TINY["img_size"] if args.tiny and not args.tiny_backbone else 224)
        entry = read_manifest(Store(StoreConfig(url=store)))[dataset]
        plain = plain_rate(checkpoint, store, entry, args.split, image_size=size, batch_size=args.batch_size,
                           threads=args.cpus_per_worker, repeats=args.repeats)
        print(f"bench embed: {dataset}/{args.split}, {entry['splits'][args.split]['num_samples']} images at {size} px, "
              f"batch {args.batch_size}, {args.cpus_per_worker} thread(s) per worker")
        print(f"{'path':24s} {'img/s per worker':>16s} {'vs plain':>9s} {'total img/s':>12s} {'scaling':>8s}")
        print(f"{'plain no_grad loop':24s} {plain:16.1f} {1.0:8.2f}x {plain:12.1f} {'':>8s}")
        one = None
        for count in counts:
            out = str(Path(tmp) / f"out-{count}")
            args_embed = embed.parser().parse_args(
                ["--checkpoint", checkpoint, "--store", store, "--datasets", dataset, "--splits", args.split,
                 "--out", out, "--image-size", str(size), "--load-size", str(size), "--view", "whole",
                 "--workers", str(count), "--batch-size", str(args.batch_size), "--loader-workers", "0",
                 "--cpus-per-worker", str(args.cpus_per_worker)])
            ranks = embed.run(args_embed)
            rate = statistics.median(m["images"] / m["seconds"] for m in ranks)  # each worker's own pace
            one = one or rate * count
            print(f"{f'embed, {count} worker(s)':24s} {rate:16.1f} {rate / plain:8.2f}x {rate * count:12.1f} "
                  f"{rate * count / one:7.2f}x")
    return 0
