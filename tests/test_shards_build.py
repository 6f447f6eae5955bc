"""`shards build`, `verify` and `ls` to a local folder: facts, determinism, bad input, resume."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import labelfacts
from conftest import SOURCES, read_store_samples, run_shards
from shards.images import decode_stored

REPO = Path(__file__).resolve().parents[1]


def build(source, root, out, *extra):
    return run_shards("build", "--source", source, "--root", root, "--out", out, "--quiet", "--workers", "1",
                      "--samples-per-shard", "3", *extra)


@pytest.fixture(scope="module")
def store(synth_root, tmp_path_factory):
    """Every source built into one local store."""
    out = tmp_path_factory.mktemp("store")
    for source in SOURCES:
        code, _, err = build(source, synth_root / source, out)
        assert code == 0, err
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_shard_facts_equal_label_files(source, store, synth_root):
    samples = read_store_samples(store, source)
    expected = labelfacts.READERS[source](synth_root / source)
    assert set(samples) == set(expected)
    for key, want in expected.items():
        got = samples[key]
        assert got["dataset"] == source and got["_split"] == got["split"]
        assert got["labels"] == want["labels"], key
        assert got.get("readers") == want.get("readers"), key
        if "boxes" in want:
            labelfacts.assert_boxes(got, want["boxes"], key)
        for fact in ("sex", "age"):  # the subgroup facts, where the file has them
            if fact in want:
                assert got[fact] == want[fact], (key, fact)
        image = decode_stored(got["_image"])
        assert image.mode == "L" and max(image.size) <= 512 and list(image.size) == got["size"]


def test_manifest_contract(store):
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["format"] == 1 and sorted(manifest["datasets"]) == sorted(SOURCES)
    vindr = manifest["datasets"]["vindr_cxr"]
    assert vindr["labels"] == ["Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases",
                               "No finding"]
    assert len(vindr["all_labels"]) == 28
    assert manifest["datasets"]["rsna_pneumonia"]["task"] == "multiclass"
    assert manifest["datasets"]["shenzhen"]["task"] == "binary"
    for entry in manifest["datasets"].values():
        assert entry["image"]["bit_depth"] == 8 and entry["image"]["format"] == "jpeg"
        assert entry["provenance"]["tool"].startswith("ark-dist shards")
        for info in entry["splits"].values():
            assert info["num_samples"] == sum(s["num_samples"] for s in info["shards"])
            for shard in info["shards"]:
                assert (store / shard["url"]).stat().st_size == shard["num_bytes"]
        split_file = store / entry["provenance"]["split_file"]
        rows = list(csv.DictReader(io.StringIO(split_file.read_text())))
        assert sum(info["num_samples"] for info in entry["splits"].values()) == len(rows)
        patients = {}
        for row in rows:  # held-out splits are patient-disjoint
            assert patients.setdefault(row["patient"], row["split"]) == row["split"]
    assert not list(store.rglob("*.tmp-*")) and not list(store.rglob("_build"))


def test_verify_and_ls(store):
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    code, out, _ = run_shards("ls", "--store", store)
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()[1:]} == set(SOURCES)


def test_verify_names_each_bad_shard(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    flipped = copy / manifest["datasets"]["chexpert"]["splits"]["train"]["shards"][0]["url"]
    data = bytearray(flipped.read_bytes())
    data[700] ^= 0xFF  # inside the first image
    flipped.write_bytes(bytes(data))
    truncated = copy / manifest["datasets"]["shenzhen"]["splits"]["train"]["shards"][0]["url"]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    missing = copy / manifest["datasets"]["vindr_cxr"]["splits"]["test"]["shards"][0]["url"]
    missing.unlink()
    code, out, _ = run_shards("verify", "--store", copy)
    assert code == 1
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 3
    assert any(str(flipped) in line and "sha256" in line for line in bad)
    assert any(str(truncated) in line for line in bad)
    assert any(str(missing) in line and "not found" in line for line in bad)


def test_build_is_deterministic_with_workers(synth_root, store, tmp_path):
    for source in ("chestxray14", "vindr_cxr"):
        code, _, err = run_shards("build", "--source", source, "--root", synth_root / source, "--out", tmp_path,
                                  "--quiet", "--workers", "2", "--samples-per-shard", "3")
        assert code == 0, err
        for shard in (store / source).glob("*.tar"):
            assert (tmp_path / source / shard.name).read_bytes() == shard.read_bytes(), shard.name
    ours = json.loads((tmp_path / "manifest.json").read_text())["datasets"]
    theirs = json.loads((store / "manifest.json").read_text())["datasets"]
    assert ours["vindr_cxr"] == theirs["vindr_cxr"]


def test_corrupt_and_missing_images_are_skipped_and_listed(raw_copy, tmp_path):
    root = raw_copy("chestxray14")
    images = sorted(root.rglob("*.png"))
    images[0].write_bytes(images[0].read_bytes()[:300])  # truncated PNG
    images[1].unlink()
    code, _, err = build("chestxray14", root, tmp_path / "s", "--max-bad", "2")
    assert code == 0, err
    entry = json.loads((tmp_path / "s" / "manifest.json").read_text())["datasets"]["chestxray14"]
    # NIH images are found by name under images*/, so a missing one is reported by its name.
    skipped = {Path(s["image"]).name: s["reason"] for info in entry["splits"].values() for s in info["skipped"]}
    assert set(skipped) == {images[0].name, images[1].name}
    assert skipped[images[1].name] == "missing file"
    assert skipped[images[0].name].startswith("undecodable image")
    assert sum(info["num_samples"] for info in entry["splits"].values()) == 14


def test_max_bad_fails_and_leaves_manifest_untouched(raw_copy, tmp_path):
    root = raw_copy("rsna_pneumonia")
    victim = sorted(root.rglob("*.dcm"))[3]
    victim.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    out = tmp_path / "s"
    code, _, err = build("rsna_pneumonia", root, out, "--max-bad", "0")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: rsna_pneumonia: 1 unreadable images exceed --max-bad 0")
    assert str(victim) in err
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp-*"))


@pytest.mark.parametrize("case", ["missing label file", "missing column", "bad value", "unknown source",
                                  "missing root", "bad max-bad"])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, raw_copy, tmp_path):
    root = raw_copy("chexpert")
    source, want = "chexpert", None
    if case == "missing label file":
        (root / "valid.csv").unlink()
        want = "valid.csv not found"
    elif case == "missing column":
        text = (root / "train.csv").read_text().replace("Pleural Effusion", "Pleural_Effusion")
        (root / "train.csv").write_text(text)
        want = f"{root / 'train.csv'}: missing column 'Pleural Effusion'"
    elif case == "bad value":
        lines = (root / "train.csv").read_text().splitlines()
        lines[2] = lines[2].rsplit(",", 1)[0] + ",yes"
        (root / "train.csv").write_text("\n".join(lines) + "\n")
        want = f"{root / 'train.csv'}:3: column 'Support Devices' has 'yes'"
    elif case == "unknown source":
        source, want = "no_such_set", "unknown source 'no_such_set' (known: candid_ptx, chestx_det, chestxray14"
    elif case == "missing root":
        root, want = tmp_path / "nowhere", "root folder not found"
    out = tmp_path / "out"
    extra = ["--max-bad", "lots"] if case == "bad max-bad" else []
    code, stdout, err = build(source, root, out, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert (want or "--max-bad 'lots'") in lines[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_failed_build_resumes_to_the_same_manifest(raw_copy, synth_root, store, tmp_path):
    """An interrupted build (here: stopped by a bad image past --max-bad) keeps its complete shards;
    the re-run re-uses them and ends byte-identical to an uninterrupted build."""
    root = raw_copy("chexpert")
    out = tmp_path / "s"
    samples = read_store_samples(store, "chexpert")
    manifest = json.loads((store / "manifest.json").read_text())["datasets"]["chexpert"]
    last_train = manifest["splits"]["train"]["shards"][-1]["url"]
    with open(store / last_train, "rb") as f:  # break an image that lands in the last train shard
        from shards.samples import read_tar

        key = next(read_tar(f.read()))[0].split("/", 1)[1]
    victim = next(p for p in root.rglob("*.jpg") if samples[key]["patient"] in str(p) and key.endswith(p.stem))
    good = victim.read_bytes()
    victim.write_bytes(b"not a jpeg")
    code, _, err = build("chexpert", root, out, "--max-bad", "0")
    assert code == 2 and "exceed --max-bad" in err
    built = sorted(p.name for p in (out / "chexpert").glob("*.tar"))
    assert built and "train-000000.tar" in built and not (out / "manifest.json").exists()
    first = (out / "chexpert" / "train-000000.tar").stat().st_mtime_ns
    victim.write_bytes(good)
    code, _, err = build("chexpert", root, out, "--max-bad", "0")
    assert code == 0, err
    assert f"({len(built)} already built)" in err
    assert (out / "chexpert" / "train-000000.tar").stat().st_mtime_ns == first
    assert json.loads((out / "manifest.json").read_text())["datasets"]["chexpert"] == manifest
    for shard in (store / "chexpert").glob("*.tar"):
        assert (out / "chexpert" / shard.name).read_bytes() == shard.read_bytes()


@pytest.mark.slow
def test_killed_build_resumes(tmp_path):
    """SIGKILL a real build process mid-way; the re-run resumes and matches a clean build."""
    raw = tmp_path / "raw"
    code, _, err = run_shards("synth", "--out", raw, "--per-source", "40", "--scale", "0.5", "--sources", "chestxray14")
    assert code == 0, err
    cmd = [sys.executable, "-m", "shards", "build", "--source", "chestxray14", "--root", str(raw / "chestxray14"),
           "--quiet", "--workers", "1", "--samples-per-shard", "2", "--format", "png"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    shards_done = 0
    for line in proc.stderr:
        shards_done += line.startswith("wrote ")
        if shards_done == 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not (killed / "manifest.json").exists()
    resumed = subprocess.run([*cmd, "--out", str(killed)], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    reused = int(resumed.stderr.split(" already built")[0].rsplit("(", 1)[1])
    assert reused >= 3
    clean = subprocess.run([*cmd, "--out", str(tmp_path / "clean")], cwd=REPO, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert (killed / "manifest.json").read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()
    assert not list(killed.rglob("*.tmp-*"))


def test_split_file_reproduces_splits(synth_root, store, tmp_path):
    split_file = store / "rsna_pneumonia" / "splits.csv"
    code, _, err = build("rsna_pneumonia", synth_root / "rsna_pneumonia", tmp_path, "--seed", "7", "--splits",
                         split_file)
    assert code == 0, err
    assert (tmp_path / "rsna_pneumonia" / "splits.csv").read_bytes() == split_file.read_bytes()
    code, _, err = build("rsna_pneumonia", synth_root / "rsna_pneumonia", tmp_path / "other", "--seed", "7")
    assert code == 0, err
    assert (tmp_path / "other" / "rsna_pneumonia" / "splits.csv").read_bytes() != split_file.read_bytes()


def test_rebuild_re_encodes_a_repaired_image(raw_copy, tmp_path):
    root = raw_copy("shenzhen")
    victim = sorted((root / "CXR_png").glob("*.png"))[2]
    good = victim.read_bytes()
    victim.unlink()
    out = tmp_path / "s"
    code, _, err = build("shenzhen", root, out, "--max-bad", "1")
    assert code == 0, err
    victim.write_bytes(good)
    code, _, err = build("shenzhen", root, out, "--max-bad", "1")
    assert code == 0, err
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["shenzhen"]
    assert not any(info["skipped"] for info in entry["splits"].values()), "the repaired image is in the shards now"
    assert sum(info["num_samples"] for info in entry["splits"].values()) == 16
