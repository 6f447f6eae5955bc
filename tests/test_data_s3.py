"""Streaming from a real S3 endpoint (moto's HTTP server): outages, the node cache."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from ark_dist.data import DataConfig, EvalLoader, ShardReadError, Store, StoreConfig, read_manifest
from ark_dist.data.config import ViewConfig
from conftest import run_shards


@pytest.fixture
def endpoint(stoppable_s3, synth_root):
    """Its own server (so stopping it leaves the session's alone) with rsna_pneumonia built in."""
    ep = stoppable_s3
    ep.store_url = f"s3://{ep.bucket}/store"
    code, _, err = run_shards("build", "--source", "rsna_pneumonia", "--root", synth_root / "rsna_pneumonia",
                              "--out", ep.store_url, "--endpoint-url", ep.url, "--quiet", "--workers", "1",
                              "--samples-per-shard", "2", "--max-side", "64")
    assert code == 0, err
    return ep


def _config(ep, **store) -> DataConfig:
    store_cfg = StoreConfig(url=ep.store_url, endpoint_url=ep.url, **store)
    return DataConfig(store=store_cfg, num_workers=0, views=ViewConfig(image_size=32, load_size=32))


def _ids(config, split="train") -> list[str]:
    entry = read_manifest(Store(config.store))["rsna_pneumonia"]
    loader = EvalLoader(entry=entry, config=config, split=split, seed=0, rank=0, world=1, batch_size=1)
    return [i for b in loader for i in b["ids"]]


def test_an_outage_of_a_few_seconds_is_survived(endpoint):
    config = _config(endpoint, retries=8, backoff_s=0.2)
    expected = _ids(config)
    entry = read_manifest(Store(config.store))["rsna_pneumonia"]
    loader = EvalLoader(entry=entry, config=config, split="train", seed=0, rank=0, world=1, batch_size=1)
    seen = []
    for batch in loader:
        seen += batch["ids"]
        if len(seen) == 1:  # mid-stream: the endpoint goes away for 2 s
            endpoint.stop()
            threading.Timer(2.0, endpoint.start).start()
    assert seen == expected


def test_an_endpoint_that_stays_down_fails_naming_shard_and_endpoint(endpoint):
    config = _config(endpoint, retries=2, backoff_s=0.1)
    entry = read_manifest(Store(config.store))["rsna_pneumonia"]
    endpoint.stop()
    started = time.monotonic()
    with pytest.raises(ShardReadError) as info:
        _ = [b for b in EvalLoader(entry=entry, config=config, split="train", seed=0, rank=0, world=1, batch_size=1)]
    message = str(info.value)
    assert f"{endpoint.store_url}/rsna_pneumonia/train-000000.tar (endpoint {endpoint.url})" in message
    assert "after 2 attempts" in message
    assert time.monotonic() - started < 90
    endpoint.start()


def test_cache_fills_once_then_serves_without_the_store(endpoint, tmp_path):
    cache = tmp_path / "cache"
    config = _config(endpoint, cache_dir=str(cache))
    entry = read_manifest(Store(config.store))["rsna_pneumonia"]
    first = _ids(config)
    shards = entry["splits"]["train"]["shards"]
    cached = sorted(p.name for p in cache.glob("*.tar"))
    assert cached == sorted(f"{s['sha256']}.tar" for s in shards)
    for shard in shards:  # content-addressed and verified
        assert hashlib.sha256((cache / f"{shard['sha256']}.tar").read_bytes()).hexdigest() == shard["sha256"]
    endpoint.stop()  # a warm cache needs no store at all
    try:
        loader = EvalLoader(entry=entry, config=config, split="train", seed=0, rank=0, world=1, batch_size=1)
        assert [i for b in loader for i in b["ids"]] == first
    finally:
        endpoint.start()
    assert not list(cache.glob("*.tmp-*"))


def test_cache_stays_within_its_bound_with_several_loader_processes(endpoint, tmp_path):
    store = Store(StoreConfig(url=endpoint.store_url, endpoint_url=endpoint.url))
    entry = read_manifest(store)["rsna_pneumonia"]
    shards = entry["splits"]["train"]["shards"]
    bound = sum(sorted(s["num_bytes"] for s in shards)[-2:])  # room for the two largest
    cache = tmp_path / "cache"
    config = DataConfig(store=StoreConfig(url=endpoint.store_url, endpoint_url=endpoint.url, cache_dir=str(cache),
                                          cache_gb=bound / 2**30),
                        num_workers=2, views=ViewConfig(image_size=32, load_size=32))
    loader = EvalLoader(entry=entry, config=config, split="train", seed=0, rank=0, world=1, batch_size=1)
    ids = [i for b in loader for i in b["ids"] if i]
    assert len(ids) == entry["splits"]["train"]["num_samples"]
    assert sum(p.stat().st_size for p in cache.glob("*.tar")) <= bound
    assert len(list(cache.glob("*.tar"))) < len(shards)


def test_the_training_stream_is_the_same_from_a_folder_from_s3_and_through_the_cache(endpoint, tmp_path):
    """The stream is a function of the manifest, seed and cursor only: a remote store opens the next
    shard one ahead, a cached one does not, and neither may change what a rank trains on."""
    import torch

    from ark_dist.data.stream import Cursor, TrainStream
    from ark_dist.fs import filesystem

    fs, path = filesystem(endpoint.store_url)
    fs.get(f"{path}/", str(tmp_path / "local"), recursive=True)
    stores = {"folder": StoreConfig(url=str(tmp_path / "local")), "s3": _config(endpoint).store,
              "cached": _config(endpoint, cache_dir=str(tmp_path / "cache")).store}
    streams = {}
    for name, store in stores.items():
        config = DataConfig(store=store, num_workers=0, shuffle_buffer=4, views=ViewConfig(image_size=32, load_size=32))
        entry = read_manifest(Store(store))["rsna_pneumonia"]
        stream = TrainStream(entry=entry, config=config, seed=3, cursor=Cursor(1, 0, 0), rank=0, batch_size=2,
                             num_batches=4)
        streams[name] = [(batch["ids"], batch["image"]) for batch in stream]
    assert len(streams["folder"]) == 4
    for name in ("s3", "cached"):
        assert [ids for ids, _ in streams[name]] == [ids for ids, _ in streams["folder"]], name
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(streams[name], streams["folder"])), name
