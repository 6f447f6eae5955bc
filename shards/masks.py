"""Masks: how a label file describes one, how it becomes a stored PNG, and its pixel count.

A source describes each mask as a plain, JSON-able spec in the original image's pixel grid (so
that it takes part in a shard's plan hash and crosses to a build worker unchanged):

- `{"rle": [str, ...], "encoding": "relative" | "absolute"}`: Kaggle run-length codes, unioned.
  Both run down the columns (column-major, as SIIM-ACR's `mask_functions.py` and its transposes
  have it). `relative`: each start counts from the end of the previous run, 0-based (SIIM-ACR stage
  1's `rle2mask`). `absolute`: "start length" pairs with 1-based starts (Kaggle's usual encoding).
- `{"polygons": [[[x, y], ...], ...]}`: filled polygons, unioned (ChestX-Det).
- `{"files": ["relative/path.png", ...]}`: mask images under the source root, nonzero = in the
  mask, unioned (Montgomery's left and right lung).
- `{}`: an empty mask, known to be empty (a SIIM-ACR `-1` row).

A build rasterises the spec at the original size and scales it to the stored size with nearest
interpolation; it is stored as a 1-bit PNG, `<id>.mask.<k>.png`, k the class's index in the
manifest entry's `masks` list.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ENCODINGS = ("relative", "absolute")


class MaskError(ValueError):
    """A spec that cannot be drawn on its image (a run or polygon outside it, an unreadable file)."""


def member(index: int) -> str:
    """The tar extension of the mask of class `index`: `<id>.mask.<index>.png`."""
    return f"mask.{index}.png"


def runs(code: str, encoding: str) -> list[tuple[int, int]]:
    """(0-based start, length) of each run of one RLE string, in column-major pixel order."""
    if encoding not in ENCODINGS:
        raise MaskError(f"unknown RLE encoding {encoding!r} (expected one of {ENCODINGS})")
    try:
        numbers = [int(v) for v in code.split()]
    except ValueError:
        raise MaskError(f"RLE {code[:40]!r}: not whole numbers") from None
    if len(numbers) % 2 or any(v < 0 for v in numbers):
        raise MaskError(f"RLE {code[:40]!r}: expected pairs of non-negative numbers")
    out, position = [], 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        if encoding == "relative":
            position += start
            out.append((position, length))
            position += length
        else:
            if start < 1:
                raise MaskError(f"RLE {code[:40]!r}: absolute starts count from 1")
            out.append((start - 1, length))
    return out


def rasterize(spec: dict, size: tuple[int, int], root: Path | None = None) -> np.ndarray:
    """The spec drawn at `size` = (width, height): a bool array of shape (height, width)."""
    width, height = size
    if "rle" in spec:
        flat = np.zeros(width * height, dtype=bool)
        for code in spec["rle"]:
            for start, length in runs(code, spec.get("encoding", "relative")):
                if start + length > flat.size:
                    raise MaskError(f"RLE run {start}+{length} ends beyond a {width}x{height} image")
                flat[start:start + length] = True
        return flat.reshape(width, height).T  # column-major: runs go down each column
    if "polygons" in spec:
        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in spec["polygons"]:
            points = [(float(x), float(y)) for x, y in polygon]
            if len(points) >= 3:
                draw.polygon(points, fill=1, outline=1)
            elif points:
                draw.point(points, fill=1)
        return np.asarray(canvas, dtype=bool)
    if "files" in spec:
        out = np.zeros((height, width), dtype=bool)
        for rel in spec["files"]:
            path = Path(root or ".") / rel
            try:
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("L")) > 0
            except (OSError, ValueError) as exc:
                raise MaskError(f"mask file {path}: {type(exc).__name__}: {exc}") from exc
            if pixels.shape != out.shape:
                raise MaskError(f"mask file {path} is {pixels.shape[1]}x{pixels.shape[0]}, "
                                f"its image {width}x{height}")
            out |= pixels
        return out
    if spec:
        raise MaskError(f"unknown mask spec with keys {sorted(spec)}")
    return np.zeros((height, width), dtype=bool)


def pixels(spec: dict, root: Path | None = None) -> int:
    """The mask's pixel count in the original grid, from the label file alone where it can be
    (the sum of the run lengths; polygons drawn on a canvas just large enough); mask files are read.
    Runs that overlap (a SIIM-ACR image with several rows) count once each, as the file states them."""
    if "rle" in spec:
        return sum(length for code in spec["rle"] for _, length in runs(code, spec.get("encoding", "relative")))
    if "polygons" in spec:
        points = [p for polygon in spec["polygons"] for p in polygon]
        if not points:
            return 0
        width = int(np.ceil(max(float(x) for x, _ in points))) + 2
        height = int(np.ceil(max(float(y) for _, y in points))) + 2
        return int(rasterize(spec, (width, height)).sum())
    if "files" in spec:
        with Image.open(Path(root or ".") / spec["files"][0]) as img:
            size = img.size
        return int(rasterize(spec, size, root).sum())
    return 0


def encode(mask: np.ndarray, size: tuple[int, int]) -> bytes:
    """A bool mask scaled (nearest) to `size` = (width, height), as a 1-bit PNG."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=bool))  # mode "1"
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """A stored mask PNG -> bool array (height, width). Raises MaskError if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("L")) > 0
    except (OSError, ValueError, SyntaxError) as exc:
        raise MaskError(f"undecodable mask: {type(exc).__name__}: {exc}") from exc
