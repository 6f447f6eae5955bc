"""Per-subgroup AUCs of an evaluation: wherever samples carry sex, age or view (DESIGN 7), each
group's headline AUC (the mean over `data.metric_labels` classes, as the dataset's own) and the gap
between the best and the worst group; and, for a final table, every class's AUC per group with its
bootstrap interval (`reuse.stats.subgroup_table`)."""

from __future__ import annotations

import numpy as np

from ark_dist.reuse import stats
from ark_dist.train.evaluate import roc_auc

ATTRIBUTES = ("sex", "age", "view")


def group_aucs(scores: np.ndarray, targets: np.ndarray, masks: np.ndarray, facts: list[dict], *, labels: list[str],
               metric: list[str]) -> dict[str, float]:
    """{"<attribute>=<group>": the group's mean AUC over the `metric` classes that have both outcomes
    in it, "gap/<attribute>": best minus worst group} for each attribute some sample carries.
    'unknown' and 'out of range' groups are reported but left out of the gap; a group in which no
    class has both outcomes gets no AUC."""
    columns = {a: [f.get(a) for f in facts] for a in ATTRIBUTES if any(f.get(a) is not None for f in facts)}
    out = {}
    for attribute, values in columns.items():
        groups, names = stats.groups_of(attribute, values)
        scored = {}
        for name in names:
            keep = groups == name
            aucs = []
            for c in metric:
                k = labels.index(c)
                rows = keep & (masks[:, k] > 0)
                value = roc_auc(scores[rows, k], (targets[rows, k] >= 0.5).astype(np.int64))
                if value is not None:
                    aucs.append(value)
            if aucs:
                out[f"{attribute}={name}"] = scored[name] = float(np.mean(aucs))
        ranked = [v for g, v in scored.items() if g not in stats.NOT_GROUPS]
        if len(ranked) >= 2:
            out[f"gap/{attribute}"] = max(ranked) - min(ranked)
    return out


def interval_rows(scores: np.ndarray, targets: np.ndarray, masks: np.ndarray, facts: list[dict], *,
                  labels: list[str], resamples: int = 1000) -> list[dict]:
    """Per class and group: {class, attribute, group, auc, low, high, n, positives, redrawn}, and a
    row per class and attribute with group "gap" (`stats.gaps`: best minus worst group)."""
    rows = []
    for k, name in enumerate(labels):
        keep = masks[:, k] > 0
        if not keep.any():
            continue
        kept = [f for f, ok in zip(facts, keep) if ok]
        # An attribute no kept sample has (a dataset without sex) makes no rows: stats leaves it out.
        table = stats.subgroup_table(scores[keep, k], (targets[keep, k] >= 0.5).astype(np.int64), kept,
                                     attributes=ATTRIBUTES, resamples=resamples)
        rows += [{"class": name, **row} for row in table]
        rows += [{"class": name, "attribute": gap["attribute"], "group": "gap", "auc": gap["gap"],
                  "high_group": gap["high_group"], "low_group": gap["low_group"]} for gap in stats.gaps(table)]
    return rows


def markdown(rows: list[dict], *, title: str) -> str:
    """`interval_rows` as a markdown table."""
    lines = [f"## {title}", "", "| class | attribute | group | n | positives | AUC | 95% interval |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        auc = "-" if r["auc"] is None else f"{r['auc']:.3f}"
        if r["group"] == "gap":
            between = f"{r['high_group']} - {r['low_group']}" if r["auc"] is not None else ""
            lines.append(f"| {r['class']} | {r['attribute']} | gap | | | {auc} | {between} |")
            continue
        interval = "-" if r.get("low") is None else f"[{r['low']:.3f}, {r['high']:.3f}]"
        lines.append(f"| {r['class']} | {r['attribute']} | {r['group']} | {r['n']} | {r['positives']} | {auc} | "
                     f"{interval} |")
    return "\n".join(lines) + "\n"
