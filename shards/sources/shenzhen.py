"""Shenzhen TB set: no label file, the label is in the name: `CXR_png/CHNCXR_<4 digits>_<0|1>.png`
(0 normal, 1 tuberculosis); one image per person."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shards import synth
from shards.errors import ShardsError
from shards.samples import Record
from shards.sources import Scan, Source

CLASSES = ["Tuberculosis"]
NAME = re.compile(r"^CHNCXR_(\d{4})_([01])\.png$")


class Shenzhen(Source):
    name = "shenzhen"
    task = "binary"
    layout = "CXR_png/CHNCXR_<4 digits>_<0|1>.png (label in the file name)"
    holdout = {"val": 0.1, "test": 0.2}  # Ark's release: 463 / 65 / 134

    def scan(self, root: Path) -> Scan:
        folder = root / "CXR_png"
        if not folder.is_dir():
            raise ShardsError(f"shenzhen image folder not found: {folder}")
        records, ignored = [], []
        for path in sorted(folder.iterdir()):
            match = NAME.match(path.name)
            if not match:
                ignored.append(path.name)  # Thumbs.db and friends
                continue
            number, label = match.groups()
            records.append(Record(id=path.stem, image=f"CXR_png/{path.name}", split="train", patient=number,
                                  frontal=True, labels={"Tuberculosis": int(label)}))
        notes = [f"ignored {len(ignored)} files not named CHNCXR_<4 digits>_<0|1>.png: {ignored[:5]}"] if ignored else []
        return Scan(records=records, classes=list(CLASSES), label_files=[], notes=notes)

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        for i in range(num_images):
            path = root / "CXR_png" / f"CHNCXR_{i + 1:04d}_{i % 2}.png"
            w, h = synth.size((3000, 2919), scale)
            pixels = synth.radiograph(rng, w, h, findings=synth.shown([i % 2]))
            # Mostly 8-bit grayscale, a few RGB (as shipped) and 16-bit ones to cover that decoder.
            if i % 5 == 4:
                synth.write_png16(path, pixels)
            else:
                synth.write_png8(path, pixels, mode="RGB" if i % 5 == 3 else "L")


SOURCE = Shenzhen()
