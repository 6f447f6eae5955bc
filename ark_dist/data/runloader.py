"""One loader for a whole run: its processes start once and stream every round back to back.

A per-round loader starts its processes, and fills their shuffle buffers, at every round (Ark-6
has 1,200 rounds; a Shenzhen round is 3 steps long). `RunLoader` keeps one `DataLoader` over
`RunStream`, which yields the batches of every round from the cursor on, so while the trainer ends
a round (teacher update, checkpoint, evaluation) the processes already prefetch the next one.

Batch k of a round is exactly the batch the per-round loader (`train_loader`, `mixed_loader`)
yields for that round: the same slot (k % W) makes it from the same keyed stream. Only which
process runs a slot changes from round to round (`stream._served`), so resume stays exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import IterableDataset

from ark_dist.data.config import DataConfig
from ark_dist.data.stream import (Cursor, MixedStream, TrainStream, _worker, check_split, make_loader,
                                  round_steps)


@dataclass(frozen=True)
class Round:
    """One round of an epoch when a method plans its own (Foundation X's passes): which dataset,
    how many steps, and whether its batches carry boxes and masks."""

    entry: dict
    steps: int
    dense: bool = False


class RunStream(IterableDataset):
    """One rank's batches of every round from `cursor` on (the cursor's round from its step),
    through `epochs` epochs (None: without end). `plan` replaces the default rounds (one per entry,
    as long as its train split) with the method's own."""

    def __init__(self, *, entries: list[dict], interleaved: bool, config: DataConfig, seed: int, cursor: Cursor,
                 rank: int, world: int, global_batch: int, epochs: int | None = None, plan: list[Round] | None = None):
        check_split(global_batch, world)
        self.entries, self.interleaved, self.config, self.seed, self.cursor = entries, interleaved, config, seed, cursor
        self.rank, self.world, self.batch_size, self.epochs = rank, world, global_batch // world, epochs
        self.dataset_steps = [round_steps(e, global_batch=global_batch, max_steps=config.max_steps_per_round)
                              for e in entries]
        self.plan = plan
        if plan is not None:
            self.steps = [r.steps for r in plan]
        else:
            self.steps = [sum(self.dataset_steps)] if interleaved else self.dataset_steps  # per round of an epoch

    def rounds(self) -> Iterator[Cursor]:
        """Each round's cursor, in order: the first at the run's cursor, the others at step 0."""
        last = self.epochs
        for epoch in range(self.cursor.epoch, last) if last is not None else itertools.count(self.cursor.epoch):
            first = self.cursor.round if epoch == self.cursor.epoch else 0
            for index in range(first, len(self.steps)):
                step = self.cursor.step if (epoch, index) == (self.cursor.epoch, self.cursor.round) else 0
                yield Cursor(epoch, index, step)

    def round_stream(self, cursor: Cursor) -> TrainStream | MixedStream:
        """The per-round stream whose batches this round yields."""
        common = dict(config=self.config, seed=self.seed, cursor=cursor, rank=self.rank, world=self.world,
                      batch_size=self.batch_size)
        if self.plan is not None:
            planned = self.plan[cursor.round]
            return TrainStream(entry=planned.entry, num_batches=planned.steps, dense=planned.dense, **common)
        if self.interleaved:
            return MixedStream(entries=self.entries, steps=self.dataset_steps, **common)
        return TrainStream(entry=self.entries[cursor.round], num_batches=self.steps[cursor.round], **common)

    def __iter__(self):
        worker, workers = _worker()
        before = 0  # batches the loader yielded in earlier rounds: which slot this process serves
        for cursor in self.rounds():
            yield from self.round_stream(cursor).batches(worker=worker, workers=workers, before=before)
            before += max(0, self.steps[cursor.round] - cursor.step)


class RunLoader:
    """One rank's loader for the whole run. `for batch in loader.round(epoch, index)` yields that
    round's batches (from the cursor's step for the cursor's round), rounds asked in run order:

        loader = RunLoader(entries=entries, interleaved=False, config=cfg.data, seed=seed, cursor=cursor,
                           rank=rank, world=world, global_batch=global_batch, epochs=epochs)
        for batch in loader.round(epoch, index): ...

    `steps` holds the steps of each round of an epoch (from the manifest, as `round_steps` says)."""

    def __init__(self, *, entries: list[dict], interleaved: bool, config: DataConfig, seed: int, cursor: Cursor,
                 rank: int, world: int, global_batch: int, epochs: int | None = None, plan: list[Round] | None = None):
        self.stream = RunStream(entries=entries, interleaved=interleaved, config=config, seed=seed, cursor=cursor,
                                rank=rank, world=world, global_batch=global_batch, epochs=epochs, plan=plan)
        self.config, self.steps = config, self.stream.steps
        self._rounds = self.stream.rounds()
        self._batches = None  # the DataLoader's iterator, started at the first round asked for

    def round(self, epoch: int, index: int) -> Iterator[dict]:
        """The batches of round `index` of `epoch`, each checked to be the one the round expects."""
        cursor = next(self._rounds, None)
        if cursor is None or (cursor.epoch, cursor.round) != (epoch, index):
            expected = "none (the run is over)" if cursor is None else f"epoch {cursor.epoch}, round {cursor.round}"
            raise RuntimeError(f"RunLoader: asked for epoch {epoch}, round {index}; the next round is {expected}")
        return self._yield(cursor)

    def _yield(self, cursor: Cursor) -> Iterator[dict]:
        if self._batches is None:
            self._batches = iter(make_loader(self.stream, self.config))
        for step in range(cursor.step, self.steps[cursor.round]):
            batch = next(self._batches)
            if tuple(batch["cursor"]) != (cursor.epoch, cursor.round, step):  # a round left before its end
                raise RuntimeError(f"RunLoader: expected batch {step} of epoch {cursor.epoch}, round {cursor.round}, "
                                   f"got {tuple(batch['cursor'])}; every round must be read to its end")
            yield batch

    def close(self) -> None:
        """Stop the loader processes (they also stop when the loader is garbage-collected)."""
        self._batches = None
