"""`shards verify` and `shards ls`: re-read what the manifest lists and check every byte of it."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

from shards.images import ImageError, decode_stored
from shards.manifest import Manifest
from shards.samples import read_tar
from shards.store import Store


def check_shard(store: Store, dataset: str, shard: dict, *, image_format: str) -> list[str]:
    """Problems with one shard (empty when it is sound): size, sha256, tar structure, sample
    count, key names, every image decoding and every JSON parsing."""
    try:
        data = store.read_bytes(shard["url"])
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable shard is a finding, not a crash
        return [str(exc)]
    problems = []
    if len(data) != shard["num_bytes"]:
        cut = " (truncated)" if len(data) < shard["num_bytes"] else ""
        problems.append(f"size {len(data)} != manifest {shard['num_bytes']}{cut}")
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        problems.append("sha256 differs from the manifest")
    ext = "jpg" if image_format == "jpeg" else "png"
    count = 0
    try:
        for key, parts in read_tar(data):
            count += 1
            if not key.startswith(f"{dataset}/"):
                problems.append(f"sample {key!r} is not under {dataset}/")
            if set(parts) != {ext, "json"}:
                problems.append(f"sample {key!r} has members {sorted(parts)}, expected {ext} and json")
                continue
            try:
                decode_stored(parts[ext])
            except ImageError as exc:
                problems.append(f"sample {key!r}: {exc}")
            try:
                json.loads(parts["json"])
            except ValueError as exc:
                problems.append(f"sample {key!r}: bad JSON: {exc}")
    except Exception as exc:  # noqa: BLE001 - tarfile raises several types for a damaged archive
        problems.append(f"unreadable tar: {type(exc).__name__}: {exc}")
    if count != shard["num_samples"]:
        problems.append(f"{count} samples, manifest says {shard['num_samples']}")
    return problems


def verify(store: Store, *, workers: int = 8, log=print) -> dict[str, list[str]]:
    """Check every shard the manifest lists; returns {shard URL: problems} for the bad ones."""
    manifest = Manifest.load(store)
    jobs = [(name, shard, manifest.datasets[name]["image"]["format"]) for name, _, shard in manifest.shards()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(lambda job: check_shard(store, job[0], job[1], image_format=job[2]), jobs)
        bad = {}
        for (name, shard, _), problems in zip(jobs, found):
            if problems:
                bad[store.describe(shard["url"])] = problems
    log(f"verified {len(jobs)} shards in {len(manifest.datasets)} datasets: "
        f"{len(jobs) - len(bad)} good, {len(bad)} bad")
    for url, problems in bad.items():
        log(f"BAD {url}: {'; '.join(problems[:3])}" + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
    return bad


def table(store: Store) -> str:
    """`shards ls`: one line per dataset and split."""
    manifest = Manifest.load(store)
    lines = [f"{'dataset':16s} {'task':10s} {'split':5s} {'samples':>9s} {'shards':>6s} {'MiB':>9s} "
             f"{'skipped':>7s}  image"]
    for name in sorted(manifest.datasets):
        entry = manifest.datasets[name]
        image = entry["image"]
        desc = f"{image['format']} {image['max_side']}px" + (f" q{image['quality']}" if image.get("quality") else "")
        for split, info in entry["splits"].items():
            lines.append(f"{name:16s} {entry['task']:10s} {split:5s} {info['num_samples']:9d} "
                         f"{len(info['shards']):6d} {info['num_bytes'] / 2**20:9.1f} {len(info['skipped']):7d}  {desc}")
    return "\n".join(lines)
