"""CANDID-PTX (Dunedin Hospital, NZ; Feng et al., Radiology: AI 2021): three binary labels,
Pneumothorax, Acute Rib Fracture and Chest Tube, each with a mask.

Layout: `Pneumothorax_reports.csv` (one row per pneumothorax region: `SOPInstanceUID`,
`StudyInstanceUID`, `filename`, `EncodedPixels`, `Report`; `-1` = none), `acute_rib_fracture.csv`
and `chest_tube.csv` (`anon_SOPUID`, a reference column, `mask_rle`: rows only for images that show
one), and a folder of DICOMs named by their SOPInstanceUID (`dataset/` in the copies we know of;
any folder under the root is searched).

The data needs a data-use agreement, and no copy of its files is public: these facts come from
public code that reads them (a PyTorch Lightning CandidPtxDataset, a VLM data processor, a
split builder), not from the files, and the look-alike follows them:
- The reports file is the image list: every image has at least one row there. An image's rows
  are unioned into one mask, `-1` rows add nothing. Rib-fracture and chest-tube files list
  positive images only; an image they do not list is a negative, its mask known empty (the whole
  set was annotated for all three). A `-1` row there is read as "none" too.
- `SOPInstanceUID` / `anon_SOPUID` equal the DICOM's file name (loaders match them to
  `os.listdir` names); whether that name ends in `.dcm` is not known, so both are looked up.
- Patient: the `filename` column starts with `P<digits>_` (loaders parse the patient from it).
- The chest-tube file has rows for images missing from the reports file (a loader skips them):
  they are ignored and counted in a note. The rib-fracture file is also seen named
  `Rib_fracture_mask_rle.csv`; both names are read.
- RLE: SIIM-ACR's relative, column-major form on the 1024 x 1024 grid (every public decoder of
  these files is SIIM's `rle2mask` with its transpose); see `shards.sources.siim_acr`.
- Identical rows of one image count once, as in SIIM-ACR.

Splits: no official split; seeded patient-disjoint hold-outs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.labelfiles import find, read_rows
from shards.samples import Record, sanitize_id
from shards.sources import Scan, Source
from shards.sources.siim_acr import NO_MASK, encode_rle, group_rle_rows, mask_spec, region

CLASSES = ["Pneumothorax", "Acute Rib Fracture", "Chest Tube"]
REPORTS = "Pneumothorax_reports.csv"
FINDING_FILES = {"Acute Rib Fracture": ("acute_rib_fracture.csv", "Rib_fracture_mask_rle.csv"),
                 "Chest Tube": ("chest_tube.csv",)}
PATIENT = re.compile(r"^(P\d+)_")


def _index_files(root: Path) -> dict[str, str]:
    """file name -> path relative to root, for every file under root but the label files."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".csv"):
                found[name] = Path(folder, name).relative_to(root).as_posix()
    return found


