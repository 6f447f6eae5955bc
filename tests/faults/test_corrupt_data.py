"""Corrupt data: a flipped byte in an image, a truncated shard, a missing shard, a shard that is not
the bytes the manifest lists, and tar members named to escape a folder (`..`, absolute).

Training streams skip each and count the samples lost against `data.bad_sample_fraction` /
`bad_sample_min`; beyond that budget the stream stops with one line naming the dataset and the
shard. `shards verify` names every bad shard and its problem. Nothing is ever extracted: the
would-be targets of the unsafe names must not exist afterwards."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest

from ark_dist.data import (Cursor, DataConfig, DataError, EvalLoader, Store, StoreConfig, read_manifest,
                           round_steps, stages, train_loader)
from ark_dist.data.config import ViewConfig
from conftest import run_shards, upload_store
from faultruns import error_lines
from shards.samples import read_tar, write_tar
from test_bad_input import run, tiny

DATASET = "rsna_pneumonia"  # train shards in the data_store fixture: 5, 5 and 2 samples
SPLIT_SAMPLES = 12
LOOSE = dict(bad_sample_min=100)  # the budget never runs out: count what is skipped
STRICT = dict(bad_sample_min=0, bad_sample_fraction=0.0)  # the first bad sample ends the stream


def _config(url, *, endpoint=None, cache=None, num_workers=0, **budget) -> DataConfig:
    store = StoreConfig(url=str(url), endpoint_url=endpoint, cache_dir=cache and str(cache), retries=2, backoff_s=0.1)
    return DataConfig(store=store, num_workers=num_workers, views=ViewConfig(image_size=32, load_size=40),
                      shuffle_buffer=8, **budget)


def _shard(manifest: dict, index: int, split: str = "train", dataset: str = DATASET) -> dict:
    return manifest["datasets"][dataset]["splits"][split]["shards"][index]


def _stream(config: DataConfig, shards: list[dict]) -> tuple[list[str], stages.Counters]:
    """The ids that decode from `shards`, in order, and the counters after the last one."""
    counters = stages.Counters(DATASET, max_bad_fraction=config.bad_sample_fraction, min_bad=config.bad_sample_min)
    samples = stages.decode(stages.tar_samples(shards, Store(config.store), counters), 40, counters)
    return [s["facts"]["id"] for s in samples], counters


def _ids(data: bytes) -> list[str]:
    return [json.loads(parts["json"])["id"] for _, parts in read_tar(data)]


# -- the faults, each applied to a writable copy of a store ------------------------------------
def flip_image(root: Path, shard: dict) -> None:
    """The first byte of the first sample's image: the tar stays valid, the image cannot decode."""
    path = root / shard["url"]
    data = bytearray(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        first = tar.getmembers()[0]
    assert first.name.endswith(".jpg")
    data[first.offset_data] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(root: Path, shard: dict) -> None:
    """Cut inside the third sample's image: two samples remain readable."""
    path = root / shard["url"]
    with tarfile.open(path) as tar:
        third = tar.getmembers()[4]
    path.write_bytes(path.read_bytes()[:third.offset_data + 10])


def delete(root: Path, shard: dict) -> None:
    (root / shard["url"]).unlink()


def swap(root: Path, shard: dict, other: dict) -> None:
    """Another valid shard's bytes (as many samples): only the sha256 tells."""
    (root / shard["url"]).write_bytes((root / other["url"]).read_bytes())


def unsafe(root: Path, manifest: dict, shard: dict, key: str) -> None:
    """The first sample's members renamed to `key`.jpg/.json; the manifest updated to the new bytes,
    so the names are the only problem."""
    path = root / shard["url"]
    samples = [(k, "jpg", p["jpg"], p["json"]) for k, p in read_tar(path.read_bytes())]
    samples[0] = (key, *samples[0][1:])
    data = write_tar(samples)
    path.write_bytes(data)
    shard.update(num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    save(root, manifest)


def save(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def escape_key(kind: str, tag: str) -> str:
    """A sample key whose members would land outside the store if anyone extracted the shard."""
    return f"../../escape-{tag}/x" if kind == "dotdot" else f"/tmp/ark-escape-{tag}/x"


def assert_nothing_escaped(root: Path, tag: str) -> None:
    """Neither the targets an extraction into the shard's folder, the store or the working folder
    would write, nor the absolute one, exist."""
    bases = [root / DATASET, root, Path.cwd()]
    targets = [(base / f"../../escape-{tag}").resolve() for base in bases] + [Path(f"/tmp/ark-escape-{tag}")]
    assert not [t for t in targets if t.exists()]
    assert not list(root.parent.rglob(f"*escape-{tag}*"))


@pytest.fixture
def store(data_store, tmp_path):
    """A writable copy of the data store and its manifest."""
    root = tmp_path / "store"
    shutil.copytree(data_store, root)
    return root, json.loads((root / "manifest.json").read_text())


# (fault, which train shard, samples counted bad, samples that arrive, phrase in the message)
# A streamed shard found wrong only at its end (sha256) had its samples yielded already: they arrive,
# and 1 is counted. A flipped byte is both: the sample cannot decode, and the shard's sha256 differs.
FAULTS = [("flipped image byte", 0, 2, 11, "UnidentifiedImageError"),
          ("truncated shard", 0, 3, 9, "2 of 5 samples read"),
          ("missing shard", 1, 5, 7, "FileNotFoundError"),
          ("other shard's bytes", 1, 1, 12, "sha256 differs from the manifest"),
          ("manifest sha256 edited", 2, 1, 12, "sha256 differs from the manifest"),
          ("member name with ..", 2, 2, 10, "unsafe member name '../../escape-"),
          ("absolute member name", 2, 2, 10, "unsafe member name '/tmp/ark-escape-")]


def _apply(fault: str, root: Path, manifest: dict, index: int, tag: str) -> None:
    shard = _shard(manifest, index)
    if fault == "flipped image byte":
        flip_image(root, shard)
    elif fault == "truncated shard":
        truncate(root, shard)
    elif fault == "missing shard":
        delete(root, shard)
    elif fault == "other shard's bytes":
        swap(root, shard, _shard(manifest, 0))
    elif fault == "manifest sha256 edited":
        shard["sha256"] = "0" * 64
        save(root, manifest)
    else:
        unsafe(root, manifest, shard, escape_key("dotdot" if ".." in fault else "absolute", tag))


@pytest.mark.parametrize("fault, index, lost, arrive, phrase", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_skipped_and_counted_then_names_the_shard_beyond_the_budget(store, fault, index, lost, arrive,
                                                                                 phrase):
    root, manifest = store
    shards = manifest["datasets"][DATASET]["splits"]["train"]["shards"]
    good = {i for j, s in enumerate(shards) if j != index for i in _ids((root / s["url"]).read_bytes())}
    tag = uuid.uuid4().hex
    _apply(fault, root, manifest, index, tag)
    ids, counters = _stream(_config(root, **LOOSE), shards)
    assert (counters.skipped, len(ids)) == (lost, arrive)
    assert good <= set(ids), "every sample of the untouched shards arrives"
    with pytest.raises(DataError) as info:
        _stream(_config(root, **STRICT), shards)
    line = str(info.value)
    assert re.match(rf"{DATASET}: \d+ bad samples exceed the budget \(0 of \d+, data.bad_sample_fraction", line)
    assert f"{root / shards[index]['url']}" in line and phrase in line and "\n" not in line
    assert_nothing_escaped(root, tag)


def test_the_loaders_skip_bad_shards_and_fail_beyond_the_budget_naming_the_shard(store):
    """Through real DataLoaders (two loader processes): a missing shard and a flipped image."""
    root, manifest = store
    delete(root, _shard(manifest, 1))
    flip_image(root, _shard(manifest, 0))
    entry = read_manifest(Store(StoreConfig(url=str(root))))[DATASET]
    loose = _config(root, num_workers=2, **LOOSE)
    batches = list(train_loader(entry=entry, config=loose, seed=0, cursor=Cursor(), rank=0, world=1, global_batch=2))
    assert len(batches) == round_steps(entry, global_batch=2, max_steps=None), "the round is not cut short"
    assert max(s["skipped"] for b in batches for s in b["stats"]) > 0
    evaluated = list(EvalLoader(entry=entry, config=loose, split="train", seed=0, rank=0, world=1, batch_size=4))
    assert sum(int(b["valid"].sum()) for b in evaluated) == SPLIT_SAMPLES - 5 - 1
    strict = _config(root, num_workers=2, **STRICT)
    with pytest.raises(DataError, match=rf"{DATASET}: \d+ bad samples exceed the budget") as info:
        list(train_loader(entry=entry, config=strict, seed=0, cursor=Cursor(), rank=0, world=1, global_batch=2))
    assert str(root / DATASET) in str(info.value)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no cache"])
def test_s3_missing_swapped_and_short_objects_are_skipped_and_counted(data_store, s3_endpoint, s3_bucket, tmp_path,
                                                                      cached):
    """On S3: train-0 holds train-1's bytes, train-1 is gone, train-2 is cut short; test-0 is sound.
    With the node cache a wrong shard is caught before any sample (its 5 are lost); streamed, only
    after its samples went by (1 counted)."""
    manifest = json.loads((data_store / "manifest.json").read_text())
    url = upload_store(data_store, f"s3://{s3_bucket}/store")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    train = [_shard(manifest, i) for i in range(3)]
    # Another shard's bytes, padded with zero blocks to this one's length: only the sha256 can tell.
    donor = (data_store / train[1]["url"]).read_bytes()
    assert len(donor) <= train[0]["num_bytes"], "the swap needs a donor shard no longer than the one it replaces"
    swapped = donor + b"\0" * (train[0]["num_bytes"] - len(donor))
    s3.put_object(Bucket=s3_bucket, Key=f"store/{train[0]['url']}", Body=swapped)
    s3.delete_object(Bucket=s3_bucket, Key=f"store/{train[1]['url']}")
    short = (data_store / train[2]["url"]).read_bytes()[:5000]
    s3.put_object(Bucket=s3_bucket, Key=f"store/{train[2]['url']}", Body=short)
    sound = _shard(manifest, 0, split="test")
    cache = tmp_path / "cache" if cached else None
    ids, counters = _stream(_config(url, endpoint=s3_endpoint, cache=cache, **LOOSE), [*train, sound])
    assert set(_ids((data_store / sound["url"]).read_bytes())) <= set(ids)
    assert (counters.skipped, len(ids)) == ((5 + 5 + 2, 2) if cached else (1 + 5 + 2, 5 + 2))
    if cached:  # only the sound shard was kept
        assert sorted(p.name for p in cache.iterdir() if p.suffix == ".tar") == [f"{sound['sha256']}.tar"]
        assert not list(cache.glob("*.tmp-*"))
    for shard, phrase in zip(train, ["sha256 differs", "FileNotFoundError", "object shorter than the manifest's"]):
        with pytest.raises(DataError) as info:
            _stream(_config(url, endpoint=s3_endpoint, cache=cache, **STRICT), [shard])
        assert f"{url}/{shard['url']} (endpoint {s3_endpoint})" in str(info.value) and phrase in str(info.value)


def test_verify_names_every_bad_shard_and_its_problem(store):
    root, manifest = store
    tag = uuid.uuid4().hex
    bad = {"flipped": _shard(manifest, 0), "truncated": _shard(manifest, 1), "missing": _shard(manifest, 2),
           "swapped": _shard(manifest, 1, dataset="vindr_cxr"), "dotdot": _shard(manifest, 0, "test", "vindr_cxr"),
           "absolute": _shard(manifest, 0, "val", "chexpert")}
    flip_image(root, bad["flipped"])
    truncate(root, bad["truncated"])
    delete(root, bad["missing"])
    swap(root, bad["swapped"], _shard(manifest, 0, dataset="vindr_cxr"))
    for kind in ("dotdot", "absolute"):
        unsafe(root, manifest, bad[kind], escape_key(kind, tag))
    code, out, _ = run_shards("verify", "--store", root, "--workers", "2")
    assert code == 1
    lines = {line.split()[1].rstrip(":"): line for line in out.splitlines() if line.startswith("BAD ")}
    assert len(lines) == len(bad) and f"{len(bad)} bad" in out
    want = {"flipped": ["sha256 differs", "undecodable image"], "truncated": ["(truncated)", "sha256 differs"],
            "missing": ["not found"], "swapped": ["sha256 differs"], "dotdot": ["unsafe member name '../../escape-"],
            "absolute": ["unsafe member name '/tmp/ark-escape-"]}
    for kind, shard in bad.items():
        line = lines[str(root / shard["url"])]
        assert all(phrase in line for phrase in want[kind]), (kind, line)
    _stream(_config(root, **LOOSE), [bad["dotdot"], bad["absolute"]])
    assert_nothing_escaped(root, tag)


# -- end to end: `launch.py train` on a store with a corrupt training shard -----------------------
@pytest.fixture(scope="module")
def one_shard_store(synth_root, tmp_path_factory):
    """Shenzhen with every split in one shard; the train shard's first image has a flipped byte."""
    out = tmp_path_factory.mktemp("corrupt")
    code, _, err = run_shards("build", "--source", "shenzhen", "--root", synth_root / "shenzhen", "--out", out,
                              "--quiet", "--workers", "1", "--samples-per-shard", "64", "--max-side", "64")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    [shard] = manifest["datasets"]["shenzhen"]["splits"]["train"]["shards"]
    flip_image(out, shard)
    return out, out / shard["url"]


def _train(store: Path, tmp_path: Path, name: str, *extra: str):
    """`launch.py train`: a tiny one-epoch run on one rank, shenzhen only."""
    return run(["train", *tiny(store, tmp_path / "runs"), "data.datasets=[shenzhen]", "engine.num_workers=1",
                f"train.name={name}", *extra], cwd=tmp_path)


@pytest.mark.slow
def test_a_run_skips_a_corrupt_sample_within_budget_and_fails_beyond_it_naming_the_shard(one_shard_store, tmp_path):
    store, shard = one_shard_store
    done = _train(store, tmp_path, "within")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "within" / "metrics.jsonl").read_text().splitlines()]
    skipped = sum(row["data/skipped/shenzhen"] for row in rows)
    print(f"within budget: {len(rows)} rounds, {skipped:g} samples skipped")
    assert skipped >= 1
    done = _train(store, tmp_path, "beyond", "data.bad_sample_min=0", "data.bad_sample_fraction=0",
                  "train.max_failures=0")
    [line] = error_lines(done.stderr)  # Ray logs the rest
    print(f"beyond budget: {line}")
    assert done.returncode == 1 and line.startswith("error: training failed: DataError: shenzhen: 1 bad samples "
                                                    "exceed the budget") and str(shard) in line
