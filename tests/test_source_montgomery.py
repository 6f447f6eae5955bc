"""Montgomery: inspect, build, verify (local and S3) against an independent reading of the
look-alike's file names, lung mask files and ClinicalReadings; the readings' quirks and bad values."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import look_alike, read_store_samples, run_shards

SET = "MontgomerySet"
MASK_FOLDERS = {"Left lung": "leftMask", "Right lung": "rightMask"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "montgomery")


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store")
    code, _, err = _build(raw, out)
    assert code == 0, err
    return out


def _build(root, out, *extra):
    return run_shards("build", "--source", "montgomery", "--root", root, "--out", out, "--quiet", "--workers", "1",
                      "--samples-per-shard", "4", *extra)


def _mask(path: Path) -> np.ndarray:
    """A mask file as the readme describes it: nonzero = lung."""
    return np.array(Image.open(path)) != 0


def expected(root: Path) -> dict:
    """{image stem: facts} from the files alone: the label is the name's last digit, the patient
    its number (or the number a `same pt as` reading names), sex and age from the reading."""
    facts = {}
    for image in sorted((root / SET / "CXR_png").glob("MCUCXR_*_*.png")):
        _, number, label = image.stem.split("_")
        sex_line, age_line, *reading = (root / SET / "ClinicalReadings" / f"{image.stem}.txt").read_text().splitlines()
        text = " ".join(reading)
        patient = text.split("same pt as MCUCXR_")[1][:4] if "same pt as" in text else number
        facts[image.stem] = {
            "labels": {"Tuberculosis": int(label)}, "patient": patient,
            "sex": sex_line.split(":")[1].strip(), "age": int(age_line.split(":")[1].strip()[:-1]),
            "masks": {c: root / SET / "ManualMask" / folder / image.name for c, folder in MASK_FOLDERS.items()},
        }
    return facts


def _nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour scaling to (width, height): each output pixel takes the input pixel under
    its centre."""
    (h, w), (sw, sh) = mask.shape, size
    rows = np.minimum(((np.arange(sh) + 0.5) * h / sh).astype(int), h - 1)
    cols = np.minimum(((np.arange(sw) + 0.5) * w / sw).astype(int), w - 1)
    return mask[rows][:, cols]


def _inspect(root) -> dict:
    code, out, err = run_shards("inspect", "--source", "montgomery", "--root", root, "--json")
    assert code == 0, err
    return json.loads(out)


def test_inspect_counts_equal_the_files(raw):
    report = _inspect(raw)
    want = expected(raw)
    splits = report["splits"].values()
    assert sum(s["num_images"] for s in splits) == len(want) == 16
    assert sum(s["num_missing_images"] for s in splits) == 0
    assert sum(s["classes"]["Tuberculosis"]["positive"] for s in splits) == \
        sum(f["labels"]["Tuberculosis"] for f in want.values())
    assert all(s["boxes"] == {} for s in splits)
    for name in MASK_FOLDERS:
        assert sum(s["masks"][name]["images"] for s in splits) == 16
        assert sum(s["masks"][name]["pixels"] for s in splits) == sum(int(_mask(f["masks"][name]).sum())
                                                                      for f in want.values())


def test_build_facts_and_masks_equal_the_files(raw, store):
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    samples = read_store_samples(store, "montgomery")
    want = expected(raw)
    assert set(samples) == set(want)
    for key, facts in want.items():
        got = samples[key]
        assert got["labels"] == facts["labels"], key
        assert (got["patient"], got["sex"], got["age"], got["frontal"]) == \
            (facts["patient"], facts["sex"], facts["age"], True), key
        assert got["masks"] == ["Left lung", "Right lung"] and "boxes" not in got
    manifest = json.loads((store / "manifest.json").read_text())["datasets"]["montgomery"]
    assert manifest["masks"] == ["Left lung", "Right lung"] and manifest["task"] == "binary"
    report = _inspect(raw)  # the same seed: the build's splits are inspect's
    assert {s: i["num_samples"] for s, i in manifest["splits"].items()} == \
        {s: i["num_images"] for s, i in report["splits"].items()}
    checked = 0
    for stem, got in samples.items():
        size = tuple(got["size"])
        for index, name in enumerate(["Left lung", "Right lung"]):
            stored = np.array(Image.open(io.BytesIO(got["_members"][f"mask.{index}.png"])).convert("L")) > 0
            assert stored.shape == size[::-1]
            assert np.array_equal(stored, _nearest(_mask(want[stem]["masks"][name]), size)), (stem, name)
            checked += 1
    assert checked == 32


def test_a_second_image_of_one_person_shares_its_patient_and_split(raw, store):
    want = expected(raw)
    linked = [k for k, f in want.items() if f["patient"] != k.split("_")[1]]
    assert len(linked) == 1, "the look-alike has one `same pt as` reading"
    other = f"MCUCXR_{want[linked[0]]['patient']}_1"
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO((store / "montgomery" / "splits.csv").read_text()))}
    assert rows[linked[0]]["patient"] == rows[other]["patient"] == want[linked[0]]["patient"]
    assert rows[linked[0]]["split"] == rows[other]["split"]


def test_the_set_folder_itself_is_a_root_too(raw):
    inner = _inspect(raw / SET)
    assert inner["splits"] == _inspect(raw)["splits"]


def test_a_missing_mask_file_leaves_that_class_out(raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    victim = sorted((root / SET / "ManualMask" / "rightMask").glob("*.png"))[0]
    victim.unlink()
    code, out, err = run_shards("inspect", "--source", "montgomery", "--root", root, "--json")
    assert code == 0 and "1 mask files missing" in err
    splits = json.loads(out)["splits"].values()
    assert sum(s["masks"]["Right lung"]["images"] for s in splits) == 15
    assert sum(s["masks"]["Left lung"]["images"] for s in splits) == 16
    code, _, err = _build(root, tmp_path / "store")
    assert code == 0, err
    assert read_store_samples(tmp_path / "store", "montgomery")[victim.stem]["masks"] == ["Left lung"]


@pytest.mark.parametrize("line, text, want", [
    (1, "Patient's Sex: X ", "'Patient's Sex' has 'X', expected M, F or O"),
    (2, "Patient's Age: 27 years", "'Patient's Age' has '27 years', expected a DICOM age"),
])
def test_a_reading_outside_its_domain_is_one_error_line(raw, tmp_path, line, text, want):
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    reading = sorted((root / SET / "ClinicalReadings").glob("*.txt"))[4]
    lines = reading.read_text().splitlines()
    lines[line - 1] = text
    reading.write_text("\n".join(lines) + "\n")
    code, _, err = _build(root, tmp_path / "store")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {reading}:{line}: {want}"), err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.tar"))


def test_build_and_verify_on_s3(raw, s3_bucket):
    url = f"s3://{s3_bucket}/cxr"
    code, _, err = _build(raw, url)
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
