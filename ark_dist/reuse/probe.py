"""`python launch.py probe --embeddings URL --target DATASET`: linear probes on frozen embeddings.

One L2-regularised logistic regression per class of the target's head is fitted on `train` (all of
it, a fraction of it, or K positives and K negatives per class), its C is chosen on `val` by AUC,
and it is scored once on `test`. Nothing is ever chosen on `test`: Ark+'s linear-probe script kept
the epoch with the best test AUC, which reports an optimistic number.

Subsets are drawn by sample id (the embeddings carry no patient id): for each seed the training ids,
sorted, are put in one seeded random order, and every subset is a prefix of that order, so subsets
are nested (the 2-shot set holds the 1-shot set, 10% holds 1%). A K-shot set of a class is the
first K positives and the first K negatives in that order among the samples whose label for the
class is known; a fraction is the first floor(f * N) samples, as in Ark+, and each class then uses
those of them whose label is known. A class with fewer than K positives (or negatives) uses all it
has, and the table says so.

Out come probe.csv (one row per setting, seed and class), probe.md (mean +- std over seeds) and
probe.png (test AUC against shots and fraction), under --out (local or s3://).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import posixpath
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ark_dist.fs import filesystem, join, write_atomic
from ark_dist.reuse.stats import mean_std

FEATURES = ("backbone", "projector")
SPLITS = ("train", "val", "test")
# Inverse L2 strengths tried per class, ascending: a tie on validation AUC keeps the stronger
# penalty. Features are standardised, so one decade grid serves 1-shot (small C) to full data.
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MAX_ITER = 1000
FILES = ("probe.csv", "probe.md", "probe.png", "subgroups.md", "subgroups.json")
FACTS = ("sex", "age", "view")  # the embeddings' subgroup columns


class ProbeError(ValueError):
    """A user-facing failure, one line naming the culprit."""


@dataclass(frozen=True)
class Split:
    """One split of one dataset's embeddings, rows in file order."""

    ids: np.ndarray  # (N,) str
    features: np.ndarray  # (N, D) float32
    target: np.ndarray  # (N, C) 1/0
    known: np.ndarray  # (N, C) bool: mask == 1
    labels: list[str]  # the C class names, in head order
    source: str  # the weights the embeddings came from


def read_split(root: str, dataset: str, split: str, *, feature: str) -> Split:
    """`<root>/<dataset>/<split>/*.parquet` (one file per shard), as `launch.py embed` writes it."""
    folder = join(root, dataset, split)
    tables, meta = [], None
    try:
        fs, parts = _parts(root, dataset, split)
        for part in parts:
            with fs.open(part, "rb") as f:
                parquet = pq.ParquetFile(f)
                schema = parquet.schema_arrow
                if feature not in schema.names:
                    raise ProbeError(f"feature {feature!r} not in {part}; columns: {', '.join(schema.names)}")
                meta = meta or json.loads((schema.metadata or {}).get(b"ark_dist", b"{}"))
                tables.append(parquet.read(columns=["id", "target", "mask", feature]))
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec and pyarrow raise many types for one bad URL
        raise ProbeError(f"cannot read {folder}: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    labels = meta.get("labels", {}).get(dataset)
    if labels is None:
        raise ProbeError(f"{folder}: no class names for {dataset!r} under the schema metadata key 'ark_dist'")
    table = pa.concat_tables(tables)
    target, known = _matrix(table, "target", folder), _matrix(table, "mask", folder) == 1
    if target.shape[1] != len(labels) or known.shape != target.shape:
        raise ProbeError(f"{folder}: target and mask need {len(labels)} values a row, one per class of the head")
    return Split(ids=np.asarray(table.column("id").to_pylist(), dtype=str), features=_matrix(table, feature, folder),
                 target=target, known=known, labels=list(labels), source=str(meta.get("source", "")))


def _parts(root: str, dataset: str, split: str) -> tuple:
    """(filesystem, the split's Parquet paths); a ProbeError says which of root, dataset, split is missing."""
    fs, path = filesystem(join(root, dataset, split))
    parts = sorted(fs.glob(posixpath.join(path, "*.parquet")))
    if parts:
        return fs, parts
    if fs.exists(posixpath.dirname(path)):
        raise ProbeError(f"no {split!r} split of {dataset!r}: no .parquet file in {join(root, dataset, split)}")
    fs, path = filesystem(root)
    if not fs.exists(path):
        raise ProbeError(f"no embeddings at {root}")
    found = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    raise ProbeError(f"no dataset {dataset!r} under {root}; found: {', '.join(found) or 'nothing'}")


def _matrix(table: pa.Table, column: str, folder: str) -> np.ndarray:
    """A list<float32> column as an (N, width) array; every row must have the same width."""
    values = table.column(column).combine_chunks()
    widths = values.value_lengths().to_numpy(zero_copy_only=False)
    if values.null_count or len(set(widths.tolist())) > 1:
        raise ProbeError(f"{folder}: column {column!r} has rows of different lengths or nulls")
    width = int(widths[0]) if len(widths) else 0
    return values.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(values), width)


