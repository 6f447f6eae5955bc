"""Independent readers of the native label files, written from the datasets' documentation and not
from `shards.sources`, so that tests compare the shards against the files, not the code against
itself. Each returns {id: {"labels": ..., "readers": ...}}."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def _value(cell: str):
    return None if cell == "" else int(float(cell))


def chestxray14(root: Path) -> dict:
    with open(root / "Data_Entry_2017_v2020.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    classes = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
               "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
    name, findings = header.index("Image Index"), header.index("Finding Labels")
    sex, age = header.index("Patient Gender"), header.index("Patient Age")
    facts = {r[name][:-4]: {"labels": {c: int(c in r[findings].split("|")) for c in classes}, "boxes": [],
                            "sex": r[sex] or None, "age": float(r[age]) if r[age] else None} for r in rows}
    with open(root / "BBox_List_2017.csv", newline="") as f:  # Image Index, Finding Label, x, y, w, h, '', '', ''
        for image, label, x, y, w, h, *_ in list(csv.reader(f))[1:]:
            x, y, w, h = float(x), float(y), float(w), float(h)
            facts[image[:-4]]["boxes"].append((label, [x, y, x + w, y + h], None))
    return facts


def chexpert(root: Path) -> dict:
    facts = {}
    for native in ("train", "valid"):
        for row in _rows(root / f"{native}.csv"):
            parts = row.pop("Path").split("/")
            sex, age = {"Male": "M", "Female": "F"}.get(row.pop("Sex")), row.pop("Age")
            for meta in ("Frontal/Lateral", "AP/PA"):
                row.pop(meta)
            facts[f"{parts[-3]}_{parts[-2]}_{parts[-1][:-4]}"] = {"labels": {c: _value(v) for c, v in row.items()},
                                                                  "sex": sex, "age": float(age) if age else None}
    return facts


def mimic_cxr(root: Path) -> dict:
    labels = {}
    for row in _rows(root / "mimic-cxr-2.0.0-chexpert.csv.gz"):
        key = (row.pop("subject_id"), row.pop("study_id"))
        labels[key] = {c: _value(v) for c, v in row.items()}
    classes = next(iter(labels.values())).keys()
    return {row["dicom_id"]: {"labels": labels.get((row["subject_id"], row["study_id"]), dict.fromkeys(classes))}
            for row in _rows(root / "mimic-cxr-2.0.0-split.csv.gz")}


def vindr_cxr(root: Path) -> dict:
    facts = {}
    for row in _rows(root / "annotations" / "image_labels_train.csv"):
        image, rad = row.pop("image_id"), row.pop("rad_id")
        facts.setdefault(image, {"labels": None, "readers": {}})["readers"][rad] = {c: int(v) for c, v in row.items()}
    for row in _rows(root / "annotations" / "image_labels_test.csv"):  # its header says "Other disease"
        image = row.pop("image_id")
        facts[image] = {"labels": {"Other diseases" if c == "Other disease" else c: _value(v) for c, v in row.items()}}
    for image in facts:
        facts[image]["boxes"] = []
    for split in ("train", "test"):  # one row per box; a "No finding" row has no coordinates
        for row in _rows(root / "annotations" / f"annotations_{split}.csv"):
            if row["class_name"] != "No finding":
                xyxy = [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
                facts[row["image_id"]]["boxes"].append((row["class_name"], xyxy, row["rad_id"] or None))
    return facts


def rsna_pneumonia(root: Path) -> dict:
    classes = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
    facts = {row["patientId"]: {"labels": {c: int(c == row["class"]) for c in classes}, "boxes": []}
             for row in _rows(root / "stage_2_detailed_class_info.csv")}
    for row in _rows(root / "stage_2_train_labels.csv"):
        if row["Target"] == "1":
            x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            facts[row["patientId"]]["boxes"].append(("Lung Opacity", [x, y, x + w, y + h], None))
    return {k.replace(".", "_"): v for k, v in facts.items()}


def shenzhen(root: Path) -> dict:
    return {p.stem: {"labels": {"Tuberculosis": int(p.stem[-1])}} for p in (root / "CXR_png").glob("CHNCXR_*.png")}


READERS = {f.__name__: f for f in (chestxray14, chexpert, mimic_cxr, vindr_cxr, rsna_pneumonia, shenzhen)}


def assert_boxes(sample: dict, want: list[tuple], key: str) -> None:
    """The sample's boxes are the label file's (label, original xyxy, reader), scaled by hand from
    the original to the stored size and clipped to it, within a pixel."""
    (ow, oh), (sw, sh) = sample["original_size"], sample["size"]
    expected = []
    for label, (x0, y0, x1, y1), reader in want:
        box = [min(max(x0 * sw / ow, 0), sw), min(max(y0 * sh / oh, 0), sh),
               min(max(x1 * sw / ow, 0), sw), min(max(y1 * sh / oh, 0), sh)]
        if box[0] < box[2] and box[1] < box[3]:
            expected.append((label, box, reader))
    got = [(b["label"], b["xyxy"], b["reader"]) for b in sample["boxes"]]
    assert len(got) == len(expected), (key, got, expected)
    for label, box, reader in expected:  # each expected box matches a stored one, used once
        match = next((g for g in got if g[0] == label and g[2] == reader
                      and max(abs(a - b) for a, b in zip(g[1], box)) <= 1), None)
        assert match is not None, (key, label, box, reader, got)
        got.remove(match)


def rle_pixels(codes) -> int:
    """Pixels of a set of Kaggle RLE rows: the sum of their run lengths (`-1` rows have none)."""
    return sum(int(n) for code in codes if code != "-1" for n in code.split()[1::2])


def rle_union(codes, width: int, height: int):
    """The union of RLE rows' masks decoded by Kaggle's own loop, as a (height, width) bool array."""
    import numpy as np

    from test_shards_masks import reference_rle2mask

    mask = np.zeros((height, width), dtype=bool)
    for code in codes:
        if code != "-1":
            mask |= reference_rle2mask(code, width, height).T > 0
    return mask


def nearest(mask, size):
    """Nearest-neighbour resize to (width, height) by pixel centres (exact at whole ratios)."""
    import numpy as np

    (width, height), (h, w) = size, mask.shape
    rows = ((np.arange(height) + 0.5) * h / height).astype(int)
    cols = ((np.arange(width) + 0.5) * w / width).astype(int)
    return mask[rows][:, cols]
