"""PadChest (BIMCV): one label file, `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv` (also
shipped gzipped, `.csv.gz`: either is read), one row per image, and the images as 16-bit PNGs in
the folders the download's zips unpack to, `<ImageDir>/<ImageID>` (`0/` .. `54/`).

Columns used (by name): `ImageID`, `ImageDir`, `StudyID` (study), `PatientID` (patient),
`Projection` (view; PA, AP and AP_horizontal are frontal), `MethodLabel` (`Physician`: labelled
by hand, about 27 %; `RNN_model`: by the authors' report labeller) and `Labels`. The class set
is every label the file uses (about 190, e.g. 'normal', 'pleural effusion', 'COPD signs'), in
alphabetical order; an image's facts are 1 for each label in its row and 0 for the others. The
sample keeps `projection` and `method_label`, so training can keep hand-labelled rows only.
No official split: seeded patient-disjoint hold-outs.

Quirks, from public code that reads the file (torchxrayvision, Microsoft's model-drift code):
- The header starts with an unnamed column (pandas' row index).
- `Labels` is a Python list literal, `['pacemaker', 'chronic changes']`, read with
  `ast.literal_eval` (never eval); each label is stripped of stray spaces and empty strings are
  dropped. A blank cell, `[]` or `['']` is a row with no labels: every fact `None` (not mentioned),
  with a note. Anything that is not a list of strings is an error naming the file, line and column.
- `MethodLabel` outside {Physician, RNN_model} (blank is kept as None) is an error likewise.
- About 20 listed images are missing from the download or truncated / broken PNGs; the build skips
  unreadable images within `--max-bad` and lists them in the manifest.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import find, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source

LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
FRONTAL = ("PA", "AP", "AP_horizontal")
METHODS = ("Physician", "RNN_model")
# The real header: an unnamed index column, then the file's 35 named columns.
HEADER = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
          "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
          "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
          "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
          "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
          "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
          "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]
# A dozen of the real labels for the look-alike (each drawn as its own finding).
VOCABULARY = ["normal", "pleural effusion", "cardiomegaly", "pneumonia", "chronic changes", "pacemaker",
              "COPD signs", "nodule", "atelectasis", "infiltrates", "aortic elongation", "NSG tube"]


def parse_labels(raw: str, *, path: Path, line: int) -> list[str]:
    """The labels of one `Labels` cell: stripped, empty ones dropped, order and repeats removed."""
    if raw.strip() == "":
        return []
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ShardsError(f"{path}:{line}: column 'Labels' has {raw[:60]!r}, expected a list of strings like "
                          f"['normal']")
    return sorted({v.strip() for v in value if v.strip()})


class PadChest(Source):
    name = "padchest"
    task = "multilabel"
    layout = f"{LABEL_FILE}[.gz] (Labels as a Python list); <ImageDir>/<ImageID> 16-bit PNGs in 0/..54/"
    holdout = {"val": 0.1, "test": 0.2}  # no official split

    def scan(self, root: Path) -> Scan:
        label_file = find(root, LABEL_FILE, f"{LABEL_FILE}.gz", what=f"padchest label file {LABEL_FILE}[.gz]")
        _, rows = read_rows(label_file, required=["ImageID", "ImageDir", "StudyID", "PatientID", "Projection",
                                                  "MethodLabel", "Labels"])
        found, unlabelled = [], []
        for line, row in rows:
            for column in ("ImageID", "PatientID"):
                if not row[column]:
                    raise ShardsError(f"{label_file}:{line}: column {column!r} is blank")
            if not row["ImageDir"].isdigit():
                raise ShardsError(f"{label_file}:{line}: column 'ImageDir' has {row['ImageDir']!r}, "
                                  f"expected a folder number")
            method = row["MethodLabel"] or None
            if method is not None and method not in METHODS:
                raise ShardsError(f"{label_file}:{line}: column 'MethodLabel' has {method!r}, "
                                  f"expected {' or '.join(METHODS)}")
            labels = parse_labels(row["Labels"], path=label_file, line=line)
            if not labels:
                unlabelled.append(row["ImageID"])
            found.append((row, method, labels))
        classes = sorted({label for _, _, labels in found for label in labels}, key=lambda c: (c.casefold(), c))
        records = []
        for row, method, labels in found:
            view = row["Projection"] or None
            records.append(Record(
                id=sanitize_id(row["ImageID"].removesuffix(".png")),
                image=f"{int(row['ImageDir'])}/{row['ImageID']}",
                split="train",
                patient=row["PatientID"],
                study=row["StudyID"] or None,
                view=view,
                frontal=None if view is None else view in FRONTAL,
                labels={c: int(c in labels) for c in classes} if labels else dict.fromkeys(classes),
                extra={"projection": view, "method_label": method},
            ))
        notes = [f"{len(unlabelled)} rows have no labels (blank, [] or ['']): facts left None, e.g. "
                 f"{unlabelled[:3]}"] if unlabelled else []
        return Scan(records=records, classes=classes, label_files=[label_file], notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        rows, patient, study, views = [], "", "", []
        for i in range(num_images):
            if not views:  # a new study: a PA (or AP) view, often with a lateral one
                if i == 0 or rng.uniform() < 0.6:
                    patient = _digits(rng, 36)
                study = _digits(rng, 38)
                views = [str(rng.choice(["PA", "PA", "AP", "AP_horizontal"]))] + (["L"] if rng.uniform() < 0.5 else [])
            projection = views.pop(0)
            labels, cell = _labels(rng, i)
            image_id = _image_id(rng, study, style=i % 2)
            folder = [0, 1, 2, 54][i % 4]
            w, h = synth.size((int(rng.integers(2000, 3000)), int(rng.integers(2000, 3000))), scale)
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([int(c in labels) for c in VOCABULARY]))
            path = root / str(folder) / image_id
            bits = 16 if i % 5 == 1 else 12
            synth.write_png16(path, pixels, bits=bits)
            if i == 3:  # a truncated PNG, as ~20 of the real ones are
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            row = dict.fromkeys(HEADER, "")
            row.update({
                "": i, "ImageID": image_id, "ImageDir": folder, "StudyID": study,
                "StudyDate_DICOM": f"20{int(rng.integers(9, 18)):02d}0615", "PatientID": patient,
                "PatientBirth": f"{int(rng.integers(1920, 2000))}.0",
                "PatientSex_DICOM": str(rng.choice(["M", "F"])), "ViewPosition_DICOM": projection,
                "Projection": projection, "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
                "Modality_DICOM": "CR", "PhotometricInterpretation_DICOM": "MONOCHROME2", "BitsStored_DICOM": bits,
                "Rows_DICOM": h, "Columns_DICOM": w, "ReportID": int(rng.integers(10**6, 10**7)),
                "Report": "sin hallazgos patologicos ." if labels == ["normal"] else "hallazgos en estudio .",
                "MethodLabel": "Physician" if rng.uniform() < 0.27 else "RNN_model", "Labels": cell,
                "Localizations": "['loc  cardiac']" if "cardiomegaly" in labels else "[]",
                "LabelsLocalizationsBySentence": repr([[label] for label in labels]), "labelCUIS": "[]",
                "LocalizationsCUIS": "[]",
            })
            rows.append(list(row.values()))
        synth.write_csv(root / f"{LABEL_FILE}.gz", HEADER, rows)


def _labels(rng: np.random.Generator, index: int) -> tuple[list[str], str]:
    """(the labels an image shows, its `Labels` cell), with the file's quirks at fixed rows."""
    labels = [str(c) for c in rng.choice(VOCABULARY[1:], size=int(rng.integers(1, 4)), replace=False)]
    if rng.uniform() < 0.3:
        labels = ["normal"]
    if index == 2:
        return labels, repr([" " + labels[0], *labels[1:]])  # a stray space before a label
    if index == 5:
        return [], "['']"  # a list with one empty label
    if index == 7:
        return [], ""  # a blank cell
    return labels, repr(labels)


def _image_id(rng: np.random.Generator, study: str, *, style: int) -> str:
    """An ImageID in one of the file's two styles."""
    if style:
        return f"{study}_{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz0123456789'), 6))}.png"
    sequence = "-".join(f"{int(rng.integers(0, n)):0{k}d}" for n, k in ((5, 2), (200, 3), (200, 3)))
    return f"2168401113669640{_digits(rng, 29)}_{sequence}.png"


def _digits(rng: np.random.Generator, n: int) -> str:
    """n random decimal digits: PadChest's ids are longer than any numpy integer."""
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


SOURCE = PadChest()
