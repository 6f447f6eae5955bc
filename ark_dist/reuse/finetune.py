"""`launch.py finetune --config configs/finetune/<recipe>.yaml [key=value ...]`: transfer to one
dataset with BenchmarkTransformers' protocol (the `finetune` section, README "Reuse").

A fine-tune is a training run of the same stack: `launch.py train` runs one whenever
`finetune.target` is set (so `tune` sweeps it and a re-run resumes it), with `FineTune`
(finetune_worker.py) in place of Ark's `Run` on every worker.

This command runs `finetune.trials` such runs (seeds `train.seed + i`) under
`<train.storage_path>/<train.name>/trial-<i>` and writes the table of their test AUCs, per class and
the mean +- std over trials, to `finetune.md` and `finetune.json` beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys

from ark_dist.config import Config, load
from ark_dist.fs import filesystem, join, write_atomic
from ark_dist.reuse.finetune_worker import BEST, RESULTS
SUBSET = "train_subset.txt"  # the `<dataset>/<id>` keys of `finetune.train_subset`, beside the trials
TABLE, SUMMARY = "finetune.md", "finetune.json"


# -- the driver --------------------------------------------------------------------------------
def where_keys(store, entry: dict, where: dict[str, list]) -> list[str]:
    """`<dataset>/<id>` keys of the training samples whose facts take one of `where`'s values for
    every key (`finetune.train_where`). Reads each train shard's JSON members once (no image is
    decoded): a full pass over the split's bytes, before any worker starts."""
    from ark_dist.data import stages

    counters = stages.Counters(entry["name"], max_bad_fraction=0.0, min_bad=0)
    wanted = {k: {str(v) for v in values} for k, values in where.items()}
    keys = []
    for sample in stages.tar_samples(entry["splits"]["train"]["shards"], store, counters):
        facts = json.loads(sample["parts"]["json"])
        if all(str(facts.get(k)) in values for k, values in wanted.items()):
            keys.append(sample["key"])
    return keys


def subset_keys(store, entry: dict, *, size: float, seed: int) -> list[str]:
    """`<dataset>/<id>` keys of the training patients' subset: `size` patients (a count >= 1) or
    that share of them (a fraction, rounded up), taken in the order a seeded shuffle of the sorted
    patient ids gives, so a smaller subset is a prefix of a larger one. Patients and splits come
    from the split file the build wrote (`provenance.split_file`)."""
    import csv
    import io

    split_file = entry.get("provenance", {}).get("split_file")
    if not split_file:
        raise ValueError(f"finetune.train_subset: the manifest names no split file for {entry['name']}")
    patients: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(store.read_bytes(split_file).decode())):
        if row["split"] == "train":
            patients.setdefault(row["patient"], []).append(row["id"])
    order = sorted(patients)
    random.Random(seed).shuffle(order)
    count = int(size) if size >= 1 else math.ceil(size * len(order))
    if count > len(order):
        raise ValueError(f"finetune.train_subset={size:g}: {entry['name']} has {len(order)} training patients")
    return [f"{entry['name']}/{i}" for patient in order[:count] for i in sorted(patients[patient])]


def training_subset(cfg: Config, store, entry: dict, base: str) -> str | None:
    """The key file of the training samples that `finetune.train_subset` (patients) and
    `finetune.train_where` (facts) leave, written under `base`; None when both are unset."""
    f = cfg.finetune
    if f.train_subset is None and not f.train_where:
        return None
    keys = None
    said = []
    if f.train_subset is not None:
        keys = subset_keys(store, entry, size=f.train_subset, seed=f.subset_seed)
        said.append(f"{f.train_subset:g} patients")
    if f.train_where:
        chosen = set(where_keys(store, entry, f.train_where))
        keys = [k for k in keys if k in chosen] if keys is not None else sorted(chosen)
        said.append(" and ".join(f"{k} in {v}" for k, v in f.train_where.items()))
    if not keys:
        raise ValueError(f"finetune: no training sample of {entry['name']} is left by {', '.join(said)}")
    url = join(base, SUBSET)
    write_atomic(url, "".join(k + "\n" for k in keys).encode())
    print(f"training subset: {len(keys)} images ({', '.join(said)}) -> {url}")
    return url


def trial_config(cfg: Config, index: int, *, train_only: str | None) -> Config:
    """Trial `index`: seed `train.seed + index`, run folder `<storage>/<name>/trial-<index>`."""
    base = join(cfg.train.storage_path, cfg.train.name)
    train = dataclasses.replace(cfg.train, seed=cfg.train.seed + index, storage_path=base, name=f"trial-{index}")
    tracking = dataclasses.replace(cfg.tracking, group=cfg.tracking.group or cfg.train.name,
                                   run_name=cfg.tracking.run_name or f"{cfg.train.name}-trial-{index}")
    data = dataclasses.replace(cfg.data, train_only=train_only) if train_only else cfg.data
    return dataclasses.replace(cfg, train=train, tracking=tracking, data=data)


