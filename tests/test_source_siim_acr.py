"""siim_acr: `inspect` and `build` against a reading of the look-alike's label files written here
(plain csv, Kaggle's own `rle2mask` loop), not through `shards.sources`."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import labelfacts
from conftest import look_alike, read_store_samples, run_shards
from shards.masks import decode


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "siim_acr")


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    code, _, err = run_shards("build", "--source", "siim_acr", "--root", raw, "--out", out, "--quiet",
                              "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
    assert code == 0, err
    return out


def read_label_file(path) -> dict[str, list[str]]:
    """{ImageId: its distinct EncodedPixels cells, stripped}: the file as Kaggle's loaders read it."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    image, rle = header.index("ImageId"), [h.strip() for h in header].index("EncodedPixels")
    found: dict[str, list[str]] = {}
    for row in rows:
        codes = found.setdefault(row[image], [])
        if row[rle].strip() not in codes:
            codes.append(row[rle].strip())
    return found


def sample_id(image_id: str) -> str:
    return image_id.replace(".", "_")


def splits_of(store) -> dict[str, str]:
    text = (store / "siim_acr" / "splits.csv").read_text()
    return {row["id"]: row["split"] for row in csv.DictReader(io.StringIO(text))}


def test_listed_as_a_source():
    code, out, _ = run_shards("sources")
    assert code == 0 and any(line.split()[0] == "siim_acr" for line in out.splitlines())


def test_inspect_counts_equal_the_label_file(raw, store):
    want = read_label_file(raw / "stage_2_train.csv")
    split = splits_of(store)
    assert sorted(split) == sorted(sample_id(i) for i in want)
    code, out, err = run_shards("inspect", "--source", "siim_acr", "--root", raw, "--json")
    assert code == 0, err
    report = json.loads(out)["splits"]
    assert sum(s["num_images"] for s in report.values()) == len(want) == 16
    for name, got in report.items():
        mine = {i: codes for i, codes in want.items() if split[sample_id(i)] == name}
        positives = sum(any(c != "-1" for c in codes) for codes in mine.values())
        assert got["num_images"] == len(mine) and got["num_missing_images"] == 0
        assert got["classes"]["Pneumothorax"] == {"positive": positives, "negative": len(mine) - positives,
                                                  "uncertain": 0, "missing": 0}
        assert got["boxes"] == {}
        assert got["masks"] == {"Pneumothorax": {"images": len(mine), "pixels": sum(map(labelfacts.rle_pixels, mine.values()))}}


def test_build_and_verify_every_sample_and_mask(raw, store):
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    manifest = json.loads((store / "manifest.json").read_text())["datasets"]["siim_acr"]
    assert manifest["masks"] == ["Pneumothorax"] and manifest["task"] == "binary"
    samples = read_store_samples(store, "siim_acr")
    want = read_label_file(raw / "stage_2_train.csv")
    assert sorted(samples) == sorted(sample_id(i) for i in want)
    positives = 0
    for image, codes in want.items():
        got = samples[sample_id(image)]
        assert got["labels"] == {"Pneumothorax": int(any(c != "-1" for c in codes))}, image
        assert got["patient"] == image and got["masks"] == ["Pneumothorax"]
        assert got["original_size"] == [128, 128] and got["size"] == [64, 64]
        mask = decode(got["_members"]["mask.0.png"])
        expected = labelfacts.nearest(labelfacts.rle_union(codes, 128, 128), got["size"])
        assert np.array_equal(mask, expected), image
        positives += bool(expected.any())
    assert 0 < positives < len(want)


def test_stage_one_file_alone_with_its_leading_space(raw, tmp_path):
    root = tmp_path / "siim_acr"
    shutil.copytree(raw, root)
    (root / "stage_2_train.csv").unlink()
    assert (root / "train-rle.csv").read_text().startswith("ImageId, EncodedPixels\n")
    want = read_label_file(root / "train-rle.csv")
    code, out, err = run_shards("inspect", "--source", "siim_acr", "--root", root, "--json")
    assert code == 0, err
    report = json.loads(out)["splits"]
    assert sum(s["num_images"] for s in report.values()) == len(want) < 16
    assert sum(s["masks"]["Pneumothorax"]["pixels"] for s in report.values()) == sum(map(labelfacts.rle_pixels, want.values()))
    # the stage-1 test images have DICOMs but no rows in train-rle.csv
    assert f"{16 - len(want)} DICOMs under dicom-images-train and dicom-images-test have no row in train-rle.csv" in err


def test_repeated_rows_count_once(raw):
    with open(raw / "stage_2_train.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len({tuple(r) for r in rows}) == len(rows) - 1  # the look-alike repeats one row
    code, out, err = run_shards("inspect", "--source", "siim_acr", "--root", raw)
    assert code == 0 and "1 rows repeat an earlier row of their image and were counted once" in err


def _corrupt(raw, tmp_path, line: int, value: str):
    root = tmp_path / "siim_acr"
    shutil.copytree(raw, root)
    path = root / "stage_2_train.csv"
    lines = path.read_text().splitlines(keepends=True)
    image = lines[line - 1].split(",")[0]
    lines[line - 1] = f"{image},{value}\n"
    path.write_text("".join(lines))
    return root, path


@pytest.mark.parametrize("value, message", [("12 abc", "column 'EncodedPixels' has '12 abc'"),
                                            ("3 4 5", "column 'EncodedPixels' has '3 4 5'"),
                                            ("", "column 'EncodedPixels' has ''")])
def test_a_bad_rle_cell_is_one_line_naming_file_and_line(raw, tmp_path, value, message):
    root, path = _corrupt(raw, tmp_path, 4, value)
    code, out, err = run_shards("build", "--source", "siim_acr", "--root", root, "--out", tmp_path / "out", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"{path}:4:" in lines[0] and message in lines[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_image_with_both_minus_one_and_a_mask_is_an_error(raw, tmp_path):
    want = read_label_file(raw / "stage_2_train.csv")
    positive = next(i for i, codes in want.items() if "-1" not in codes)
    root = tmp_path / "siim_acr"
    shutil.copytree(raw, root)
    path = root / "stage_2_train.csv"
    with open(path, "a") as f:
        f.write(f"{positive},-1\n")
    line = len(path.read_text().splitlines())
    code, _, err = run_shards("inspect", "--source", "siim_acr", "--root", root)
    assert code == 2 and f"{path}:{line}: image {positive} has both a -1 row and a mask" in err
