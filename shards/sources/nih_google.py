"""NIH ChestX-ray14 Google expert labels (Majkowska et al., Radiology 2019): 4,376 NIH images read
by three radiologists for four findings and adjudicated.

Layout: the ChestX-ray14 image folders (`images*/**/<Image Index>`, found as `chestxray14` finds
them) with Google's `four_findings_expert_labels_{test,validation}_labels.csv` and
`four_findings_expert_labels_individual_readers.csv` beside them (or under
`four_findings_expert_labels/` with the names the GCS bucket uses: `test_labels.csv`, ...).
The official split is test vs validation (mapped to `val`), patient-disjoint; there is no train
split: this is an evaluation set.

A record gives the adjudicated labels as `labels` (YES 1, NO 0, blank None: Google's note says a
blank cell means the image was not adjudicated for that finding) and each reader's votes as
`readers` (reader id -> {class: 1 | 0 | -1}, HEDGE = -1, uncertain). Its `origin` is the
ChestX-ray14 image it re-annotates, `chestxray14/<id>` with chestxray14's id (`Image Index`
without `.png`, sanitised), and its `patient` NIH's `Patient ID`.

Quirks, from the real files (mirrors of gs://gcs-public-data--healthcare-nih-chest-xray-labels
and Google Cloud's page on the dataset):
- The label files copy NIH's old `Data_Entry_2017.csv` header, bracketed commas and all
  (`OriginalImage[Width,Height]` is two fields), and add the four findings and `Set Id`
  (`test` | `val`); lines end in CRLF. Columns are read by name; a `Set Id` that contradicts
  its file is an error.
- The readers file spells the last finding `Nodule/mass` (the label files: `Nodule or mass`),
  names the image `Image ID` (not `Image Index`) and the set `Set ID`; it is one row per reader
  per image, mostly 3 readers, 2 for 47 images, 1, 4 or 5 for a few; reader ids are 10-digit
  numbers. HEDGE appears only for Pneumothorax and Nodule/mass (accepted for any finding).
- The adjudicated columns hold only YES and NO; validation has 2,414 images where Google's page
  says 2,412.
A value outside YES/NO/blank (labels) or YES/NO/HEDGE (readers), a reader reading one image twice,
or an image listed twice is an error naming file, line and column.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import find, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source
from shards.sources.chestxray14 import index_images  # the same image layouts as chestxray14

CLASSES = ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]
READER_COLUMNS = {"Fracture": "Fracture", "Pneumothorax": "Pneumothorax", "Airspace opacity": "Airspace opacity",
                  "Nodule or mass": "Nodule/mass"}  # class -> the readers file's spelling
PREFIX = "four_findings_expert_labels"
SPLITS = {"test": "test", "val": "validation"}  # our split -> the file's
LABELS = {"YES": 1, "NO": 0, "": None}
VOTES = {"YES": 1, "NO": 0, "HEDGE": -1}
# The label files' header as shipped: NIH's old metadata header (11 fields from 9 columns), the
# four adjudicated findings and the set.
HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
          "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", *CLASSES, "Set Id"]
READER_HEADER = ["Patient ID", "Image ID", "Reader ID", *READER_COLUMNS.values(), "Set ID"]


def _cell(table: dict, raw: str, *, path: Path, line: int, column: str):
    if raw not in table:
        expected = ", ".join(repr(k) if k else "blank" for k in table)
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw!r}, expected {expected}")
    return table[raw]


def _label_file(root: Path, native: str) -> Path:
    return find(root, f"{PREFIX}_{native}_labels.csv", f"{PREFIX}/{native}_labels.csv",
                what=f"nih_google label file {PREFIX}_{native}_labels.csv")


def _readers(path: Path) -> dict[str, dict]:
    """Image Index -> {reader id: {class: 1 | 0 | -1}}."""
    _, rows = read_rows(path, required=["Image ID", "Reader ID", *READER_COLUMNS.values()])
    out: dict[str, dict] = {}
    for line, row in rows:
        votes = out.setdefault(row["Image ID"], {})
        if row["Reader ID"] in votes:
            raise ShardsError(f"{path}:{line}: reader {row['Reader ID']} reads image {row['Image ID']} twice")
        votes[row["Reader ID"]] = {c: _cell(VOTES, row[column], path=path, line=line, column=column)
                                   for c, column in READER_COLUMNS.items()}
    return out


class NihGoogle(Source):
    name = "nih_google"
    task = "multilabel"
    layout = (f"{PREFIX}_{{test,validation}}_labels.csv (official test/val, no train) + "
              f"{PREFIX}_individual_readers.csv; images*/**/<Image Index>")
    holdout = {}  # official test and val only: nothing to hold out

    def scan(self, root: Path) -> Scan:
        readers_file = find(root, f"{PREFIX}_individual_readers.csv", f"{PREFIX}/individual_readers.csv",
                            what=f"nih_google readers file {PREFIX}_individual_readers.csv")
        readers = _readers(readers_file)
        images = index_images(root)
        records, label_files, seen = [], [], {}
        for split, native in SPLITS.items():
            path = _label_file(root, native)
            label_files.append(path)
            header, rows = read_rows(path, required=["Image Index", "Patient ID", *CLASSES])
            for line, row in rows:
                name = row["Image Index"]
                if name in seen:
                    raise ShardsError(f"{path}:{line}: image {name} is listed twice (first: {seen[name]})")
                seen[name] = f"{path.name}:{line}"
                if "Set Id" in header and row["Set Id"] != split:
                    raise ShardsError(f"{path}:{line}: column 'Set Id' has {row['Set Id']!r}, expected {split!r}")
                image_id = sanitize_id(name.removesuffix(".png"))
                view = row.get("View Position") or None
                records.append(Record(
                    id=image_id, image=images.get(name, f"images/{name}"), split=split, patient=row["Patient ID"],
                    view=view, frontal=view in ("PA", "AP") if view else None,
                    labels={c: _cell(LABELS, row[c], path=path, line=line, column=c) for c in CLASSES},
                    readers=readers.get(name), origin=f"chestxray14/{image_id}"))
        notes = []
        strays = sorted(set(readers) - set(seen))
        if strays:
            notes.append(f"{readers_file.name} has readers for {len(strays)} images in neither label file "
                         f"(ignored; first: {strays[0]})")
        unread = sum(r.readers is None for r in records)
        if unread:
            notes.append(f"{unread} images have no reader in {readers_file.name}: adjudicated labels only")
        return Scan(records=records, classes=list(CLASSES), label_files=[*label_files, readers_file], notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        pool = [str(int(r)) for r in rng.integers(4_295_000_000, 4_344_000_000, size=12)]  # reader ids
        rows = {"test": [], "val": []}
        reader_rows = []
        patient, follow_up, split = 0, 0, "test"
        for i in range(num_images):
            if i == 0 or rng.uniform() < 0.5:  # the official sets are patient-disjoint
                patient, follow_up = patient + int(rng.integers(1, 40)), 0
                split = "test" if rng.uniform() < 0.45 else "val"
            else:
                follow_up += int(rng.integers(1, 4))
            name = f"{patient:08d}_{follow_up:03d}.png"
            truth = rng.uniform(size=len(CLASSES)) < [0.05, 0.1, 0.5, 0.15]
            view = "PA" if rng.uniform() < 0.6 else "AP"
            w, h = synth.size((1024, 1024), scale)
            findings = "|".join(rng.choice(["Nodule", "Mass", "Effusion", "Infiltration"], size=int(rng.integers(1, 3)),
                                           replace=False)) if truth.any() else "No Finding"
            rows[split].append([name, findings, follow_up, patient, int(rng.integers(18, 90)), rng.choice(["M", "F"]),
                                view, w, h, 0.143, 0.143, *("YES" if t else "NO" for t in truth), split])
            num_readers = 3 if i % 6 else 2  # mostly three readers, a few two
            for reader in rng.choice(pool, size=num_readers, replace=False):
                votes = []
                for c, t in zip(CLASSES, truth):
                    vote = "YES" if t ^ (rng.uniform() < 0.1) else "NO"  # readers disagree a little
                    if c in ("Pneumothorax", "Nodule or mass") and rng.uniform() < 0.08:
                        vote = "HEDGE"
                    votes.append(vote)
                reader_rows.append([patient, name, reader, *votes, split])
            folder = root / f"images_{1 + i * 2 // max(num_images, 1):03d}" / "images"
            pixels = synth.radiograph(rng, w, h, findings=synth.shown(truth.astype(int)))
            synth.write_png8(folder / name, pixels, mode="RGBA" if i == 1 else "L")  # NIH has a few RGBA PNGs
        for split, native in SPLITS.items():
            _write_crlf(root / f"{PREFIX}_{native}_labels.csv", HEADER, rows[split])
        order = rng.permutation(len(reader_rows))
        _write_crlf(root / f"{PREFIX}_individual_readers.csv", READER_HEADER, [reader_rows[k] for k in order])


def _write_crlf(path: Path, header: list[str], rows: list[list]) -> None:
    """CSV with CRLF line ends, as Google ships these files."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerows([header, *rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode())


SOURCE = NihGoogle()
