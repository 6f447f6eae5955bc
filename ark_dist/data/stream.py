"""Training streams for one dataset's rounds (or all datasets mixed), and the loaders around them.

Batches per round (the rule every rank follows, so no rank waits for a collective another will
not reach): `steps = max(1, train samples // global batch)`, capped by `data.max_steps_per_round`.
Every rank yields exactly `steps` batches of `global batch / world` samples: with
`data.sampling: epoch` (Ark) from its own ranges of one pass over the shards (plan.py), so a round
trains on every sample at most once and on all but fewer than one global batch of them; with
`resampled` from shards drawn with replacement.

Evaluation streams are in evalstream.py; both share the helpers here.

Dense targets (`dense=True`; Foundation X's localization and segmentation rounds) add each
sample's masks and boxes (stages.decode); off, a stream decodes and yields exactly what it did
before. The interleaved schedule carries class targets only.

`data.exclude` leaves samples out of every stream before anything else sees them (so a resumed
stream skips what the uninterrupted one read): evaluation has fewer samples, and a training range
left short reads on into the samples after it, as after bad samples.
"""

from __future__ import annotations

import functools
import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ark_dist.data import plan, stages
from ark_dist.data.config import DataConfig
from ark_dist.data.labels import LabelPolicy
from ark_dist.data.remote import Store
from ark_dist.fs import filesystem


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


def _served(*, step: int, num_batches: int, worker: int, workers: int, before: int) -> tuple[int, int, int]:
    """(slot, batches the slot made before `step`, batches it makes from `step` on) for loader
    process `worker` of `workers`, in a round resumed at batch `step` after the loader yielded
    `before` batches of earlier rounds. DataLoader takes its stream's batch g from process g % W,
    while batch k of a round is always made by slot k % W (that keys its randomness), so process w
    makes slot (w + step - before) % W's batches."""
    slot = (worker + step - before) % workers
    done = len(range(slot, step, workers))
    return slot, done, len(range(slot, num_batches, workers)) - done


@functools.lru_cache(maxsize=8)
def key_file(url: str | None, *, option: str = "data.exclude") -> frozenset[str]:
    """The `<dataset>/<id>` keys of a key file (read once per process), or none."""
    if not url:
        return frozenset()
    fs, path = filesystem(url)
    try:
        text = fs.cat_file(path).decode()
    except Exception as exc:  # noqa: BLE001 - any client error is one line that names the file
        raise ValueError(f"{option}={url!r}: cannot read it ({type(exc).__name__}: {exc})") from exc
    keys = frozenset(line.strip() for line in text.splitlines() if line.strip())
    bad = next((k for k in keys if k.count("/") != 1), None)
    if bad is not None:
        raise ValueError(f"{option}={url!r}: {bad!r} is not a <dataset>/<id> key")
    return keys


def excluded(url: str | None) -> frozenset[str]:
    """The keys of `data.exclude`, left out of every stream."""
    return key_file(url, option="data.exclude")


def train_only(url: str | None) -> dict[str, frozenset[str]]:
    """`data.train_only` by dataset: {dataset: the keys its training streams keep}."""
    kept: dict[str, set[str]] = {}
    for key in key_file(url, option="data.train_only"):
        kept.setdefault(key.split("/")[0], set()).add(key)
    return {name: frozenset(keys) for name, keys in kept.items()}


def subset_entries(entries: list[dict], config: DataConfig) -> list[dict]:
    """The entries as training sees them under `data.train_only`: a listed dataset's train split
    holds as many samples as the file keeps of it (its rounds' steps follow), its shards unchanged."""
    kept = train_only(config.train_only)
    out = []
    for entry in entries:
        if entry["name"] in kept and "train" in entry["splits"]:
            train = {**entry["splits"]["train"], "num_samples": len(kept[entry["name"]])}
            entry = {**entry, "splits": {**entry["splits"], "train": train}}
        out.append(entry)
    return out


def _kept(stream, entry: dict, config: DataConfig):
    """The training samples `data.train_only` keeps of this dataset (all when it lists none)."""
    keys = train_only(config.train_only).get(entry["name"])
    return stream if keys is None else (s for s in stream if s["key"] in keys)