def mean_std(values: list[float]) -> tuple[float, float]:
    """`stats.mean_std` over trials (population std, as BenchmarkTransformers reports them); NaN
    for both where a trial has no figure (a class without both outcomes in its test split)."""
    from ark_dist.reuse import stats

    return stats.mean_std(values) if all(math.isfinite(v) for v in values) else (math.nan, math.nan)


def summary(results: list[dict], *, labels: list[str], metric: str = "auc") -> tuple[str, dict]:
    """(markdown table, JSON) of the trials' test figures: one row per trial with the headline AUC
    and each class's, then the mean and std over trials."""
    classes = [c for c in labels if any(f"auc_class/{c}" in r["test"] for r in results)]
    extra = ["accuracy"] if any("accuracy" in r["test"] for r in results) else []
    head = ["trial", "seed", "best epoch", "mean AUC", *extra, *classes]
    rows = [[str(i), str(r["seed"]), str(r["best_epoch"]), f"{r['test'][metric]:.4f}",
             *[f"{r['test'][k]:.4f}" for k in extra],
             *[f"{r['test'].get(f'auc_class/{c}', float('nan')):.4f}" for c in classes]] for i, r in enumerate(results)]
    columns = {"mean AUC": [r["test"][metric] for r in results], **{k: [r["test"][k] for r in results] for k in extra},
               **{c: [r["test"].get(f"auc_class/{c}", float("nan")) for r in results] for c in classes}}
    stats = {name: mean_std(values) for name, values in columns.items()}
    rows.append(["mean ± std", "", "", *[f"{stats[n][0]:.4f} ± {stats[n][1]:.4f}" for n in columns]])
    table = _markdown(head, rows)
    groups = sorted({g for r in results for g in r["test"].get("groups", {})}, key=lambda g: (g.startswith("gap/"), g))
    if groups:  # the headline AUC per subgroup, and the gaps, over trials
        per_group = {g: mean_std([r["test"]["groups"][g] for r in results if g in r["test"].get("groups", {})])
                     for g in groups}
        table += "\nBy subgroup (headline AUC of the test samples in each group; gap = best - worst group):\n\n"
        table += _markdown(["group", "trials", "mean ± std"], [
            [g, str(sum(g in r["test"].get("groups", {}) for r in results)), f"{m:.4f} ± {s:.4f}"]
            for g, (m, s) in per_group.items()])
        stats.update({f"group {g}": v for g, v in per_group.items()})
    return table, {"trials": results, "mean_std": {n: {"mean": m, "std": s} for n, (m, s) in stats.items()}}


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(row) + " |" for row in rows]]) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py finetune", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a fine-tune recipe from configs/finetune/")
    p.add_argument("--verbose", action="store_true", help="print Ray's and the workers' log lines as they come")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. finetune.init=out/demo/teacher.safetensors")
    args = p.parse_args(argv)
    from ark_dist.data import ShardReadError, Store, dataset_entry, read_manifest

    try:
        cfg = load(args.config, args.overrides)
        if cfg.finetune.target is None:
            raise ValueError("finetune.target is not set: name the dataset to fine-tune on (a recipe from "
                             "configs/finetune/ sets it)")
        from ark_dist.reuse.init import labels_of
        from ark_dist.train.run import preflight, start_ray

        preflight(cfg)
        if cfg.finetune.init != "random":
            labels_of(cfg.finetune.init)  # an ark-dist run or export that is not there fails here
        store = Store(cfg.data.store)
        entry = dataset_entry(read_manifest(store), cfg.finetune.target, splits=("train", "val", "test"))
        base = join(cfg.train.storage_path, cfg.train.name)
        subset = training_subset(cfg, store, entry, base)
    except (ValueError, ShardReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ray.train import TrainingFailedError

    from ark_dist.train.cli import failure
    from ark_dist.train.console import fit_on_console

    start_ray(verbose=args.verbose)
    results = []
    for index in range(cfg.finetune.trials):
        trial = trial_config(cfg, index, train_only=subset)
        folder = join(trial.train.storage_path, trial.train.name)
        try:
            error = fit_on_console(trial, verbose=args.verbose).error
        except (ValueError, ShardReadError) as exc:  # the cluster cannot hold the workers, a store it cannot read
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except TrainingFailedError as exc:
            error = exc
        if error:
            print(f"error: fine-tune trial {index} failed: {failure(error, run_folder=folder)}", file=sys.stderr)
            return 1
        fs, path = filesystem(join(folder, RESULTS))
        results.append(json.loads(fs.cat_file(path)))
    table, data = summary(results, labels=list(entry["labels"]))
    title = (f"{cfg.finetune.target}: {cfg.finetune.trials} trial(s) from {cfg.finetune.init}, "
             f"freeze {cfg.finetune.freeze}, test split (best epoch by validation loss)\n\n")
    write_atomic(join(base, TABLE), (title + table).encode())
    write_atomic(join(base, SUMMARY), json.dumps(data, indent=1).encode())
    print(title + table, end="")
    print(f"wrote {join(base, TABLE)}, {join(base, SUMMARY)}, and per trial {RESULTS}, {BEST}")
    return 0
