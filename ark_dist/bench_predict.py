"""`python launch.py bench predict [--files 32] [--side 1024] [--backbone NAME] [--tiny] [--threads 1]`:
`predict` from image files (decode and preprocessing included) against a plain timm forward of the
same model on the same, already preprocessed tensors, side by side in one process; img/s medians
over --repeats passes and their ratio.

The model is a random-weights release of the given backbone (Swin-T at 224 by default; `--tiny`
is the test suite's Swin at 64 px) with Ark-6's six heads; the files are synthetic radiographs
written as 8-bit PNGs of `--side` pixels, as a user's exported images would be.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64}


def make_release(folder: Path, *, backbone: str, kwargs: dict, size: int) -> Path:
    """A checkpoint folder of a random model with Ark-6's heads, released into `folder/release`."""
    from safetensors.torch import save_file

    from ark_dist.config import load, to_dict
    from ark_dist.model import ArkModel
    from ark_dist.release import release
    from ark_dist.reuse.init import ARK_RELEASE_LABELS

    cfg = load(None, [f"model.backbone={backbone}", f"model.backbone_kwargs={json.dumps(kwargs)}",
                      f"data.views.image_size={size}", f"data.views.load_size={round(size * 256 / 224)}",
                      f"data.datasets=[{', '.join(ARK_RELEASE_LABELS)}]", f"data.store.url={folder / 'no-store'}"])
    torch.manual_seed(0)
    model = ArkModel(cfg.model, heads={k: len(v) for k, v in ARK_RELEASE_LABELS.items()})
    checkpoint = folder / "checkpoint_000000"
    checkpoint.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint / "teacher.safetensors")
    (checkpoint / "state.json").write_text(json.dumps({"cursor": {"epoch": 0, "round": 0, "step": 0},
                                                       "labels": ARK_RELEASE_LABELS, "manifest_sha256": "0" * 64,
                                                       "config": to_dict(cfg)}))
    release(str(checkpoint), str(folder / "release"))
    return folder / "release"


def write_files(folder: Path, *, count: int, side: int) -> list[str]:
    from shards import synth

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"cxr-{i:04d}.png"
        synth.write_png8(path, synth.radiograph(rng, side, side))
        paths.append(str(path))
    return paths


def measure(model, files: list[str], *, batch: int, repeats: int) -> dict[str, float]:
    """Median img/s of `predict` from the files and of a plain forward (backbone, projector, heads)
    on the tensors `preprocess` made of them."""
    inputs = [model.preprocess(files[i:i + batch]) for i in range(0, len(files), batch)]

    @torch.no_grad()
    def plain():
        for x in inputs:
            projected = model.projector(model.backbone(x))
            [head(projected) for head in model.heads.values()]

    def from_files():
        for i in range(0, len(files), batch):
            model.predict(files[i:i + batch])

    out = {}
    for name, run in (("plain", plain), ("predict", from_files)):
        run()  # warm-up
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            run()
            rates.append(len(files) / (time.perf_counter() - began))
        out[name] = statistics.median(rates)
    out["ratio"] = out["predict"] / out["plain"]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py bench predict", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=32)
    p.add_argument("--side", type=int, default=1024, help="pixels a side of the synthetic files")
    p.add_argument("--backbone", default="swin_tiny_patch4_window7_224")
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny Swin at 64 px")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one CPU core)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    import ark_dist

    torch.set_num_threads(args.threads)
    kwargs, size = (TINY, 64) if args.tiny else ({}, 224)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_release(Path(tmp), backbone=args.backbone, kwargs=kwargs, size=size)
        files = write_files(Path(tmp), count=args.files, side=args.side)
        figures = measure(ark_dist.load(str(folder)), files, batch=args.batch, repeats=args.repeats)
    label = f"{args.backbone}{' (tiny)' if args.tiny else ''} at {size} px, {args.threads} thread(s), batch {args.batch}"
    print(f"predict from {args.files} PNG files of {args.side} px, {label}:")
    print(f"  plain forward on preprocessed tensors {figures['plain']:8.1f} img/s")
    print(f"  predict from files (decode included)  {figures['predict']:8.1f} img/s   ({figures['ratio']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0
