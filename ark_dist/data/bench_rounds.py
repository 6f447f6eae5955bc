"""`python -m ark_dist.data.bench_rounds`: what a round boundary costs the trainer, with a new
loader per round (`train_loader`) against one loader for the run (`RunLoader`).

The consumer stands in for the trainer: it "steps" for --step-ms per batch and works for
--between-ms between rounds (teacher update, checkpoint). Reported per loader: the median time the
consumer waits for a batch within a round, and for the first batch of a round after the previous
one ended (the round boundary), over --rounds rounds of --steps steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from ark_dist.data import Cursor, DataConfig, RunLoader, Store, StoreConfig, read_manifest, train_loader


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m ark_dist.data.bench_rounds", description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a shard store (default: build a synthetic ChestX-ray14)")
    p.add_argument("--dataset", default="chestxray14")
    p.add_argument("--images", type=int, default=96, help="synthetic originals to build (default 96)")
    p.add_argument("--workers", type=int, default=2, help="loader processes (default 2)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="steps per round (data.max_steps_per_round)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--step-ms", type=float, default=30.0, help="the consumer's time per batch (a training step)")
    p.add_argument("--between-ms", type=float, default=0.0, help="the consumer's time between rounds")
    p.add_argument("--json", help="write the figures here too")
    return p.parse_args(argv)


def _consume(rounds, args) -> dict:
    """Time blocked waiting for each batch, round by round -> medians in ms: within rounds, and for
    a round's first batch (the boundary; the first round's start-up is left out)."""
    inside, boundary = [], []
    for index, batches in enumerate(rounds):
        iterator, k = iter(batches), 0
        while True:
            start = time.perf_counter()
            if next(iterator, None) is None:
                break
            waited = 1e3 * (time.perf_counter() - start)
            if k > 0:
                inside.append(waited)
            elif index > 0:
                boundary.append(waited)
            k += 1
            time.sleep(args.step_ms / 1e3)  # the training step
        time.sleep(args.between_ms / 1e3)  # teacher update, checkpoint
    return {"wait_in_round_ms": statistics.median(inside), "wait_at_boundary_ms": statistics.median(boundary),
            "wait_at_boundary_max_ms": max(boundary)}


def measure(config: DataConfig, entry: dict, args) -> dict:
    common = dict(config=config, seed=0, rank=0, world=1, global_batch=args.batch)
    per_round = (train_loader(entry=entry, cursor=Cursor(epoch, 0, 0), **common) for epoch in range(args.rounds))
    old = _consume(per_round, args)
    loader = RunLoader(entries=[entry], interleaved=False, cursor=Cursor(), epochs=args.rounds, **common)
    new = _consume((loader.round(epoch, 0) for epoch in range(args.rounds)), args)
    loader.close()
    return {"per_round_loaders": old, "run_loader": new}


def main(argv=None) -> int:
    args = _args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        if args.store:
            url = args.store
        else:
            from ark_dist.data.bench import _synthetic_store

            url, _ = _synthetic_store(Path(tmp), args.images)
        config = DataConfig(store=StoreConfig(url=url), num_workers=args.workers, max_steps_per_round=args.steps)
        entry = read_manifest(Store(config.store))[args.dataset]
        report = {"dataset": args.dataset, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
                  "workers": args.workers, "step_ms": args.step_ms, "between_ms": args.between_ms,
                  "load_size": config.views.load_size, **measure(config, entry, args)}
    print(f"round boundaries: {args.rounds} rounds of {args.steps} x {args.batch} from {args.dataset}, "
          f"{args.workers} loader processes, {args.step_ms:g} ms per step, {args.between_ms:g} ms between rounds")
    for name in ("per_round_loaders", "run_loader"):
        r = report[name]
        print(f"  {name:18s} wait for a batch within a round {r['wait_in_round_ms']:7.1f} ms, for a round's first "
              f"batch {r['wait_at_boundary_ms']:7.1f} ms (medians; max {r['wait_at_boundary_max_ms']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
