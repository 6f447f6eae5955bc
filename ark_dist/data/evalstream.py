"""Evaluation streams: sample g (in manifest shard order) belongs to rank g % world; each rank's
loader processes split the shards. Every sample is seen once across ranks, and every rank yields
the same number of batches: short ranks pad with batches whose `valid` mask is all False. No views
are drawn; `dense` batches carry masks and boxes."""

from __future__ import annotations

import math

import torch
from torch.utils.data import IterableDataset

from ark_dist.data import stages
from ark_dist.data.config import DataConfig
from ark_dist.data.remote import Store
from ark_dist.data.stream import _counters, _dense, _policy, _worker, excluded, make_loader


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
    """Deterministic: this rank's samples of `split` (g % world == rank), each once, no views drawn;
    `dense`: with masks and boxes."""

    def __init__(self, *, entry: dict, config: DataConfig, split: str, seed: int, rank: int, world: int,
                 batch_size: int, dense: bool = False):
        self.entry, self.config, self.split, self.seed = entry, config, split, seed
        self.rank, self.world, self.batch_size, self.dense = rank, world, batch_size, dense

    def _mine(self, pairs, store, counters):
        keys = excluded(self.config.exclude)
        for shard, offset in pairs:
            for sample in stages.tar_samples([shard], store, counters):
                if (offset + sample["position"]) % self.world == self.rank and sample["key"] not in keys:
                    yield sample

    def __iter__(self):
        worker, workers = _worker()
        pairs = _eval_plan(self.entry, self.split, workers=workers)[worker]
        store = Store(self.config.store)
        counters = _counters(self.entry, self.config)
        stream = stages.decode(self._mine(pairs, store, counters), self.config.views.load_size, counters,
                               dense=_dense(self.entry, self.dense), on_device=self.config.decode == "device")
        stream = stages.label(stream, _policy(self.entry, self.config, self.seed))
        yield from stages.batched(stream, self.batch_size, counters, partial=True)


class EvalLoader:
    """Every rank yields `num_batches` batches: its own, then padding (valid all False); `dense`:
    with masks and boxes."""

    def __init__(self, *, entry: dict, config: DataConfig, split: str, seed: int, rank: int, world: int,
                 batch_size: int, dense: bool = False):
        workers = max(1, config.num_workers)
        self.num_batches = max(eval_batches(entry, split, rank=r, world=world, workers=workers, batch_size=batch_size)
                               for r in range(world))
        self.loader = make_loader(EvalStream(entry=entry, config=config, split=split, seed=seed, rank=rank, world=world,
                                         batch_size=batch_size, dense=dense), config)
        self.load_size, self.num_labels = config.views.load_size, len(entry["labels"])
        self.dense_spec = _dense(entry, dense)

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
        side = self.load_size
        batch = {"image": torch.zeros(1, 1, side, side, dtype=torch.uint8),
                 "target": torch.zeros(1, self.num_labels), "mask": torch.zeros(1, self.num_labels),
                 "ids": [""], "subgroups": [{}], "valid": torch.zeros(1, dtype=torch.bool), "stats": None}
        if self.dense_spec is not None:  # the keys a dense batch has, nothing known and no boxes
            classes = self.dense_spec.num_masks
            batch.update(masks=torch.zeros(1, classes, side, side, dtype=torch.uint8),
                         mask_known=torch.zeros(1, classes, dtype=torch.bool), boxes=[torch.zeros(0, 4)],
                         box_labels=[torch.zeros(0, dtype=torch.int64)], size=torch.tensor([[side, side]]))
        return batch
