"""Montgomery County TB set (NLM): no label file, the label is in the name, and each image has a
left and a right lung mask. The zip unpacks to

    MontgomerySet/CXR_png/MCUCXR_<4 digits>_<0|1>.png           (0 normal, 1 tuberculosis)
    MontgomerySet/ManualMask/{leftMask,rightMask}/<same name>.png
    MontgomerySet/ClinicalReadings/<same stem>.txt

`--root` is the folder holding `MontgomerySet/` (or `MontgomerySet/` itself). 138 images, 80
normal and 58 TB; the numbers skip (0001..0006, 0008, 0011, ...). No official split: seeded
patient-disjoint hold-outs, as for its sibling set Shenzhen.

Quirks, from the NLM readme and public code that reads the set:
- Images are 4020 x 4892 or 4892 x 4020 (both orientations); the readme says 12 gray-level bits,
  while a mirror reads 8-bit grayscale: both decode (16-bit PNGs are min-max windowed).
- Masks (mask classes "Left lung", "Right lung": the patient's left, drawn on the image's right)
  are the image's size, 0/255, nonzero = lung; a few carry stray blobs, kept as drawn. An image
  whose mask file is missing has no mask of that class (it was not annotated), with a note.
- ClinicalReadings: `Patient's Sex: F ` (a trailing space; M, F or O), `Patient's Age: 027Y`
  (a DICOM age string, nnn + D/W/M/Y), then the free-text reading. Sex and age (in years) go
  into the sample as `sex` and `age`; a value outside those forms is an error naming the file
  and line. A reading `NO REPORT (same pt as MCUCXR_0162_1)` marks a second image of one
  person: both get that person's number as patient, so the hold-outs keep them together.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.samples import Record
from shards.sources import Scan, Source

CLASSES = ["Tuberculosis"]
MASK_FOLDERS = {"Left lung": "leftMask", "Right lung": "rightMask"}
NAME = re.compile(r"^MCUCXR_(\d{4})_([01])\.png$")
SEX = re.compile(r"^Patient's Sex:(.*)$")
AGE = re.compile(r"^Patient's Age:(.*)$")
AGE_VALUE = re.compile(r"^(\d{1,3})([DWMY])$")  # DICOM AS: days, weeks, months, years
SAME_PERSON = re.compile(r"same pt as (MCUCXR_(\d{4})_[01])")
DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def _base(root: Path) -> str:
    """The set's folder relative to root: `MontgomerySet/` as unzipped, or '' when root is it."""
    for base in ("MontgomerySet/", ""):
        if (root / base / "CXR_png").is_dir():
            return base
    raise ShardsError(f"montgomery image folder not found: {root / 'MontgomerySet' / 'CXR_png'} "
                      f"(or {root / 'CXR_png'})")


def read_clinical(path: Path) -> dict:
    """{"sex", "age", "same_as"} of one ClinicalReadings file (None where it says nothing)."""
    facts = {"sex": None, "age": None, "same_as": None}
    for line, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        text = text.strip()
        if match := SEX.match(text):
            raw = match.group(1).strip()
            if raw and raw not in ("M", "F", "O"):
                raise ShardsError(f"{path}:{line}: 'Patient's Sex' has {raw!r}, expected M, F or O")
            facts["sex"] = raw or None
        elif match := AGE.match(text):
            raw = match.group(1).strip()
            value = AGE_VALUE.match(raw)
            if raw and not value:
                raise ShardsError(f"{path}:{line}: 'Patient's Age' has {raw!r}, expected a DICOM age like 027Y")
            if value:
                number, unit = int(value.group(1)), value.group(2)
                facts["age"] = number if unit == "Y" else round(number * DAYS_PER[unit] / 365.25, 2)
        elif match := SAME_PERSON.search(text):
            facts["same_as"] = match.group(2)
    return facts


def _person(number: str, same_as: dict[str, str]) -> str:
    """The number of the person an image shows: follow `same pt as` links to their end."""
    seen = {number}
    while number in same_as and same_as[number] not in seen:
        number = same_as[number]
        seen.add(number)
    return number


