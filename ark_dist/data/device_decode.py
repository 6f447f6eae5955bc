"""JPEG decode on the training device (`data.decode: device`, issue 18 part 3).

A GPU node has few CPU cores per GPU, and on them the loader's work is JPEG decode. With
`data.decode: device` the loader reads only a JPEG's header (its size, which the views and boxes
need) and hands the bytes over; the rank decodes the whole batch in one call
(`torchvision.io.decode_jpeg` on the rank's device: nvJPEG on a GPU, libjpeg-turbo on a CPU) and
resizes each image onto the loader's square canvas as the loader would (bilinear, antialiased when
shrinking), before `render`. The loader still decodes what the device cannot, or should not try:
PNGs, CMYK or other unusual JPEGs, and a JPEG without its end marker (a truncated file), which the
loader's decode then counts as a bad sample as always.

The canvases agree with the loader's within one grey level (PIL resizes in fixed point), except
where the stored image is at least twice the canvas in both sides: there the loader decodes at
reduced DCT scale first (libjpeg's draft mode) and the device decodes in full, and they differ by
under one level on average, a few at most (tests/test_device_decode.py bounds both).

A batch carries its JPEGs as one flat uint8 tensor (`jpeg`) with each row's `jpeg_start` and
`jpeg_end` in it (equal for a row the loader decoded): one shared-memory block between the loader
process and the rank, and one pinned buffer, rather than one per image.

A JPEG whose header is sound but whose data the device's decoder refuses is decoded on the CPU
instead (PIL); if that fails too, its row is blank, with no labels, boxes or masks (label mask
zeroed, `valid` False: the steps leave it out of the task losses and evaluation of the metrics;
the consistency term still sees the blank), and a warning names it. The batch keeps its shape, so
every rank still runs the same step.
"""

from __future__ import annotations

import io
import logging
import warnings

import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

_EOI = b"\xff\xd9"  # a JPEG's last two bytes: their absence means a truncated file


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(w, h) of a grey or YCbCr JPEG with its end marker, from the header alone; None for
    anything the loader should decode itself."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\0\r\n ").endswith(_EOI):
        return None
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - the loader's decode reports it, with the sample's name
        return None
    return img.size if img.format == "JPEG" and img.mode in ("L", "RGB") else None


def encoded(data: bytes) -> torch.Tensor:
    """The bytes as the (N,) uint8 tensor `decode_jpeg` takes (and a DataLoader can pin)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def pack(jpegs: list[torch.Tensor | None]) -> dict:
    """A batch's JPEGs (None for a row the loader decoded) as one flat buffer and each row's
    [start, end) in it: {"jpeg": (N,) uint8, "jpeg_start": (B,) int64, "jpeg_end": (B,) int64}."""
    sizes = torch.tensor([0 if j is None else len(j) for j in jpegs], dtype=torch.int64)
    end = sizes.cumsum(0)
    flat = torch.cat([j for j in jpegs if j is not None]) if int(end[-1]) else torch.zeros(0, dtype=torch.uint8)
    return {"jpeg": flat, "jpeg_start": end - sizes, "jpeg_end": end}


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its codecs deprecated (TorchCodec's successor is not pinned)
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.GRAY, device=device)


def _decoded(data: list[torch.Tensor], ids: list[str], device: torch.device) -> list[torch.Tensor | None]:
    """(1, h, w) uint8 per JPEG on `device`: one batched call; if the decoder refuses the batch,
    one by one, then PIL for the ones it refuses; None where nothing can decode it."""
    try:
        return list(_decode_jpegs(data, device))
    except RuntimeError:
        pass
    out = []
    for one, name in zip(data, ids):
        try:
            out.append(_decode_jpegs([one], device)[0])
            continue
        except RuntimeError as exc:
            why = exc
        try:
            img = Image.open(io.BytesIO(one.numpy().tobytes()))
            img.draft("L", img.size)  # libjpeg's own grey (the Y channel), as nvJPEG's GRAY and the loader
            pixels = img.convert("L")
            out.append(encoded(pixels.tobytes()).view(1, pixels.height, pixels.width).to(device))
        except Exception as exc:  # noqa: BLE001 - any decoder error: the row is blanked, named in the warning
            log.warning("data.decode=device: %s is undecodable (%s; PIL: %s): its row is blank and masked out",
                        name, (str(why).splitlines() or [type(why).__name__])[0], exc)
            out.append(None)
    return out


def resize_canvas(images: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 1, h, w) uint8 -> (N, 1, side, side) uint8, as the loader's PIL resize: bilinear,
    antialiased when shrinking, rounded."""
    if images.shape[-2:] == (side, side):
        return images
    out = F.interpolate(images.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def canvases(batch: dict, device: torch.device) -> torch.Tensor:
    """The batch's (B, 1, L, L) uint8 canvases on `device`. A loader batch with `jpeg` (rows left
    encoded, `data.decode: device`) has them decoded and resized here; rows nothing can decode are
    blank, and their labels, boxes, masks and `valid` are cleared in `batch` (so call this before
    moving those to the device)."""
    if "jpeg" not in batch:
        return batch["image"].to(device, non_blocking=True)
    start, end = batch["jpeg_start"].tolist(), batch["jpeg_end"].tolist()
    rows = [i for i in range(len(start)) if end[i] > start[i]]
    if not rows:  # a micro-batch of loader-decoded rows only
        return batch["image"].to(device, non_blocking=True)
    side = batch["canvas"]
    if "image" in batch:  # some rows were decoded by the loader (PNGs, unusual JPEGs): one copy, no temporary
        out = batch["image"].to(device, non_blocking=True, copy=True)
    else:
        out = torch.zeros(len(start), 1, side, side, dtype=torch.uint8, device=device)
    if device.type == "cuda":  # torchvision's nvJPEG path decodes on its own stream: let it see `out` settled
        torch.cuda.current_stream(device).synchronize()
    decoded = _decoded([batch["jpeg"][start[i]:end[i]] for i in rows], [batch["ids"][i] for i in rows], device)
    if device.type == "cuda":  # ... and the decoded images finished before this stream reads them
        torch.cuda.synchronize(device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(decoded):
        if image is None:
            _blank(batch, rows[k])
            out[rows[k]] = 0
        else:
            by_size.setdefault(tuple(image.shape[-2:]), []).append(k)
    for ks in by_size.values():  # one resize per stored size (a dataset's images often share one)
        out[[rows[k] for k in ks]] = resize_canvas(torch.stack([decoded[k] for k in ks]), side)
    return out


def _blank(batch: dict, row: int) -> None:
    """Row `row` carries nothing to learn or score: no labels, no boxes, no known masks."""
    batch["mask"][row] = 0
    batch["valid"][row] = False
    if "boxes" in batch:
        batch["boxes"][row] = batch["boxes"][row][:0]
        batch["box_labels"][row] = batch["box_labels"][row][:0]
    if "mask_known" in batch:
        batch["mask_known"][row] = False
