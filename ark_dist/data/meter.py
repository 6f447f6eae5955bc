"""What the trainer logs about its data: throughput, the share of time spent waiting for batches,
and the loader processes' counters (skipped samples, bytes read)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator


class DataMeter:
    """Wrap each loader with `wrap`; read `metrics()` whenever you log (it resets the interval)."""

    def __init__(self):
        self._workers: dict[tuple[str, int], dict] = {}  # latest cumulative counters per loader process
        self._reset()

    def _reset(self) -> None:
        self.wait_s = self.busy_s = self.last_wait_s = 0.0
        self.samples = 0
        self._interval_start = time.perf_counter()

    def wrap(self, batches: Iterable[dict]) -> Iterator[dict]:
        iterator = iter(batches)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            got = time.perf_counter()
            self.last_wait_s = got - started
            self.wait_s += self.last_wait_s
            self.samples += int(batch["valid"].sum())
            for stats in batch.get("stats") or ():  # one snapshot per dataset the batch drew from
                self._workers[(stats["dataset"], stats.get("worker", 0))] = stats
            yield batch
            self.busy_s += time.perf_counter() - got

    def metrics(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._interval_start, 1e-9)
        out = {
            "throughput/img_per_s": self.samples / elapsed,
            "time/data_wait_pct": 100.0 * self.wait_s / max(self.wait_s + self.busy_s, 1e-9),
            "data/bytes_read": float(sum(s["bytes"] for s in self._workers.values())),
        }
        for (dataset, _), stats in self._workers.items():
            key = f"data/skipped/{dataset}"
            out[key] = out.get(key, 0.0) + stats["skipped"]
        self._reset()
        return out
