"""RunLoader: one loader for the whole run yields, round after round, exactly the batches the
per-round loaders yield (sample ids, pixels, labels and view parameters), from any cursor."""

from __future__ import annotations

import pytest
import torch

from ark_dist.data import (Cursor, DataConfig, RunLoader, Store, StoreConfig, dataset_entry, mixed_loader,
                           read_manifest, train_loader)
from ark_dist.data.config import ViewConfig

SETS = ["chexpert", "vindr_cxr", "rsna_pneumonia"]  # 11, 11 and 12 train samples in uneven shards
KEYS = ("image", "target", "mask", "theta_student", "theta_teacher", "photo", "ids")


def _config(url, **kw) -> DataConfig:
    return DataConfig(store=StoreConfig(url=str(url)), views=ViewConfig(image_size=32, load_size=40), shuffle_buffer=8,
                      **kw)


def _entries(config):
    manifest = read_manifest(Store(config.store))
    return [dataset_entry(manifest, n) for n in SETS]


def _rounds_from(cursor: Cursor, count: int, rounds_per_epoch: int) -> list[Cursor]:
    """`count` rounds in run order from `cursor` (independent of the code under test)."""
    out, (epoch, index, step) = [], (cursor.epoch, cursor.round, cursor.step)
    for _ in range(count):
        out.append(Cursor(epoch, index, step))
        epoch, index, step = (epoch + 1, 0, 0) if index + 1 == rounds_per_epoch else (epoch, index + 1, 0)
    return out


def _assert_same(a: list[dict], b: list[dict], where) -> None:
    assert len(a) == len(b), where
    for k, (x, y) in enumerate(zip(a, b)):
        for key in KEYS + (("dataset",) if "dataset" in x else ()):
            same = torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key]
            assert same, (where, k, key)


@pytest.mark.parametrize("sampling", ["epoch", "resampled"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [Cursor(0, 0, 0), Cursor(1, 1, 2)], ids=["start", "mid-round"])
def test_cyclic_rounds_equal_the_per_round_loaders(data_store, sampling, workers, start):
    config = _config(data_store, num_workers=workers, sampling=sampling)
    entries = _entries(config)
    world, global_batch = 2, 2  # 5, 5 and 6 steps per round
    for rank in range(world):
        common = dict(config=config, seed=3, rank=rank, world=world, global_batch=global_batch)
        loader = RunLoader(entries=entries, interleaved=False, cursor=start, epochs=3, **common)
        for cursor in _rounds_from(start, 4, len(SETS)):  # crosses an epoch boundary
            run = list(loader.round(cursor.epoch, cursor.round))
            alone = list(train_loader(entry=entries[cursor.round], cursor=cursor, **common))
            _assert_same(run, alone, (rank, cursor))
            assert len(run) > 0
        loader.close()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [Cursor(0, 0, 0), Cursor(1, 0, 3)], ids=["start", "mid-round"])
def test_interleaved_epochs_equal_the_per_epoch_loaders(data_store, workers, start):
    config = _config(data_store, num_workers=workers)
    entries = _entries(config)
    common = dict(config=config, seed=5, rank=1, world=2, global_batch=4)
    loader = RunLoader(entries=entries, interleaved=True, cursor=start, **common)
    for cursor in _rounds_from(start, 2, 1):
        run = list(loader.round(cursor.epoch, 0))
        alone = list(mixed_loader(entries=entries, cursor=cursor, **common))
        _assert_same(run, alone, cursor)
    loader.close()


def test_rounds_must_be_asked_in_run_order_and_read_to_their_end(data_store):
    config = _config(data_store, num_workers=0)
    entries = _entries(config)
    loader = RunLoader(entries=entries, interleaved=False, config=config, seed=0, cursor=Cursor(0, 1, 0), rank=0,
                       world=1, global_batch=2, epochs=1)
    with pytest.raises(RuntimeError, match="asked for epoch 0, round 0; the next round is epoch 0, round 1"):
        loader.round(0, 0)
    loader = RunLoader(entries=entries, interleaved=False, config=config, seed=0, cursor=Cursor(0, 1, 0), rank=0,
                       world=1, global_batch=2, epochs=1)
    next(iter(loader.round(0, 1)))  # the trainer left round 1 after one batch
    with pytest.raises(RuntimeError, match="every round must be read to its end"):
        list(loader.round(0, 2))
    with pytest.raises(RuntimeError, match="the run is over"):
        loader.round(1, 0)
