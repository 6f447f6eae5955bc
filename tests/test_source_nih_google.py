"""nih_google: inspect, build and verify of the look-alike against an independent reading of
Google's CSVs (plain csv, no shards.sources), locally and on S3, and its bad inputs and quirks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import look_alike, read_store_samples, run_shards

PREFIX = "four_findings_expert_labels"
CLASSES = ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]
READER_SPELLING = {"Nodule or mass": "Nodule/mass"}  # the readers file's name for it
ADJUDICATED = {"YES": 1, "NO": 0, "": None}
VOTES = {"YES": 1, "NO": 0, "HEDGE": -1}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "nih_google")


@pytest.fixture
def copy(raw, tmp_path) -> Path:
    dest = tmp_path / "nih_google"
    shutil.copytree(raw, dest)
    return dest


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_label_files(root: Path) -> dict:
    """id -> split, patient, view, adjudicated labels and readers' votes, as Google's files state them."""
    votes: dict[str, dict] = {}
    for row in _rows(root / f"{PREFIX}_individual_readers.csv"):
        votes.setdefault(row["Image ID"], {})[row["Reader ID"]] = {
            c: VOTES[row[READER_SPELLING.get(c, c)]] for c in CLASSES}
    facts = {}
    for split, native in (("test", "test"), ("val", "validation")):
        for row in _rows(root / f"{PREFIX}_{native}_labels.csv"):
            facts[row["Image Index"][:-4]] = {
                "split": split, "patient": row["Patient ID"], "view": row["View Position"],
                "labels": {c: ADJUDICATED[row[c]] for c in CLASSES}, "readers": votes.get(row["Image Index"])}
    return facts


def counted(fact: dict, c: str):
    """What inspect counts for one image and class: the adjudicated label (every image has one;
    the readers' votes are kept beside it)."""
    return fact["labels"][c]


def test_inspect_counts_equal_the_label_files(raw):
    code, out, err = run_shards("inspect", "--source", "nih_google", "--root", raw, "--json")
    assert code == 0, err
    report = json.loads(out)["splits"]
    facts = read_label_files(raw)
    assert set(report) == {"test", "val"}  # official sets only: no train
    names = {1: "positive", 0: "negative", -1: "uncertain", None: "missing"}
    for split, got in report.items():
        mine = [f for f in facts.values() if f["split"] == split]
        assert got["num_images"] == len(mine) and got["num_missing_images"] == 0
        for c in CLASSES:
            want = dict.fromkeys(names.values(), 0)
            for f in mine:
                want[names[counted(f, c)]] += 1
            assert got["classes"][c] == want, (split, c)
        assert got["boxes"] == {} and got["masks"] == {}
    # The look-alike has what the real files have: HEDGE votes, two-reader images, disagreement.
    votes = [v for f in facts.values() for v in (f["readers"] or {}).values()]
    assert any(-1 in v.values() for v in votes)
    assert any(len(f["readers"]) == 2 for f in facts.values())


def test_build_and_verify_keep_adjudicated_labels_readers_and_origin(raw, tmp_path):
    store = tmp_path / "store"
    code, _, err = run_shards("build", "--source", "nih_google", "--root", raw, "--out", store, "--quiet",
                              "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    entry = json.loads((store / "manifest.json").read_text())["datasets"]["nih_google"]
    assert entry["labels"] == CLASSES and sorted(entry["splits"]) == ["test", "val"]

    facts = read_label_files(raw)
    samples = read_store_samples(store, "nih_google")
    assert set(samples) == set(facts)
    for key, want in facts.items():
        got = samples[key]
        assert got["split"] == got["_split"] == want["split"], key
        assert got["labels"] == want["labels"], key
        assert got.get("readers") == want["readers"], key
        assert got["origin"] == f"chestxray14/{key}" and got["patient"] == want["patient"], key
        assert got["view"] == want["view"] and got["frontal"] is True, key
        assert "boxes" not in got and "masks" not in got


def test_build_and_verify_on_s3(raw, s3_bucket):
    url = f"s3://{s3_bucket}/cxr"
    code, _, err = run_shards("build", "--source", "nih_google", "--root", raw, "--out", url, "--quiet",
                              "--workers", "1", "--samples-per-shard", "5", "--max-side", "64")
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
    code, out, _ = run_shards("ls", "--store", url)
    assert code == 0 and "nih_google" in out


def _set_cell(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell (line numbers as an editor shows them, the header is line 1), keeping CRLF."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[line - 1][rows[0].index(column)] = value
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)


@pytest.mark.parametrize("file, column, value, message", [
    ("test_labels", "Airspace opacity", "MAYBE", "column 'Airspace opacity' has 'MAYBE', expected 'YES', 'NO', blank"),
    ("test_labels", "Pneumothorax", "HEDGE", "column 'Pneumothorax' has 'HEDGE'"),  # never in adjudicated labels
    ("test_labels", "Set Id", "val", "column 'Set Id' has 'val', expected 'test'"),
    ("individual_readers", "Nodule/mass", "yes", "column 'Nodule/mass' has 'yes', expected 'YES', 'NO', 'HEDGE'"),
])
def test_a_value_outside_the_domain_is_one_error_line_naming_file_line_and_column(copy, tmp_path, file, column,
                                                                                    value, message):
    path = copy / f"{PREFIX}_{file}.csv"
    _set_cell(path, 3, column, value)
    code, _, err = run_shards("build", "--source", "nih_google", "--root", copy, "--out", tmp_path / "s", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}:3: "), err
    assert message in lines[0], lines[0]
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_a_reader_reading_an_image_twice_is_an_error(copy):
    readers = copy / f"{PREFIX}_individual_readers.csv"
    with open(readers, newline="") as f:
        second = list(csv.reader(f))[1]
    with open(readers, "a", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerow(second)
    code, _, err = run_shards("inspect", "--source", "nih_google", "--root", copy)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{readers}:" in err and f"reader {second[2]} reads image {second[1]} twice" in err, err


def test_an_image_in_both_sets_is_an_error(copy):
    with open(copy / f"{PREFIX}_test_labels.csv", newline="") as f:
        header, first = list(csv.reader(f))[:2]
    first[header.index("Set Id")] = "val"
    validation = copy / f"{PREFIX}_validation_labels.csv"
    with open(validation, "a", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerow(first)
    code, _, err = run_shards("inspect", "--source", "nih_google", "--root", copy)
    assert code == 2 and f"{validation}:" in err and f"image {first[0]} is listed twice" in err, err


def test_blank_cells_layouts_and_stray_readers(copy):
    # Google: a blank adjudicated cell means the image was not adjudicated for that finding.
    test_file = copy / f"{PREFIX}_test_labels.csv"
    image = _rows(test_file)[0]["Image Index"]
    _set_cell(test_file, 2, "Fracture", "")
    # A reader row for an image in neither label file is ignored, with a note.
    with open(copy / f"{PREFIX}_individual_readers.csv", "a", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerow(["9", "00000009_000.png", "4300000000", "NO", "NO", "NO", "NO",
                                                       "test"])
    # The GCS bucket's names, in its folder; images flat under images/ (one of NIH's layouts).
    (copy / PREFIX).mkdir()
    for native in ("test_labels", "validation_labels", "individual_readers"):
        (copy / f"{PREFIX}_{native}.csv").rename(copy / PREFIX / f"{native}.csv")
    (copy / "images").mkdir()
    for png in sorted(copy.glob("images_*/images/*.png")):
        png.rename(copy / "images" / png.name)
    for folder in copy.glob("images_*"):
        shutil.rmtree(folder)
    code, out, err = run_shards("build", "--source", "nih_google", "--root", copy, "--out", copy.parent / "s",
                                "--quiet", "--workers", "1", "--max-side", "32")
    assert code == 0, err
    assert "readers for 1 images in neither label file" in err
    samples = read_store_samples(copy.parent / "s", "nih_google")
    assert len(samples) == 16 and samples[image[:-4]]["labels"]["Fracture"] is None
