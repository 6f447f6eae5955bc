"""`python launch.py tune --config FILE [dotted.key=value ...]`: run (or resume) a sweep, then
print a table of trials and export the best trial's teacher."""

from __future__ import annotations

import argparse
import math
import sys

import yaml

from ark_dist.config import Config, load, to_dict
from ark_dist.data.remote import ShardReadError
from ark_dist.fs import join, write_atomic


def summary(cfg: Config, results) -> tuple[list[dict], dict | None]:
    """(one row per trial, the best row) from Tune's results. Best by the metric's last report: the
    teacher a trial ended with is the one exported (a trial ASHA stopped ended at its last rung)."""
    t = cfg.tune
    rows = []
    for result in results:
        metrics = result.metrics or {}
        value = metrics.get(t.metric)
        epochs = metrics.get("epochs_done")
        status = "error" if result.error else "done" if epochs == cfg.train.epochs else "stopped"
        rows.append({"trial": metrics.get("trial_id") or result.path.rsplit("_", 1)[-1], "status": status,
                     "epochs": epochs,
                     t.metric: value, **{k: result.config.get(k) for k in t.space}, "path": result.path})
    rows.sort(key=lambda r: r["trial"])
    scored = [r for r in rows if isinstance(r[t.metric], float) and not math.isnan(r[t.metric])]
    best = (max if t.mode == "max" else min)(scored, key=lambda r: r[t.metric]) if scored else None
    return rows, best


def table(rows: list[dict], keys: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def finish(cfg: Config, rows: list[dict], best: dict | None) -> list[str]:
    """Write the sweep's table, the best trial's resolved config and its exported teacher into the
    sweep folder; returns what was written."""
    from ark_dist.export import export
    from ark_dist.tune.sweep import TRIALS, trial_config

    folder = join(cfg.train.storage_path, cfg.tune.name)
    keys = ["trial", "status", "epochs", cfg.tune.metric, *cfg.tune.space]
    write_atomic(join(folder, "trials.md"), (table(rows, keys) + "\n").encode())
    written = [join(folder, "trials.md")]
    if best is None:
        return written
    best_cfg = trial_config(to_dict(cfg), {k: best[k] for k in cfg.tune.space}, trial_id=best["trial"])
    write_atomic(join(folder, "best.yaml"), yaml.safe_dump(to_dict(best_cfg), sort_keys=False).encode())
    written.append(join(folder, "best.yaml"))
    written += export(join(folder, TRIALS, best["trial"]), join(folder, "best_teacher"))
    return written


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py tune", description="a Ray Tune sweep of Ark training runs")
    p.add_argument("--config", required=True, help="a recipe with a `tune` section, e.g. configs/sweep_lr.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. tune.num_samples=8")
    args = p.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        if not cfg.tune.space:
            raise ValueError(f"{args.config}: tune.space is empty: nothing to sweep")
        from ark_dist.train.run import preflight, start_ray
        from ark_dist.tune.sweep import check_space, sweep, tuner

        check_space(cfg)
        preflight(cfg)
        start_ray()
        results = sweep(tuner(cfg))
    except (ValueError, ShardReadError) as exc:  # a mistake in the recipe, or a store it cannot read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows, best = summary(cfg, results)
    keys = ["trial", "status", "epochs", cfg.tune.metric, *cfg.tune.space]
    print(table(rows, keys))
    written = finish(cfg, rows, best)
    if best is None:
        print(f"error: no trial reported {cfg.tune.metric}; see {written[0]}", file=sys.stderr)
        return 1
    print(f"best trial {best['trial']}: {cfg.tune.metric}={best[cfg.tune.metric]:.4g} "
          + " ".join(f"{k}={best[k]}" for k in cfg.tune.space))
    print("\n".join(f"wrote {w}" for w in written))
    return 0
