"""The data plane: equal batches per rank, exact evaluation, resume, policies, bad samples."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ark_dist.data import (Cursor, DataConfig, DataError, EvalLoader, Store, StoreConfig, dataset_entry,
                           mixed_loader, read_manifest, round_steps, train_loader)
from ark_dist.data.config import ViewConfig
from conftest import read_store_samples
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


@pytest.mark.parametrize("sampling", ["epoch", "resampled"])
@pytest.mark.parametrize("start", [1, 3, 4])
def test_resume_yields_the_same_next_batches(data_store, start, sampling):
    config = _config(data_store, num_workers=2, sampling=sampling)
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


# -- data.sampling: epoch (a round is one pass over the training split) --------------------------
EPOCH_SETS = ["chexpert", "vindr_cxr", "rsna_pneumonia"]  # train shards of 3/3/3/2, 4/4/3 and 5/5/2 samples


def _store_train_ids(root, name) -> set[str]:
    """The train split's ids, read from the shards themselves (not through ark_dist.data)."""
    return {i for i, facts in read_store_samples(root, name).items() if facts["_split"] == "train"}


def _round(config, entry, *, world, global_batch, cursor=Cursor(epoch=0, round=0, step=0), seed=7):
    """Every rank's batches of one round: {rank: [batch, ...]}."""
    return {rank: list(train_loader(entry=entry, config=config, seed=seed, cursor=cursor, rank=rank, world=world,
                                    global_batch=global_batch)) for rank in range(world)}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_round_sees_every_sample_at_most_once_and_all_but_one_global_batch(data_store, world, workers):
    config = _config(data_store, num_workers=workers, sampling="epoch")
    manifest = json.loads((data_store / "manifest.json").read_text())["datasets"]
    for name in EPOCH_SETS:
        entry = _entry(config, name)
        counts = [s["num_samples"] for s in manifest[name]["splits"]["train"]["shards"]]
        assert len(set(counts)) > 1, "the store must have uneven shards for this test"
        total, stored = sum(counts), _store_train_ids(data_store, name)
        assert len(stored) == total
        for per_rank in (1, 2):
            global_batch = per_rank * world
            by_rank = _round(config, entry, world=world, global_batch=global_batch)
            assert {len(b) for b in by_rank.values()} == {total // global_batch}, (name, "same steps on every rank")
            seen = [i for batches in by_rank.values() for b in batches for i in b["ids"]]
            assert all(len(b["ids"]) == per_rank for batches in by_rank.values() for b in batches)
            assert len(seen) == len(set(seen)), (name, global_batch, "a sample trained on twice in one round")
            assert set(seen) <= stored and len(seen) > total - global_batch, (name, global_batch)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_round_resumed_mid_round_yields_exactly_the_remaining_batches(data_store, world, workers):
    config = _config(data_store, num_workers=workers, sampling="epoch")
    entry = _entry(config, "chexpert")  # 11 samples: 5 steps on 2 ranks, 3 on 3 (one sample per rank and step)
    full = {r: _batches(b) for r, b in _round(config, entry, world=world, global_batch=world,
                                              cursor=Cursor(epoch=2, round=1, step=0)).items()}
    steps = len(full[0])
    assert steps >= 3
    for start in (1, steps - 1):
        resumed = _round(config, entry, world=world, global_batch=world, cursor=Cursor(epoch=2, round=1, step=start))
        for rank in range(world):
            batches = _batches(resumed[rank])
            assert len(batches) == steps - start
            assert all(_same(a, b) for a, b in zip(full[rank][start:], batches)), (rank, start)


def test_two_epochs_read_a_round_in_different_orders(data_store):
    config = _config(data_store, num_workers=2, sampling="epoch")
    for name in EPOCH_SETS:
        entry = _entry(config, name)
        orders = []
        for epoch in (0, 1):
            by_rank = _round(config, entry, world=2, global_batch=2, cursor=Cursor(epoch=epoch, round=0, step=0))
            orders.append([i for r in (0, 1) for b in by_rank[r] for i in b["ids"]])
            assert len(orders[-1]) == len(set(orders[-1]))
        assert orders[0] != orders[1], name


def test_an_epoch_stream_opens_only_the_shards_its_range_overlaps(data_store):
    """Streams read contiguous ranges of one pass: together they open at most every shard once plus
    one per range boundary. (Resampled streams fill their shuffle buffers from many shards.)"""
    world, workers = 3, 2
    manifest = json.loads((data_store / "manifest.json").read_text())["datasets"]
    opened = {}
    for sampling in ("epoch", "resampled"):
        config = _config(data_store, num_workers=workers, sampling=sampling)
        entry = _entry(config, "chexpert")
        streams = {}
        for rank, batches in _round(config, entry, world=world, global_batch=world).items():
            for b in batches:
                streams[(rank, b["stats"][0]["worker"])] = b["stats"][0]["shards"]  # cumulative per stream
        opened[sampling] = sum(streams.values())
    bound = len(manifest["chexpert"]["splits"]["train"]["shards"]) + world * workers - 1
    assert opened["epoch"] <= bound < opened["resampled"]


def test_an_epoch_round_with_a_missing_shard_still_gives_every_rank_its_batches(data_store, tmp_path):
    """Bad samples leave a stream short of its range: it goes on with the samples after the range,
    so no rank falls behind in a collective."""
    root = tmp_path / "store"
    shutil.copytree(data_store, root)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / manifest["datasets"]["rsna_pneumonia"]["splits"]["train"]["shards"][1]["url"]).unlink()  # 5 of 12 gone
    config = _config(root, num_workers=2, sampling="epoch", bad_sample_min=100)
    entry = _entry(config, "rsna_pneumonia")
    by_rank = _round(config, entry, world=2, global_batch=4)
    assert [len(b) for b in by_rank.values()] == [12 // 4] * 2
    assert max(s["skipped"] for batches in by_rank.values() for b in batches for s in b["stats"]) > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interleaved_epoch_sees_each_dataset_once_in_the_share_of_its_round(data_store, workers):
    """Epoch sampling, interleaved: dataset d contributes exactly steps_d x global batch samples of
    its cyclic round, none twice, over all ranks; every rank yields the same number of batches."""
    world, global_batch = 2, 4
    config = _config(data_store, num_workers=workers, sampling="epoch")
    manifest = json.loads((data_store / "manifest.json").read_text())["datasets"]
    entries = [_entry(config, n) for n in MIXED]
    seen = {n: [] for n in MIXED}
    lengths = set()
    for rank in range(world):
        batches = list(mixed_loader(entries=entries, config=config, seed=4, cursor=Cursor(epoch=1), rank=rank,
                                    world=world, global_batch=global_batch))
        lengths.add(len(batches))
        for b in batches:
            for i, d in zip(b["ids"], b["dataset"].tolist()):
                seen[MIXED[d]].append(i)
    steps = [manifest[n]["splits"]["train"]["num_samples"] // global_batch for n in MIXED]
    assert lengths == {sum(steps)}
    for name, count in zip(MIXED, steps):
        assert len(seen[name]) == len(set(seen[name])) == count * global_batch, name
        assert set(seen[name]) <= _store_train_ids(data_store, name)


def test_sampling_is_validated_naming_the_key(tmp_path):
    from ark_dist.configtree import load_config

    with pytest.raises(ValueError, match="data.sampling"):
        DataConfig(sampling="shuffled").validate()
    path = tmp_path / "data.yaml"
    path.write_text("sampling: once\n")
    with pytest.raises(ValueError, match="sampling"):
        load_config(DataConfig, path)


# -- the canvas against the store's stored size -------------------------------------------------
def test_canvas_warnings_name_each_dataset_stored_smaller_than_the_canvas(data_store):
    from ark_dist.data import canvas_warnings

    manifest = json.loads((data_store / "manifest.json").read_text())["datasets"]
    entries = [manifest[n] for n in EPOCH_SETS]
    assert {e["image"]["max_side"] for e in entries} == {96}  # the fixture's --max-side
    assert canvas_warnings(entries, load_size=96) == []
    lines = canvas_warnings(entries, load_size=97)
    assert len(lines) == 3 and all("data.views.load_size=97" in line and "96" in line for line in lines)
    assert [n for n in EPOCH_SETS if any(n in line for line in lines)] == EPOCH_SETS


def test_excluded_samples_are_never_read_and_rounds_keep_their_steps(data_store, tmp_path):
    """`data.exclude` (the file `shards overlap` writes): the listed samples appear in no training
    batch and no evaluation, every rank still yields the round's steps, and evaluation counts the rest."""
    plain = _config(data_store)
    entry = _entry(plain, "chexpert")
    samples = read_store_samples(data_store, "chexpert")
    train = sorted(k for k, f in samples.items() if f["_split"] == "train")
    test = sorted(k for k, f in samples.items() if f["_split"] == "test")
    dropped = train[::3] + test[:2]
    (tmp_path / "exclude.txt").write_text("".join(f"chexpert/{k}\n" for k in dropped) + "mimic_cxr/other\n")
    config = _config(data_store, exclude=str(tmp_path / "exclude.txt"))
    world, global_batch = 2, 4
    steps = round_steps(entry, global_batch=global_batch, max_steps=None)
    seen = []
    for rank in range(world):
        batches = list(train_loader(entry=entry, config=config, seed=1, cursor=Cursor(), rank=rank, world=world,
                                    global_batch=global_batch))
        assert len(batches) == steps
        seen += [i for b in batches for i in b["ids"]]
    assert seen and not set(seen) & set(dropped)
    evaluated = []
    for rank in range(world):
        for b in EvalLoader(entry=entry, config=config, split="test", seed=0, rank=rank, world=world, batch_size=2):
            evaluated += [i for i, ok in zip(b["ids"], b["valid"].tolist()) if ok]
    assert sorted(evaluated) == sorted(set(test) - set(dropped))


def test_an_unreadable_or_malformed_exclude_file_is_one_line(data_store, tmp_path):
    from ark_dist.data.stream import excluded

    with pytest.raises(ValueError, match=r"data.exclude=.*missing.txt.*cannot read it"):
        excluded(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_text("chexpert-without-a-slash\n")
    with pytest.raises(ValueError, match="is not a <dataset>/<id> key"):
        excluded(str(tmp_path / "bad.txt"))
