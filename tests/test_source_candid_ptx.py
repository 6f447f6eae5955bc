"""candid_ptx: `inspect` and `build` against a reading of the look-alike's label files written here
(plain csv, SIIM-ACR's `rle2mask` loop), not through `shards.sources`; and both RLE sources on S3."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import boto3
import numpy as np
import pytest

import labelfacts
from conftest import look_alike, read_store_samples, run_shards
from shards.masks import decode
from shards.samples import read_tar
from shards.synth import synthesize_all

CLASSES = ["Pneumothorax", "Acute Rib Fracture", "Chest Tube"]
FILES = {"Acute Rib Fracture": "acute_rib_fracture.csv", "Chest Tube": "chest_tube.csv"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "candid_ptx")


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    code, _, err = run_shards("build", "--source", "candid_ptx", "--root", raw, "--out", out, "--quiet",
                              "--workers", "1", "--samples-per-shard", "4", "--max-side", "64")
    assert code == 0, err
    return out


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_label_files(root) -> dict[str, dict]:
    """{SOPInstanceUID: {"patient", class: [distinct RLE cells]}}: the reports file lists the images,
    the other two add their finding's rows (an image they do not list has none)."""
    facts: dict[str, dict] = {}
    for row in _rows(root / "Pneumothorax_reports.csv"):
        fact = facts.setdefault(row["SOPInstanceUID"], {"patient": row["filename"].split("_")[0],
                                                        **{c: [] for c in CLASSES}})
        if row["EncodedPixels"] not in fact["Pneumothorax"]:
            fact["Pneumothorax"].append(row["EncodedPixels"])
    for finding, name in FILES.items():
        for row in _rows(root / name):
            if row["anon_SOPUID"] in facts and row["mask_rle"] not in facts[row["anon_SOPUID"]][finding]:
                facts[row["anon_SOPUID"]][finding].append(row["mask_rle"])
    return facts


def sample_id(uid: str) -> str:
    return uid[: -len(".dcm")].replace(".", "_")


def positive(codes) -> int:
    return int(any(c != "-1" for c in codes))


def test_listed_as_a_source():
    code, out, _ = run_shards("sources")
    assert code == 0 and any(line.split()[0] == "candid_ptx" for line in out.splitlines())


def test_inspect_counts_equal_the_label_files(raw, store):
    want = read_label_files(raw)
    text = (store / "candid_ptx" / "splits.csv").read_text()
    split = {row["id"]: row["split"] for row in csv.DictReader(io.StringIO(text))}
    assert sorted(split) == sorted(sample_id(u) for u in want)
    code, out, err = run_shards("inspect", "--source", "candid_ptx", "--root", raw, "--json")
    assert code == 0, err
    report = json.loads(out)["splits"]
    assert sum(s["num_images"] for s in report.values()) == len(want) == 16
    for name, got in report.items():
        mine = [fact for uid, fact in want.items() if split[sample_id(uid)] == name]
        assert got["num_images"] == len(mine) and got["num_missing_images"] == 0 and got["boxes"] == {}
        for c in CLASSES:
            pos = sum(positive(f[c]) for f in mine)
            assert got["classes"][c] == {"positive": pos, "negative": len(mine) - pos, "uncertain": 0, "missing": 0}
            assert got["masks"][c] == {"images": len(mine), "pixels": sum(labelfacts.rle_pixels(f[c]) for f in mine)}, (name, c)
    for c in CLASSES:
        assert any(positive(f[c]) for f in want.values()), c


def test_build_and_verify_every_sample_and_mask(raw, store):
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    entry = json.loads((store / "manifest.json").read_text())["datasets"]["candid_ptx"]
    assert entry["masks"] == CLASSES and entry["labels"] == CLASSES
    samples = read_store_samples(store, "candid_ptx")
    want = read_label_files(raw)
    assert sorted(samples) == sorted(sample_id(u) for u in want)
    patients = {}
    for uid, fact in want.items():
        got = samples[sample_id(uid)]
        assert got["labels"] == {c: positive(fact[c]) for c in CLASSES}, uid
        assert got["patient"] == fact["patient"] and sorted(got["masks"]) == sorted(CLASSES)
        assert got["original_size"] == [128, 128] and got["size"] == [64, 64]
        for k, c in enumerate(CLASSES):
            expected = labelfacts.nearest(labelfacts.rle_union(fact[c], 128, 128), got["size"])
            assert np.array_equal(decode(got["_members"][f"mask.{k}.png"]), expected), (uid, c)
        assert patients.setdefault(fact["patient"], got["split"]) == got["split"]  # patient-disjoint
    assert len(patients) < len(want)  # some patients have several images


