"""`python launch.py evaluate --checkpoint X --datasets D ... [--before Y]`

A model scored on datasets it has heads for, with the heads themselves: per class the AUC and
its bootstrap 95 % interval, per subgroup of sex, age and view where the samples carry them, and
each dataset's mean AUC over its classes. With `--before`, the same datasets are scored by a
second model too, and the table gives each dataset's forgetting, its mean AUC before minus after:
what continual extension (a run started from an exported teacher with a dataset added) cost the
datasets the file had learned. Runs on Ray Train workers; rank 0 writes `evaluate.json` and
`evaluate.md` under `--out`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ark_dist.fs import join, write_atomic
from ark_dist.reuse import workers


def dataset_scores(merged: dict, entry: dict, head: str, *, resamples: int) -> dict:
    """{"classes": {class: auc_interval + subgroups}, "mean": mean AUC over classes that have one}."""
    from ark_dist.reuse import stats

    classes = {}
    for k, name in enumerate(entry["labels"]):
        known = merged["mask"][:, k] > 0
        labels = (merged["target"][known, k] >= 0.5).astype(int)
        scores = merged["scores"][head][known, k]
        groups = stats.subgroup_table(scores, labels, [g for g, ok in zip(merged["subgroups"], known) if ok],
                                      resamples=resamples)
        classes[name] = {**stats.auc_interval(scores, labels, resamples=resamples), "subgroups": groups,
                         "gaps": stats.gaps(groups)}
    aucs = [c["auc"] for c in classes.values() if c["auc"] is not None]
    return {"classes": classes, "mean": float(np.mean(aucs)) if aucs else None, "n": len(merged["ids"])}


def loop(config: dict) -> None:
    from ark_dist.configtree import from_dict
    from ark_dist.data import DataConfig, Store, dataset_entry, read_manifest
    from ark_dist.reuse.infer import gather, infer

    rank, world = workers.context(config)
    data = from_dict(DataConfig, config["data"])
    manifest = read_manifest(Store(data.store))
    results = {}
    for which, url in config["models"].items():
        model, _ = workers.load_weights(url, config, rank=rank)
        results[which] = {}
        for dataset in config["datasets"]:
            if dataset not in model.omni_heads:
                continue
            entry = dataset_entry(manifest, dataset, splits=(config["split"],))
            local = infer(model, entry, config["split"], data_config=data, rank=rank, world=world,
                          batch_size=config["batch_size"], device=workers.device(config["use_gpu"]), heads=[dataset],
                          view=config["view"])
            merged = gather(local, world)
            if rank == 0:
                results[which][dataset] = dataset_scores(merged, entry, dataset, resamples=config["resamples"])
    if rank == 0:
        write_results(results, out=config["out"], split=config["split"])
    workers.report(config, {"datasets": sorted(results.get("after", {}))})


def write_results(results: dict, *, out: str, split: str) -> None:
    after, before = results["after"], results.get("before", {})
    rows = []
    for dataset, r in after.items():
        was = before.get(dataset, {}).get("mean")
        forgetting = "" if was is None or r["mean"] is None else f"{was - r['mean']:+.4f}"
        rows.append(f"| {dataset} | {r['n']} | {_auc(r['mean'])} | {_auc(was) if before else ''} | {forgetting} |")
        for name, c in r["classes"].items():
            interval = "" if c["low"] is None else f" ({c['low']:.3f}-{c['high']:.3f})"
            rows.append(f"| {dataset}/{name} | {c['n']} | {_auc(c['auc'])}{interval} | | |")
    head = ["| dataset / class | n | AUC (95 % interval) | before | forgetting (before - after) |", "|---|---|---|---|---|"]
    doc = {"split": split, "after": after, "before": before,
           "forgetting": {d: before[d]["mean"] - after[d]["mean"] for d in after
                          if d in before and None not in (before[d]["mean"], after[d]["mean"])}}
    write_atomic(join(out, "evaluate.json"), (json.dumps(doc, indent=1) + "\n").encode())
    write_atomic(join(out, "evaluate.md"), ("\n".join(head + rows) + "\n").encode())


def _auc(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint or ark-dist export (.safetensors), "
                   "or a published Ark .pth.tar (with --recipe)")
    p.add_argument("--before", help="a second model to compare with (e.g. the file a continual run started from)")
    p.add_argument("--datasets", nargs="+", required=True, help="datasets the model has heads for")
    p.add_argument("--split", default="test")
    workers.add_pass_arguments(p, out="out/evaluate", view="centre", batch_size=32, load="crop")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the intervals")
    args = p.parse_args(argv)
    from ark_dist.data import ShardReadError, Store, StoreConfig, dataset_entry, read_manifest

    models = {"after": args.checkpoint, **({"before": args.before} if args.before else {})}
    try:
        manifest = read_manifest(Store(StoreConfig(url=args.store)))
        described, published = workers.weights(list(models.values()), args)
        for which, url in models.items():
            heads = described[url]
            for dataset in args.datasets:
                entry = dataset_entry(manifest, dataset, splits=(args.split,))
                if which == "after" and heads.get(dataset) != entry["labels"]:
                    raise ValueError(f"{url}: its {dataset!r} head is {heads.get(dataset)}, the store's labels "
                                     f"{entry['labels']}")
        config = workers.pass_config(args, args.datasets, models=models, datasets=args.datasets, split=args.split,
                                     resamples=args.resamples, published=published)
        workers.run_pass(loop, config, args, name="evaluate")
    except (ValueError, ShardReadError) as exc:
        return workers.fail(str(exc))
    return workers.show(args.out, "evaluate.md", "evaluate.json")
