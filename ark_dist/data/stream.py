"""Training and evaluation streams for one dataset and split, and the loaders around them.

Batches per round (the rule every rank follows, so no rank waits for a collective another will
not reach): `steps = max(1, train samples // global batch)`, capped by `data.max_steps_per_round`.
Every rank yields exactly `steps` batches of `global batch / world` samples from resampled shards.

Evaluation: sample g (in manifest shard order) belongs to rank g % world; each rank's loader
processes split the shards. Every sample is seen once across ranks, and every rank yields the
same number of batches: short ranks pad with batches whose `valid` mask is all False.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ark_dist.data import stages
from ark_dist.data.config import DataConfig
from ark_dist.data.labels import LabelPolicy
from ark_dist.data.remote import Store


@dataclass(frozen=True)
class Cursor:
    """Where a run is: the resumed stream yields exactly the batches from here on."""

    epoch: int = 0
    round: int = 0  # index of the dataset round within the epoch
    step: int = 0  # batches already consumed in this round


def round_steps(entry: dict, *, global_batch: int, max_steps: int | None) -> int:
    """The documented rule: steps in one round of `entry`'s train split."""
    steps = max(1, entry["splits"]["train"]["num_samples"] // global_batch)
    return min(steps, max_steps) if max_steps else steps


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def _counters(entry: dict, config: DataConfig) -> stages.Counters:
    return stages.Counters(entry["name"], max_bad_fraction=config.bad_sample_fraction, min_bad=config.bad_sample_min)


def _policy(entry: dict, config: DataConfig, seed: int) -> LabelPolicy:
    return LabelPolicy(labels=entry["labels"], task=entry["task"], policy=config.policy(entry["name"]), seed=seed)


class TrainStream(IterableDataset):
    """`num_batches` batches of `batch_size` for one rank and round, from `start_batch` on.

    Batch k comes from loader slot k % W (W loader processes); a slot's randomness is seeded by
    (seed, epoch, round, rank, slot, dataset), so the stream is a function of the cursor and W.
    Resuming skips samples without decoding them: exact unless a skipped sample was undecodable."""

    def __init__(self, *, entry: dict, config: DataConfig, seed: int, cursor: Cursor, rank: int,
                 batch_size: int, num_batches: int):
        self.entry, self.config, self.seed, self.cursor = entry, config, seed, cursor
        self.rank, self.batch_size, self.num_batches = rank, batch_size, num_batches

    def __iter__(self):
        worker, workers = _worker()
        slot = (self.cursor.step + worker) % workers  # DataLoader restarts its round robin at worker 0
        todo = len(range(slot, self.num_batches, workers)) - len(range(slot, self.cursor.step, workers))
        if todo <= 0:
            return
        done = len(range(slot, self.cursor.step, workers))
        counters = _counters(self.entry, self.config)
        stream = _train_samples(self.entry, self.config, seed=self.seed, cursor=self.cursor, rank=self.rank, slot=slot,
                                skip=done * self.batch_size, counters=counters)
        for count, batch in enumerate(stages.batched(stream, self.batch_size, counters, partial=False)):
            batch["stats"][0]["worker"] = slot
            yield batch
            if count + 1 == todo:
                return


def _train_samples(entry: dict, config: DataConfig, *, seed: int, cursor: Cursor, rank: int, slot: int, skip: int,
                   counters: stages.Counters):
    """One dataset's training samples for a loader slot, views drawn, the first `skip` dropped
    undecoded. Keyed by (seed, epoch, round, rank, slot, dataset)."""
    key = [seed, cursor.epoch, cursor.round, rank, slot, zlib.crc32(entry["name"].encode())]
    # One generator each for the shard draws and the shuffle: a remote store opens the next shard
    # one ahead, which must not move the shuffle's draws (the stream would depend on the store).
    shard_rng, shuffle_rng = (np.random.default_rng([*key, part]) for part in (0, 1))
    store = Store(config.store)  # built here: each loader process has its own client
    shards = entry["splits"]["train"]["shards"]
    stream = stages.tar_samples(stages.resampled(shards, shard_rng), store, counters)
    # A buffer larger than the split would only re-read the same shards before the first batch.
    buffer = min(config.shuffle_buffer, entry["splits"]["train"]["num_samples"])
    stream = stages.number(stages.shuffle(stream, buffer, shuffle_rng))
    stream = stages.skip(stream, skip)
    stream = stages.decode(stream, config.views.load_size, counters)
    stream = stages.label(stream, _policy(entry, config, seed))
    return stages.views(stream, config.views, key)


class MixedStream(IterableDataset):
    """The interleaved schedule: `num_batches` batches in which every sample comes from a dataset
    drawn with probability `weights[d]` (each dataset's own stream underneath, as in `TrainStream`).

    Targets and masks are laid side by side in the union label space (dataset d at
    `offsets[d]:offsets[d] + K_d`, masked elsewhere) and `dataset` (B,) names each sample's head.
    The draws are keyed like the streams, so a resumed stream replays them and skips, per dataset,
    exactly the samples the uninterrupted one consumed."""

    def __init__(self, *, entries: list[dict], weights: list[float], config: DataConfig, seed: int, cursor: Cursor,
                 rank: int, batch_size: int, num_batches: int):
        self.entries, self.config, self.seed, self.cursor = entries, config, seed, cursor
        self.rank, self.batch_size, self.num_batches = rank, batch_size, num_batches
        total = float(sum(weights))
        self.weights = np.array(weights, dtype=np.float64) / total
        self.sizes = [len(e["labels"]) for e in entries]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()

    def __iter__(self):
        worker, workers = _worker()
        slot = (self.cursor.step + worker) % workers
        todo = len(range(slot, self.num_batches, workers)) - len(range(slot, self.cursor.step, workers))
        if todo <= 0:
            return
        done = len(range(slot, self.cursor.step, workers))
        chooser = np.random.default_rng([self.seed, self.cursor.epoch, self.rank, slot, zlib.crc32(b"interleaved")])
        consumed = np.zeros(len(self.entries), dtype=np.int64)
        for _ in range(done):  # replay the draws of the batches already trained on
            consumed += np.bincount(self._draw(chooser), minlength=len(self.entries))
        counters = [_counters(e, self.config) for e in self.entries]
        streams = [_train_samples(e, self.config, seed=self.seed, cursor=self.cursor, rank=self.rank, slot=slot,
                                  skip=int(consumed[d]), counters=counters[d]) for d, e in enumerate(self.entries)]
        width = self.offsets[-1]
        for _ in range(todo):
            chunk = []
            for d in self._draw(chooser):
                sample = next(streams[d])
                target, mask = torch.zeros(width), torch.zeros(width)
                target[self.offsets[d]:self.offsets[d + 1]] = sample["target"]
                mask[self.offsets[d]:self.offsets[d + 1]] = sample["mask"]
                sample.update(target=target, mask=mask, dataset=torch.tensor(d))
                chunk.append(sample)
            batch = stages.collate(chunk, counters[0])
            batch["stats"] = [{**c.snapshot(), "worker": slot} for c in counters]
            yield batch

    def _draw(self, chooser: np.random.Generator) -> np.ndarray:
        return chooser.choice(len(self.entries), size=self.batch_size, p=self.weights)


def _eval_plan(entry: dict, split: str, *, workers: int) -> list[list[tuple[dict, int]]]:
    """Per loader process: its (shard, global offset of the shard's first sample) pairs."""
    plan = [[] for _ in range(workers)]
    offset = 0
    for j, shard in enumerate(entry["splits"][split]["shards"]):
        plan[j % workers].append((shard, offset))
        offset += shard["num_samples"]
    return plan


def eval_batches(entry: dict, split: str, *, rank: int, world: int, workers: int, batch_size: int) -> int:
    """Batches rank `rank` yields before padding (from the manifest's counts)."""
    total = 0
    for pairs in _eval_plan(entry, split, workers=workers):
        mine = sum(len(range((rank - off) % world, shard["num_samples"], world)) for shard, off in pairs)
        total += math.ceil(mine / batch_size)
    return total


class EvalStream(IterableDataset):
    """Deterministic: this rank's samples of `split` (g % world == rank), each once, no views drawn."""

    def __init__(self, *, entry: dict, config: DataConfig, split: str, seed: int, rank: int, world: int,
                 batch_size: int):
        self.entry, self.config, self.split, self.seed = entry, config, split, seed
        self.rank, self.world, self.batch_size = rank, world, batch_size

    def _mine(self, pairs, store, counters):
        for shard, offset in pairs:
            for sample in stages.tar_samples([shard], store, counters):
                if (offset + sample["position"]) % self.world == self.rank:
                    yield sample

    def __iter__(self):
        worker, workers = _worker()
        pairs = _eval_plan(self.entry, self.split, workers=workers)[worker]
        store = Store(self.config.store)
        counters = _counters(self.entry, self.config)
        stream = stages.decode(self._mine(pairs, store, counters), self.config.views.load_size, counters)
        stream = stages.label(stream, _policy(self.entry, self.config, self.seed))
        yield from stages.batched(stream, self.batch_size, counters, partial=True)


def make_loader(dataset: IterableDataset, config: DataConfig) -> DataLoader:
    workers = config.num_workers
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=config.prefetch_factor if workers else None,
                      persistent_workers=False)