def test_quirks_stray_repeated_and_minus_one_rows(raw):
    tubes = _rows(raw / "chest_tube.csv")
    reports = {r["SOPInstanceUID"] for r in _rows(raw / "Pneumothorax_reports.csv")}
    assert any(r["anon_SOPUID"] not in reports for r in tubes) and any(r["mask_rle"] == "-1" for r in tubes)
    code, _, err = run_shards("inspect", "--source", "candid_ptx", "--root", raw)
    assert code == 0, err
    assert "chest_tube.csv: 1 images are not in Pneumothorax_reports.csv and were ignored" in err
    assert "Acute Rib Fracture: 1 rows repeat an earlier row of their image and were counted once" in err


def test_uids_without_the_dcm_suffix_still_find_their_files(raw, tmp_path):
    root = tmp_path / "candid_ptx"
    shutil.copytree(raw, root)
    for name in ("Pneumothorax_reports.csv", *FILES.values()):
        path = root / name
        path.write_text(path.read_text().replace(".dcm,", ","))
    code, out, err = run_shards("inspect", "--source", "candid_ptx", "--root", root, "--json")
    assert code == 0, err
    report = json.loads(out)["splits"]
    assert sum(s["num_images"] for s in report.values()) == 16
    assert sum(s["num_missing_images"] for s in report.values()) == 0


@pytest.mark.parametrize("name, column, value, message", [
    ("chest_tube.csv", "mask_rle", "7 x", "column 'mask_rle' has '7 x'"),
    ("Pneumothorax_reports.csv", "EncodedPixels", "1 2 3", "column 'EncodedPixels' has '1 2 3'"),
    ("Pneumothorax_reports.csv", "filename", "patient7", "column 'filename' has 'patient7', expected P<digits>_"),
])
def test_a_bad_value_is_one_line_naming_file_and_line(raw, tmp_path, name, column, value, message):
    root = tmp_path / "candid_ptx"
    shutil.copytree(raw, root)
    path = root / name
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    rows[1][header.index(column)] = value  # line 3
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    code, _, err = run_shards("build", "--source", "candid_ptx", "--root", root, "--out", tmp_path / "out", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"{path}:3:" in lines[0] and message in lines[0]


def test_both_rle_sources_build_and_verify_on_s3(tmp_path, s3_endpoint, s3_bucket):
    roots = synthesize_all(tmp_path, num_images=8, seed=1, scale=0.125, sources=["siim_acr", "candid_ptx"])
    url = f"s3://{s3_bucket}/cxr"
    for name, root in roots.items():
        code, _, err = run_shards("build", "--source", name, "--root", root, "--out", url, "--quiet",
                                  "--workers", "1", "--samples-per-shard", "3", "--max-side", "64")
        assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key="cxr/manifest.json")["Body"].read())
    assert sorted(manifest["datasets"]) == ["candid_ptx", "siim_acr"]
    want = read_label_files(roots["candid_ptx"])
    seen = {}
    for info in manifest["datasets"]["candid_ptx"]["splits"].values():
        for shard in info["shards"]:
            data = s3.get_object(Bucket=s3_bucket, Key=f"cxr/{shard['url']}")["Body"].read()
            for _, members in read_tar(data):
                facts = json.loads(members["json"])
                seen[facts["id"]] = facts["labels"]
                assert all(f"mask.{k}.png" in members for k in range(len(CLASSES)))
    assert seen == {sample_id(u): {c: positive(f[c]) for c in CLASSES} for u, f in want.items()}
