"""CheXpert: `train.csv` and `valid.csv` (`Path,Sex,Age,Frontal/Lateral,AP/PA,` + 14 labels), with
`Path` prefixed `CheXpert-v1.0/` or `CheXpert-v1.0-small/` and relative to the CSV's parent."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import age_value, chexpert_value, find, read_rows, sex_value
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
           "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
           "Fracture", "Support Devices"]
META = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
FOLDERS = ("", "CheXpert-v1.0-small/", "CheXpert-v1.0/")


def _image_path(raw: str, csv_dir: Path, root: Path, where: str) -> PurePosixPath:
    parts = PurePosixPath(raw).parts
    if len(parts) < 4 or not parts[0].startswith("CheXpert-v1.0"):
        raise ShardsError(f"{where}: unexpected Path {raw!r} (expected CheXpert-v1.0[-small]/<split>/patient...)")
    # The prefix names the download (full or small), not a folder we can trust: drop it.
    return PurePosixPath(csv_dir.relative_to(root).as_posix(), *parts[1:])


class CheXpert(Source):
    name = "chexpert"
    task = "multilabel"
    layout = "[CheXpert-v1.0[-small]/]train.csv, valid.csv; images at the CSV's Path without its first folder"
    holdout = {"val": 0.05}  # valid.csv (234 images) is the test set, as in Ark; val comes from train

    def scan(self, root: Path) -> Scan:
        records, files = [], []
        for native, split in (("train", "train"), ("valid", "test")):
            path = find(root, *(f"{folder}{native}.csv" for folder in FOLDERS), what=f"chexpert label file {native}.csv")
            files.append(path)
            _, rows = read_rows(path, required=META + CLASSES)
            for line, row in rows:
                where = f"{path}:{line}"
                image = _image_path(row["Path"], path.parent, root, where)
                patient, study = image.parts[-3], image.parts[-2]
                frontal = row["Frontal/Lateral"] == "Frontal"
                records.append(Record(
                    id=sanitize_id(f"{patient}_{study}_{image.stem}"),
                    image=str(image),
                    split=split,
                    patient=patient,
                    study=f"{patient}/{study}",
                    view=(row["AP/PA"] or None) if frontal else "LATERAL",
                    frontal=frontal,
                    labels={c: chexpert_value(row[c], path=path, line=line, column=c) for c in CLASSES},
                    extra={"source_split": native, "sex": sex_value(row["Sex"], path=path, line=line, column="Sex"),
                           "age": age_value(row["Age"], path=path, line=line, column="Age")},
                ))
        return Scan(records=records, classes=list(CLASSES), label_files=files)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        tables = {"train": [], "valid": []}
        patient = 0
        while sum(len(t) for t in tables.values()) < num_images:
            patient += 1
            native = "valid" if patient % 4 == 2 else "train"
            for study in range(1, int(rng.integers(1, 3)) + 1):
                for view in range(1, int(rng.integers(1, 3)) + 1):
                    if sum(len(t) for t in tables.values()) >= num_images:
                        break
                    frontal = view == 1
                    rel = f"{native}/patient{patient:05d}/study{study}/view{view}_{'frontal' if frontal else 'lateral'}.jpg"
                    if native == "valid":  # the validation file has only 0/1
                        values = [rng.choice(["1.0", "0.0"]) for _ in CLASSES]
                    else:  # blank (not mentioned) is the commonest train value, then 1, 0, -1
                        values = [rng.choice(["", "1.0", "0.0", "-1.0"], p=[0.55, 0.2, 0.15, 0.1]) for _ in CLASSES]
                    # Both download prefixes: train.csv from the small set, valid.csv from the full one.
                    prefix = "CheXpert-v1.0-small" if native == "train" else "CheXpert-v1.0"
                    tables[native].append([f"{prefix}/{rel}", rng.choice(["Male", "Female"]), int(rng.integers(18, 90)),
                                           "Frontal" if frontal else "Lateral",
                                           rng.choice(["AP", "PA"]) if frontal else "", *values])
                    w, h = synth.size((2320, 2828), scale)
                    synth.write_jpeg(root / rel, synth.radiograph(rng, w, h, findings=synth.shown(values)))
        for native, rows in tables.items():
            synth.write_csv(root / f"{native}.csv", META + CLASSES, rows)


SOURCE = CheXpert()
