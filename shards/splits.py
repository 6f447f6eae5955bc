"""Held-out splits: seeded, patient-disjoint, and written as a CSV next to the manifest so that a
split can be committed and reused (`build --splits FILE`)."""

from __future__ import annotations

import csv
import io
import random

from shards.errors import ShardsError
from shards.samples import Record

SPLITS = ("train", "val", "test")


def hold_out(records: list[Record], fractions: dict[str, float], *, seed: int) -> None:
    """Move whole patients of the train pool to the held-out splits in `fractions` (e.g.
    {"val": 0.1, "test": 0.1}) until each holds that share of the pool's images. Deterministic in
    (patients, seed), whatever the input order."""
    pool: dict[str, list[Record]] = {}
    for record in records:
        if record.split == "train":
            pool.setdefault(record.patient, []).append(record)
    patients = sorted(pool)
    random.Random(seed).shuffle(patients)
    total = sum(len(v) for v in pool.values())
    position = 0
    for split in ("test", "val"):
        if split not in fractions:
            continue
        wanted, taken = round(fractions[split] * total), 0
        while taken < wanted and position < len(patients):
            for record in pool[patients[position]]:
                record.split = split
            taken += len(pool[patients[position]])
            position += 1


def to_csv(records: list[Record]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "patient", "split"])
    for record in sorted(records, key=lambda r: r.id):
        writer.writerow([record.id, record.patient, record.split])
    return buf.getvalue().encode()


def apply_csv(records: list[Record], data: bytes, *, where: str) -> None:
    """Set every record's split from a split file written by `to_csv`."""
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    if rows and not {"id", "split"} <= set(rows[0]):
        raise ShardsError(f"{where}: a split file needs columns id and split")
    assigned = {}
    for line, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise ShardsError(f"{where}:{line}: unknown split {row['split']!r} (expected {', '.join(SPLITS)})")
        assigned[row["id"]] = row["split"]
    missing = [r.id for r in records if r.id not in assigned]
    if missing:
        raise ShardsError(f"{where}: {len(missing)} images have no split (first: {missing[0]})")
    for record in records:
        record.split = assigned[record.id]


def shared_patients(records: list[Record]) -> list[str]:
    """Patients found in more than one split (the official splits promise none; ours have none)."""
    seen: dict[str, str] = {}
    shared = set()
    for record in records:
        if seen.setdefault(record.patient, record.split) != record.split:
            shared.add(record.patient)
    return sorted(shared)