def _counters(entry: dict, config: DataConfig) -> stages.Counters:
    return stages.Counters(entry["name"], max_bad_fraction=config.bad_sample_fraction, min_bad=config.bad_sample_min)


def _dense(entry: dict, dense: bool) -> stages.DenseSpec | None:
    return stages.DenseSpec.of(entry) if dense else None


def _policy(entry: dict, config: DataConfig, seed: int) -> LabelPolicy:
    return LabelPolicy(labels=entry["labels"], task=entry["task"], policy=config.policy(entry["name"]), seed=seed)


class TrainStream(IterableDataset):
    """`num_batches` batches of `batch_size` for rank `rank` of `world` in one round, from the
    cursor's step on.

    Batch k comes from loader slot k % W (W loader processes); a slot's randomness is seeded by
    (seed, epoch, round, rank, slot, dataset), so the stream is a function of the cursor and W.
    Resuming skips samples without decoding them: exact unless a skipped sample was undecodable.
    `dense`: batches also carry masks and boxes (stages.collate)."""

    def __init__(self, *, entry: dict, config: DataConfig, seed: int, cursor: Cursor, rank: int,
                 batch_size: int, num_batches: int, world: int = 1, dense: bool = False):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of world {world}'s ranks")
        self.entry, self.config, self.seed, self.cursor = entry, config, seed, cursor
        self.rank, self.world, self.batch_size, self.num_batches = rank, world, batch_size, num_batches
        self.dense = dense

    def __iter__(self):
        worker, workers = _worker()
        yield from self.batches(worker=worker, workers=workers, before=0)

    def batches(self, *, worker: int, workers: int, before: int):
        """This loader process's batches of the round (see `_served`), each tagged with its
        `cursor` (epoch, round, step within the round)."""
        slot, done, todo = _served(step=self.cursor.step, num_batches=self.num_batches, worker=worker,
                                   workers=workers, before=before)
        if todo <= 0:
            return
        share = None
        if self.config.sampling == "epoch":
            share = plan.stream_range(rank=self.rank, slot=slot, workers=workers, num_batches=self.num_batches,
                                      batch_size=self.batch_size)
        counters = _counters(self.entry, self.config)
        stream = _train_samples(self.entry, self.config, seed=self.seed, cursor=self.cursor, rank=self.rank, slot=slot,
                                skip=done * self.batch_size, counters=counters, share=share,
                                dense=_dense(self.entry, self.dense))
        batches = stages.batched(stream, self.batch_size, counters, partial=False)
        for count, batch in zip(range(todo), batches):
            batch["stats"][0]["worker"] = slot
            batch["cursor"] = (self.cursor.epoch, self.cursor.round, slot + (done + count) * workers)
            yield batch


def _train_samples(entry: dict, config: DataConfig, *, seed: int, cursor: Cursor, rank: int, slot: int, skip: int,
                   counters: stages.Counters, share: tuple[int, int] | None, dense: stages.DenseSpec | None = None):
    """One dataset's training samples for a loader slot, views drawn, the first `skip` dropped
    undecoded. Keyed by (seed, epoch, round, rank, slot, dataset). `share`: (first sample, count)
    of the slot's range in the round's pass (epoch sampling), or None (resampled); `dense`: also
    decode masks and boxes."""
    key = [seed, cursor.epoch, cursor.round, rank, slot, zlib.crc32(entry["name"].encode())]
    # One generator each for the shard draws and the shuffle: a remote store opens the next shard
    # one ahead, which must not move the shuffle's draws (the stream would depend on the store).
    shard_rng, shuffle_rng = (np.random.default_rng([*key, part]) for part in (0, 1))
    store = Store(config.store)  # built here: each loader process has its own client
    if share is None:
        stream = _resampled(entry, config, store=store, counters=counters, shard_rng=shard_rng, shuffle_rng=shuffle_rng)
    else:
        order = plan.shard_order(entry, seed=seed, epoch=cursor.epoch, round=cursor.round)
        stream = _epoch(entry, order, config, share=share, store=store, counters=counters, shuffle_rng=shuffle_rng)
    stream = stages.number(stream)  # each sample knows its place in this stream: the key of its views
    stream = stages.skip(stream, skip)  # resumed: the samples already trained on are gone, undecoded
    stream = stages.decode(stream, config.views.load_size, counters, dense=dense, on_device=config.decode == "device")
    stream = stages.label(stream, _policy(entry, config, seed))
    return stages.views(stream, config.views, key)


