"""One record per image, and how it becomes a WebDataset sample (DESIGN 2.2).

A sample is two tar members, `<dataset>/<id>.<jpg|png>` and `<dataset>/<id>.json`; the JSON holds
the raw label facts (1, 0, -1 uncertain, None not mentioned) and, for multi-reader sources, each
reader's votes. Policies are the loader's business, never baked in here.
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
    extra: dict = field(default_factory=dict)  # source-specific facts (boxes, native split name)

    def facts(self, dataset: str, *, original_size, stored_size) -> dict:
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
        doc.update(self.extra)
        return doc


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
    """samples: iterable of (key, image extension, image bytes, json bytes) -> tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ext, image, meta in samples:
            _add(tar, f"{key}.{ext}", image)
            _add(tar, f"{key}.json", meta)
    return buf.getvalue()


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
            key, _, ext = member.name.rpartition(".")
            if key != current:
                if current is not None:
                    yield current, parts
                current, parts = key, {}
            parts[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, parts
