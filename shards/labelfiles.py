"""Reading native label files: by header name always, with errors that name the file and row."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from pathlib import Path

from shards.errors import ShardsError


def find(root: Path, *candidates: str, what: str) -> Path:
    """The first of `candidates` (paths relative to root) that exists, or a clear error."""
    for rel in candidates:
        path = root / rel
        if path.is_file():
            return path
    tried = ", ".join(str(root / c) for c in candidates)
    raise ShardsError(f"{what} not found (looked for {tried})")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(path: Path, *, required: list[str]) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row dict)]) of a CSV or CSV.GZ file; every `required` column must
    be in the header. Blank trailing header names (a trailing comma) are kept as ''."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ShardsError(f"{path}: cannot read label file: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ShardsError(f"{path}: empty label file")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise ShardsError(f"{path}: missing column {missing[0]!r} (header: {', '.join(header)})")
    rows = []
    for line, values in enumerate(reader, start=2):
        if not values:
            continue
        rows.append((line, dict(zip(header, (v.strip() for v in values)))))
    return header, rows


def chexpert_value(raw: str, *, path: Path, line: int, column: str) -> int | None:
    """CheXpert/MIMIC cell -> 1 | 0 | -1 | None (blank = not mentioned)."""
    if raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value not in (1.0, 0.0, -1.0):
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw!r}, expected 1.0, 0.0, -1.0 or blank")
    return int(value)


def binary_value(raw: str, *, path: Path, line: int, column: str) -> int:
    if raw not in ("0", "1", "0.0", "1.0"):
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw!r}, expected 0 or 1")
    return int(float(raw))


def number(raw: str, *, path: Path, line: int, column: str) -> float:
    """A finite number (a box coordinate), or an error naming the file, line and column."""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw!r}, expected a number")
    return value


SEXES = {"M": "M", "Male": "M", "F": "F", "Female": "F", "": None, "Unknown": None, "O": None}


def sex_value(raw: str, *, path: Path, line: int, column: str) -> str | None:
    """A sex cell -> "M" | "F" | None (blank, Unknown, O): the subgroup fact evaluations break AUCs down by."""
    if raw not in SEXES:
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw!r}, expected M, F, Male, Female or Unknown")
    return SEXES[raw]


def age_value(raw: str, *, path: Path, line: int, column: str) -> float | None:
    """An age in years (None when blank), as the file states it (NIH has a few ages over 150: kept)."""
    if raw == "":
        return None
    value = number(raw.rstrip("Y"), path=path, line=line, column=column)
    if value < 0:
        raise ShardsError(f"{path}:{line}: column {column!r} has {raw!r}, a negative age")
    return value
