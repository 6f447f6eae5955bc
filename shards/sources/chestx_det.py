"""ChestX-Det (Deepwise AI Lab; Lian et al. 2021): 3,578 NIH ChestX-ray14 images, each annotated by
radiologists for 13 findings with an instance box and an instance polygon.

Layout: `ChestX_Det_train.json` (3,025 images) and `ChestX_Det_test.json` (553), from the GitHub
repository, and the images of `train_data.zip` / `test_data.zip`, found by name under any folder
whose name starts with the split's (`train/`, `train_data/train/`, `test/`, `test_data/test/`).
The official split is the two files; val is held out of train (patient-disjoint where the NIH
patient is known, else per image).

Each file is one JSON list of `{"file_name", "syms", "boxes", "polygons"}`: one entry of `syms`
per instance, with its box `[x0, y0, x1, y1]` and its polygon `[[x, y], ...]` at the same index,
in the 1024 px original. A record gives the 13 labels (1 where a class has an instance, else 0),
every box, and one mask per class: the union of that class's polygons, or `{}` where the image
has none. Every image carries all 13 masks, because every image was read for all 13 findings: a
class it has no polygon of is a known negative, and an empty mask lets a segmentation loss use
its pixels (a missing mask would say "not annotated", which is not so here).

Quirks, from the files themselves (git snapshot of Deepwise-AILab/ChestX-Det-Dataset):
- `file_name` is a Deepwise number (`36199.png` .. `70958.png`), not NIH's `Image Index`. The
  maintainers posted the map as `mapping.json` (issue #2); it lacks the 35 images ChestX-Det added
  to ChestX-Det10 (issue #11). Read from `<root>/mapping.json` when present, as a JSON object
  pairing a ChestX-Det name with an NIH name either way round (its layout is not public, so both
  are taken). The first upload of ChestX-Det10 named images by `Image Index`; such names map to
  themselves. `origin` is `chestxray14/<NIH id>` where the map or the name gives it, else absent
  (counted in a note); `patient` is then the NIH patient, else the image.
- The same class repeats in `syms`, one entry per instance (up to 36 on one image); 547 train and
  64 test images have empty lists (no finding).
- Polygons are mostly closed (last point = first) and repeat points; some classes list the same
  polygon twice; a few polygons have only 4 points. A box is the polygon's extent for 98 %, and
  a little larger for the rest. Coordinates are whole numbers within 1..1022.
- The official split is not patient-disjoint: 271 NIH patients have images in both files.

An entry without the four fields, a class outside the 13, a box that is not four numbers with
x0 <= x1 and y0 <= y1, a polygon that is not [x, y] number pairs, or lists of unequal length is an
error naming the file, the entry's position and its file name (JSON has no useful line numbers:
the files are one line each).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from shards import masks, synth
from shards.errors import ShardsError
from shards.labelfiles import find
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion",
           "Emphysema", "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax"]
LABEL_FILES = {"train": "ChestX_Det_train.json", "test": "ChestX_Det_test.json"}
MAPPING_FILE = "mapping.json"
NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.png$")
FIELDS = ("file_name", "syms", "boxes", "polygons")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardsError(f"{path}: cannot read JSON: {exc}") from exc


def _nih_names(root: Path) -> tuple[dict[str, str], list[Path]]:
    """ChestX-Det file name -> NIH Image Index, from the maintainers' map when present."""
    path = root / MAPPING_FILE
    if not path.is_file():
        return {}, []
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise ShardsError(f"{path}: expected a JSON object pairing ChestX-Det file names with NIH Image Index values")
    out = {}
    for key, value in doc.items():
        pair = [str(key).strip(), str(value).strip()]
        pair = [p if p.endswith(".png") else f"{p}.png" for p in pair]
        nih = [p for p in pair if NIH_NAME.match(p)]
        if len(nih) != 1:
            raise ShardsError(f"{path}: entry {key!r}: {value!r}: expected one ChestX-Det name and one NIH "
                              f"Image Index (<8 digits>_<3 digits>.png)")
        out[pair[1 - pair.index(nih[0])]] = nih[0]
    return out, [path]


def _index_images(root: Path, split: str) -> dict[str, str]:
    """basename -> path relative to root, for every PNG under the folders named `<split>*`."""
    found = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(split)):
        for folder, _, files in os.walk(top):
            for name in sorted(files):
                if name.lower().endswith(".png"):
                    found.setdefault(name, Path(folder, name).relative_to(root).as_posix())
    return found


