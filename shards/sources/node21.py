"""NODE21 (nodule detection challenge, node21.grand-challenge.org): `cxr_images/proccessed_data/
metadata.csv` and `cxr_images/proccessed_data/images/<img_name>` (`.mha`); "proccessed" is the
download's own spelling. One class, Nodule (binary), and one box per nodule.

metadata.csv, read by header name: `img_name,x,y,width,height,label`, one row per nodule (an image
with several nodules repeats its name), (x, y) the box's top-left corner and width, height its size
in the 1024 px image's pixels; an image without nodules has one row with label 0.

Quirks (from copies of the file in participants' public repositories, e.g. FinnBehrendt/node21-submit,
and the organisers' baseline `node21_detection_baseline/training_utils/dataset.py`):
- The header is pandas' index column (blank name) and the columns in alphabetical order:
  `,height,img_name,label,width,x,y`.
- A label-0 row carries the box 0,0,0,0, which is no box; any other box on it is an error.
- Names are `n<4 digits>.mha` for the 1,134 images with nodules and `c<4 digits>.mha` for the
  3,748 without (5,224 rows in all, negatives first); images are 1024 x 1024, 16-bit MetaImage with
  12 bits of data, zlib-compressed.

Splits: NODE21's test set is hidden on grand-challenge, so seeded hold-outs make val and test. No
patient ids are given (`original_data/*filenames_orig_and_new.csv` map images to their source
datasets, not to patients): the image is the patient.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import binary_value, find, number, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Nodule"]
FOLDER = "cxr_images/proccessed_data"
NAME = re.compile(r"^[A-Za-z0-9_-]+\.mha$")
COLUMNS = ["img_name", "x", "y", "width", "height", "label"]
HEADER = ["", "height", "img_name", "label", "width", "x", "y"]  # as shipped


class Node21(Source):
    name = "node21"
    task = "binary"
    box_classes = ["Nodule"]
    layout = "cxr_images/proccessed_data/metadata.csv (a row per nodule); cxr_images/proccessed_data/images/<name>.mha"
    holdout = {"val": 0.1, "test": 0.2}  # no labelled official test set

    def scan(self, root: Path) -> Scan:
        path = find(root, f"{FOLDER}/metadata.csv", what=f"node21 label file {FOLDER}/metadata.csv")
        _, rows = read_rows(path, required=COLUMNS)
        labels: dict[str, int] = {}
        boxes: dict[str, list[dict]] = {}
        for line, row in rows:
            image = row["img_name"]
            if not NAME.match(image):
                raise ShardsError(f"{path}:{line}: column 'img_name' has {image!r}, expected <name>.mha")
            label = binary_value(row["label"], path=path, line=line, column="label")
            x, y, w, h = (number(row[k], path=path, line=line, column=k) for k in ("x", "y", "width", "height"))
            if labels.setdefault(image, label) != label or (label == 0 and image in boxes):
                raise ShardsError(f"{path}:{line}: column 'label' has {label} for {image}, which has a row before "
                                  f"(a label-0 row must be an image's only row)")
            entry = boxes.setdefault(image, [])
            if label == 0:
                if (x, y, w, h) != (0, 0, 0, 0):
                    raise ShardsError(f"{path}:{line}: label 0 with box {x:g},{y:g},{w:g},{h:g} "
                                      f"in columns 'x','y','width','height', expected 0,0,0,0")
                continue
            for column, size in (("width", w), ("height", h)):
                if size <= 0:
                    raise ShardsError(f"{path}:{line}: column {column!r} has {row[column]!r}, a nodule's box needs "
                                      f"a positive size")
            entry.append({"label": "Nodule", "xyxy": [x, y, x + w, y + h], "reader": None})
        records = [
            Record(id=sanitize_id(image[:-4]), image=f"{FOLDER}/images/{image}", split="train",
                   patient=image[:-4], frontal=True, labels={"Nodule": label}, boxes=boxes[image])
            for image, label in labels.items()
        ]
        return Scan(records=records, classes=list(CLASSES), label_files=[path])

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        w, h = synth.size((1024, 1024), scale)
        positive = rng.uniform(size=num_images) < 0.4
        positive[:2] = [False, True]  # both kinds, whatever the draws
        names = ([f"c{n:04d}.mha" for n in sorted(rng.choice(4000, size=(~positive).sum(), replace=False))]
                 + [f"n{n:04d}.mha" for n in sorted(rng.choice(1200, size=positive.sum(), replace=False))])
        rows = []
        for image in names:  # negatives first, as shipped
            nodule = image.startswith("n")
            boxes = []
            if nodule:
                for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
                    x, y = (int(v) for v in rng.uniform(150, 800, size=2) * scale)
                    bw, bh = (max(1, int(v)) for v in rng.uniform(20, 160, size=2) * scale)
                    rows.append([len(rows), bh, image, 1, bw, x, y])
                    boxes.append([x, y, x + bw, y + bh])
            else:
                rows.append([len(rows), 0, image, 0, 0, 0, 0])
            regions = {0: synth.boxes_region(boxes, width=w, height=h)} if boxes else None  # nodules in their boxes
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([nodule]), regions=regions)
            synth.write_mha(root / FOLDER / "images" / image, pixels, bits=12)
        synth.write_csv(root / FOLDER / "metadata.csv", HEADER, rows)


SOURCE = Node21()
