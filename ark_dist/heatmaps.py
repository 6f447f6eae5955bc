"""A run's heatmaps for its report (`launch.py report RUN --heatmaps N`): the latest teacher, as
`launch.py release` would publish it, explains its most probable class on the first N validation
images of every dataset of the recipe (Grad-CAM, `ark_dist.explain`). One row per dataset."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from PIL import Image


def validation_images(cfg, *, per_dataset: int) -> list[tuple[str, str, Image.Image]]:
    """(dataset, sample id, grey image) for the first `per_dataset` samples of each dataset's
    validation split (its test split where it has none), read from the run's store."""
    import json

    from ark_dist.data import Store, read_manifest
    from shards.samples import read_tar

    store = Store(cfg.data.store)
    manifest = read_manifest(store)
    out = []
    for dataset in cfg.data.datasets:
        splits = manifest[dataset]["splits"]
        split = "val" if splits.get("val", {}).get("num_samples") else "test"
        taken = 0
        for shard in splits[split]["shards"]:
            for _, parts in read_tar(store.read_bytes(shard["url"])):
                if taken == per_dataset:
                    break
                image = Image.open(io.BytesIO(parts.get("png") or parts["jpg"]))
                out.append((dataset, json.loads(parts["json"])["id"], image.convert("L")))
                taken += 1
            if taken == per_dataset:
                break
    return out


def run_heatmaps(run: str, *, per_dataset: int) -> bytes:
    """PNG: per dataset, `per_dataset` validation images with the heat of the head's top class."""
    import ark_dist
    from ark_dist.config import Config
    from ark_dist.configtree import from_dict
    from ark_dist.explain import grid, heatmap, overlay
    from ark_dist.export import checkpoint_state, resolve_checkpoint
    from ark_dist.release import build

    source = resolve_checkpoint(run)
    with tempfile.TemporaryDirectory(prefix="ark-heatmaps-") as folder:
        for name, data in build(source).items():
            Path(folder, name).write_bytes(data)
        model = ark_dist.load(folder)
    cfg = from_dict(Config, checkpoint_state(source)["config"])
    panels = []
    for dataset, sample, image in validation_images(cfg, per_dataset=per_dataset):
        probabilities = model.predict([image])[0][dataset]
        label = max(probabilities, key=probabilities.get)
        grey, heat, probability = heatmap(model, image, dataset=dataset, label=label)
        panels.append((f"{dataset} {sample}\n{label} {probability:.3f}", overlay(grey, heat)))
    return grid(panels, columns=per_dataset)
