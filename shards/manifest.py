"""The manifest: `<store>/manifest.json`, the single source of sizes and label spaces (DESIGN 2.1).

Written by `shards build`, read by `shards verify|ls` and by the trainer. Builds of different
datasets may finish together (a cluster builds each dataset as its own job, into one store), so a
build first writes its entry alone, `manifest.d/<dataset>.json`, then merges every entry into
`manifest.json` and re-reads both until the file holds them all (`publish`): whichever build
writes last checks after its write, so no entry is lost, on a local folder or on S3.

The layout, format 1:

    {"format": 1,
     "datasets": {NAME: {
        "name", "task" (multilabel|multiclass|binary),
        "labels": [head label names, in head order],
        "all_labels": [every class in the samples' raw label facts, as the label file spells it],
        "masks": [mask classes; a sample's mask k is its member `mask.<k>.png`] (absent: none),
        "boxes": [the classes of its boxes; a detector's class k is the k-th] (absent: no boxes),
        "image": {"format": "png"|"jpeg", "quality", "max_side", "bit_depth": 8, "channels": 1},
        "splits": {SPLIT: {"num_samples", "num_bytes",
                           "shards": [{"url" (relative to the store), "num_samples", "num_bytes",
                                       "sha256", "plan"}],
                           "skipped": [{"id", "image", "reason", "shard"}]}},
        "provenance": {"source", "layout", "label_files": [{"path", "sha256"}], "split_file",
                       "split_rule", "options", "tool"}}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shards.errors import ShardsError
from shards.store import Store

FORMAT = 1
MANIFEST = "manifest.json"
PARTS = "manifest.d"  # one entry per dataset, written by its build before the merge
TASKS = ("multilabel", "multiclass", "binary")


@dataclass
class Manifest:
    """The whole manifest of one store; `datasets` maps a dataset name to its entry (a dict)."""

    datasets: dict

    @classmethod
    def load(cls, store: Store, *, missing_ok: bool = False) -> "Manifest":
        if not store.exists(MANIFEST):
            if missing_ok:
                return cls(datasets={})
            raise ShardsError(f"no manifest at {store.describe(MANIFEST)}: build a dataset into this store first")
        raw = store.read_bytes(MANIFEST)
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ShardsError(f"{store.describe(MANIFEST)} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else None
            raise ShardsError(f"{store.describe(MANIFEST)}: unsupported manifest format {found!r} (expected {FORMAT})")
        return cls(datasets=doc.get("datasets", {}))

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "datasets": {k: self.datasets[k] for k in sorted(self.datasets)}}
        return (json.dumps(doc, indent=1) + "\n").encode()

    def save(self, store: Store) -> None:
        store.write_bytes(MANIFEST, self.to_bytes())

    def dataset(self, name: str) -> dict:
        if name not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise ShardsError(f"dataset {name!r} is not in the manifest (has: {known})")
        return self.datasets[name]

    def shards(self):
        """Yield (dataset, split, shard entry) for every shard listed."""
        for name in sorted(self.datasets):
            for split, info in self.datasets[name]["splits"].items():
                for shard in info["shards"]:
                    yield name, split, shard


def publish(store: Store, entry: dict, *, attempts: int = 50) -> None:
    """Add one dataset's entry to the store's manifest without losing a concurrent build's."""
    from shards.store import TMP_MARK

    store.write_bytes(f"{PARTS}/{entry['name']}.json", json.dumps(entry).encode())
    for _ in range(attempts):
        current = Manifest.load(store, missing_ok=True)
        merged = dict(current.datasets)  # entries of stores built before parts existed stay
        for name in store.list(PARTS):
            if name.endswith(".json") and TMP_MARK not in name:
                part = json.loads(store.read_bytes(f"{PARTS}/{name}"))
                merged[part["name"]] = part
        if merged == current.datasets:
            return
        Manifest(datasets=merged).save(store)
    raise ShardsError(f"{store.describe(MANIFEST)}: still changing after {attempts} merges; re-run the build")
