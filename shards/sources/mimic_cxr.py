"""MIMIC-CXR-JPG 2.0.0: per-study labels in `mimic-cxr-2.0.0-chexpert.csv.gz` (alphabetical
columns), the official split per image in `-split.csv.gz`, views in `-metadata.csv.gz` (blank
`ViewPosition` happens); images `files/p<2>/p<8>/s<8>/<dicom_id>.jpg`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import chexpert_value, find, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
           "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
           "Pneumothorax", "Support Devices"]
PREFIX = "mimic-cxr-2.0.0-"
SPLITS = {"train": "train", "validate": "val", "test": "test"}
METADATA = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
            "Columns", "StudyDate", "StudyTime"]
FRONTAL = {"PA", "AP", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD"}


class MimicCxr(Source):
    name = "mimic_cxr"
    task = "multilabel"
    layout = "mimic-cxr-2.0.0-{chexpert,split,metadata}.csv.gz; files/p<2>/p<8>/s<8>/<dicom_id>.jpg"
    holdout = {}  # official train / validate / test

    def scan(self, root: Path) -> Scan:
        labels_file = find(root, f"{PREFIX}chexpert.csv.gz", what="mimic_cxr label file mimic-cxr-2.0.0-chexpert.csv.gz")
        split_file = find(root, f"{PREFIX}split.csv.gz", what="mimic_cxr split file mimic-cxr-2.0.0-split.csv.gz")
        meta_file = find(root, f"{PREFIX}metadata.csv.gz", what="mimic_cxr metadata file mimic-cxr-2.0.0-metadata.csv.gz")
        _, label_rows = read_rows(labels_file, required=["subject_id", "study_id", *CLASSES])
        _, split_rows = read_rows(split_file, required=["dicom_id", "study_id", "subject_id", "split"])
        _, meta_rows = read_rows(meta_file, required=["dicom_id", "ViewPosition"])
        labels = {
            (row["subject_id"], row["study_id"]): {
                c: chexpert_value(row[c], path=labels_file, line=line, column=c) for c in CLASSES}
            for line, row in label_rows
        }
        views = {row["dicom_id"]: row["ViewPosition"] or None for _, row in meta_rows}
        records, unlabelled = [], 0
        for line, row in split_rows:
            if row["split"] not in SPLITS:
                raise ShardsError(f"{split_file}:{line}: unknown split {row['split']!r} (expected {', '.join(SPLITS)})")
            subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
            facts = labels.get((subject, study))
            unlabelled += facts is None
            view = views.get(dicom)
            records.append(Record(
                id=sanitize_id(dicom),
                image=f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg",
                split=SPLITS[row["split"]],
                patient=subject,
                study=study,
                view=view,
                frontal=(view in FRONTAL) if view else None,
                # A study the labeller skipped has no row: every class is "not mentioned".
                labels=facts if facts is not None else dict.fromkeys(CLASSES),
                extra={"source_split": row["split"]},
            ))
        notes = [f"{unlabelled} images belong to studies without a row in {labels_file.name}"] if unlabelled else []
        return Scan(records=records, classes=list(CLASSES), label_files=[labels_file, split_file, meta_file], notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        label_rows, split_rows, meta_rows = [], [], []
        subject = 10000032
        while len(split_rows) < num_images:
            subject += int(rng.integers(1, 5000))
            native = rng.choice(list(SPLITS), p=[0.6, 0.2, 0.2])
            for _ in range(int(rng.integers(1, 3))):
                study = int(rng.integers(50_000_000, 60_000_000))
                values = []  # a study without a label row shows nothing
                if rng.uniform() > 0.1:  # a few studies have no label row, as in the real file
                    values = [rng.choice(["", "1.0", "0.0", "-1.0"], p=[0.6, 0.2, 0.12, 0.08]) for _ in CLASSES]
                    label_rows.append([subject, study, *values])
                for k in range(int(rng.integers(1, 3))):
                    if len(split_rows) >= num_images:
                        break
                    dicom = "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))
                    view = rng.choice(["PA", "AP", "LATERAL", ""], p=[0.4, 0.3, 0.2, 0.1]) if k else "PA"
                    w, h = synth.size((2544, 3056), scale)
                    split_rows.append([dicom, study, subject, native])
                    meta_rows.append([dicom, subject, study, "CHEST (PA AND LAT)", view, h, w, 21800506, 213014.531])
                    rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
                    synth.write_jpeg(root / rel, synth.radiograph(rng, w, h, findings=synth.shown(values)))
        synth.write_csv(root / f"{PREFIX}chexpert.csv.gz", ["subject_id", "study_id", *CLASSES], label_rows)
        synth.write_csv(root / f"{PREFIX}split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
        synth.write_csv(root / f"{PREFIX}metadata.csv.gz", METADATA, meta_rows)


SOURCE = MimicCxr()
