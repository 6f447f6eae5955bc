"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019): one binary label, Pneumothorax, and its mask.

Layout: `stage_2_train.csv` (stage 2: `ImageId,EncodedPixels`, every stage-1 train and test image,
12,047 of them) or, without it, stage 1's `train-rle.csv` (the 10,675 train images); DICOMs under
`dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm` and the same tree under
`dicom-images-test/`. `ImageId` is the SOPInstanceUID, the file's stem. Stage 2's own test images
(`stage_2_images/ID_*.dcm`) were never labelled and are not read.

Quirks, and where the facts come from (public loaders of the files: torchxrayvision's SIIM dataset
and its copy of the label file, the 1st and 5th place solutions' code, Kaggle's `mask_functions.py`):
- `train-rle.csv`'s header is `ImageId, EncodedPixels`, the second name with a leading space
  (loaders index `df[' EncodedPixels']`); the values likely carry one too (`' -1'`). Names and
  values are read stripped. `stage_2_train.csv` has no space.
- Several rows per image, one per pneumothorax region: their masks are unioned. `-1` is an image
  without one (its mask is known empty). An image with both `-1` and a mask is an error.
- An image's identical rows count once (the stage-1 sample submission repeats rows; the label
  file copy we know of has none): the mask is the same either way, and its pixel count stays what
  the distinct rows state. A build notes how many it dropped.
- The RLE is Kaggle's relative, column-major form (`mask_functions.rle2mask`: each start counts
  from the end of the previous run), on the original 1024 x 1024 grid, in both files. We looked
  for a switch to the standard absolute form in stage 2 and found none: the 1st place's stage-2
  submission (`TripletSubmit.py`) and the 5th place's (`ensemble_forsub1_stage2.py`) both encode
  relative runs, and stage-2 loaders decode `stage_2_train.csv` with `rle2mask`.
- No patient column, and the DICOMs' PatientID is a per-image UUID: each image is its own patient.

Splits: no labelled official test (stage 2's test labels were never released), so seeded
hold-outs of the whole labelled pool.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shards import masks, synth
from shards.errors import ShardsError
from shards.labelfiles import find, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

CLASSES = ["Pneumothorax"]
LABEL_FILES = ("stage_2_train.csv", "train-rle.csv")  # the first found; stage 2's is the superset
IMAGE_FOLDERS = ("dicom-images-train", "dicom-images-test")
ENCODING = "relative"
NO_MASK = "-1"


def read_rle(raw: str, *, path: Path, line: int, column: str) -> str | None:
    """One RLE cell: None for `-1` (nothing there), else the code, checked to be pairs of
    non-negative whole numbers; anything else is an error naming the file, line and column."""
    if raw == NO_MASK:
        return None
    try:
        if not masks.runs(raw, ENCODING):
            raise masks.MaskError("no runs")
    except masks.MaskError:
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw[:40]!r}, expected -1 or "
                          f"run-length pairs of whole numbers") from None
    return raw


def encode_rle(mask: np.ndarray) -> str:
    """A bool mask (height, width) as Kaggle's relative column-major RLE (what `rle2mask` reads);
    unlike Kaggle's `mask2rle` it keeps a run that ends on the last pixel."""
    flat = np.concatenate([[False], mask.T.reshape(-1), [False]])  # down each column, then across
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{gap} {end - start}" for gap, start, end in zip(gaps, starts, ends))


