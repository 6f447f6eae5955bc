"""Look-alike raw datasets: each source writes its own native layout (`Source.synthesize`); this
module holds what they share, a fake radiograph with visible findings and the writers for each
original encoding.

A look-alike's labels show in its pixels: every class of a source has a finding, a texture over
the whole chest (`FINDINGS`), drawn where the label file says 1 (fainter where it says -1,
uncertain), so a model can learn them as it would learn real ones. The textures are gratings at
six orientations and two spatial frequencies, and two checkers: each a spectrum that no mix of the
others makes, so an image with several findings shows each, and all of them survive what Ark's
views do to an image (crops down to 8 % of the area, shifts, +-10 degree rotations, contrast and
gamma). Drawing them takes no draws from the source's generator: the label files a seed writes
are the same as without findings.

A finding with a place, a source's box or mask, is drawn there only (`radiograph`'s `regions`, from
`boxes_region` or `mask_region`), so a detector or a segmenter can learn where it is; a finding
without one stays over the whole chest.

`python -m shards synth --out DIR` calls `synthesize_all`. Nothing here is random beyond the seed.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


# Finding k of a source's class list: (kind, angle in degrees, cycles per image side). A grating is
# stripes across `angle`; a checker is the product of two gratings at 0 and 90 degrees, so its
# spectrum is two diagonal gratings of sqrt(2) x the cycles, at angles no grating here uses. Cycles
# are per side of the square canvas that training squashes an image onto: 16 are a period of 4-5
# pixels at a 64-pixel input, 7 about 10 (more than twice as coarse, so a crop's zoom seldom turns
# one into the other). In the order a tiny Swin learns them, the checkers last (the demo's run
# scores them lowest): a source with fewer classes gets the easier ones.
FINDINGS = [("grating", 0, 16), ("grating", 90, 16), ("grating", 0, 7), ("grating", 90, 7)] + [
    ("grating", angle, cycles) for cycles in (16, 7) for angle in (30, 60, 120, 150)] + [
    ("checker", 0, 16), ("checker", 0, 7)]
FINDING_AMPLITUDE = 0.25  # of the [0, 1] range, for each of up to two certain findings (see radiograph)


def finding(index: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Finding `index` of `FINDINGS` at normalised coordinates x, y in [-0.5, 0.5): zero mean, peak
    about 1. `rng` draws its phase, so no two images show it pixel for pixel."""
    kind, angle, cycles = FINDINGS[index]
    phase = rng.uniform(0, 2 * np.pi, size=2)
    if kind == "checker":
        return np.sin(2 * np.pi * cycles * x + phase[0]) * np.sin(2 * np.pi * cycles * y + phase[1]) * np.sqrt(2)
    theta = np.deg2rad(angle)
    across = x * np.cos(theta) + y * np.sin(theta)  # distance across the stripes, in image sides
    return np.sin(2 * np.pi * cycles * across + phase[0])


def shown(facts: Sequence, *, uncertain: float = 0.5) -> dict[int, float]:
    """{finding index: strength} for a source's per-class label facts in class order: 1 (or "1.0",
    True) shows the finding, -1 (uncertain) shows it at `uncertain` strength, 0 and blank do not."""
    out = {}
    for k, fact in enumerate(facts):
        value = float(fact) if fact not in (None, "") else 0.0
        if value == 1:
            out[k] = 1.0
        elif value == -1 and uncertain:
            out[k] = uncertain
    return out


def mask_region(mask: np.ndarray) -> np.ndarray:
    """A bool region (height, width) as a drawing weight in [0, 1]: 1 inside, 0 outside, and a soft
    edge about 2 px wide (a [1, 2, 1] / 4 blur down and across: an edge pixel 0.75, its outer
    neighbour 0.25), so that the finding has an outline, not a hard cut. float32 (height, width)."""
    weight = np.pad(mask.astype(np.float32), 1, mode="edge")
    weight = 0.25 * weight[:-2] + 0.5 * weight[1:-1] + 0.25 * weight[2:]  # (height, width + 2)
    return 0.25 * weight[:, :-2] + 0.5 * weight[:, 1:-1] + 0.25 * weight[:, 2:]