def draw_order(ids: np.ndarray, *, seed: int) -> np.ndarray:
    """Row indices in this seed's random order, drawn over ids sorted, so the order does not depend
    on how the rows were split into files."""
    by_id = np.argsort(ids, kind="stable")
    return by_id[np.random.default_rng(seed).permutation(len(ids))]


def shot_rows(split: Split, order: np.ndarray, *, shots: int) -> np.ndarray:
    """(N, C) bool: for class c, the first `shots` positives and negatives in `order` with a known label."""
    chosen = np.zeros_like(split.known)
    for c in range(len(split.labels)):
        candidates = order[split.known[order, c]]
        positive = split.target[candidates, c] == 1
        chosen[candidates[positive][:shots], c] = True
        chosen[candidates[~positive][:shots], c] = True
    return chosen


def fraction_rows(split: Split, order: np.ndarray, *, fraction: float) -> np.ndarray:
    """(N, C) bool: the first floor(fraction * N) rows of `order`, each class keeping its known labels."""
    chosen = np.zeros(len(order), dtype=bool)
    chosen[order[: math.floor(fraction * len(order))]] = True
    return chosen[:, None] & split.known


def fit_class(x: np.ndarray, y: np.ndarray, *, x_val: np.ndarray,
              y_val: np.ndarray) -> tuple[LogisticRegression, float, float]:
    """(model, C, validation AUC) for the C of C_GRID whose model has the best AUC on (x_val, y_val)."""
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(x, y)
        auc = roc_auc_score(y_val, model.decision_function(x_val))
        if best is None or auc > best[2]:
            best = (model, c, auc)
    return best


def probe(root: str, dataset: str, *, feature: str, shots: list[int], fractions: list[float],
          num_seeds: int) -> tuple[pd.DataFrame, Split]:
    """(one row per setting, size, seed and class: its training size, chosen C and AUCs; the train split)."""
    train, val, test = (read_split(root, dataset, s, feature=feature) for s in SPLITS)
    for split, name in ((val, "val"), (test, "test")):
        if split.labels != train.labels or split.features.shape[1] != train.features.shape[1]:
            raise ProbeError(f"{dataset}: the {name} split's classes or {feature} width differ from train's")
    # Standardised with the whole training split's features (no labels), so every setting sees one
    # input scale; lbfgs needs it (about 10x the iterations on raw features).
    mean, std = train.features.mean(0), train.features.std(0) + 1e-6
    x, x_val, x_test = ((s.features - mean) / std for s in (train, val, test))
    scored = {}  # the full set is the same for every seed and lbfgs is deterministic: fit it once
    rows = []
    for seed in range(num_seeds):
        order = draw_order(train.ids, seed=seed)
        settings = [("shots", k, shot_rows(train, order, shots=k)) for k in shots]
        settings += [("fraction", f, fraction_rows(train, order, fraction=f)) for f in fractions]
        for setting, size, chosen in settings:
            for c, label in enumerate(train.labels):
                y = train.target[chosen[:, c], c]  # (n_train,)
                key = (c, np.packbits(chosen[:, c]).tobytes())
                if key not in scored:
                    scored[key] = _score_class(x[chosen[:, c]], y, val=(x_val, val.target[:, c], val.known[:, c]),
                                               test=(x_test, test.target[:, c], test.known[:, c]))
                c_value, auc_val, auc_test, note = scored[key]
                num_pos, num_neg = int(y.sum()), int(len(y) - y.sum())
                if not note and setting == "shots" and min(num_pos, num_neg) < size:
                    note = f"only {num_pos} positives and {num_neg} negatives"
                rows.append({"setting": setting, "size": size, "seed": seed, "class": label, "n_train": len(y),
                             "n_pos": num_pos, "auc_val": auc_val, "auc_test": auc_test, "C": c_value, "note": note})
    table = pd.DataFrame(rows)
    table["size"] = pd.Series([row["size"] for row in rows], dtype=object)  # shots stay ints beside fractions
    return table, train


