"""A source's records with their final splits: the common first step of `inspect` and `build`."""

from __future__ import annotations

from pathlib import Path

from shards import masks, splits
from shards.errors import ShardsError
from shards.sources import Scan, Source


def load(source: Source, root: Path, *, seed: int = 0, holdout: dict[str, float] | None = None,
         split_file: tuple[bytes, str] | None = None) -> Scan:
    """Scan `root`, check ids are unique, and assign splits: from `split_file` (bytes, name) if
    given, else the official splits plus seeded patient-disjoint hold-outs."""
    if not root.is_dir():
        raise ShardsError(f"{source.name}: root folder not found: {root}")
    scan = source.scan(root)
    seen = set()
    for record in scan.records:
        if record.id in seen:
            raise ShardsError(f"{source.name}: two images share the id {record.id!r} under {root}")
        seen.add(record.id)
    if split_file is not None:
        splits.apply_csv(scan.records, split_file[0], where=split_file[1])
    else:
        splits.hold_out(scan.records, source.holdout if holdout is None else holdout, seed=seed)
    shared = splits.shared_patients(scan.records)
    if shared:
        scan.notes.append(f"{len(shared)} patients appear in more than one split (first: {shared[0]})")
    return scan


def class_counts(scan: Scan, split: str) -> dict[str, dict[str, int]]:
    """Raw label facts per class for one split: the adjudicated labels where the file has them; for
    images with readers' votes only, a class counts as positive or negative when every reader
    agrees, and as uncertain when they disagree."""
    counts = {c: {"positive": 0, "negative": 0, "uncertain": 0, "missing": 0} for c in scan.classes}
    names = {1: "positive", 0: "negative", -1: "uncertain", None: "missing"}
    for record in scan.records:
        if record.split != split:
            continue
        for c in scan.classes:
            if record.labels is None and record.readers is not None:
                votes = {v[c] for v in record.readers.values()}
                value = votes.pop() if len(votes) == 1 else -1
            else:
                value = record.labels.get(c)
            counts[c][names[value]] += 1
    return counts


def box_counts(records) -> dict[str, int]:
    """Boxes per class, every reader's."""
    counts: dict[str, int] = {}
    for record in records:
        for box in record.boxes or ():
            counts[box["label"]] = counts.get(box["label"], 0) + 1
    return dict(sorted(counts.items()))


def mask_counts(source: Source, records, root: Path) -> dict[str, dict[str, int]]:
    """Per mask class: images with a mask of it (an empty one counts: the image was annotated) and
    its pixels in the original grid, from the label files (`masks.pixels`)."""
    counts = {c: {"images": 0, "pixels": 0} for c in source.mask_classes}
    for record in records:
        for name, spec in (record.masks or {}).items():
            entry = counts.setdefault(name, {"images": 0, "pixels": 0})
            entry["images"] += 1
            entry["pixels"] += masks.pixels(spec, root)
    return counts


def inspect(source: Source, root: Path, **options) -> dict:
    """The `inspect --json` document: per split, images, missing images, class counts, boxes per
    class and masks per class."""
    scan = load(source, root, **options)
    report = {"source": source.name, "splits": {}}
    for split in splits.SPLITS:
        records = [r for r in scan.records if r.split == split]
        if not records:
            continue
        missing = sum(not (root / r.image).is_file() for r in records)
        report["splits"][split] = {"num_images": len(records), "num_missing_images": missing,
                                   "classes": class_counts(scan, split), "boxes": box_counts(records),
                                   "masks": mask_counts(source, records, root)}
    return report, scan.notes