def train_loader(*, entry: dict, config: DataConfig, seed: int, cursor: Cursor, rank: int, world: int,
                 global_batch: int) -> DataLoader:
    """The rank's loader for the round at `cursor` (which may start mid-round)."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} does not split evenly over {world} ranks")
    steps = round_steps(entry, global_batch=global_batch, max_steps=config.max_steps_per_round)
    stream = TrainStream(entry=entry, config=config, seed=seed, cursor=cursor, rank=rank,
                         batch_size=global_batch // world, num_batches=steps)
    return make_loader(stream, config)


def mixed_loader(*, entries: list[dict], config: DataConfig, seed: int, cursor: Cursor, rank: int, world: int,
                 global_batch: int) -> DataLoader:
    """The rank's loader for one interleaved epoch: as many steps as the cyclic rounds of an epoch
    together, each dataset drawn in proportion to its (capped) round, so an epoch shows every
    dataset as many images as the cyclic schedule does."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} does not split evenly over {world} ranks")
    steps = [round_steps(e, global_batch=global_batch, max_steps=config.max_steps_per_round) for e in entries]
    stream = MixedStream(entries=entries, weights=steps, config=config, seed=seed, cursor=cursor, rank=rank,
                         batch_size=global_batch // world, num_batches=sum(steps))
    return make_loader(stream, config)


class EvalLoader:
    """Every rank yields `num_batches` batches: its own, then padding (valid all False)."""

    def __init__(self, *, entry: dict, config: DataConfig, split: str, seed: int, rank: int, world: int,
                 batch_size: int):
        workers = max(1, config.num_workers)
        self.num_batches = max(eval_batches(entry, split, rank=r, world=world, workers=workers, batch_size=batch_size)
                               for r in range(world))
        self.loader = make_loader(EvalStream(entry=entry, config=config, split=split, seed=seed, rank=rank, world=world,
                                         batch_size=batch_size), config)
        self.load_size, self.num_labels = config.views.load_size, len(entry["labels"])

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        count = 0
        for batch in self.loader:
            count += 1
            if count > self.num_batches:  # cannot happen while shards match the manifest (checked)
                raise RuntimeError(f"evaluation yielded more than the planned {self.num_batches} batches")
            yield batch
        for _ in range(self.num_batches - count):
            yield self._padding()

    def _padding(self) -> dict:
        return {"image": torch.zeros(1, 1, self.load_size, self.load_size, dtype=torch.uint8),
                "target": torch.zeros(1, self.num_labels), "mask": torch.zeros(1, self.num_labels),
                "ids": [""], "valid": torch.zeros(1, dtype=torch.bool), "stats": None}
