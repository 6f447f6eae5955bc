"""NODE21: `inspect` and `build` against an independent reading of the look-alike's metadata.csv (plain
csv parsing, written from the dataset's description, not from the source module), the quirks and
bad inputs the reader handles, and both new sources (NODE21, TBX11K) built and verified on S3."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter

import boto3
import pytest

import labelfacts
from conftest import look_alike, read_store_samples, run_shards
from shards.images import decode_stored
from shards.samples import read_tar

FOLDER = "cxr_images/proccessed_data"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """{source: look-alike}: NODE21's, and TBX11K's for the S3 build of both."""
    return {source: look_alike(tmp_path_factory, source) for source in ("node21", "tbx11k")}


def read_truth(root) -> dict:
    """{sample id: {"labels", "boxes"}}: one row per nodule, label-0 rows are images without any."""
    truth = {}
    with open(root / FOLDER / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            entry = truth.setdefault(row["img_name"][:-4], {"labels": {"Nodule": 0}, "boxes": []})
            if row["label"] == "1":
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                entry["labels"]["Nodule"] = 1
                entry["boxes"].append(("Nodule", [x, y, x + w, y + h], None))
    return truth


def inspect(root, *extra):
    code, out, err = run_shards("inspect", "--source", "node21", "--root", root, "--json", *extra)
    assert code == 0, err
    return json.loads(out)["splits"]


def test_inspect_counts_equal_the_label_file(raw):
    truth = read_truth(raw["node21"])
    positives = sum(t["labels"]["Nodule"] for t in truth.values())
    splits = inspect(raw["node21"], "--val-fraction", "0", "--test-fraction", "0")  # everything in train
    assert list(splits) == ["train"]
    info = splits["train"]
    assert info["num_images"] == len(truth) and info["num_missing_images"] == 0
    assert info["classes"] == {"Nodule": {"positive": positives, "negative": len(truth) - positives,
                                          "uncertain": 0, "missing": 0}}
    assert info["boxes"] == {"Nodule": sum(len(t["boxes"]) for t in truth.values())} and info["masks"] == {}
    splits = inspect(raw["node21"])  # the default hold-outs: 10 % val, 20 % test, by image
    assert set(splits) == {"train", "val", "test"}
    assert sum(s["num_images"] for s in splits.values()) == len(truth)
    assert sum(s["boxes"].get("Nodule", 0) for s in splits.values()) == info["boxes"]["Nodule"]
    assert splits["test"]["num_images"] == round(0.2 * len(truth))
    assert splits["val"]["num_images"] == round(0.1 * len(truth))


def test_build_and_verify_give_the_label_file_facts(raw, tmp_path):
    code, _, err = run_shards("build", "--source", "node21", "--root", raw["node21"], "--out", tmp_path, "--quiet",
                              "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", tmp_path)
    assert code == 0 and "0 bad" in out
    truth = read_truth(raw["node21"])
    samples = read_store_samples(tmp_path, "node21")
    assert set(samples) == set(truth)
    assert any(len(t["boxes"]) > 1 for t in truth.values())  # several rows for one image
    for key, want in truth.items():
        got = samples[key]
        assert got["labels"] == want["labels"] and got["patient"] == key and got["_split"] == got["split"], key
        labelfacts.assert_boxes(got, want["boxes"], key)
        image = decode_stored(got["_image"])  # from a 16-bit MetaImage
        assert image.mode == "L" and list(image.size) == got["size"] == [64, 64] and got["original_size"] == [128, 128]


def test_columns_are_read_by_name_with_or_without_the_index_column(raw, tmp_path):
    root = tmp_path / "node21"
    shutil.copytree(raw["node21"], root)
    path = root / FOLDER / "metadata.csv"
    header = path.read_text().splitlines()[0]
    assert header == ",height,img_name,label,width,x,y"  # as shipped: pandas' index, then alphabetical
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    columns = ["img_name", "x", "y", "width", "height", "label"]  # the documented order, no index
    path.write_text("\n".join([",".join(columns)] + [",".join(r[c] for c in columns) for r in rows]) + "\n")
    assert inspect(root) == inspect(raw["node21"])


def _break(path, case):
    """Make one bad row in metadata.csv; returns the text the error line must hold."""
    lines = path.read_text().splitlines()
    negative = next(n for n, line in enumerate(lines) if ",0,0,0,0" in line)  # index,height,img_name,label,...
    positive = next(n for n, line in enumerate(lines) if line.split(",")[3] == "1")
    if case == "label":
        cells = lines[positive].split(",")
        cells[3] = "2"
        lines[positive], want = ",".join(cells), f"{path}:{positive + 1}: column 'label' has '2'"
    elif case == "negative with a box":
        cells = lines[negative].split(",")
        cells[1] = "12"
        lines[negative], want = ",".join(cells), f"{path}:{negative + 1}: label 0 with box"
    elif case == "negative and positive rows":
        cells = lines[positive].split(",")
        cells[3:] = ["0", "0", "0", "0"]
        cells[1] = "0"
        lines.append(",".join(cells))
        want = f"{path}:{len(lines)}: column 'label' has 0 for {cells[2]}, which has a row before"
    else:  # a nodule box without width
        cells = lines[positive].split(",")
        cells[4] = "0"
        lines[positive], want = ",".join(cells), f"{path}:{positive + 1}: column 'width' has '0'"
    path.write_text("\n".join(lines) + "\n")
    return want


@pytest.mark.parametrize("case", ["label", "negative with a box", "negative and positive rows", "zero width"])
def test_bad_input_is_one_error_line_naming_file_line_and_column(raw, tmp_path, case):
    root = tmp_path / "node21"
    shutil.copytree(raw["node21"], root)
    want = _break(root / FOLDER / "metadata.csv", case)
    code, _, err = run_shards("build", "--source", "node21", "--root", root, "--out", tmp_path / "out", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert want in lines[0], (want, lines[0])


def test_both_sources_build_and_verify_on_s3(raw, s3_endpoint, s3_bucket):
    url = f"s3://{s3_bucket}/cxr"
    for source in ("node21", "tbx11k"):
        code, _, err = run_shards("build", "--source", source, "--root", raw[source], "--out", url, "--quiet",
                                  "--workers", "1", "--samples-per-shard", "4")
        assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key="cxr/manifest.json")["Body"].read())
    assert manifest["datasets"]["tbx11k"]["task"] == "multiclass" and manifest["datasets"]["node21"]["task"] == "binary"
    truth = read_truth(raw["node21"])
    boxes = Counter()
    for info in manifest["datasets"]["node21"]["splits"].values():
        for shard in info["shards"]:
            data = s3.get_object(Bucket=s3_bucket, Key=f"cxr/{shard['url']}")["Body"].read()
            for _, parts in read_tar(data):
                facts = json.loads(parts["json"])
                assert facts["labels"] == truth[facts["id"]]["labels"]
                boxes[facts["id"]] = len(facts["boxes"])
    assert boxes == {k: len(t["boxes"]) for k, t in truth.items()}
