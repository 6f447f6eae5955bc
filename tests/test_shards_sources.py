"""`shards inspect` and the native-layout quirks, against independent readings of the label files."""

from __future__ import annotations

import json

import pytest

import labelfacts
from conftest import SOURCES, run_shards

pytestmark = pytest.mark.parametrize("source", SOURCES)


def _inspect(source, root):
    code, out, err = run_shards("inspect", "--source", source, "--root", root, "--json")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1, "inspect --json prints exactly one JSON object"
    return json.loads(out)


def test_inspect_counts_match_label_files(source, synth_root):
    report = _inspect(source, synth_root / source)
    expected = labelfacts.READERS[source](synth_root / source)
    assert set(report) == {"source", "splits"} and report["source"] == source
    assert set(report["splits"]) <= {"train", "val", "test"}
    assert sum(s["num_images"] for s in report["splits"].values()) == len(expected)
    for split in report["splits"].values():
        assert set(split) == {"num_images", "num_missing_images", "classes", "boxes", "masks"}
        assert split["num_missing_images"] == 0
        for counts in split["classes"].values():
            assert set(counts) == {"positive", "negative", "uncertain", "missing"}
            assert sum(counts.values()) == split["num_images"]
    # Single-reader facts: the positives per class over all splits equal the label files' count.
    classes = next(iter(report["splits"].values()))["classes"]
    for name in classes:
        with_labels = [f["labels"] for f in expected.values() if f["labels"] is not None]
        if len(with_labels) == len(expected):
            positives = sum(split["classes"][name]["positive"] for split in report["splits"].values())
            assert positives == sum(1 for labels in with_labels if labels[name] == 1), name
    # Boxes per class over all splits equal the label files' count (every reader's).
    boxes: dict[str, int] = {}
    for facts in expected.values():
        for label, *_ in facts.get("boxes", ()):
            boxes[label] = boxes.get(label, 0) + 1
    found: dict[str, int] = {}
    for split in report["splits"].values():
        for label, count in split["boxes"].items():
            found[label] = found.get(label, 0) + count
    assert found == boxes


def test_inspect_with_label_files_but_no_images(source, raw_copy):
    root = raw_copy(source)
    for path in list(root.rglob("*")):
        if path.suffix in (".png", ".jpg", ".dcm", ".dicom"):
            path.unlink()
    report = _inspect(source, root)
    for split in report["splits"].values():
        assert split["num_missing_images"] == split["num_images"] > 0
    if source != "shenzhen":  # Shenzhen's labels live in its file names: no files, no images
        assert report["splits"], "label files alone still list the images"
