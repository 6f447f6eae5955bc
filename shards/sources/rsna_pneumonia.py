"""RSNA Pneumonia Detection: `stage_2_train_labels.csv` (`patientId,x,y,width,height,Target`, one
row per box) and `stage_2_detailed_class_info.csv` (`patientId,class`); images
`stage_2_train_images/<patientId>.dcm`. Three classes, one per image: a multi-class head. Each
`Target` 1 row is one `Lung Opacity` box (`x,y,width,height` in the 1024 px original)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import binary_value, find, number, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


class RsnaPneumonia(Source):
    name = "rsna_pneumonia"
    task = "multiclass"
    box_classes = ["Lung Opacity"]
    layout = "stage_2_train_labels.csv + stage_2_detailed_class_info.csv; stage_2_train_images/<patientId>.dcm"
    holdout = {"val": 0.1, "test": 0.1}  # Ark's release: 21,295 / 2,680 / 2,709; no labelled official test

    def scan(self, root: Path) -> Scan:
        boxes_file = find(root, "stage_2_train_labels.csv", what="rsna_pneumonia label file stage_2_train_labels.csv")
        class_file = find(root, "stage_2_detailed_class_info.csv",
                          what="rsna_pneumonia label file stage_2_detailed_class_info.csv")
        _, box_rows = read_rows(boxes_file, required=["patientId", "x", "y", "width", "height", "Target"])
        _, class_rows = read_rows(class_file, required=["patientId", "class"])
        classes: dict[str, str] = {}
        for line, row in class_rows:
            label = row["class"]
            if label not in CLASSES:
                raise ShardsError(f"{class_file}:{line}: unknown class {label!r} (expected one of {CLASSES})")
            if classes.setdefault(row["patientId"], label) != label:
                raise ShardsError(f"{class_file}:{line}: patient {row['patientId']} has two classes")
        boxes: dict[str, list] = {}
        for line, row in box_rows:
            pid = row["patientId"]
            target = binary_value(row["Target"], path=boxes_file, line=line, column="Target")
            if pid not in classes:
                raise ShardsError(f"{boxes_file}:{line}: patient {pid} is missing from {class_file.name}")
            if target != (classes[pid] == "Lung Opacity"):
                raise ShardsError(f"{boxes_file}:{line}: Target {target} contradicts class {classes[pid]!r}")
            entry = boxes.setdefault(pid, [])
            if target:
                x, y, w, h = (number(row[k], path=boxes_file, line=line, column=k) for k in ("x", "y", "width", "height"))
                entry.append({"label": "Lung Opacity", "xyxy": [x, y, x + w, y + h], "reader": None})
        records = [
            Record(id=sanitize_id(pid), image=f"stage_2_train_images/{pid}.dcm", split="train", patient=pid,
                   frontal=True, labels={c: int(c == classes[pid]) for c in CLASSES},
                   boxes=boxes[pid])
            for pid in boxes
        ]
        return Scan(records=records, classes=list(CLASSES), label_files=[boxes_file, class_file])

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        box_rows, class_rows = [], []
        for _ in range(num_images):
            pid = "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(2)) + f"-{int(rng.integers(0, 2**16)):04x}"
            label = rng.choice(CLASSES, p=[0.3, 0.4, 0.3])
            w, h = synth.size((1024, 1024), scale)
            boxes = []
            if label == "Lung Opacity":
                for _ in range(int(rng.integers(1, 4))):  # one row per box, the class repeated per row
                    box = [round(float(v), 1) for v in rng.uniform([0, 0, 50, 50], [600, 600, 300, 400]) * scale]
                    box_rows.append([pid, *box, 1])
                    class_rows.append([pid, label])
                    boxes.append([box[0], box[1], box[0] + box[2], box[1] + box[3]])
            else:
                box_rows.append([pid, "", "", "", "", 0])
                class_rows.append([pid, label])
            # The opacity shows in its boxes only; the other two classes have no place: over the chest.
            regions = {CLASSES.index(label): synth.boxes_region(boxes, width=w, height=h)} if boxes else None
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([c == label for c in CLASSES]), regions=regions)
            synth.write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", pixels, uid_seed=pid, bits=8, window=False)
        synth.write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], box_rows)
        synth.write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], class_rows)


SOURCE = RsnaPneumonia()
