"""`shards overlap`: which samples of a store are the same picture in two places.

Several public sets re-annotate the same images (ChestX-Det and the Google expert labels are NIH
ChestX-ray14 images; TBX11K takes in other TB sets), so a model pretrained on one train split can
have seen another's test images. Two samples of different (dataset, split) pairs match

- by origin: one's `origin` is the other's key (`<dataset>/<id>`), or both have the same origin;
- by hash: their stored images' 256-bit perceptual hashes (`phash`, written by `shards build`)
  are at most `max_distance` bits apart (images re-encoded or resized stay close).

The report is a table of matches per pair of (dataset, split), every matched pair, and an
exclude list: the train-split side of every match whose other side is a val or test split, the
samples to leave out of training (`data.exclude`) so no evaluation image was trained on.

Stores built before samples carried a hash: their images are hashed here, from the shards.
"""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from shards.errors import ShardsError
from shards.images import ImageError, decode_stored, image_hash
from shards.manifest import Manifest
from shards.samples import read_tar
from shards.store import Store

DEFAULT_DISTANCE = 32  # of 256 bits; see images.image_hash for the margins measured
EVALUATION = ("val", "test")


@dataclass(frozen=True)
class Sample:
    dataset: str
    split: str
    id: str
    origin: str | None
    phash: str | None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.id}"


def _shard_samples(store: Store, dataset: str, split: str, shard: dict) -> list[Sample]:
    out = []
    for key, parts in read_tar(store.read_bytes(shard["url"])):
        facts = json.loads(parts["json"])
        digest = facts.get("phash")
        if digest is None:  # built before hashes: hash the stored image now
            image = parts.get("jpg", parts.get("png"))
            try:
                digest = str(image_hash(decode_stored(image)))
            except ImageError:
                digest = None
        out.append(Sample(dataset, split, key.split("/", 1)[1], facts.get("origin"), digest))
    return out


def collect(store: Store, datasets: list[str] | None = None, *, workers: int = 8) -> list[Sample]:
    """Every sample of the named datasets (default: all), from their shards' JSON."""
    manifest = Manifest.load(store)
    for name in datasets or ():
        manifest.dataset(name)  # a clear error for an unknown name
    jobs = [(name, split, shard) for name, split, shard in manifest.shards() if not datasets or name in datasets]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [s for found in pool.map(lambda job: _shard_samples(store, *job), jobs) for s in found]


def _bits(samples: list[Sample]) -> np.ndarray:
    """(N, words) uint64 of the hashes (all the same length)."""
    return np.array([np.frombuffer(bytes.fromhex(s.phash), dtype=">u8") for s in samples], dtype=np.uint64)


def hash_pairs(a: list[Sample], b: list[Sample], max_distance: int, *, block: int = 2048):
    """(i, j, distance) for every a[i], b[j] within `max_distance` bits (brute force in blocks)."""
    a = [s for s in a if s.phash]
    b = [s for s in b if s.phash]
    if not a or not b:
        return []
    bits_a, bits_b = _bits(a), _bits(b)
    if bits_a.shape[1] != bits_b.shape[1]:
        raise ShardsError("the store's samples carry perceptual hashes of different sizes: rebuild the older datasets")
    found = []
    for start in range(0, len(a), block):
        distance = np.bitwise_count(bits_a[start:start + block, None, :] ^ bits_b[None, :, :]).sum(axis=2)
        for i, j in zip(*np.nonzero(distance <= max_distance)):
            found.append((a[start + i], b[j], int(distance[i, j])))
    return found


def matches(samples: list[Sample], *, max_distance: int = DEFAULT_DISTANCE) -> list[dict]:
    """Every matching pair of samples from different (dataset, split) groups, once, with why."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.dataset, s.split), []).append(s)
    found: dict[tuple[str, str], dict] = {}

    def add(x: Sample, y: Sample, reason: str, distance: int | None) -> None:
        if (x.dataset, x.split) == (y.dataset, y.split):
            return
        x, y = sorted((x, y), key=lambda s: (s.dataset, s.split, s.id))
        pair = found.setdefault((x.key, y.key), {"a": x, "b": y, "origin": False, "distance": None})
        if reason == "origin":
            pair["origin"] = True
        else:
            pair["distance"] = distance

    by_key = {s.key: s for s in samples}
    by_origin: dict[str, list[Sample]] = {}
    for s in samples:
        if s.origin:
            by_origin.setdefault(s.origin, []).append(s)
    for origin, members in by_origin.items():  # the image an origin names, and every re-annotation of it
        named = [by_key[origin]] if origin in by_key else []
        group = named + [s for s in members if s.key != origin]
        for i, x in enumerate(group):
            for y in group[i + 1:]:
                add(x, y, "origin", None)
    names = sorted(groups)
    for i, g in enumerate(names):
        for h in names[i + 1:]:
            for x, y, d in hash_pairs(groups[g], groups[h], max_distance):
                add(x, y, "hash", d)
    return sorted(found.values(), key=lambda m: (m["a"].key, m["b"].key))


def exclusions(found: list[dict]) -> list[str]:
    """The train-split side of every match whose other side is a val or test split."""
    out = set()
    for m in found:
        for x, y in ((m["a"], m["b"]), (m["b"], m["a"])):
            if x.split == "train" and y.split in EVALUATION:
                out.add(x.key)
    return sorted(out)


def table(found: list[dict]) -> str:
    """Markdown: one row per pair of (dataset, split) with matches."""
    rows: dict[tuple, list[int]] = {}
    for m in found:
        a, b = m["a"], m["b"]
        counts = rows.setdefault((a.dataset, a.split, b.dataset, b.split), [0, 0, 0])
        counts[0] += m["origin"]
        counts[1] += m["distance"] is not None
        counts[2] += 1
    lines = ["| dataset | split | dataset | split | by origin | by hash | samples |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {a} | {sa} | {b} | {sb} | {o} | {h} | {n} |" for (a, sa, b, sb), (o, h, n) in sorted(rows.items())]
    return "\n".join(lines)


def pairs_csv(found: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset_a", "split_a", "id_a", "dataset_b", "split_b", "id_b", "origin", "hash_distance"])
    for m in found:
        a, b = m["a"], m["b"]
        writer.writerow([a.dataset, a.split, a.id, b.dataset, b.split, b.id, int(m["origin"]),
                         "" if m["distance"] is None else m["distance"]])
    return buf.getvalue()