def boxes_region(boxes: Sequence[Sequence[float]], *, width: int, height: int) -> np.ndarray:
    """The union of `boxes` (each x0, y0, x1, y1 in pixels, edges between pixels) as a drawing
    weight (`mask_region`) on a width x height image: each box covers the pixels whose centres it
    holds, at least one."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        left, top = min(max(round(x0), 0), width - 1), min(max(round(y0), 0), height - 1)
        right, bottom = max(min(round(x1), width), left + 1), max(min(round(y1), height), top + 1)
        mask[top:bottom, left:right] = True
    return mask_region(mask)


def radiograph(rng: np.random.Generator, width: int, height: int, *,
               findings: Mapping[int, float] | None = None,
               regions: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
    """A smooth chest-like picture in [0, 1]: bright body, darker lungs, a spine, film noise, and
    the `findings` ({index in FINDINGS: strength}, e.g. from `shown`) drawn over the chest, or,
    for an index in `regions` ({index: (height, width) weight in [0, 1]}, from `boxes_region` or
    `mask_region`), only there, at full amplitude. Smooth so that it compresses like a real CXR,
    not like noise. Shape (height, width)."""
    stray = set(regions or ()) - set(findings or ())
    if stray:
        raise ValueError(f"regions for findings {sorted(stray)} that are not among the findings drawn")
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
    if findings:
        # Phases from a generator of their own, seeded by this image's own draws: the source's
        # generator, and so every label it draws after this image, is left untouched.
        own = np.random.default_rng(np.frombuffer(spot.tobytes() + np.float64(dx).tobytes(), dtype=np.uint32))
        # Many findings at once would clip the picture (and wipe each other out): beyond two, they
        # share the contrast of two.
        amplitude = FINDING_AMPLITUDE * min(1.0, np.sqrt(2 / sum(s * s for s in findings.values())))
        chest = (0.5 + 0.5 * body).astype(np.float32)  # over the whole chest, strongest over the lungs
        for index, strength in sorted(findings.items()):
            weight = regions[index] if regions and index in regions else chest
            img += (amplitude * strength * weight * finding(index, x, y, own)).astype(np.float32)
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


def write_mha(path: Path, pixels: np.ndarray, *, bits: int = 16, compress: bool = True) -> None:
    """A single-file MetaImage (`.mha`) as NODE21 ships them, written by SimpleITK: 16-bit
    (`bits` of real data), 3-D one slice deep, zlib-compressed."""
    import SimpleITK as sitk

    data = np.round(pixels * (2**bits - 1)).astype(np.uint16 if bits > 8 else np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(data[None]), str(path), useCompression=compress)


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


# The first six sources keep the seeds they had when they were all there was (their place in this
# list); later ones get one from their name. So adding a source changes no other look-alike.
FIRST_SOURCES = ["chestxray14", "chexpert", "mimic_cxr", "rsna_pneumonia", "shenzhen", "vindr_cxr"]


def seed_offset(name: str) -> int:
    if name in FIRST_SOURCES:
        return FIRST_SOURCES.index(name)
    return 100 + zlib.crc32(name.encode()) % 900


def synthesize_all(out: Path, *, num_images: int, seed: int, scale: float, sources: list[str] | None = None) -> dict:
    """Write every (or the named) source under `out/<source>/`; returns {source: root}. A source's
    look-alike depends on (seed, its name), not on which others are written beside it."""
    from shards.sources import get_source, source_names

    roots = {}
    for name in sources or source_names():
        root = out / name
        get_source(name).synthesize(root, num_images=num_images, seed=seed * 1000 + seed_offset(name), scale=scale)
        roots[name] = root
    return roots
