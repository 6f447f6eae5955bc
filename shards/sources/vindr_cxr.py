"""VinDr-CXR: `annotations/image_labels_train.csv` (`image_id,rad_id,<28 labels>`, one row per
reader, 3 readers per image) and `annotations/image_labels_test.csv` (one consensus row);
images `train|test/<image_id>.dicom` (some MONOCHROME1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import binary_value, find, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
           "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
           "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening",
           "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia",
           "Tuberculosis", "Other diseases", "No finding"]
ARK_HEADS = ["Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]


class VinDrCxr(Source):
    name = "vindr_cxr"
    task = "multilabel"
    layout = "annotations/image_labels_{train,test}.csv; {train,test}/<image_id>.dicom"
    holdout = {"val": 0.1}  # the official test set is the consensus file; val comes from train
    head_labels = ARK_HEADS

    def scan(self, root: Path) -> Scan:
        train_file = find(root, "annotations/image_labels_train.csv", "image_labels_train.csv",
                          what="vindr_cxr label file annotations/image_labels_train.csv")
        test_file = find(root, "annotations/image_labels_test.csv", "image_labels_test.csv",
                         what="vindr_cxr label file annotations/image_labels_test.csv")
        _, train_rows = read_rows(train_file, required=["image_id", "rad_id", *CLASSES])
        _, test_rows = read_rows(test_file, required=["image_id", *CLASSES])
        readers: dict[str, dict] = {}
        for line, row in train_rows:
            votes = readers.setdefault(row["image_id"], {})
            if row["rad_id"] in votes:
                raise ShardsError(f"{train_file}:{line}: reader {row['rad_id']} labels image {row['image_id']} twice")
            votes[row["rad_id"]] = {c: binary_value(row[c], path=train_file, line=line, column=c) for c in CLASSES}
        records = [
            # Multi-reader: the raw facts are the votes; aggregation (any/majority) is a load-time policy.
            Record(id=sanitize_id(image), image=f"train/{image}.dicom", split="train", patient=image,
                   labels=None, readers=votes, frontal=True)
            for image, votes in readers.items()
        ]
        for line, row in test_rows:
            image = row["image_id"]
            records.append(Record(
                id=sanitize_id(image), image=f"test/{image}.dicom", split="test", patient=image, frontal=True,
                labels={c: binary_value(row[c], path=test_file, line=line, column=c) for c in CLASSES}))
        return Scan(records=records, classes=list(CLASSES), label_files=[train_file, test_file])

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        train_rows, test_rows = [], []
        for i in range(num_images):
            image = f"{int(rng.integers(0, 2**63)):016x}{int(rng.integers(0, 2**63)):016x}"
            truth = rng.uniform(size=len(CLASSES)) < 0.12
            split = "test" if i % 4 == 3 else "train"
            if split == "train":
                for rad in rng.choice(17, size=3, replace=False):
                    votes = truth ^ (rng.uniform(size=len(CLASSES)) < 0.05)  # readers disagree a little
                    votes[-1] = not votes[:-1].any()  # "No finding" when the reader saw nothing
                    train_rows.append([image, f"R{rad + 1}", *votes.astype(int)])
            else:
                truth[-1] = not truth[:-1].any()
                test_rows.append([image, *truth.astype(int)])
            w, h = synth.size((2500, 3000), scale)
            # The image shows the truth (readers disagree about it); Ark's six head classes only:
            # FINDINGS has not 28 distinct textures, and the other 22 are never trained.
            facts = dict(zip(CLASSES, [*truth[:-1], not truth[:-1].any()]))
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([facts[c] for c in ARK_HEADS]))
            synth.write_dicom(root / split / f"{image}.dicom", pixels, uid_seed=image,
                              bits=int(rng.choice([12, 14])), monochrome1=i % 3 == 1)
        synth.write_csv(root / "annotations" / "image_labels_train.csv", ["image_id", "rad_id", *CLASSES], train_rows)
        synth.write_csv(root / "annotations" / "image_labels_test.csv", ["image_id", *CLASSES], test_rows)


SOURCE = VinDrCxr()
