"""`shards verify` and `shards ls`: re-read what the manifest lists and check every byte of it."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

from shards import masks
from shards.images import ImageError, decode_stored
from shards.manifest import Manifest
from shards.samples import read_tar
from shards.store import Store


def check_sample(key: str, parts: dict, *, ext: str, mask_classes: list[str]) -> list[str]:
    """Problems with one sample: its members, the image and JSON decoding, every box inside the
    image with x0 < x1 and y0 < y1, every mask decoding at the image's size."""
    allowed = {ext, "json", *(masks.member(k) for k in range(len(mask_classes)))}
    if not {ext, "json"} <= set(parts) or not set(parts) <= allowed:
        return [f"sample {key!r} has members {sorted(parts)}, expected {ext}, json and masks among "
                f"{sorted(allowed - {ext, 'json'})}"]
    problems = []
    try:
        width, height = decode_stored(parts[ext]).size
    except ImageError as exc:
        return [f"sample {key!r}: {exc}"]
    try:
        facts = json.loads(parts["json"])
    except ValueError as exc:
        return [f"sample {key!r}: bad JSON: {exc}"]
    for box in facts.get("boxes") or ():
        x0, y0, x1, y1 = box["xyxy"]
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            problems.append(f"sample {key!r}: box {box['label']!r} {box['xyxy']} is not inside its "
                            f"{width}x{height} image with x0 < x1 and y0 < y1")
    listed = facts.get("masks") or []
    stored = sorted(mask_classes[int(m.split(".")[1])] for m in parts if m.startswith("mask."))
    if sorted(listed) != stored:
        problems.append(f"sample {key!r}: its JSON lists masks {sorted(listed)}, its members hold {stored}")
    for member in sorted(m for m in parts if m.startswith("mask.")):
        try:
            shape = masks.decode(parts[member]).shape
        except masks.MaskError as exc:
            problems.append(f"sample {key!r}: {member}: {exc}")
            continue
        if shape != (height, width):
            problems.append(f"sample {key!r}: {member} is {shape[1]}x{shape[0]}, its image {width}x{height}")
    return problems


def check_shard(store: Store, dataset: str, shard: dict, *, image_format: str,
                mask_classes: list[str] = ()) -> list[str]:
    """Problems with one shard (empty when it is sound): size, sha256, tar structure, sample
    count, key names, and every sample (`check_sample`)."""
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
            problems += check_sample(key, parts, ext=ext, mask_classes=list(mask_classes))
    except Exception as exc:  # noqa: BLE001 - tarfile raises several types for a damaged archive
        problems.append(f"unreadable tar: {type(exc).__name__}: {exc}")
    if count != shard["num_samples"]:
        problems.append(f"{count} samples, manifest says {shard['num_samples']}")
    return problems


def verify(store: Store, *, workers: int = 8, log=print) -> dict[str, list[str]]:
    """Check every shard the manifest lists; returns {shard URL: problems} for the bad ones."""
    manifest = Manifest.load(store)
    jobs = [(name, shard, manifest.datasets[name]) for name, _, shard in manifest.shards()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(lambda job: check_shard(store, job[0], job[1], image_format=job[2]["image"]["format"],
                                                 mask_classes=job[2].get("masks", [])), jobs)
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
