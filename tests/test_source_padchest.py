"""PadChest: inspect, build, verify (local and S3) against an independent reading of the look-alike's
label file; its quirks (stray spaces, empty and blank Labels, a truncated PNG, plain or gzipped
CSV) and values outside their domain."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import look_alike, read_store_samples, run_shards

LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "padchest")


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store")
    code, _, err = _build(raw, out)
    assert code == 0, err
    return out


def _build(root, out, *extra):
    # One of the 16 images is a truncated PNG: allow one bad image.
    return run_shards("build", "--source", "padchest", "--root", root, "--out", out, "--quiet", "--workers", "1",
                      "--samples-per-shard", "4", "--max-bad", "1", *extra)


def _rows(root: Path) -> list[dict]:
    with gzip.open(root / f"{LABEL_FILE}.gz", "rt", newline="") as f:
        return list(csv.DictReader(f))


def expected(root: Path) -> dict:
    """{id: facts} from the label file alone: the labels are the quoted strings of the Labels
    cell, stripped; the class set is every label seen; a row with none has every fact None."""
    rows = _rows(root)
    found = {row["ImageID"]: sorted({s.strip() for s in re.findall(r"'([^']*)'", row["Labels"])} - {""})
             for row in rows}
    classes = sorted({c for labels in found.values() for c in labels}, key=str.casefold)  # alphabetical
    facts = {}
    for row in rows:
        labels = found[row["ImageID"]]
        facts[row["ImageID"][:-4]] = {
            "labels": {c: (int(c in labels) if labels else None) for c in classes},
            "image": f"{row['ImageDir']}/{row['ImageID']}", "patient": row["PatientID"], "study": row["StudyID"],
            "view": row["Projection"], "frontal": row["Projection"] in ("PA", "AP", "AP_horizontal"),
            "projection": row["Projection"], "method_label": row["MethodLabel"] or None,
        }
    return facts


def unreadable(root: Path) -> set[str]:
    """Images that PIL cannot load."""
    bad = set()
    for path in root.glob("*/*.png"):
        try:
            with Image.open(path) as img:
                img.load()
        except OSError:
            bad.add(path.relative_to(root).as_posix())
    return bad


def _inspect(root) -> dict:
    code, out, err = run_shards("inspect", "--source", "padchest", "--root", root, "--json")
    assert code == 0, err
    return json.loads(out)


def test_inspect_counts_equal_the_label_file(raw):
    report = _inspect(raw)
    want = expected(raw)
    splits = list(report["splits"].values())
    assert sum(s["num_images"] for s in splits) == len(want) == 16
    classes = list(next(iter(want.values()))["labels"])
    assert list(splits[0]["classes"]) == classes
    for name in classes:
        for fact, count in (("positive", 1), ("negative", 0), ("missing", None)):
            assert sum(s["classes"][name][fact] for s in splits) == \
                sum(f["labels"][name] == count for f in want.values()), (name, fact)
    assert all(s["boxes"] == {} and s["masks"] == {} for s in splits)


def test_build_facts_equal_the_label_file_and_the_truncated_png_is_skipped(raw, store):
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    entry = json.loads((store / "manifest.json").read_text())["datasets"]["padchest"]
    skipped = [s for info in entry["splits"].values() for s in info["skipped"]]
    assert {s["image"] for s in skipped} == unreadable(raw) and len(skipped) == 1
    assert skipped[0]["reason"].startswith("undecodable image")
    samples = read_store_samples(store, "padchest")
    want = expected(raw)
    assert set(samples) == {k for k, f in want.items() if f["image"] not in unreadable(raw)}
    for key, got in samples.items():
        facts = want[key]
        assert got["labels"] == facts["labels"], key
        for field in ("patient", "study", "view", "frontal", "projection", "method_label"):
            assert got[field] == facts[field], (key, field)
        assert "boxes" not in got and "masks" not in got
    assert entry["labels"] == entry["all_labels"] == list(next(iter(want.values()))["labels"])
    report = _inspect(raw)  # the same seed: the build's splits are inspect's, less the skipped image
    assert sum(i["num_samples"] for i in entry["splits"].values()) == \
        sum(i["num_images"] for i in report["splits"].values()) - 1


def test_stray_spaces_and_empty_labels(raw):
    cells = {row["ImageID"][:-4]: row["Labels"] for row in _rows(raw)}
    assert any(re.search(r"' \w", c) for c in cells.values()), "the look-alike has a label with a stray space"
    assert "['']" in cells.values() and "" in cells.values()
    report = _inspect(raw)
    for split in report["splits"].values():
        assert all(name == name.strip() and name for name in split["classes"])
    empty = [k for k, c in cells.items() if c in ("", "['']")]
    want = expected(raw)
    assert all(set(want[k]["labels"].values()) == {None} for k in empty)


def test_a_plain_csv_reads_as_the_gzipped_one(raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    gz = root / f"{LABEL_FILE}.gz"
    (root / LABEL_FILE).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert _inspect(root) == _inspect(raw)


def _rewrite(root: Path, line: int, column: str, value: str) -> Path:
    """Set one cell (`line` counts the header as 1) of the gzipped label file."""
    path = root / f"{LABEL_FILE}.gz"
    with gzip.open(path, "rt", newline="") as f:
        table = list(csv.reader(f))
    table[line - 1][table[0].index(column)] = value
    with gzip.open(path, "wt", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(table)
    return path


@pytest.mark.parametrize("column, value, want", [
    ("MethodLabel", "Robot", "column 'MethodLabel' has 'Robot', expected Physician or RNN_model"),
    ("Labels", "pleural effusion", "column 'Labels' has 'pleural effusion', expected a list of strings"),
    ("Labels", "[1, 2]", "column 'Labels' has '[1, 2]', expected a list of strings"),
    ("Labels", "__import__('os')", "column 'Labels' has \"__import__('os')\""),
    ("ImageDir", "x", "column 'ImageDir' has 'x', expected a folder number"),
    ("PatientID", "", "column 'PatientID' is blank"),
])
def test_a_value_outside_its_domain_is_one_error_line(raw, tmp_path, column, value, want):
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    path = _rewrite(root, 6, column, value)
    code, _, err = _build(root, tmp_path / "store")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:6: {want}"), err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.tar"))


def test_build_and_verify_on_s3(raw, s3_bucket):
    url = f"s3://{s3_bucket}/cxr"
    code, _, err = _build(raw, url)
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
