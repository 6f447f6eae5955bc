"""Image conversion: any original (8/16-bit PNG, JPEG, DICOM, MetaImage) -> 8-bit grayscale, resized, encoded.

All functions are pure and deterministic: the same bytes in give the same bytes out, which is what
makes shards byte-identical across builds.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_SUFFIXES = (".dcm", ".dicom")
METAIMAGE_SUFFIXES = (".mha",)
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # CXRs are big; PIL's bomb guard still applies beyond this


class ImageError(Exception):
    """An image that cannot be read or decoded; the build skips it and records `str(self)`."""


@dataclass(frozen=True)
class EncodeOptions:
    """How stored images are made. Changing any field changes the shard bytes."""

    max_side: int = 512
    format: str = "jpeg"  # "jpeg" or "png"
    quality: int = 95  # JPEG only

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else "png"


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The stored size: longer side at most `max_side`, aspect kept, never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Min-max window a grayscale array of any integer/float depth to 0..255 (12-bit data in a
    16-bit container comes out full range, unlike a plain shift). float32 in place: a 3000 px
    DICOM is 9 M pixels, and float64 temporaries were most of its conversion time."""
    lo, hi = pixels.min(), pixels.max()
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=np.uint8)
    out = np.subtract(pixels, lo, dtype=np.float32)
    out *= np.float32(255.0 / (float(hi) - float(lo)))
    return np.rint(out, out=out).astype(np.uint8)


def _decode_dicom(data: bytes) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
        if pixels.ndim != 2:
            raise ImageError(f"DICOM pixel data has shape {pixels.shape}, expected one grayscale frame")
        pixels = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            pixels = apply_voi_lut(pixels, ds)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for one cause: a bad file
        raise ImageError(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    out = _to_uint8(pixels)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1 stores bright as low values: invert so bone is white
    return Image.fromarray(out)


def _decode_raster(data: bytes, draft_to: int | None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        if draft_to and img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale straight to gray: the cheapest resize.
            img.draft("L", target_size(*img.size, draft_to))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"undecodable image: {type(exc).__name__}: {exc}") from exc
    if img.mode in ("L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1"):
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit PNGs open as I;16 / I
        return Image.fromarray(_to_uint8(np.asarray(img)))
    raise ImageError(f"unsupported image mode {img.mode}")


def _decode_metaimage(data: bytes) -> Image.Image:
    """A single-file MetaImage (`.mha`, NODE21) through SimpleITK, which reads files only: the bytes
    go to a temporary file. One 2-D frame (or a 3-D volume one slice deep), min-max windowed."""
    import tempfile

    import SimpleITK as sitk

    with tempfile.NamedTemporaryFile(suffix=".mha") as f:
        f.write(data)
        f.flush()
        try:
            pixels = sitk.GetArrayFromImage(sitk.ReadImage(f.name))
        except RuntimeError as exc:  # SimpleITK's one exception type, with ITK's message
            message = str(exc).strip().splitlines()[-1].replace(f'"{f.name}"', "it").replace(f.name, "it")
            raise ImageError(f"unreadable MetaImage: {message}") from exc
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ImageError(f"MetaImage pixel data has shape {pixels.shape}, expected one grayscale frame")
    return Image.fromarray(_to_uint8(pixels))


def decode_original(data: bytes, *, name: str, draft_to: int | None = None) -> Image.Image:
    """Decode an original image file's bytes to 8-bit grayscale. `name` picks DICOM and MetaImage
    by suffix; `draft_to` lets JPEG decode at reduced scale when the result will be shrunk to that side."""
    if not data:
        raise ImageError("empty file")
    if name.lower().endswith(DICOM_SUFFIXES) or data[128:132] == b"DICM":
        return _decode_dicom(data)
    if name.lower().endswith(METAIMAGE_SUFFIXES):
        return _decode_metaimage(data)
    return _decode_raster(data, draft_to)


def convert(data: bytes, *, name: str, options: EncodeOptions) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """Original bytes -> (stored image bytes, original (w, h), stored (w, h))."""
    return convert_sample(data, name=name, options=options, phash=False)[:3]


def convert_sample(data: bytes, *, name: str, options: EncodeOptions, phash: bool = True):
    """Original bytes -> (stored image bytes, original (w, h), stored (w, h), perceptual hash of
    the stored image as 64 hex digits, or None with phash=False; see `image_hash`)."""
    img = decode_original(data, name=name, draft_to=options.max_side)
    original = _original_size(data, name, img)
    size = target_size(*img.size, options.max_side)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    if options.format == "jpeg":
        img.save(buf, "JPEG", quality=options.quality, optimize=False, progressive=False)
    else:
        img.save(buf, "PNG", compress_level=6)
    # The hash of what is stored (decoded again: JPEG moves a few bits), so that one computed later
    # from a shard, for a store built before hashes, is the same.
    digest = str(image_hash(decode_stored(buf.getvalue()))) if phash else None
    return buf.getvalue(), original, size, digest


PHASH_SIZE = 16  # imagehash's DCT phash of 16 x 16 = 256 bits


def image_hash(img: Image.Image):
    """imagehash's 256-bit DCT perceptual hash of a grayscale image (`str()`: 64 hex digits).
    256 bits, not the default 64: chest X-rays share their coarse layout, and on the look-alikes
    64 bits put unrelated images as close as 6 bits apart while a copy resized to 2/3 and saved
    as JPEG q80 moved up to 4; at 256 bits those are at least 56 and at most 18 apart."""
    import imagehash

    return imagehash.phash(img, hash_size=PHASH_SIZE)


def _original_size(data: bytes, name: str, decoded: Image.Image) -> tuple[int, int]:
    # JPEG draft mode shrinks at decode time; report the file's own size, not the draft's.
    if decoded.size and not (name.lower().endswith(DICOM_SUFFIXES + METAIMAGE_SUFFIXES) or data[128:132] == b"DICM"):
        with Image.open(io.BytesIO(data)) as probe:
            return probe.size
    return decoded.size


def decode_stored(data: bytes) -> Image.Image:
    """Decode a stored sample's image (what verify and the bench do)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"undecodable image: {type(exc).__name__}: {exc}") from exc
    if img.mode != "L":
        raise ImageError(f"stored image has mode {img.mode}, expected 8-bit grayscale (L)")
    return img
