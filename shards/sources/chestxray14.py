"""NIH ChestX-ray14: `Data_Entry_2017_v2020.csv` (or the older `Data_Entry_2017.csv` with a
trailing-comma column), `train_val_list.txt`, `test_list.txt`, images under `images*/`.

Boxes, when `BBox_List_2017.csv` lies beside the entry file: 984 boxes on 880 images, 8 findings,
one row per box. Its header, as shipped, is `Image Index,Finding Label,Bbox [x,y,w,h],,,`: the
bracket's commas split `Bbox [x,y,w,h]` over four columns (`Bbox [x`, `y`, `w`, `h]`) and three
empty names follow, while the rows have six fields (an Excel re-save drops the `,,,`: read the
same). Boxes are `x,y,w,h` in the 1024 px original; their labels stay as
the file spells them, `Infiltrate` where the entry file says `Infiltration`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import age_value, find, number, read_rows, sex_value
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
# The header as shipped: the bracketed commas make 11 fields out of 9 columns.
HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
          "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
BOX_FILE = "BBox_List_2017.csv"
BOX_HEADER = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]
BOX_CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax"]


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _read_boxes(path: Path) -> dict[str, list[dict]]:
    """Image Index -> its boxes, xyxy in original pixels, from BBox_List_2017.csv."""
    _, rows = read_rows(path, required=BOX_HEADER[:6])
    boxes: dict[str, list[dict]] = {}
    for line, row in rows:
        label = row["Finding Label"]
        if label not in BOX_CLASSES:
            raise ShardsError(f"{path}:{line}: column 'Finding Label' has {label!r}, expected one of {BOX_CLASSES}")
        x, y, w, h = (number(row[c], path=path, line=line, column=c) for c in BOX_HEADER[2:6])
        boxes.setdefault(row["Image Index"], []).append({"label": label, "xyxy": [x, y, x + w, y + h],
                                                         "reader": None})
    return boxes


def index_images(root: Path) -> dict[str, str]:
    """basename -> path relative to root, for every PNG under the `images*` folders."""
    found = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("images")):
        for folder, _, files in os.walk(top):
            for name in files:
                if name.endswith(".png"):
                    found[name] = str(Path(folder, name).relative_to(root).as_posix())
    return found


class ChestXray14(Source):
    name = "chestxray14"
    task = "multilabel"
    box_classes = list(BOX_CLASSES)
    layout = ("Data_Entry_2017[_v2020].csv + train_val_list.txt/test_list.txt [+ BBox_List_2017.csv]; "
              "images*/**/<8d>_<3d>.png")
    holdout = {"val": 0.1296}  # Ark's release: 75,312 / 11,212 of the official 86,524

    def scan(self, root: Path) -> Scan:
        entry = find(root, *ENTRY_FILES, what="chestxray14 label file Data_Entry_2017_v2020.csv")
        test_file = find(root, "test_list.txt", what="chestxray14 split file test_list.txt")
        trainval_file = find(root, "train_val_list.txt", what="chestxray14 split file train_val_list.txt")
        _, rows = read_rows(entry, required=["Image Index", "Finding Labels", "Patient ID", "View Position"])
        test = _read_list(test_file)
        images = index_images(root)
        box_file = entry.parent / BOX_FILE
        boxes = _read_boxes(box_file) if box_file.is_file() else {}
        records = []
        for line, row in rows:
            findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
            unknown = [f for f in findings if f not in CLASSES and f != NO_FINDING]
            if unknown or not findings or (NO_FINDING in findings and len(findings) > 1):
                raise ShardsError(f"{entry}:{line}: bad 'Finding Labels' value {row['Finding Labels']!r}")
            name = row["Image Index"]
            view = row["View Position"] or None
            records.append(Record(
                id=sanitize_id(name.removesuffix(".png")),
                image=images.get(name, f"images/{name}"),
                split="test" if name in test else "train",
                patient=row["Patient ID"],
                view=view,
                frontal=view in ("PA", "AP") if view else None,
                labels={c: int(c in findings) for c in CLASSES},
                boxes=boxes.pop(name, []) if box_file.is_file() else None,
                extra={"sex": sex_value(row.get("Patient Gender", ""), path=entry, line=line, column="Patient Gender"),
                       "age": age_value(row.get("Patient Age", ""), path=entry, line=line, column="Patient Age")},
            ))
        if boxes:
            raise ShardsError(f"{box_file}: image {next(iter(boxes))} has boxes but no row in {entry.name}")
        return Scan(records=records, classes=list(CLASSES),
                    label_files=[entry, trainval_file, test_file, *([box_file] if box_file.is_file() else [])])

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        boxes_rng = np.random.default_rng([seed, 1])  # its own draws: the images and labels stay as they were
        rows, test, trainval, box_rows = [], [], [], []
        patient, follow_up = 0, 0
        for i in range(num_images):
            if i == 0 or rng.uniform() < 0.5:
                patient, follow_up = patient + 1, 0
                in_test = rng.uniform() < 0.3
            else:
                follow_up += 1
            name = f"{patient:08d}_{follow_up:03d}.png"
            if rng.uniform() < 0.5:
                labels = NO_FINDING
            else:
                labels = "|".join(rng.choice(CLASSES, size=rng.integers(1, 4), replace=False))
            view = "PA" if rng.uniform() < 0.6 else "AP"
            w, h = synth.size((1024, 1024), scale)
            rows.append([name, labels, follow_up, patient, int(rng.integers(20, 90)), rng.choice(["M", "F"]),
                         view, w, h, 0.143, 0.143])
            (test if in_test else trainval).append(name)
            folder = root / f"images_{1 + i * 2 // max(num_images, 1):03d}" / "images"
            regions = {}  # a finding with a box shows in it only, one without over the chest
            for finding in labels.split("|"):  # about half the findings NIH has a box for get one
                label = "Infiltrate" if finding == "Infiltration" else finding
                if label in BOX_CLASSES and boxes_rng.uniform() < 0.5:
                    x, y = boxes_rng.uniform(0, 0.7, size=2) * (w, h)
                    bw, bh = boxes_rng.uniform(0.05, 0.3, size=2) * (w, h)
                    box_rows.append([name, label, *(float(v) for v in (x, y, bw, bh))])
                    regions[CLASSES.index(finding)] = synth.boxes_region([[x, y, x + bw, y + bh]], width=w, height=h)
            # The real set has a few RGBA PNGs among the 8-bit grayscale ones.
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([int(c in labels.split("|")) for c in CLASSES]),
                                      regions=regions)
            synth.write_png8(folder / name, pixels, mode="RGBA" if i == 1 else "L")
        # The header's bracket is unquoted (9 fields), so it is written as text, not through csv.
        (root / BOX_FILE).write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + "".join(
            ",".join(str(v) for v in row) + "\n" for row in box_rows))
        synth.write_csv(root / "Data_Entry_2017_v2020.csv", HEADER, rows)
        synth.write_csv(root / "Data_Entry_2017.csv", HEADER, rows, trailing_comma=True)
        (root / "train_val_list.txt").write_text("".join(n + "\n" for n in trainval))
        (root / "test_list.txt").write_text("".join(n + "\n" for n in test))


SOURCE = ChestXray14()
