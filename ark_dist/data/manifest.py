"""Reading the shard store's manifest (the contract written by `shards build`, DESIGN 2.1)."""

from __future__ import annotations

import json

from ark_dist.data.remote import Store

FORMAT = 1


def read_manifest(store: Store, *, raw: bytes | None = None) -> dict:
    """The manifest's `datasets` mapping; errors name the store. `raw`: its bytes, already read
    (so a hash of them describes exactly what is parsed)."""
    doc = json.loads(store.read_bytes("manifest.json") if raw is None else raw)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{store.describe('manifest.json')}: manifest format {doc.get('format')!r}, expected {FORMAT}")
    return doc["datasets"]


def dataset_entry(datasets: dict, name: str, *, splits: tuple[str, ...] = ("train",)) -> dict:
    """One dataset's entry, checked to have the splits the run needs."""
    if name not in datasets:
        raise ValueError(f"dataset {name!r} is in the recipe but not in the manifest (has: {', '.join(sorted(datasets))})")
    entry = datasets[name]
    for split in splits:
        if split not in entry["splits"] or not entry["splits"][split]["num_samples"]:
            raise ValueError(f"dataset {name!r} has no {split!r} samples in the manifest")
    return entry


def canvas_warnings(entries: list[dict], *, load_size: int) -> list[str]:
    """One line per dataset whose stored images are smaller than the loader's canvas: the manifest's
    `image.max_side` (the build's `--max-side`) below `data.views.load_size`. The canvas would only
    upsample them, so crops hold less detail than the recipe expects; rebuild with a larger
    `--max-side` or lower the load size."""
    return [f"data.views.load_size={load_size} is larger than the images stored for {e['name']} "
            f"(max_side {e['image']['max_side']} px in the manifest): the canvas upsamples them; build the store "
            f"with --max-side {load_size} or set data.views.load_size={e['image']['max_side']}"
            for e in entries if e["image"]["max_side"] < load_size]