def _resampled(entry: dict, config: DataConfig, *, store: Store, counters: stages.Counters,
               shard_rng: np.random.Generator, shuffle_rng: np.random.Generator):
    """Endless raw samples of shards drawn with replacement, shuffled across shards."""
    stream = stages.tar_samples(stages.resampled(entry["splits"]["train"]["shards"], shard_rng), store, counters)
    stream = _kept(stages.exclude(stream, excluded(config.exclude)), entry, config)
    # A buffer larger than the split would only re-read the same shards before the first batch.
    buffer = min(config.shuffle_buffer, entry["splits"]["train"]["num_samples"])
    return stages.shuffle(stream, buffer, shuffle_rng)


def _epoch(entry: dict, order: list[dict], config: DataConfig, *, share: tuple[int, int], store: Store,
           counters: stages.Counters, shuffle_rng: np.random.Generator):
    """The slot's range of the round's pass over `order`, shuffled, then (only if bad samples left
    it short) the samples after it. Under `data.train_only` the ranges (counted in kept samples)
    start at the same share of the stored pass, so the slots spread over all of it."""
    first, count = share
    stored = sum(shard["num_samples"] for shard in order)
    first = first * stored // max(entry["splits"]["train"]["num_samples"], 1)  # = first, unless a subset
    stream = stages.tar_samples(stages.sequence(order, first), store, counters)  # the pass, from the range's start
    stream = _kept(stages.exclude(stream, excluded(config.exclude)), entry, config)
    return stages.share(stream, count, config.shuffle_buffer, shuffle_rng)  # the range shuffled, nothing read past it


