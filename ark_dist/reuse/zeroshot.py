"""`python launch.py zeroshot --checkpoint X --target DATASET --map configs/zeroshot/<map>.yaml`

Ark+'s "zero-shot": an unseen dataset scored by the pretrained heads alone, no training. A map
sends each target class to one pretrained (dataset, class) output, or to the mean of several:

    target: node21
    classes:
      Nodule: [[chestxray14, Nodule], [chestxray14, Mass], [vindr_cxr, Lung tumor]]

Each output is the sigmoid of its logit (as Ark+ does, for every head). The pass runs on Ray
Train workers over the store's split of the target (every sample once, one deterministic view:
Ark+ feeds the whole image), and rank 0 writes, under `--out`: `zeroshot.json` and
`zeroshot.md` (per target class the AUC with its bootstrap 95 % interval, and the same per
subgroup of sex, age and view where the samples carry them), and `roc.png`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import yaml

from ark_dist.fs import filesystem, join, write_atomic
from ark_dist.reuse import workers


def read_map(url: str) -> dict:
    """{"target": dataset, "classes": {target class: [(dataset, class), ...]}}, checked for form."""
    fs, path = filesystem(url)
    try:
        doc = yaml.safe_load(fs.cat_file(path))
    except FileNotFoundError:
        raise ValueError(f"--map {url}: no such file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--map {url}: not YAML ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"target", "classes"} or not isinstance(doc["classes"], dict):
        raise ValueError(f"--map {url}: expected the keys target and classes (a mapping), found {doc!r}")
    classes = {}
    for name, sources in doc["classes"].items():
        if not sources or not all(isinstance(s, list) and len(s) == 2 for s in sources):
            raise ValueError(f"--map {url}: class {name!r} must list [dataset, class] pairs, found {sources!r}")
        classes[str(name)] = [(str(d), str(c)) for d, c in sources]
    return {"target": str(doc["target"]), "classes": classes}


def check_map(mapping: dict, *, target_labels: list[str], heads: dict[str, list[str]]) -> None:
    """Every target class is the target's; every source a head's class. One line otherwise."""
    for name, sources in mapping["classes"].items():
        if name not in target_labels:
            raise ValueError(f"map: {name!r} is not a class of {mapping['target']} ({', '.join(target_labels)})")
        for dataset, label in sources:
            if dataset not in heads:
                raise ValueError(f"map: {name!r} <- {dataset}/{label}: the model has no {dataset!r} head "
                                 f"(heads: {', '.join(heads)})")
            if label not in heads[dataset]:
                raise ValueError(f"map: {name!r} <- {dataset}/{label}: no such class in the {dataset} head "
                                 f"({', '.join(heads[dataset])})")


def mapped_scores(scores: dict[str, np.ndarray], mapping: dict, heads: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """{target class: (N,) the mean of its sources' sigmoid outputs}."""
    return {name: np.mean([scores[d][:, heads[d].index(c)] for d, c in sources], axis=0)
            for name, sources in mapping["classes"].items()}


def loop(config: dict) -> None:
    """On every worker: load the model, score this rank's share, gather; rank 0 writes the results."""
    from ark_dist.configtree import from_dict
    from ark_dist.data import DataConfig, Store, dataset_entry, read_manifest
    from ark_dist.reuse.infer import gather, infer

    rank, world = workers.context(config)
    data = from_dict(DataConfig, config["data"])
    model, heads = workers.load_weights(config["checkpoint"], config, rank=rank)
    mapping = config["map"]
    entry = dataset_entry(read_manifest(Store(data.store)), mapping["target"], splits=(config["split"],))
    check_map(mapping, target_labels=entry["labels"], heads=heads)
    sources = sorted({d for pairs in mapping["classes"].values() for d, _ in pairs})
    local = infer(model, entry, config["split"], data_config=data, rank=rank, world=world,
                  batch_size=config["batch_size"], device=workers.device(config["use_gpu"]), heads=sources,
                  view=config["view"])
    merged = gather(local, world)
    metrics = {}
    if rank == 0:
        metrics = write_results(merged, mapping, entry, heads, out=config["out"], resamples=config["resamples"])
    workers.report(config, metrics)


def write_results(merged: dict, mapping: dict, entry: dict, heads: dict, *, out: str, resamples: int) -> dict:
    from ark_dist.reuse import stats

    scores = mapped_scores(merged["scores"], mapping, heads)
    results, curves, rows = {}, {}, []
    for name, score in scores.items():
        k = entry["labels"].index(name)
        known = merged["mask"][:, k] > 0
        labels = (merged["target"][known, k] >= 0.5).astype(int)
        result = stats.auc_interval(score[known], labels, resamples=resamples)
        groups = stats.subgroup_table(score[known], labels, [g for g, ok in zip(merged["subgroups"], known) if ok],
                                      resamples=resamples)
        results[name] = {**result, "sources": [list(s) for s in mapping["classes"][name]], "subgroups": groups,
                         "gaps": stats.gaps(groups)}
        curves[name] = (score[known], labels)
        rows.append(_row(name, " + ".join(f"{d}/{c}" for d, c in mapping["classes"][name]), result))
        rows += [_row(f"{name} [{g['attribute']} {g['group']}]", "", g) for g in groups]
    doc = {"target": mapping["target"], "samples": len(merged["ids"]), "classes": results}
    table = "\n".join(["| target class | from | n | positives | AUC | 95 % interval |", "|---|---|---|---|---|---|", *rows])
    write_atomic(join(out, "zeroshot.json"), (json.dumps(doc, indent=1) + "\n").encode())
    write_atomic(join(out, "zeroshot.md"), (table + "\n").encode())
    stats.roc_plot(curves, join(out, "roc.png"), title=f"zero-shot {mapping['target']}")
    return {f"auc/{name}": r["auc"] for name, r in results.items()}


def _row(name: str, source: str, r: dict) -> str:
    auc = "n/a" if r.get("auc") is None else f"{r['auc']:.4f}"
    interval = "" if r.get("low") is None else f"{r['low']:.4f} - {r['high']:.4f}"
    return f"| {name} | {source} | {r['n']} | {r['positives']} | {auc} | {interval} |"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py zeroshot", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint or ark-dist export (.safetensors), "
                   "or a published Ark .pth.tar (with --recipe)")
    p.add_argument("--target", required=True, help="the unseen dataset (in the store's manifest)")
    p.add_argument("--map", required=True, help="configs/zeroshot/<map>.yaml: target classes <- pretrained outputs")
    p.add_argument("--split", default="test", help="the target's split to score (default test)")
    workers.add_pass_arguments(p, out="out/zeroshot", view="whole", batch_size=32, load="image")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the intervals")
    args = p.parse_args(argv)
    from ark_dist.data import ShardReadError, Store, StoreConfig, dataset_entry, read_manifest

    try:
        mapping = read_map(args.map)
        if mapping["target"] != args.target:
            raise ValueError(f"--map {args.map} is for {mapping['target']!r}, not --target {args.target!r}")
        described, published = workers.weights([args.checkpoint], args)
        heads = described[args.checkpoint]
        entry = dataset_entry(read_manifest(Store(StoreConfig(url=args.store))), args.target, splits=(args.split,))
        check_map(mapping, target_labels=entry["labels"], heads=heads)
        config = workers.pass_config(args, [args.target], checkpoint=args.checkpoint, map=mapping, split=args.split,
                                     resamples=args.resamples, published=published)
        workers.run_pass(loop, config, args, name=f"zeroshot-{args.target}")
    except (ValueError, ShardReadError) as exc:
        return workers.fail(str(exc))
    return workers.show(args.out, "zeroshot.md", "zeroshot.json", "roc.png")