def read_facts(root: str, dataset: str, split: str) -> dict[str, list]:
    """The split's subgroup columns (sex, age, view, those the files have), rows in file order."""
    fs, parts = _parts(root, dataset, split)
    columns: dict[str, list] = {}
    for part in parts:
        with fs.open(part, "rb") as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in FACTS if c in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
        for name in present:
            columns.setdefault(name, []).extend(table.column(name).to_pylist())
    return columns


def subgroups(root: str, dataset: str, *, feature: str, resamples: int = 1000) -> list[dict]:
    """The full-data probe per subgroup: each class fitted on the whole train split (C on
    validation, as in `probe`), its test AUC per sex, age band and view with a bootstrap interval,
    and the gaps (`stats.subgroup_table`, `stats.gaps`)."""
    from ark_dist.reuse import stats

    train, val, test = (read_split(root, dataset, s, feature=feature) for s in SPLITS)
    facts = read_facts(root, dataset, "test")
    mean, std = train.features.mean(0), train.features.std(0) + 1e-6
    x, x_val, x_test = ((s.features - mean) / std for s in (train, val, test))
    rows = []
    for c, label in enumerate(train.labels):
        known, known_val, known_test = train.known[:, c], val.known[:, c], test.known[:, c]
        y, y_val, y_test = train.target[known, c], val.target[known_val, c], test.target[known_test, c]
        if min(len(np.unique(y)), len(np.unique(y_val)), len(np.unique(y_test))) < 2:
            continue  # probe.csv says why
        model, _, _ = fit_class(x[known], y, x_val=x_val[known_val], y_val=y_val)
        scores = model.decision_function(x_test[known_test])
        kept = {name: [v for v, ok in zip(values, known_test) if ok] for name, values in facts.items()}
        table = stats.subgroup_table(scores, y_test.astype(int), kept, resamples=resamples)
        rows += [{"class": label, **row} for row in table]
        rows += [{"class": label, "attribute": g["attribute"], "group": "gap", "auc": g["gap"],
                  "high_group": g["high_group"], "low_group": g["low_group"]} for g in stats.gaps(table)]
    return rows


def _score_class(x: np.ndarray, y: np.ndarray, *, val: tuple, test: tuple) -> tuple[float, float, float, str]:
    """(C, val AUC, test AUC, note) of one class fitted on (x, y); val and test are (features, targets,
    known) of the whole split. NaNs and a note where a split lacks positives or negatives."""
    (x_val, y_val, known_val), (x_test, y_test, known_test) = val, test
    x_val, y_val, x_test, y_test = x_val[known_val], y_val[known_val], x_test[known_test], y_test[known_test]
    for name, labels in (("train", y), ("val", y_val), ("test", y_test)):
        if len(np.unique(labels)) < 2:
            missing = "positives" if not labels.any() else "negatives"
            return math.nan, math.nan, math.nan, f"not scored: no {missing} in {name}"
    model, c_value, auc_val = fit_class(x, y, x_val=x_val, y_val=y_val)
    return c_value, auc_val, roc_auc_score(y_test, model.decision_function(x_test)), ""


def _spread(values: pd.Series, *, num_seeds: int) -> str:
    """'mean ± std' over the seeds that scored (stats.mean_std: numpy's ddof 0, as the Ark papers'
    harnesses report trials), saying how many did where not all."""
    values = values.dropna()
    if values.empty:
        return "-"
    mean, std = mean_std(values.to_numpy())
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if len(values) > 1 else "")
    return text + (f" ({len(values)} of {num_seeds} seeds)" if len(values) < num_seeds else "")


