"""Source registry: one module per public dataset, each defining `SOURCE`, found by name.

Adding a source is one new module in this package with a `Source` subclass instance named
`SOURCE`; nothing else needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from shards.errors import ShardsError
from shards.samples import Record


@dataclass
class Scan:
    """What a source's label files say: one record per image, the classes as the files spell
    them, and the label files read (for provenance)."""

    records: list[Record]
    classes: list[str]
    label_files: list[Path]
    notes: list[str] = field(default_factory=list)
    head_labels: list[str] | None = None  # this layout's default heads, over the source's `head_labels`


class Source:
    """A public dataset in its native layout."""

    name: str = ""
    task: str = "multilabel"  # multilabel | multiclass | binary
    layout: str = ""  # one line: where the label files and images are
    holdout: dict[str, float] = {}  # fractions of the train pool held out, e.g. {"val": 0.1}
    head_labels: list[str] | None = None  # default head classes; None = every class
    mask_classes: list[str] = []  # the classes records may give masks of (a sample's mask k: this list's k-th)
    box_classes: list[str] = []  # the labels records' boxes may carry (a detector's class k: this list's k-th)

    def scan(self, root: Path) -> Scan:
        raise NotImplementedError

    def synthesize(self, root: Path, *, num_images: int, seed: int, scale: float) -> None:
        raise NotImplementedError


def _registry() -> dict[str, Source]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        source = getattr(module, "SOURCE", None)
        if isinstance(source, Source):
            found[source.name] = source
    return found


_SOURCES: dict[str, Source] | None = None


def source_names() -> list[str]:
    global _SOURCES
    if _SOURCES is None:
        _SOURCES = _registry()
    return sorted(_SOURCES)


def get_source(name: str) -> Source:
    source_names()
    if name not in _SOURCES:
        raise ShardsError(f"unknown source {name!r} (known: {', '.join(source_names())})")
    return _SOURCES[name]
