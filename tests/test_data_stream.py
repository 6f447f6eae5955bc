"""The data plane: equal batches per rank, exact evaluation, resume, policies, bad samples."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ark_dist.data import (Cursor, DataConfig, DataError, EvalLoader, Store, StoreConfig, dataset_entry,
                           mixed_loader, read_manifest, round_steps, train_loader)
from ark_dist.data.config import ViewConfig
from shards.samples import write_tar


def _config(url, **kw) -> DataConfig:
    kw.setdefault("num_workers", 2)
    return DataConfig(store=StoreConfig(url=str(url)), views=ViewConfig(image_size=32, load_size=40),
                      shuffle_buffer=8, **kw)


def _entry(config, name):
    return dataset_entry(read_manifest(Store(config.store)), name, splits=("train", "val", "test"))


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_yields_the_same_number_of_full_batches(data_store, world):
    config = _config(data_store)
    entry = _entry(config, "chexpert")
    sizes = [s["num_samples"] for s in entry["splits"]["train"]["shards"]]
    assert len(set(sizes)) > 1, "the store must have uneven shards for this test"
    global_batch = 2 * world
    steps = round_steps(entry, global_batch=global_batch, max_steps=None)
    assert steps == entry["splits"]["train"]["num_samples"] // global_batch
    for rank in range(world):
        batches = list(train_loader(entry=entry, config=config, seed=1, cursor=Cursor(), rank=rank, world=world,
                                    global_batch=global_batch))
        assert len(batches) == steps
        assert all(b["image"].shape == (2, 1, 40, 40) and bool(b["valid"].all()) for b in batches)


def test_max_steps_per_round_caps_a_round(data_store):
    config = _config(data_store, max_steps_per_round=2)
    entry = _entry(config, "rsna_pneumonia")
    assert len(list(train_loader(entry=entry, config=config, seed=0, cursor=Cursor(), rank=0, world=1,
                                 global_batch=2))) == 2


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_sees_every_sample_exactly_once(data_store, world, workers):
    config = _config(data_store, num_workers=workers)
    for name in ("chexpert", "vindr_cxr"):
        entry = _entry(config, name)
        for split in ("train", "test"):
            seen, lengths = [], set()
            for rank in range(world):
                loader = EvalLoader(entry=entry, config=config, split=split, seed=0, rank=rank, world=world,
                                    batch_size=2)
                batches = list(loader)
                lengths.add(len(batches))
                for b in batches:
                    seen += [i for i, ok in zip(b["ids"], b["valid"].tolist()) if ok]
            assert len(lengths) == 1, "every rank yields the same number of batches"
            expected = entry["splits"][split]["num_samples"]
            assert len(seen) == len(set(seen)) == expected, (name, split)


def _batches(loader):
    return [{k: b[k] for k in ("image", "target", "mask", "theta_student", "theta_teacher", "photo", "ids")}
            for b in loader]


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


@pytest.mark.parametrize("start", [1, 3, 4])
def test_resume_yields_the_same_next_batches(data_store, start):
    config = _config(data_store, num_workers=2)
    entry = _entry(config, "chexpert")
    args = dict(entry=entry, config=config, seed=5, rank=1, world=2, global_batch=2)
    full = _batches(train_loader(cursor=Cursor(epoch=3, round=1, step=0), **args))
    resumed = _batches(train_loader(cursor=Cursor(epoch=3, round=1, step=start), **args))
    assert len(resumed) == len(full) - start
    assert all(_same(a, b) for a, b in zip(full[start:], resumed))
    other = _batches(train_loader(cursor=Cursor(epoch=4, round=1, step=0), **args))
    assert not all(_same(a, b) for a, b in zip(full, other)), "another epoch draws other batches"


MIXED = ["chexpert", "vindr_cxr", "rsna_pneumonia"]


def _train_labels(config, entry) -> dict:
    """id -> (target, mask) of every train sample, read in order by the evaluation stream."""
    truth = {}
    for b in EvalLoader(entry=entry, config=config, split="train", seed=0, rank=0, world=1, batch_size=100):
        truth.update({i: (t, m) for i, t, m in zip(b["ids"], b["target"], b["mask"])})
    return truth


@pytest.mark.parametrize("workers", [0, 2])
def test_interleaved_batches_mix_datasets_in_the_union_label_space(data_store, workers):
    config = _config(data_store, num_workers=workers)
    entries = [_entry(config, n) for n in MIXED]
    steps = [round_steps(e, global_batch=4, max_steps=None) for e in entries]
    widths = [len(e["labels"]) for e in entries]
    offsets = [0, widths[0], widths[0] + widths[1], sum(widths)]
    ids = [set(_train_labels(config, e)) for e in entries]
    seen = set()
    for rank in (0, 1):
        batches = list(mixed_loader(entries=entries, config=config, seed=2, cursor=Cursor(), rank=rank, world=2,
                                    global_batch=4))
        assert len(batches) == sum(steps), "an interleaved epoch is as long as the cyclic rounds together"
        for b in batches:
            assert b["target"].shape == b["mask"].shape == (2, sum(widths)) and b["dataset"].shape == (2,)
            for row, d in enumerate(b["dataset"].tolist()):
                assert b["ids"][row] in ids[d]
                outside = torch.ones(sum(widths), dtype=torch.bool)
                outside[offsets[d]:offsets[d + 1]] = False
                assert not b["mask"][row, outside].any() and not b["target"][row, outside].any()
                assert b["mask"][row, offsets[d]:offsets[d + 1]].any()
                seen.add(d)
            assert {s["dataset"] for s in b["stats"]} == set(MIXED)
    assert seen == {0, 1, 2}


def test_interleaved_labels_equal_the_single_dataset_stream(data_store):
    """A sample's slice of the union target is what its own dataset's stream gives it."""
    config = _config(data_store, num_workers=0)
    entries = [_entry(config, n) for n in MIXED]
    mixed = list(mixed_loader(entries=entries, config=config, seed=0, cursor=Cursor(), rank=0, world=1, global_batch=4))
    offsets = [0]
    for e in entries:
        offsets.append(offsets[-1] + len(e["labels"]))
    for d, entry in enumerate(entries):
        truth = _train_labels(config, entry)
        for b in mixed:
            for row in (b["dataset"] == d).nonzero().flatten().tolist():
                target, mask = truth[b["ids"][row]]
                assert torch.equal(b["mask"][row, offsets[d]:offsets[d + 1]], mask)
                assert torch.equal(b["target"][row, offsets[d]:offsets[d + 1]], target)


@pytest.mark.parametrize("start", [1, 4])
def test_interleaved_resume_yields_the_same_next_batches(data_store, start):
    config = _config(data_store, num_workers=2)
    entries = [_entry(config, n) for n in MIXED]
    args = dict(entries=entries, config=config, seed=5, rank=1, world=2, global_batch=4)
    full = list(mixed_loader(cursor=Cursor(epoch=2, round=0, step=0), **args))
    resumed = list(mixed_loader(cursor=Cursor(epoch=2, round=0, step=start), **args))
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed):
        assert a["ids"] == b["ids"] and torch.equal(a["dataset"], b["dataset"])
        assert all(torch.equal(a[k], b[k]) for k in ("image", "target", "mask", "theta_student", "photo"))


def test_corrupt_samples_are_skipped_counted_and_budgeted(data_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(data_store, store)
    manifest = json.loads((store / "manifest.json").read_text())
    entry = manifest["datasets"]["rsna_pneumonia"]
    shard = entry["splits"]["test"]["shards"][0]
    from shards.samples import read_tar

    samples = [(k, "jpg", p["jpg"], p["json"]) for k, p in read_tar((store / shard["url"]).read_bytes())]
    samples[0] = (samples[0][0], "jpg", b"\xff\xd8\xff broken", samples[0][3])
    data = write_tar(samples)
    (store / shard["url"]).write_bytes(data)
    import hashlib

    shard.update(num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (store / "manifest.json").write_text(json.dumps(manifest))
    config = _config(store, num_workers=0)
    loader = EvalLoader(entry=entry, config=config, split="test", seed=0, rank=0, world=1, batch_size=100)
    batches = list(loader)
    assert sum(int(b["valid"].sum()) for b in batches) == shard["num_samples"] - 1
    assert batches[0]["stats"][0]["skipped"] == 1
    strict = _config(store, num_workers=0, bad_sample_min=0, bad_sample_fraction=0.0)
    with pytest.raises(DataError, match=r"rsna_pneumonia: 1 bad samples exceed the budget.*broken|rsna_pneumonia: 1 bad"):
        list(EvalLoader(entry=entry, config=strict, split="test", seed=0, rank=0, world=1, batch_size=100))


def test_missing_dataset_is_a_clear_error(data_store):
    config = _config(data_store)
    with pytest.raises(ValueError, match="'mimic_cxr' is in the recipe but not in the manifest"):
        dataset_entry(read_manifest(Store(config.store)), "mimic_cxr")


def test_shards_read_with_the_webdataset_library(data_store):
    import webdataset as wds

    config = _config(data_store)
    entry = _entry(config, "vindr_cxr")
    urls = [str(data_store / s["url"]) for s in entry["splits"]["test"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=None))
    assert len(samples) == entry["splits"]["test"]["num_samples"]
    assert all(s["__key__"].startswith("vindr_cxr/") and {"jpg", "json"} <= set(s) for s in samples)


def test_meter_reports_throughput_wait_share_and_loader_counters(data_store):
    import time

    from ark_dist.data import DataMeter

    config = _config(data_store, num_workers=2)
    entry = _entry(config, "chexpert")
    meter = DataMeter()
    count = 0
    for batch in meter.wrap(train_loader(entry=entry, config=config, seed=0, cursor=Cursor(), rank=0, world=1,
                                         global_batch=2)):
        count += int(batch["valid"].sum())
        time.sleep(0.05)  # a "step" far longer than waiting for prefetched batches
    metrics = meter.metrics()
    assert metrics["throughput/img_per_s"] > 0
    assert 0 <= metrics["time/data_wait_pct"] < 100
    assert metrics["data/bytes_read"] > 0 and metrics["data/skipped/chexpert"] == 0
    assert meter.samples == 0, "metrics() starts a new interval"
    assert count == round_steps(entry, global_batch=2, max_steps=None) * 2