class Montgomery(Source):
    name = "montgomery"
    task = "binary"
    layout = ("MontgomerySet/CXR_png/MCUCXR_<4 digits>_<0|1>.png (label in the name), "
              "ManualMask/{leftMask,rightMask}/, ClinicalReadings/*.txt")
    holdout = {"val": 0.1, "test": 0.2}  # no official split; as Shenzhen
    mask_classes = list(MASK_FOLDERS)

    def scan(self, root: Path) -> Scan:
        base = _base(root)
        records, ignored, unmasked, unread = [], [], [], []
        clinical, same_as = {}, {}
        for path in sorted((root / base / "CXR_png").iterdir()):
            match = NAME.match(path.name)
            if not match:
                ignored.append(path.name)
                continue
            number, label = match.groups()
            reading = root / base / "ClinicalReadings" / f"{path.stem}.txt"
            if reading.is_file():
                clinical[path.name] = read_clinical(reading)
                if clinical[path.name]["same_as"]:
                    same_as[number] = clinical[path.name]["same_as"]
            else:
                clinical[path.name] = {"sex": None, "age": None}
                unread.append(reading.name)
            masks = {}
            for mask_class, folder in MASK_FOLDERS.items():
                rel = f"{base}ManualMask/{folder}/{path.name}"
                if (root / rel).is_file():
                    masks[mask_class] = {"files": [rel]}
                else:
                    unmasked.append(rel)
            records.append(Record(id=path.stem, image=f"{base}CXR_png/{path.name}", split="train", patient=number,
                                  frontal=True, labels={"Tuberculosis": int(label)}, masks=masks))
        for record in records:
            name = Path(record.image).name
            record.patient = _person(record.patient, same_as)
            record.extra = {"sex": clinical[name]["sex"], "age": clinical[name]["age"]}
        notes = []
        if ignored:
            notes.append(f"ignored {len(ignored)} files not named MCUCXR_<4 digits>_<0|1>.png: {ignored[:5]}")
        if unmasked:
            notes.append(f"{len(unmasked)} mask files missing (no mask of that class): {unmasked[:5]}")
        if unread:
            notes.append(f"{len(unread)} images have no ClinicalReadings file (sex and age unknown): {unread[:5]}")
        if same_as:
            notes.append(f"{len(same_as)} images show a person of another image (`same pt as`): one patient each")
        return Scan(records=records, classes=list(CLASSES), label_files=[], notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        folder = root / "MontgomerySet"
        number, names = 0, []
        for i in range(num_images):
            number += int(rng.integers(1, 4))  # the real numbers skip
            label = int(i >= num_images * 0.58)  # 80 of 138 normal, numbered first
            name = f"MCUCXR_{number:04d}_{label}"
            names.append(name)
            w, h = synth.size((4020, 4892) if i % 3 else (4892, 4020), scale)
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([label]))
            if i % 4 == 3:
                synth.write_png16(folder / "CXR_png" / f"{name}.png", pixels)
            else:
                synth.write_png8(folder / "CXR_png" / f"{name}.png", pixels)
            for mask_class, mask_folder in MASK_FOLDERS.items():
                side = 1 if mask_class == "Left lung" else -1  # the patient's left is the image's right
                mask = _lung(rng, w, h, side=side, stray=i == 2 and side == 1)
                synth.write_png8(folder / "ManualMask" / mask_folder / f"{name}.png", mask.astype(np.float32))
            sex = "O" if i == 5 else str(rng.choice(["M", "F"]))
            reading = "normal" if not label else str(rng.choice(
                ["right upper lobe cavitary infiltrate", "bilateral upper lobe fibronodular changes",
                 "left pleural effusion", "calcified granulomas, old TB"]))
            if label and i == num_images - 1 and len(names) > 1 and names[-2].endswith("_1"):
                reading = f"NO REPORT (same pt as {names[-2]})"  # a second image of one person
            text = f"Patient's Sex: {sex} \nPatient's Age: {int(rng.integers(5, 90)):03d}Y\n{reading}\n"
            path = folder / "ClinicalReadings" / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def _lung(rng: np.random.Generator, w: int, h: int, *, side: int, stray: bool) -> np.ndarray:
    """A lung-shaped ellipse on one side of the image; `stray` adds a small blob elsewhere, as a few
    real masks have. Shape (h, w), bool."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x / w - 0.5, y / h - 0.5
    cx, rx, ry = side * (0.16 + 0.02 * rng.standard_normal()), 0.1 + 0.02 * rng.uniform(), 0.28 + 0.03 * rng.uniform()
    mask = ((x - cx) / rx) ** 2 + ((y + 0.02) / ry) ** 2 <= 1
    if stray:
        mask |= (x - 0.4) ** 2 + (y - 0.4) ** 2 <= 0.02**2
    return mask


SOURCE = Montgomery()