def _instances(entry: dict, *, where: str) -> list[tuple[str, list, list]]:
    """(class, box, polygon) per instance of one entry, checked."""
    missing = [f for f in FIELDS if f not in entry]
    if missing:
        raise ShardsError(f"{where}: no field {missing[0]!r}")
    syms, boxes, polygons = entry["syms"], entry["boxes"], entry["polygons"]
    if not all(isinstance(v, list) for v in (syms, boxes, polygons)) or not len(syms) == len(boxes) == len(polygons):
        raise ShardsError(f"{where}: 'syms', 'boxes' and 'polygons' must be lists of one length "
                          f"(one item per instance)")
    out = []
    for k, (sym, box, polygon) in enumerate(zip(syms, boxes, polygons)):
        if sym not in CLASSES:
            raise ShardsError(f"{where}: 'syms'[{k}] is {sym!r}, expected one of {', '.join(CLASSES)}")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))
                and box[0] <= box[2] and box[1] <= box[3]):
            raise ShardsError(f"{where}: 'boxes'[{k}] is {box!r}, expected [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
        if not (isinstance(polygon, list) and polygon and all(
                isinstance(p, list) and len(p) == 2 and all(map(_is_number, p)) for p in polygon)):
            raise ShardsError(f"{where}: 'polygons'[{k}] is not a list of [x, y] number pairs")
        out.append((sym, box, polygon))
    return out


class ChestXDet(Source):
    name = "chestx_det"
    task = "multilabel"
    layout = ("ChestX_Det_{train,test}.json (official train/test) [+ mapping.json to NIH names]; "
              "{train,test}*/**/<number>.png")
    holdout = {"val": 0.1}  # from the official train; the official test stays as it is
    mask_classes = list(CLASSES)
    box_classes = list(CLASSES)

    def scan(self, root: Path) -> Scan:
        nih_names, mapping_files = _nih_names(root)
        records, label_files, seen, unmapped = [], [], set(), 0
        for split, file_name in LABEL_FILES.items():
            path = find(root, file_name, what=f"chestx_det label file {file_name}")
            label_files.append(path)
            entries = _load_json(path)
            if not isinstance(entries, list):
                raise ShardsError(f"{path}: expected a JSON list of images")
            images = _index_images(root, split)
            for position, entry in enumerate(entries):
                name = entry.get("file_name") if isinstance(entry, dict) else None
                where = f"{path}: entry {position} ({name})"
                if not isinstance(name, str) or not name.strip():
                    raise ShardsError(f"{where}: expected an object with a 'file_name'")
                if name in seen:
                    raise ShardsError(f"{where}: {name} is listed twice")
                seen.add(name)
                instances = _instances(entry, where=where)
                nih = name if NIH_NAME.match(name) else nih_names.get(name)
                unmapped += nih is None
                image_id = sanitize_id(name.removesuffix(".png"))
                records.append(Record(
                    id=image_id, image=images.get(name, f"{split}/{name}"), split=split,
                    patient=str(int(nih[:8])) if nih else image_id, frontal=True,
                    labels={c: int(any(sym == c for sym, _, _ in instances)) for c in CLASSES},
                    boxes=[{"label": sym, "xyxy": list(box), "reader": None} for sym, box, _ in instances],
                    masks={c: ({"polygons": [p for sym, _, p in instances if sym == c]}
                               if any(sym == c for sym, _, _ in instances) else {}) for c in CLASSES},
                    origin=f"chestxray14/{sanitize_id(nih.removesuffix('.png'))}" if nih else None))
        notes = []
        if unmapped:
            notes.append(f"{unmapped} images have no NIH Image Index ({MAPPING_FILE} "
                         f"{'lacks them' if mapping_files else 'not found'}): no origin, each its own patient")
        return Scan(records=records, classes=list(CLASSES), label_files=label_files + mapping_files, notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        entries = {"train": [], "test": []}
        mapping = {}
        number, patient, follow_up = 36199, 0, 0
        w, h = synth.size((1024, 1024), scale)
        for i in range(num_images):
            number += int(rng.integers(1, 40))
            if i == 0 or rng.uniform() < 0.6:
                patient, follow_up = patient + int(rng.integers(1, 30)), 0
            else:
                follow_up += 1
            name = f"{number}.png"
            if i % 7 != 6:  # the images ChestX-Det added are missing from the maintainers' map
                mapping[name] = f"{patient:08d}_{follow_up:03d}.png"
            split = "test" if i % 5 == 4 else "train"
            syms, boxes, polygons = [], [], []
            if rng.uniform() > 0.2:  # a fifth have no finding: empty lists
                for c in rng.choice(len(CLASSES), size=int(rng.integers(1, 4)), replace=False):
                    for _ in range(int(rng.integers(1, 3))):  # one sym per instance: classes repeat
                        polygon = _blob(rng, width=w, height=h)
                        xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
                        grow = int(rng.uniform() < 0.2)  # a few boxes are a pixel larger than their polygon
                        boxes.append([max(min(xs) - grow, 0), max(min(ys) - grow, 0),
                                      min(max(xs) + grow, w - 1), min(max(ys) + grow, h - 1)])
                        syms.append(CLASSES[c])
                        polygons.append(polygon)
                if rng.uniform() < 0.3:  # the same polygon listed twice for its class
                    syms.append(syms[0])
                    boxes.append(list(boxes[0]))
                    polygons.append([list(p) for p in polygons[0]])
            entries[split].append({"file_name": name, "syms": syms, "boxes": boxes, "polygons": polygons})
            # Each finding inside its class's polygons, rasterised as a build draws the mask.
            regions = {CLASSES.index(c): synth.mask_region(masks.rasterize(
                {"polygons": [p for sym, p in zip(syms, polygons) if sym == c]}, (w, h))) for c in set(syms)}
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([int(c in syms) for c in CLASSES]),
                                      regions=regions)
            synth.write_png8(root / split / name, pixels)
        for split, file_name in LABEL_FILES.items():
            (root / file_name).write_text(json.dumps(entries[split]))  # one line, as shipped
        (root / MAPPING_FILE).write_text(json.dumps(mapping))


def _blob(rng: np.random.Generator, *, width: int, height: int) -> list[list[int]]:
    """A closed, whole-pixel polygon around a random centre, well inside the image; some points
    repeated, as the annotation tool writes them."""
    radius = rng.uniform(0.06, 0.14) * min(width, height)
    cx, cy = rng.uniform(radius + 2, width - radius - 3), rng.uniform(radius + 2, height - radius - 3)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(8, 16))))
    reach = radius * rng.uniform(0.6, 1.0, size=angles.size)
    points = [[int(round(cx + r * np.cos(a))), int(round(cy + r * np.sin(a)))] for a, r in zip(angles, reach)]
    points.insert(1, list(points[0]))
    return points + [list(points[0])]


SOURCE = ChestXDet()