def region(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A look-alike finding region: an ellipse over one lung, at least a few pixels across."""
    y, x = np.mgrid[0:height, 0:width]
    side = rng.choice([-1, 1])
    cx = width * (0.5 + side * rng.uniform(0.15, 0.3))
    cy = height * rng.uniform(0.25, 0.6)
    rx = max(2.0, width * rng.uniform(0.03, 0.1))
    ry = max(2.0, height * rng.uniform(0.04, 0.15))
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def group_rle_rows(rows, *, path: Path, key: str, column: str, strict: bool = True):
    """{image: [distinct RLE codes, or None for a `-1` row]} in file order, and how many identical
    rows were dropped. `strict`: an image with both `-1` and a mask is an error."""
    found: dict[str, list] = {}
    duplicates = 0
    for line, row in rows:
        image = row[key]
        if not image:
            raise ShardsError(f"{path}:{line}: column {key!r} is empty")
        code = read_rle(row[column], path=path, line=line, column=column)
        seen = found.setdefault(image, [])
        if code in seen:
            duplicates += 1
            continue
        if strict and seen and (code is None or None in seen):
            raise ShardsError(f"{path}:{line}: image {image} has both a {NO_MASK} row and a mask")
        seen.append(code)
    return found, duplicates


def mask_spec(codes: list) -> dict:
    """The mask of an image's rows: their runs unioned, or known empty."""
    runs = [c for c in codes if c is not None]
    return {"rle": runs, "encoding": ENCODING} if runs else {}


def index_dicoms(root: Path, folders) -> dict[str, str]:
    """file stem -> path relative to root, for every .dcm under `folders`."""
    found = {}
    for top in folders:
        for folder, _, files in os.walk(root / top):
            for name in files:
                if name.endswith(".dcm"):
                    found[name[:-4]] = Path(folder, name).relative_to(root).as_posix()
    return found


class SiimAcr(Source):
    name = "siim_acr"
    task = "binary"
    layout = ("stage_2_train.csv or train-rle.csv (ImageId, EncodedPixels: relative RLE, several rows per image); "
              "dicom-images-{train,test}/<study>/<series>/<ImageId>.dcm")
    holdout = {"val": 0.1, "test": 0.2}  # no labelled official test
    mask_classes = list(CLASSES)

    def scan(self, root: Path) -> Scan:
        label_file = find(root, *LABEL_FILES, what="siim_acr label file stage_2_train.csv or train-rle.csv")
        _, rows = read_rows(label_file, required=["ImageId", "EncodedPixels"])
        found, duplicates = group_rle_rows(rows, path=label_file, key="ImageId", column="EncodedPixels")
        images = index_dicoms(root, IMAGE_FOLDERS)
        records = [
            Record(id=sanitize_id(image), image=images.get(image, f"{IMAGE_FOLDERS[0]}/{image}.dcm"),
                   split="train", patient=image, frontal=True,
                   labels={"Pneumothorax": int(any(c is not None for c in codes))},
                   masks={"Pneumothorax": mask_spec(codes)})
            for image, codes in found.items()
        ]
        notes = []
        if duplicates:
            notes.append(f"{label_file.name}: {duplicates} rows repeat an earlier row of their image "
                         "and were counted once")
        unlisted = len(set(images) - set(found))
        if unlisted:
            notes.append(f"{unlisted} DICOMs under {' and '.join(IMAGE_FOLDERS)} have no row in {label_file.name}")
        return Scan(records=records, classes=list(CLASSES), label_files=[label_file], notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        width, height = synth.size((1024, 1024), scale)
        stage1, stage2 = [], []
        for i in range(num_images):
            folder = IMAGE_FOLDERS[1] if i % 6 == 5 else IMAGE_FOLDERS[0]  # stage-1 test: labelled in stage 2 only
            low, high = [1000, 1517875000, 100000], [14000, 1517876000, 999999]
            serial, stamp, tail = (int(v) for v in rng.integers(low, high))
            uid = f"1.2.276.0.7230010.3.1.4.8323329.{serial}.{stamp}.{tail}"
            study = f"1.2.276.0.7230010.3.1.2.8323329.{serial}.{stamp}.{tail - 1}"
            series = f"1.2.276.0.7230010.3.1.3.8323329.{serial}.{stamp}.{tail - 2}"
            count = int(rng.integers(1, 4)) if rng.uniform() < 0.45 else 0  # regions of pneumothorax
            regions = [region(rng, width, height) for _ in range(count)]
            union = np.logical_or.reduce(regions) if regions else None
            where = {0: synth.mask_region(union)} if regions else None  # the finding in its mask only
            pixels = synth.radiograph(rng, width, height, findings=synth.shown([bool(regions)]), regions=where)
            if regions:
                pixels[union] = np.clip(pixels[union] + 0.08, 0, 1)  # the mask shows a little too
            synth.write_dicom(root / folder / study / series / f"{uid}.dcm", pixels, uid_seed=uid, bits=8, window=False)
            codes = [encode_rle(r) for r in regions] or [NO_MASK]
            if i == 1:
                codes.append(codes[0])  # an identical row repeated
            stage2 += [[uid, code] for code in codes]
            if folder == IMAGE_FOLDERS[0]:
                stage1 += [[uid, f" {code}"] for code in codes]
        synth.write_csv(root / "train-rle.csv", ["ImageId", " EncodedPixels"], stage1)
        synth.write_csv(root / "stage_2_train.csv", ["ImageId", "EncodedPixels"], stage2)


SOURCE = SiimAcr()
