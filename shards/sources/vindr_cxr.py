"""VinDr-CXR, as PhysioNet ships it: `annotations/image_labels_train.csv` (`image_id,rad_id,<28
labels>`, one row per reader, 3 readers per image) and `annotations/image_labels_test.csv` (one
consensus row, whose header spells `Other disease` where the train file has `Other diseases`, and
whose cells may be blank: not mentioned); images `train|test/<image_id>.dicom` (some MONOCHROME1).

Boxes, when `annotations/annotations_train.csv` / `annotations_test.csv` are there: one row per
box (`image_id,rad_id,class_name,x_min,y_min,x_max,y_max`, original pixels) for the 22 local
labels; a reader who saw none has one `No finding` row with empty coordinates, which gives no box.
Every reader's boxes are kept, with its `rad_id` (the test file's consensus boxes have none).

Also Kaggle's VinBigData layout (`train.csv`: `image_id,class_name,class_id,rad_id,x_min,...`,
images `train/<image_id>.dicom`): 14 local labels + `No finding` (class_id 14), no image-level
file and no labelled test set. There a reader's votes are the classes it boxed, and the heads
default to its 15 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import binary_value, find, number, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
           "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
           "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening",
           "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia",
           "Tuberculosis", "Other diseases", "No finding"]
LOCAL = CLASSES[:22]  # the labels with boxes
ARK_HEADS = ["Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
KAGGLE = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
          "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
          "Pneumothorax", "Pulmonary fibrosis", "No finding"]  # class_id = index
BOX_COLUMNS = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
TEST_SPELLING = {"Other diseases": "Other disease"}  # image_labels_test.csv's header, as shipped


def read_boxes(path: Path, classes: list[str], *, class_ids: bool = False) -> dict[str, list[dict]]:
    """image_id -> its boxes (every reader's; `No finding` rows give none, but the image is listed)."""
    _, rows = read_rows(path, required=BOX_COLUMNS + (["class_id", "rad_id"] if class_ids else []))
    boxes: dict[str, list[dict]] = {}
    for line, row in rows:
        label = row["class_name"]
        if label not in classes:
            raise ShardsError(f"{path}:{line}: column 'class_name' has {label!r}, expected one of the local labels")
        if class_ids and row["class_id"] != str(KAGGLE.index(label)):
            raise ShardsError(f"{path}:{line}: column 'class_id' has {row['class_id']!r}, but {label!r} is "
                              f"{KAGGLE.index(label)}")
        found = boxes.setdefault(row["image_id"], [])
        coords = [row[c] for c in BOX_COLUMNS[2:]]
        if label == "No finding":
            if any(coords):
                raise ShardsError(f"{path}:{line}: a 'No finding' row has coordinates {coords}")
            continue
        x0, y0, x1, y1 = (number(row[c], path=path, line=line, column=c) for c in BOX_COLUMNS[2:])
        found.append({"label": label, "xyxy": [x0, y0, x1, y1], "reader": row.get("rad_id") or None})
    return boxes


class VinDrCxr(Source):
    name = "vindr_cxr"
    task = "multilabel"
    box_classes = list(LOCAL)  # Kaggle's boxed classes are among them
    layout = ("annotations/image_labels_{train,test}.csv [+ annotations_{train,test}.csv boxes]; "
              "{train,test}/<image_id>.dicom; or Kaggle's train.csv + train/")
    holdout = {"val": 0.1}  # the official test set is the consensus file; val comes from train
    head_labels = ARK_HEADS

    def scan(self, root: Path) -> Scan:
        if not (root / "annotations" / "image_labels_train.csv").is_file() and (root / "train.csv").is_file():
            return self._scan_kaggle(root / "train.csv")
        train_file = find(root, "annotations/image_labels_train.csv", "image_labels_train.csv",
                          what="vindr_cxr label file annotations/image_labels_train.csv")
        test_file = find(root, "annotations/image_labels_test.csv", "image_labels_test.csv",
                         what="vindr_cxr label file annotations/image_labels_test.csv")
        _, train_rows = read_rows(train_file, required=["image_id", "rad_id", *CLASSES])
        header, test_rows = read_rows(test_file, required=["image_id"])
        test_columns = {c: TEST_SPELLING.get(c, c) if TEST_SPELLING.get(c) in header else c for c in CLASSES}
        missing = [col for col in test_columns.values() if col not in header]
        if missing:
            raise ShardsError(f"{test_file}: missing column {missing[0]!r} (header: {', '.join(header)})")
        box_files = [train_file.parent / f"annotations_{split}.csv" for split in ("train", "test")]
        boxes = {}
        for path in box_files:
            if path.is_file():
                boxes.update(read_boxes(path, [*LOCAL, "No finding"]))
        readers: dict[str, dict] = {}
        for line, row in train_rows:
            votes = readers.setdefault(row["image_id"], {})
            if row["rad_id"] in votes:
                raise ShardsError(f"{train_file}:{line}: reader {row['rad_id']} labels image {row['image_id']} twice")
            votes[row["rad_id"]] = {c: binary_value(row[c], path=train_file, line=line, column=c) for c in CLASSES}
        records = [
            # Multi-reader: the raw facts are the votes; aggregation (any/majority) is a load-time policy.
            Record(id=sanitize_id(image), image=f"train/{image}.dicom", split="train", patient=image,
                   labels=None, readers=votes, frontal=True,
                   boxes=boxes.get(image, []) if box_files[0].is_file() else None)
            for image, votes in readers.items()
        ]
        for line, row in test_rows:
            image = row["image_id"]
            records.append(Record(
                id=sanitize_id(image), image=f"test/{image}.dicom", split="test", patient=image, frontal=True,
                labels={c: None if row[col] == "" else binary_value(row[col], path=test_file, line=line, column=col)
                        for c, col in test_columns.items()},
                boxes=boxes.get(image, []) if box_files[1].is_file() else None))
        return Scan(records=records, classes=list(CLASSES),
                    label_files=[train_file, test_file, *(p for p in box_files if p.is_file())])

    def _scan_kaggle(self, path: Path) -> Scan:
        _, rows = read_rows(path, required=[*BOX_COLUMNS, "class_id", "rad_id"])
        boxes = read_boxes(path, KAGGLE, class_ids=True)
        readers: dict[str, dict] = {}
        for _, row in rows:  # a reader's votes: the classes it boxed, or `No finding`
            votes = readers.setdefault(row["image_id"], {}).setdefault(row["rad_id"], dict.fromkeys(KAGGLE, 0))
            votes[row["class_name"]] = 1
        records = [Record(id=sanitize_id(image), image=f"train/{image}.dicom", split="train", patient=image,
                          labels=None, readers=votes, frontal=True, boxes=boxes[image])
                   for image, votes in readers.items()]
        return Scan(records=records, classes=list(KAGGLE), label_files=[path], head_labels=list(KAGGLE),
                    notes=["Kaggle's VinBigData layout: 15 classes, no labelled test set (use --test-fraction)"])

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        boxes_rng = np.random.default_rng([seed, 1])  # its own draws: the images and labels stay as they were
        train_rows, test_rows, box_rows = [], [], {"train": [], "test": []}
        for i in range(num_images):
            image = f"{int(rng.integers(0, 2**63)):016x}{int(rng.integers(0, 2**63)):016x}"
            truth = rng.uniform(size=len(CLASSES)) < 0.12
            split = "test" if i % 4 == 3 else "train"
            w, h = synth.size((2500, 3000), scale)
            mine = []  # this image's box rows
            if split == "train":
                for rad in rng.choice(17, size=3, replace=False):
                    votes = truth ^ (rng.uniform(size=len(CLASSES)) < 0.05)  # readers disagree a little
                    votes[-1] = not votes[:-1].any()  # "No finding" when the reader saw nothing
                    train_rows.append([image, f"R{rad + 1}", *votes.astype(int)])
                    mine += _boxes(boxes_rng, image, f"R{rad + 1}", votes, w, h)
            else:
                truth[-1] = not truth[:-1].any()
                test_rows.append([image, *truth.astype(int)])
                mine += _boxes(boxes_rng, image, "", truth, w, h)
            box_rows[split] += mine
            # The image shows the truth (readers disagree about it); Ark's six head classes only:
            # FINDINGS has not 28 distinct textures, and the other 22 are never trained.
            facts = dict(zip(CLASSES, [*truth[:-1], not truth[:-1].any()]))
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([facts[c] for c in ARK_HEADS]),
                                      regions=_regions(mine, facts, w, h))
            synth.write_dicom(root / split / f"{image}.dicom", pixels, uid_seed=image,
                              bits=int(rng.choice([12, 14])), monochrome1=i % 3 == 1)
        synth.write_csv(root / "annotations" / "image_labels_train.csv", ["image_id", "rad_id", *CLASSES], train_rows)
        synth.write_csv(root / "annotations" / "image_labels_test.csv",
                        ["image_id", *(TEST_SPELLING.get(c, c) for c in CLASSES)], test_rows)
        for split, rows in box_rows.items():
            synth.write_csv(root / "annotations" / f"annotations_{split}.csv",
                            ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"], rows)


def _boxes(rng: np.random.Generator, image: str, rad: str, votes, width: int, height: int) -> list[list]:
    """A reader's box rows: one or two per local label it voted for, or one `No finding` row."""
    rows = []
    for label, vote in zip(LOCAL, votes[:len(LOCAL)]):
        for _ in range(int(rng.integers(1, 3)) if vote else 0):
            x0, y0 = rng.uniform(0, 0.7, size=2) * (width, height)
            x1, y1 = (x0, y0) + rng.uniform(0.05, 0.3, size=2) * (width, height)
            rows.append([image, rad, label, *(round(float(v), 1) for v in (x0, y0, x1, y1))])
    return rows or [[image, rad, "No finding", "", "", "", ""]]


def _regions(rows: list[list], facts: dict, width: int, height: int) -> dict[int, np.ndarray]:
    """{index in ARK_HEADS: weight} of the head findings with a place: a true local label shows
    in the union of every reader's boxes of it (a reader who boxed a label the image does not show
    erred; one the readers never boxed shows over the chest)."""
    out = {}
    for k, label in enumerate(ARK_HEADS):
        boxes = [row[3:] for row in rows if row[2] == label and label in LOCAL]  # "No finding" rows have none
        if facts[label] and boxes:
            out[k] = synth.boxes_region(boxes, width=width, height=height)
    return out


SOURCE = VinDrCxr()