class CandidPtx(Source):
    name = "candid_ptx"
    task = "multilabel"
    layout = ("Pneumothorax_reports.csv + acute_rib_fracture.csv + chest_tube.csv (relative RLE by SOPInstanceUID); "
              "<folder>/<SOPInstanceUID>[.dcm]")
    holdout = {"val": 0.1, "test": 0.2}  # no official split
    mask_classes = list(CLASSES)

    def scan(self, root: Path) -> Scan:
        reports = find(root, REPORTS, what=f"candid_ptx label file {REPORTS}")
        _, rows = read_rows(reports, required=["SOPInstanceUID", "filename", "EncodedPixels"])
        found = {"Pneumothorax": group_rle_rows(rows, path=reports, key="SOPInstanceUID", column="EncodedPixels",
                                                strict=False)}
        facts: dict[str, dict] = {}
        for line, row in rows:
            match = PATIENT.match(row["filename"])
            if not match:
                raise ShardsError(f"{reports}:{line}: column 'filename' has {row['filename']!r}, "
                                  "expected P<digits>_...")
            facts.setdefault(row["SOPInstanceUID"], {"patient": match.group(1),
                                                     "study": row.get("StudyInstanceUID") or None})
        label_files, notes = [reports], []
        for finding, names in FINDING_FILES.items():
            path = find(root, *names, what=f"candid_ptx label file {names[0]}")
            _, finding_rows = read_rows(path, required=["anon_SOPUID", "mask_rle"])
            found[finding] = group_rle_rows(finding_rows, path=path, key="anon_SOPUID", column="mask_rle", strict=False)
            label_files.append(path)
            stray = set(found[finding][0]) - set(facts)
            if stray:
                notes.append(f"{path.name}: {len(stray)} images are not in {REPORTS} and were ignored")
        for finding, (_, duplicates) in found.items():
            if duplicates:
                notes.append(f"{finding}: {duplicates} rows repeat an earlier row of their image and were counted once")

        files = _index_files(root)
        records = []
        for uid, fact in facts.items():
            codes = {finding: found[finding][0].get(uid, [None]) for finding in CLASSES}
            name = uid if uid in files or uid.endswith(".dcm") else f"{uid}.dcm"
            records.append(Record(
                id=sanitize_id(uid.removesuffix(".dcm")), image=files.get(name, f"dataset/{name}"), split="train",
                patient=fact["patient"], study=fact["study"],
                labels={f: int(any(c is not None for c in codes[f])) for f in CLASSES},
                masks={f: mask_spec(codes[f]) for f in CLASSES}))
        return Scan(records=records, classes=list(CLASSES), label_files=label_files, notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        width, height = synth.size((1024, 1024), scale)
        reports, findings = [], {f: [] for f in CLASSES[1:]}
        patient, counter = 0, 0
        for i in range(num_images):
            if i == 0 or rng.uniform() < 0.6:
                patient, counter = patient + 1, 0
            counter += 1
            digits = "".join(str(int(v)) for v in rng.integers(10**12, 10**13, size=2))
            uid = f"1.2.826.0.1.3680043.8.498.{digits}.dcm"
            study = f"1.2.826.0.1.3680043.8.498.{int(rng.integers(10**12, 10**13))}"
            regions = {f: [region(rng, width, height) for _ in range(int(rng.integers(1, 3)))]
                       if rng.uniform() < p else [] for f, p in zip(CLASSES, (0.35, 0.25, 0.3))}
            where = {k: synth.mask_region(np.logical_or.reduce(regions[f])) for k, f in enumerate(CLASSES)
                     if regions[f]}  # each finding in its own masks only
            pixels = synth.radiograph(rng, width, height, findings=synth.shown([bool(regions[f]) for f in CLASSES]),
                                      regions=where)
            shown = [r for f in CLASSES for r in regions[f]]
            if shown:
                union = np.logical_or.reduce(shown)
                pixels[union] = np.clip(pixels[union] + 0.08, 0, 1)  # the masks show a little too
            synth.write_dicom(root / "dataset" / uid, pixels, uid_seed=uid, bits=int(rng.choice([10, 12])))
            report = ("Small pneumothorax, apex clear, tubes noted." if regions["Pneumothorax"]
                      else "No pneumothorax. Lungs clear, heart normal.")
            for code in [encode_rle(r) for r in regions["Pneumothorax"]] or [NO_MASK]:
                reports.append([uid, study, f"P{patient}_{counter}", code, report])
            for finding in CLASSES[1:]:
                findings[finding] += [[uid, len(findings[finding]) + 1, encode_rle(r)] for r in regions[finding]]
            if i == 2:
                findings["Chest Tube"].append([uid, len(findings["Chest Tube"]) + 1, NO_MASK])  # a -1 row: none
        if findings["Acute Rib Fracture"]:
            findings["Acute Rib Fracture"].append(list(findings["Acute Rib Fracture"][0]))  # an identical row repeated
        findings["Chest Tube"].append(["1.2.826.0.1.3680043.8.498.99999.dcm", 0, "5 3"])  # an image not in the reports
        synth.write_csv(root / REPORTS, ["SOPInstanceUID", "StudyInstanceUID", "filename", "EncodedPixels", "Report"],
                        reports)
        for finding, (file_name, *_) in FINDING_FILES.items():
            synth.write_csv(root / file_name, ["anon_SOPUID", "annotation_ref", "mask_rle"], findings[finding])


SOURCE = CandidPtx()
