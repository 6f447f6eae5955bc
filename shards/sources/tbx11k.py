"""TBX11K (Liu et al., CVPR 2020 "Rethinking Computer-aided Tuberculosis Diagnosis"; TPAMI 2023).

Layout (root `TBX11K/`): images `imgs/{health,sick,tb}/<h|s|tb><4 digits>.png`, the hidden test set
`imgs/test/`, other TB sets' images `imgs/extra/mc+shenzhen/{CHNCXR,MCUCXR}_<4 digits>_<0|1>.png` and
`imgs/extra/da+db/<folder>/<n|p>[x]<number>.<png|jpg>`; split lists `lists/{TBX11K,all}_{train,val,
trainval}.txt` and `lists/all_test.txt`, one image path relative to `imgs/` per line, no label; COCO
boxes `annotations/json/<list name>.json` (and VOC `annotations/xml/`, not read).

Splits: the official `lists/all_train.txt` (TBX11K train + the extra images) is the train pool, from
which val is held out; the official `lists/all_val.txt` is our test set, as Ark uses TBX11K's val
list as its test list. `lists/all_test.txt` is left out: the TBX11K test images have no public
labels (an online challenge scores them), and its extra images are left out with them so that the
test split stays the official val list. The TBX11K-only lists are these minus `extra/`
(`subset` in each sample says where an image comes from).

Labels, one per image (multiclass): Healthy, Sick but non-TB, TB, from the image's folder. That is
the image classification task of TBX11K's papers (healthy / sick-but-non-TB / TB), and its official
code labels images the same way (`mmdet/datasets/pipelines/loading.py`: 0 health, 1 sick, 2 tb, and
for extra images TB when a CHNCXR/MCUCXR name ends in 1 or a da+db name starts with `p`, else 0,
healthy). Active versus latent TB is a property of boxes, not images (30 images hold both kinds), so
it stays in the boxes: each COCO annotation is one box labelled with its category's name from the
json's `categories` (ActiveTuberculosis, ObsoletePulmonaryTuberculosis = latent,
PulmonaryTuberculosis = uncertain), `bbox` [x, y, w, h] in image pixels -> xyxy.

Quirks (from yun-liu/Tuberculosis's code, torchxrayvision's TBX11K test files, Idiap mednet's tbx11k
module and third-party builders of the extra images):
- Images are 512 x 512 PNGs stored as 8-bit RGB (three equal channels); the json's `width` and
  `height` are 512 too, so its boxes are in original pixels.
- `imgs/tb/tb1199.png` is in `tb/` but has no box (Idiap mednet notes it): a TB image with no boxes.
- Category 3 (PulmonaryTuberculosis, uncertain TB) is declared in every json but occurs only in the
  hidden test set: train and val boxes are active or latent.
- The official converter shifts VOC boxes by -1 px, so a box may start at -1: the build clips it.
- `extra/` images were never box-annotated: they carry no `boxes` at all (not an empty list). Their
  names say which set they come from: CHNCXR (Shenzhen, `origin` "shenzhen/<stem>"), MCUCXR
  (Montgomery, `origin` "montgomery/<stem>"); da+db names (`n`/`nx` normal, `p`/`px` TB; the `x`
  ones are `.jpg` among `.png`s, said to be DB's) do not say for sure which set, so they get
  `subset` "da+db" and no origin.
- No patient ids exist: the image is the patient (one radiograph per subject).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import find
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Healthy", "Sick but non-TB", "TB"]
FOLDERS = {"health": "Healthy", "sick": "Sick but non-TB", "tb": "TB"}
CATEGORIES = ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis"]
NATIVE = {"all_train": "train", "all_val": "test"}  # native list -> our split
OTHER_SETS = [(re.compile(r"^CHNCXR_\d{4}_([01])\.png$"), "shenzhen"),
              (re.compile(r"^MCUCXR_\d{4}_([01])\.png$"), "montgomery")]
DADB = re.compile(r"^([np])x?\d+\.(png|jpg)$", re.IGNORECASE)


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, image path relative to imgs/) per non-blank line."""
    return [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


def _label(rel: str, where: str) -> tuple[str, str, str | None]:
    """(class, subset, origin) of a list entry, from its folder or, under extra/, its file name."""
    parts = PurePosixPath(rel).parts
    if len(parts) == 2 and parts[0] in FOLDERS:
        return FOLDERS[parts[0]], "tbx11k", None
    if len(parts) > 2 and parts[0] == "extra":
        name = parts[-1]
        for pattern, subset in OTHER_SETS:
            match = pattern.match(name)
            if match:
                return ("TB" if match.group(1) == "1" else "Healthy"), subset, f"{subset}/{sanitize_id(name[:-4])}"
        match = DADB.match(name)
        if match and "da+db" in parts:
            return ("TB" if match.group(1).lower() == "p" else "Healthy"), "da+db", None
    raise ShardsError(f"{where}: cannot tell the label of {rel!r} (expected health/, sick/ or tb/<name>.png, or "
                      f"extra/.../CHNCXR_####_<0|1>.png, MCUCXR_####_<0|1>.png or da+db/.../<n|p>[x]<number>)")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_boxes(path: Path, listed: set[str], list_name: str) -> dict[str, list[dict]]:
    """{image path relative to imgs/: boxes} of a COCO json whose images are all in `listed`."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShardsError(f"{path}: cannot read COCO json: {exc}") from exc
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("categories", "images")):
        raise ShardsError(f"{path}: not a COCO file (needs lists 'categories', 'images' and 'annotations')")
    names = {c.get("id"): c.get("name") for c in doc["categories"]}
    files = {}
    for image in doc["images"]:
        if image.get("file_name") not in listed:
            raise ShardsError(f"{path}: image {image.get('id')} ({image.get('file_name')!r}) is not in {list_name}")
        files[image["id"]] = image["file_name"]
    boxes: dict[str, list[dict]] = {}
    for ann in doc.get("annotations", []):
        where = f"{path}: annotation {ann.get('id')}"
        if ann.get("image_id") not in files:
            raise ShardsError(f"{where} has image_id {ann.get('image_id')!r}, which the file's images lack")
        if ann.get("category_id") not in names:
            raise ShardsError(f"{where} has category_id {ann.get('category_id')!r}, "
                              f"not one of the file's categories {sorted(names)}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_finite, bbox)) and bbox[2] > 0 and bbox[3] > 0):
            raise ShardsError(f"{where} has bbox {bbox!r}, expected [x, y, width, height] with width, height > 0")
        x, y, w, h = (float(v) for v in bbox)
        boxes.setdefault(files[ann["image_id"]], []).append(
            {"label": names[ann["category_id"]], "xyxy": [x, y, x + w, y + h], "reader": None})
    return boxes


class Tbx11k(Source):
    name = "tbx11k"
    task = "multiclass"
    box_classes = list(CATEGORIES)
    layout = "lists/all_{train,val}.txt + annotations/json/all_{train,val}.json (COCO); imgs/{health,sick,tb,extra}/"
    holdout = {"val": 0.1}  # official val (all_val) is the test set, as in Ark; val comes from all_train

    def scan(self, root: Path) -> Scan:
        records, files, seen = [], [], {}
        for native, split in NATIVE.items():
            list_file = find(root, f"lists/{native}.txt", what=f"tbx11k split list lists/{native}.txt")
            json_file = find(root, f"annotations/json/{native}.json",
                             what=f"tbx11k box file annotations/json/{native}.json")
            entries = _read_list(list_file)
            boxes = _read_boxes(json_file, {rel for _, rel in entries}, list_file.name)
            for line, rel in entries:
                where = f"{list_file}:{line}"
                if rel in seen:
                    raise ShardsError(f"{where}: {rel} is listed again (first at {seen[rel]})")
                seen[rel] = where
                label, subset, origin = _label(rel, where)
                found = boxes.get(rel, [])
                if found and label != "TB":
                    raise ShardsError(f"{json_file}: {len(found)} boxes on {rel}, a {label} image by {where}")
                image_id = sanitize_id(str(PurePosixPath(rel).with_suffix("")))
                records.append(Record(
                    id=image_id, image=f"imgs/{rel}", split=split, patient=image_id, frontal=True,
                    labels={c: int(c == label) for c in CLASSES},
                    boxes=None if subset != "tbx11k" else found, origin=origin, extra={"subset": subset}))
            files += [list_file, json_file]
        notes = []
        if (root / "lists" / "all_test.txt").is_file():
            notes.append("left out lists/all_test.txt: TBX11K's test labels are not public")
        return Scan(records=records, classes=list(CLASSES), label_files=files, notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        w, h = synth.size((512, 512), scale)
        counters: dict[str, int] = {}
        lists: dict[str, list[str]] = {"train": [], "val": []}
        boxes: dict[str, list[tuple[int, list[float]]]] = {}
        for i in range(num_images):
            kind = KINDS[i % len(KINDS)]
            native = "val" if i % 3 == 1 else "train"
            number = counters[kind] = counters.get(kind, 0) + 1
            rel, label = _lookalike_name(kind, number, native, rng)
            lists[native].append(rel)
            regions = None
            if kind == "tb" and number != 2:  # the second TB image has no box, like tb1199.png
                boxes[rel] = _lookalike_boxes(rng, w, h, both=number == 3)
                # TB shows in its boxes (active and latent alike); a TB image without any, over the chest.
                regions = {CLASSES.index("TB"): synth.boxes_region(
                    [[x, y, x + bw, y + bh] for _, (x, y, bw, bh) in boxes[rel]], width=w, height=h)}
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([c == label for c in CLASSES]), regions=regions)
            path = root / "imgs" / rel
            if rel.endswith(".jpg"):
                synth.write_jpeg(path, pixels)
            else:
                synth.write_png8(path, pixels, mode="RGB")
        tests = [f"test/{n:04d}.png" for n in range(1, 3)]  # unlabelled: written, listed, never read
        for rel in tests:
            synth.write_png8(root / "imgs" / rel, synth.radiograph(rng, w, h), mode="RGB")
        lists["trainval"] = lists["train"] + lists["val"]
        for native, names in lists.items():
            _write_lookalike_files(root, f"all_{native}", names, boxes, (w, h))
            _write_lookalike_files(root, f"TBX11K_{native}", [n for n in names if not n.startswith("extra/")],
                                   boxes, (w, h))
        _write_lookalike_files(root, "all_test", tests, {}, (w, h))


# The look-alike's mix, in order: every folder and every kind of extra image within ten images.
KINDS = ["health", "tb", "sick", "shenzhen", "tb", "dadb", "health", "tb", "montgomery", "sick"]


def _lookalike_name(kind: str, number: int, native: str, rng: np.random.Generator) -> tuple[str, str]:
    """(path relative to imgs/, class) of the `number`-th look-alike image of a kind."""
    if kind in FOLDERS:
        return f"{kind}/{ {'health': 'h', 'sick': 's', 'tb': 'tb'}[kind]}{number:04d}.png", FOLDERS[kind]
    tb = int(rng.uniform() < 0.5)
    label = "TB" if tb else "Healthy"
    if kind == "dadb":  # DA's .png and DB's .jpg share the folder; n / p say normal / TB
        suffix = "x" if number % 2 == 0 else ""
        return f"extra/da+db/{native}/{'np'[tb]}{suffix}{number}.{'jpg' if suffix else 'png'}", label
    prefix = "CHNCXR" if kind == "shenzhen" else "MCUCXR"
    return f"extra/mc+shenzhen/{prefix}_{number:04d}_{tb}.png", label


def _lookalike_boxes(rng: np.random.Generator, w: int, h: int, *, both: bool) -> list[tuple[int, list[float]]]:
    """1-3 (category id, COCO [x, y, w, h]) boxes as float32 values, the way the converter writes them."""
    categories = [int(c) for c in rng.choice([1, 2], size=int(rng.integers(1, 4)), p=[0.8, 0.2])]
    if both:  # like the 30 images with active and latent TB
        categories = [1, 2] + categories[2:]
    out = []
    for category in categories:
        x, y = rng.uniform(0.1, 0.6, size=2) * (w, h)
        bw, bh = rng.uniform(0.08, 0.3, size=2) * (w, h)
        out.append((category, [float(np.float32(v)) for v in (x, y, bw, bh)]))
    return out


def _write_lookalike_files(root: Path, name: str, images: list[str], boxes: dict, size: tuple[int, int]) -> None:
    """`lists/<name>.txt` and `annotations/json/<name>.json` as `make_json_anno.py` writes them."""
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / f"{name}.txt").write_text("".join(f"{rel}\n" for rel in images))
    doc = {"info": {"description": "TBX11K Dataset", "version": "1.0", "year": 2020},
           "licenses": [{"id": 1, "name": "Attribution-NonCommercial-ShareAlike License"}],
           "categories": [{"id": k, "name": c, "supercategory": "Tuberculosis"} for k, c in enumerate(CATEGORIES, 1)],
           "images": [], "annotations": []}
    for image_id, rel in enumerate(images, start=1):
        doc["images"].append({"id": image_id, "file_name": rel, "width": size[0], "height": size[1],
                              "date_captured": "2020-06-24 12:42:41.793194", "license": 1, "coco_url": "",
                              "flickr_url": ""})
        for category, bbox in boxes.get(rel, []):
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": category, "iscrowd": 0, "area": int(bbox[2] * bbox[3]),
                                       "bbox": bbox, "width": size[0], "height": size[1]})
    (root / "annotations" / "json").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "json" / f"{name}.json").write_text(json.dumps(doc))


SOURCE = Tbx11k()