def summary(table: pd.DataFrame, *, dataset: str, feature: str, source: str) -> str:
    """probe.md: per setting, test AUC mean ± std over seeds, of the class mean and of each class."""
    num_seeds = table["seed"].nunique()
    classes = list(dict.fromkeys(table["class"]))
    lines = [f"# Linear probe: {dataset} ({feature} features of {source or 'unknown weights'})", "",
             f"Test AUC, mean ± std (ddof 0) over {num_seeds} seed(s). One logistic regression per class, its C "
             f"chosen from {', '.join(f'{c:g}' for c in C_GRID)} by validation AUC; `mean` is the mean over the "
             "classes scored in each seed. † fewer positives or negatives than shots in train (all used); "
             "- not scored (see the note in probe.csv).", "",
             "| setting | mean | " + " | ".join(classes) + " |", "|---" * (len(classes) + 2) + "|"]
    for _, group in table.groupby(["setting", "size"], sort=False):
        setting, size = group["setting"].iloc[0], group["size"].iloc[0]  # size as stored: int shots, float fraction
        cells = [_spread(group.groupby("seed")["auc_test"].mean(), num_seeds=num_seeds)]  # class mean of each seed
        for label in classes:
            rows = group[group["class"] == label]
            short = setting == "shots" and ((rows["n_pos"] < size) | (rows["n_train"] - rows["n_pos"] < size)).any()
            cells.append(_spread(rows["auc_test"], num_seeds=num_seeds) + (" †" if short else ""))
        name = f"{size} shots" if setting == "shots" else f"{100 * size:g}% of train"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, *, title: str) -> bytes:
    """probe.png: mean test AUC (class mean, ± std over seeds) against shots and against fraction."""
    per_seed = table.groupby(["setting", "size", "seed"])["auc_test"].mean().reset_index()
    settings = [s for s in ("shots", "fraction") if (per_seed["setting"] == s).any()]
    fig = Figure(figsize=(5 * len(settings), 4))
    FigureCanvasAgg(fig)
    for i, setting in enumerate(settings):
        ax = fig.add_subplot(1, len(settings), i + 1)
        curve = per_seed[per_seed["setting"] == setting].groupby("size")["auc_test"].agg(["mean", "std"])
        ax.errorbar(curve.index, curve["mean"], yerr=curve["std"].fillna(0), marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks(list(curve.index), [f"{size:g}" for size in curve.index])
        ax.minorticks_off()
        ax.set_xlabel("positives (and as many negatives) per class" if setting == "shots" else "fraction of train")
        ax.set_ylabel("test AUC, mean over classes")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _numbers(kind: type, *, valid, rule: str):
    """An argparse type: comma-separated numbers of `kind`, each passing `valid`; '' is none."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
        if not all(valid(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be {rule}")
        return sorted(set(values))
    return parse


def main(argv: list[str]) -> int:
    """The `probe` subcommand: `argv` is what follows the word `probe`."""
    p = argparse.ArgumentParser(prog="launch.py probe", description="Linear probes on frozen embeddings, "
                                "full data and few-shot; C chosen on val, scored on test")
    p.add_argument("--embeddings", required=True, help="the root `launch.py embed` wrote (local or s3://)")
    p.add_argument("--target", required=True, help="the dataset to probe: a folder under --embeddings")
    p.add_argument("--feature", choices=FEATURES, default="projector", help="which embedding column")
    p.add_argument("--shots", type=_numbers(int, valid=lambda k: k >= 1, rule=">= 1"),
                   default="1,2,4,8,16,32", help="K positives and K negatives per class; '' for none")
    p.add_argument("--fractions", type=_numbers(float, valid=lambda f: 0 < f <= 1, rule="in (0, 1]"),
                   default="0.01,0.1,1.0", help="fractions of the training split; '' for none")
    p.add_argument("--seeds", type=int, default=3, help="subset draws per setting (seeds 0..N-1)")
    p.add_argument("--out", help="output folder (local or s3://); default out/probe/TARGET-FEATURE")
    args = p.parse_args(argv)
    if args.seeds < 1 or not (args.shots or args.fractions):
        p.error("need --seeds >= 1 and at least one of --shots and --fractions")
    out = args.out or f"out/probe/{args.target}-{args.feature}"
    try:
        table, train = probe(args.embeddings, args.target, feature=args.feature, shots=args.shots,
                             fractions=args.fractions, num_seeds=args.seeds)
        text = summary(table, dataset=args.target, feature=args.feature, source=train.source)
        write_atomic(join(out, "probe.csv"), table.to_csv(index=False).encode())
        write_atomic(join(out, "probe.md"), text.encode())
        title = f"{args.target}: linear probe on {args.feature} features"
        write_atomic(join(out, "probe.png"), plot(table, title=title))
        from ark_dist.train.subgroups import markdown

        groups = subgroups(args.embeddings, args.target, feature=args.feature)
        write_atomic(join(out, "subgroups.json"), json.dumps(groups, indent=1).encode())
        write_atomic(join(out, "subgroups.md"), markdown(groups, title=f"{title}, all of train, test split").encode())
    except ProbeError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {', '.join(join(out, name) for name in FILES)}")
    return 0