class MixedStream(IterableDataset):
    """The interleaved schedule: `sum(steps)` batches in which every sample comes from one of the
    datasets (each dataset's own stream underneath, as in `TrainStream`), `steps[d]` being dataset
    d's cyclic round. `epoch` sampling: the epoch holds exactly `steps[d] x global batch` samples
    of d, in a seeded order (plan.py), each sample at most once. `resampled`: each sample's dataset
    is drawn with probability proportional to `steps[d]`.

    Targets and masks are laid side by side in the union label space (dataset d at
    `offsets[d]:offsets[d] + K_d`, masked elsewhere) and `dataset` (B,) names each sample's head.
    The draws are keyed like the streams, so a resumed stream replays them and skips, per dataset,
    exactly the samples the uninterrupted one consumed."""

    def __init__(self, *, entries: list[dict], steps: list[int], config: DataConfig, seed: int, cursor: Cursor,
                 rank: int, batch_size: int, world: int = 1):
        self.entries, self.steps, self.config, self.seed, self.cursor = entries, steps, config, seed, cursor
        self.rank, self.world, self.batch_size, self.num_batches = rank, world, batch_size, sum(steps)
        self.sizes = [len(e["labels"]) for e in entries]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()

    def __iter__(self):
        worker, workers = _worker()
        yield from self.batches(worker=worker, workers=workers, before=0)

    def batches(self, *, worker: int, workers: int, before: int):
        """As `TrainStream.batches`."""
        slot, done, todo = _served(step=self.cursor.step, num_batches=self.num_batches, worker=worker,
                                   workers=workers, before=before)
        if todo <= 0:
            return
        draws, shares = self._epoch_draws(slot, workers) if self.config.sampling == "epoch" else self._drawn(slot)
        consumed = np.zeros(len(self.entries), dtype=np.int64)
        for _ in range(done):  # replay the draws of the batches already trained on
            consumed += np.bincount(next(draws), minlength=len(self.entries))
        counters = [_counters(e, self.config) for e in self.entries]
        streams = [_train_samples(e, self.config, seed=self.seed, cursor=self.cursor, rank=self.rank, slot=slot,
                                  skip=int(consumed[d]), counters=counters[d], share=shares[d])
                   for d, e in enumerate(self.entries)]
        width = self.offsets[-1]
        for count in range(todo):
            chunk = []
            for d in next(draws):
                sample = next(streams[d])
                target, mask = torch.zeros(width), torch.zeros(width)
                target[self.offsets[d]:self.offsets[d + 1]] = sample["target"]
                mask[self.offsets[d]:self.offsets[d + 1]] = sample["mask"]
                sample.update(target=target, mask=mask, dataset=torch.tensor(int(d)))
                chunk.append(sample)
            batch = stages.collate(chunk, counters[0])
            batch["stats"] = [{**c.snapshot(), "worker": slot} for c in counters]
            batch["cursor"] = (self.cursor.epoch, self.cursor.round, slot + (done + count) * workers)
            yield batch

    def _drawn(self, slot: int):
        """Resampled: each batch's datasets drawn by weight, endless; no ranges."""
        weights = np.array(self.steps, dtype=np.float64) / sum(self.steps)
        chooser = np.random.default_rng([self.seed, self.cursor.epoch, self.rank, slot, zlib.crc32(b"interleaved")])
        draws = (chooser.choice(len(self.entries), size=self.batch_size, p=weights) for _ in itertools.count())
        return draws, [None] * len(self.entries)

    def _epoch_draws(self, slot: int, workers: int):
        """Epoch: the slot's range of the epoch's dataset labels, one row per batch; and per
        dataset, (first, count) of the slot's samples in that dataset's own pass."""
        global_batch = self.batch_size * self.world
        labels = plan.interleaved_labels([s * global_batch for s in self.steps], seed=self.seed,
                                         epoch=self.cursor.epoch)
        first, count = plan.stream_range(rank=self.rank, slot=slot, workers=workers, num_batches=self.num_batches,
                                         batch_size=self.batch_size)
        mine, size = labels[first:first + count], len(self.entries)
        earlier, counts = np.bincount(labels[:first], minlength=size), np.bincount(mine, minlength=size)
        return iter(mine.reshape(-1, self.batch_size)), [(int(earlier[d]), int(counts[d])) for d in range(size)]


def make_loader(dataset: IterableDataset, config: DataConfig) -> DataLoader:
    workers = config.num_workers
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=config.prefetch_factor if workers else None,
                      persistent_workers=False)


def check_split(global_batch: int, world: int) -> None:
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} does not split evenly over {world} ranks")


def train_loader(*, entry: dict, config: DataConfig, seed: int, cursor: Cursor, rank: int, world: int,
                 global_batch: int, dense: bool = False) -> DataLoader:
    """The rank's loader for the round at `cursor` (which may start mid-round); `dense`: batches
    also carry masks and boxes."""
    check_split(global_batch, world)
    steps = round_steps(entry, global_batch=global_batch, max_steps=config.max_steps_per_round)
    stream = TrainStream(entry=entry, config=config, seed=seed, cursor=cursor, rank=rank, world=world,
                         batch_size=global_batch // world, num_batches=steps, dense=dense)
    return make_loader(stream, config)


def mixed_loader(*, entries: list[dict], config: DataConfig, seed: int, cursor: Cursor, rank: int, world: int,
                 global_batch: int) -> DataLoader:
    """The rank's loader for one interleaved epoch: as many steps as the cyclic rounds of an epoch
    together, each dataset drawn in proportion to its (capped) round, so an epoch shows every
    dataset as many images as the cyclic schedule does."""
    check_split(global_batch, world)
    steps = [round_steps(e, global_batch=global_batch, max_steps=config.max_steps_per_round) for e in entries]
    stream = MixedStream(entries=entries, steps=steps, config=config, seed=seed, cursor=cursor, rank=rank, world=world,
                         batch_size=global_batch // world)
    return make_loader(stream, config)
