"""One record per image, and how it becomes a WebDataset sample (DESIGN 2.2).

A sample is two tar members, `<dataset>/<id>.<jpg|png>` and `<dataset>/<id>.json`, plus one
`<dataset>/<id>.mask.<k>.png` per mask it has (`shards.masks`). The JSON holds the raw label facts
(1, 0, -1 uncertain, None not mentioned), for multi-reader sources each reader's votes, boxes as
`{"label", "xyxy", "reader"}` in stored-image pixels, the names of the masks it has, the image
this one re-annotates (`origin`, where the label file names one) and the stored image's
perceptual hash. Policies are the loader's business, never baked in here.

A member's key is its name up to the first dot of its base name, as WebDataset groups them (ids
and dataset names never hold a dot).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_id(raw: str) -> str:
    """A stable id safe as a tar member and a WebDataset key: no dots, slashes or spaces."""
    clean = _UNSAFE.sub("_", raw.strip())
    if not clean.strip("_"):
        raise ValueError(f"cannot make an id from {raw!r}")
    return clean


@dataclass
class Record:
    """One image of a source as its label files describe it, before any conversion."""

    id: str
    image: str  # path relative to the source root, POSIX separators
    split: str  # train | val | test (train = the pool held-out splits are drawn from)
    patient: str
    labels: dict | None  # class -> 1 | 0 | -1 | None; None when only readers' votes exist
    study: str | None = None
    view: str | None = None
    frontal: bool | None = None
    readers: dict | None = None  # reader id -> {class: 0 | 1}
    extra: dict = field(default_factory=dict)  # source-specific facts (e.g. a native split name)
    boxes: list[dict] | None = None  # {"label", "xyxy" in original pixels, "reader" (None if one)}
    masks: dict[str, dict] | None = None  # mask class -> spec (shards.masks), in original pixels
    origin: str | None = None  # the image this one re-annotates, e.g. "chestxray14/00000001_000"

    def facts(self, dataset: str, *, original_size, stored_size) -> dict:
        """The sample's JSON. With both sizes known, boxes are scaled to the stored image and
        clipped to it (a box left with no area is dropped); a plan hash passes empty sizes and
        gets them as the label file gives them."""
        doc = {
            "dataset": dataset,
            "id": self.id,
            "split": self.split,
            "patient": self.patient,
            "study": self.study,
            "view": self.view,
            "frontal": self.frontal,
            "labels": self.labels,
            "original_size": list(original_size),
            "size": list(stored_size),
        }
        if self.readers is not None:
            doc["readers"] = self.readers
        if self.boxes is not None:
            doc["boxes"] = scale_boxes(self.boxes, original_size, stored_size)
        if self.masks is not None:
            doc["masks"] = sorted(self.masks)
        if self.origin is not None:
            doc["origin"] = self.origin
        doc.update(self.extra)
        return doc


def scale_boxes(boxes: list[dict], original_size, stored_size) -> list[dict]:
    """Boxes from original to stored pixels, clipped to the image, rounded to 1/100 px."""
    if not original_size or not stored_size:
        return [dict(b) for b in boxes]
    (ow, oh), (sw, sh) = original_size, stored_size
    fx, fy = sw / ow, sh / oh
    out = []
    for box in boxes:
        x0, y0, x1, y1 = box["xyxy"]
        xyxy = [round(min(max(x0 * fx, 0), sw), 2), round(min(max(y0 * fy, 0), sh), 2),
                round(min(max(x1 * fx, 0), sw), 2), round(min(max(y1 * fy, 0), sh), 2)]
        if xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3]:
            out.append({"label": box["label"], "xyxy": xyxy, "reader": box.get("reader")})
    return out


def encode_json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: the same samples give byte-identical shards
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(samples) -> bytes:
    """samples: iterable of (key, image extension, image bytes, json bytes[, {extension: bytes}])
    -> tar bytes; the optional extra members (masks) follow the JSON."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ext, image, meta, *more in samples:
            _add(tar, f"{key}.{ext}", image)
            _add(tar, f"{key}.json", meta)
            for extra, data in (more[0] if more else {}).items():
                _add(tar, f"{key}.{extra}", data)
    return buf.getvalue()


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, WebDataset's way: `ds/id.mask.0.png` -> (`ds/id`, `mask.0.png`)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def safe_member(name: str) -> bool:
    """A member name that can never escape an extraction folder."""
    return not (name.startswith("/") or name.startswith("\\") or ".." in name.split("/") or ":" in name)


def read_tar(data: bytes):
    """Yield (key, {extension: bytes}) per sample of a shard, in order. Raises ValueError on a
    malformed tar or an unsafe member name."""
    current, parts = None, {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                raise ValueError(f"unexpected non-file member {member.name!r}")
            if not safe_member(member.name):
                raise ValueError(f"unsafe member name {member.name!r}")
            key, ext = split_member(member.name)
            if key != current:
                if current is not None:
                    yield current, parts
                current, parts = key, {}
            parts[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, parts
