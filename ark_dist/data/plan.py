"""Which samples each loader stream reads in a round, under `data.sampling: epoch` (Ark: a round is
one pass over the dataset's training split).

The train shards, in a seeded order (per seed, epoch, round and dataset, the same on every rank),
lie end to end as one sequence of samples that repeats. A round of `steps` batches of
`batch_size` per rank takes the first `steps x world x batch_size` samples of it (all but fewer
than one global batch of the split, since `steps = N // global batch`) and gives every (rank,
loader slot) stream a contiguous range, rank-major: slot s of W serves the round's batches
k = s, s + W, ..., so its range holds `len(range(s, steps, W)) x batch_size` samples. Ranges do not
overlap, so a sample is trained on at most once per round, and a stream opens only the shards that
overlap its range.

The interleaved schedule mixes datasets in every batch: its epoch is a seeded permutation of
`steps_d x global batch` labels "dataset d" per dataset, cut into the same stream ranges; a
stream's samples of dataset d are the next ones of d's own sequence.
"""

from __future__ import annotations

import zlib

import numpy as np


def shard_order(entry: dict, *, seed: int, epoch: int, round: int) -> list[dict]:
    """The train shards of `entry` in this round's order: a permutation keyed by (seed, epoch,
    round, dataset), so every rank and loader process computes the same one."""
    shards = [s for s in entry["splits"]["train"]["shards"] if s["num_samples"] > 0]
    rng = np.random.default_rng([seed, epoch, round, zlib.crc32(entry["name"].encode()), zlib.crc32(b"epoch")])
    return [shards[i] for i in rng.permutation(len(shards))]


def stream_range(*, rank: int, slot: int, workers: int, num_batches: int, batch_size: int) -> tuple[int, int]:
    """(first sample, sample count) of stream (rank, slot) in the round's sequence."""
    per_slot = [len(range(s, num_batches, workers)) * batch_size for s in range(workers)]
    return rank * num_batches * batch_size + sum(per_slot[:slot]), per_slot[slot]


def interleaved_labels(counts: list[int], *, seed: int, epoch: int) -> np.ndarray:
    """The dataset index of every sample of an interleaved epoch, in order: `counts[d]` of each,
    shuffled by a generator keyed by (seed, epoch). Shape (sum(counts),), int16."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int16), counts)
    np.random.default_rng([seed, epoch, zlib.crc32(b"interleaved"), zlib.crc32(b"epoch")]).shuffle(labels)
    return labels
