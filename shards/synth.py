"""Look-alike raw datasets: each source writes its own native layout (`Source.synthesize`); this
module holds what they share, a fake radiograph and the writers for each original encoding.

`python -m shards synth --out DIR` calls `synthesize_all`. Nothing here is random beyond the seed.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image


def radiograph(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth chest-like picture in [0, 1]: bright body, darker lungs, a spine, film noise.
    Smooth so that it compresses like a real CXR, not like noise. Shape (height, width)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / width - 0.5, y / height - 0.5
    body = np.exp(-(x**2) / 0.12 - (y**2) / 0.2)
    dx = 0.16 + 0.03 * rng.standard_normal()
    lungs = sum(np.exp(-((x - s * dx) ** 2) / 0.012 - ((y + 0.02) ** 2) / 0.05) for s in (-1, 1))
    spine = np.exp(-(x**2) / 0.001)
    spot = rng.uniform(-0.3, 0.3, size=2)
    lesion = 0.3 * rng.uniform() * np.exp(-((x - spot[0]) ** 2 + (y - spot[1]) ** 2) / 0.003)
    img = 0.25 + 0.55 * body - 0.35 * lungs + 0.25 * spine + lesion
    img += 0.02 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def size(base: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(16, round(base[0] * scale)), max(16, round(base[1] * scale))


def write_png8(path: Path, pixels: np.ndarray, *, mode: str = "L") -> None:
    img = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    if mode != "L":
        img = img.convert(mode)  # real sets carry a few RGB/RGBA files
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "PNG")


def write_png16(path: Path, pixels: np.ndarray, *, bits: int = 12) -> None:
    """16-bit container, `bits` of real data (as most 16-bit CXR PNGs are)."""
    data = np.round(pixels * (2**bits - 1)).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path, "PNG")


def write_jpeg(path: Path, pixels: np.ndarray, *, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path, "JPEG", quality=quality)


def write_dicom(path: Path, pixels: np.ndarray, *, uid_seed: str, bits: int = 12,
                monochrome1: bool = False, window: bool = True) -> None:
    """An uncompressed DX DICOM; MONOCHROME1 stores inverted values, as some scanners do."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    top = 2**bits - 1
    values = (1.0 - pixels) if monochrome1 else pixels
    data = np.round(values * top).astype(np.uint8 if bits <= 8 else np.uint16)
    uid = generate_uid(entropy_srcs=[uid_seed])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.Modality, ds.PatientID = "DX", uid_seed[:64]
    ds.Rows, ds.Columns = data.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = data.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = top // 2, top
    ds.PixelData = data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_csv(path: Path, header: list[str], rows: list[list], *, trailing_comma: bool = False) -> None:
    """CSV (or CSV.GZ by suffix) with `\\n` line ends; `trailing_comma` appends an empty field to
    every line, like NIH's older Data_Entry_2017.csv."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in [header, *rows]:
        writer.writerow(list(row) + ([""] if trailing_comma else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: reproducible bytes
            f.write(buf.getvalue().encode())
    else:
        path.write_text(buf.getvalue())


def synthesize_all(out: Path, *, num_images: int, seed: int, scale: float, sources: list[str] | None = None) -> dict:
    """Write every (or the named) source under `out/<source>/`; returns {source: root}."""
    from shards.sources import get_source, source_names

    roots = {}
    for offset, name in enumerate(sources or source_names()):
        root = out / name
        get_source(name).synthesize(root, num_images=num_images, seed=seed * 1000 + offset, scale=scale)
        roots[name] = root
    return roots
