"""`launch.py probe`: linear probes on embeddings written here in `launch.py embed`'s Parquet format.

The oracles are hand computations: the logistic regressions of every C refitted in the test, AUCs
from sklearn, and mean ± std from probe.csv with the statistics module.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ark_dist.reuse.probe import C_GRID, FILES, MAX_ITER, Split, draw_order, fraction_rows, main, read_split, shot_rows

LIST = pa.list_(pa.float32())


def write_split(root: Path, dataset: str, split: str, *, features: np.ndarray, target: np.ndarray,
                mask: np.ndarray, labels: list[str], num_parts: int = 2, columns=("backbone", "projector")) -> None:
    """`<root>/<dataset>/<split>/part-*.parquet` in the embed format; `features` fill both feature columns."""
    n = len(features)
    meta = {b"ark_dist": json.dumps({"labels": {dataset: labels}, "source": "synthetic.safetensors"}).encode()}
    fields = [("dataset", pa.string()), ("split", pa.string()), ("id", pa.string()), ("target", LIST),
              ("mask", LIST), ("sex", pa.string()), ("age", pa.float64()), ("view", pa.string())]
    fields += [(name, LIST) for name in columns]
    folder = root / dataset / split
    folder.mkdir(parents=True)
    for part, rows in enumerate(np.array_split(np.arange(n), num_parts)):
        data = {"dataset": [dataset] * len(rows), "split": [split] * len(rows),
                "id": [f"{split}-{i:05d}" for i in rows],
                "target": target[rows].tolist(), "mask": mask[rows].tolist(),
                "sex": [("M", "F", None)[i % 3] for i in rows], "age": [None if i % 4 else 50.0 + i % 30 for i in rows],
                "view": [("PA", "AP", None)[i % 3] for i in rows]}
        data.update({name: features[rows].tolist() for name in columns})
        pq.write_table(pa.table(data, schema=pa.schema(fields, metadata=meta)), folder / f"part-{part:05d}.parquet")


def run_probe(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    return (x - train.mean(0)) / (train.std(0) + 1e-6)


def test_C_is_chosen_on_validation_where_test_would_choose_another(tmp_path, capsys):
    """x2 is a suppressor: it carries the noise of x1 and no label. A strong L2 penalty scores on
    x1 alone, a weak one on x1 - x2, so the directions of the five Cs differ. Validation labels follow
    the smallest C's own scores and test labels the largest C's: each split prefers its own."""
    rng = np.random.default_rng(0)
    n = 400
    y = np.arange(n) % 2
    noise = rng.normal(size=n)
    x = np.stack([y + noise + 0.3 * rng.normal(size=n), noise + 0.3 * rng.normal(size=n)], 1).astype(np.float32)
    x_val, x_test = (rng.normal(size=(500, 2)).astype(np.float32) * x.std(0) + x.mean(0) for _ in range(2))
    models = {c: LogisticRegression(C=c, max_iter=MAX_ITER).fit(standardise(x, x), y) for c in C_GRID}
    score_val = models[C_GRID[0]].decision_function(standardise(x_val, x))
    score_test = models[C_GRID[-1]].decision_function(standardise(x_test, x))
    y_val, y_test = score_val > np.median(score_val), score_test > np.median(score_test)
    for split, features, labels in (("train", x, y), ("val", x_val, y_val), ("test", x_test, y_test)):
        labels = labels.astype(np.float32)[:, None]
        write_split(tmp_path / "emb", "toy", split, features=features, target=labels,
                    mask=np.ones_like(labels), labels=["finding"])

    auc_val = {c: roc_auc_score(y_val, m.decision_function(standardise(x_val, x))) for c, m in models.items()}
    auc_test = {c: roc_auc_score(y_test, m.decision_function(standardise(x_test, x))) for c, m in models.items()}
    chosen_on_val = max(C_GRID, key=lambda c: (auc_val[c], -c))  # the smaller C on a tie
    assert chosen_on_val == C_GRID[0] and auc_val[C_GRID[0]] == 1.0 > auc_val[C_GRID[-1]]
    assert auc_test[chosen_on_val] < max(auc_test.values()) == auc_test[C_GRID[-1]] == 1.0

    code, out, err = run_probe(capsys, "--embeddings", tmp_path / "emb", "--target", "toy", "--shots", "",
                               "--fractions", "1.0", "--seeds", "1", "--out", tmp_path / "out")
    assert code == 0, err
    (row,) = read_csv(tmp_path / "out" / "probe.csv")
    assert float(row["C"]) == chosen_on_val
    assert float(row["auc_val"]) == pytest.approx(auc_val[chosen_on_val])
    assert float(row["auc_test"]) == pytest.approx(auc_test[chosen_on_val])  # not the 1.0 of choosing on test
    # subgroups.json: the same full-data model's test AUC per group (write_split: sex M, F, None by row).
    groups = json.loads((tmp_path / "out" / "subgroups.json").read_text())
    scores = models[chosen_on_val].decision_function(standardise(x_test, x))
    for value, rows in (("M", np.arange(500) % 3 == 0), ("F", np.arange(500) % 3 == 1)):
        got = next(r for r in groups if r["attribute"] == "sex" and r["group"] == value)
        assert got["n"] == rows.sum() and got["auc"] == pytest.approx(roc_auc_score(y_test[rows], scores[rows]))
    assert {r["group"] for r in groups if r["attribute"] == "sex"} == {"F", "M", "unknown", "gap"}


def toy_split(n: int = 200, *, seed: int = 0):
    """A 3-class train split as read_split returns it: class 'rare' has 3 positives; a tenth of all
    labels are masked."""
    rng = np.random.default_rng(seed)
    target = (rng.random((n, 3)) < [0.3, 0.5, 0.0]).astype(np.float32)
    target[[5, 50, 150], 2] = 1
    known = rng.random((n, 3)) > 0.1
    known[[5, 50, 150], 2] = True
    return Split(ids=np.array([f"img-{i:04d}" for i in range(n)]), features=rng.normal(size=(n, 4)).astype(np.float32),
                 target=target, known=known, labels=["a", "b", "rare"], source="")


def test_few_shot_subsets_are_seeded_nested_and_hold_k_positives_and_negatives():
    split = toy_split()
    shots = [1, 2, 4, 8, 16, 32]
    subsets = {seed: [shot_rows(split, draw_order(split.ids, seed=seed), shots=k) for k in shots] for seed in (0, 1)}
    again = [shot_rows(split, draw_order(split.ids, seed=0), shots=k) for k in shots]
    assert all(np.array_equal(a, b) for a, b in zip(subsets[0], again))
    assert not np.array_equal(subsets[0][0], subsets[1][0])
    for seed, chosen in subsets.items():
        for smaller, larger in zip(chosen, chosen[1:]):
            assert not (smaller & ~larger).any(), f"seed {seed}: a smaller set is not inside the larger"
        for k, rows in zip(shots, chosen):
            assert not (rows & ~split.known).any(), "a masked label was drawn"
            for c in range(3):
                available = split.target[split.known[:, c], c]
                positives = split.target[rows[:, c], c]
                assert positives.sum() == min(k, available.sum())
                assert (1 - positives).sum() == min(k, (1 - available).sum())

    # Drawn by id: the same ids come out whatever order the rows were stored in.
    shuffled_rows = np.random.default_rng(7).permutation(len(split.ids))
    shuffled = Split(ids=split.ids[shuffled_rows], features=split.features[shuffled_rows],
                     target=split.target[shuffled_rows], known=split.known[shuffled_rows], labels=split.labels,
                     source="")
    for k in shots:
        mine = shot_rows(split, draw_order(split.ids, seed=3), shots=k)
        theirs = shot_rows(shuffled, draw_order(shuffled.ids, seed=3), shots=k)
        for c in range(3):
            assert set(split.ids[mine[:, c]]) == set(shuffled.ids[theirs[:, c]])


def test_fractions_are_seeded_nested_prefixes_of_known_labels():
    split = toy_split()
    fractions = [0.01, 0.1, 0.5, 1.0]
    for seed in (0, 1):
        order = draw_order(split.ids, seed=seed)
        chosen = [fraction_rows(split, order, fraction=f) for f in fractions]
        for f, rows in zip(fractions, chosen):  # the first floor(f * N) of the order, known labels only
            in_prefix = np.isin(np.arange(200), order[: int(f * 200)])
            assert np.array_equal(rows, in_prefix[:, None] & split.known)
        for smaller, larger in zip(chosen, chosen[1:]):
            assert not (smaller & ~larger).any()
        assert np.array_equal(chosen[-1], split.known)
    first = [fraction_rows(split, draw_order(split.ids, seed=s), fraction=0.1) for s in (0, 0, 1)]
    assert np.array_equal(first[0], first[1]) and not np.array_equal(first[0], first[2])


def separable(rng, n: int, labels_flipped_where_masked: bool):
    """Two classes, each decided by the sign of one of 8 features (with a margin); a fifth of the
    labels are masked and, where masked, flipped: using them would pull the AUC far down."""
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, :2] += np.sign(x[:, :2]) * 0.5
    target = (x[:, :2] > 0).astype(np.float32)
    mask = (rng.random((n, 2)) > 0.2).astype(np.float32)
    if labels_flipped_where_masked:
        target = np.where(mask == 1, target, 1 - target)
    return x, target, mask


def test_separable_set_scores_high_and_probe_md_is_the_mean_and_std_of_probe_csv(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for split, n in (("train", 300), ("val", 120), ("test", 120)):
        x, target, mask = separable(rng, n, labels_flipped_where_masked=True)
        write_split(tmp_path / "emb", "sep", split, features=x, target=target, mask=mask, labels=["left", "right"])

    code, out, err = run_probe(capsys, "--embeddings", tmp_path / "emb", "--target", "sep", "--feature", "backbone",
                               "--shots", "2,4", "--fractions", "0.1,1.0", "--seeds", "3", "--out", tmp_path / "out")
    assert code == 0, err
    rows = read_csv(tmp_path / "out" / "probe.csv")
    assert len(rows) == 4 * 3 * 2  # settings x seeds x classes
    train = read_split(str(tmp_path / "emb"), "sep", "train", feature="backbone")
    for row in rows:
        c = ["left", "right"].index(row["class"])
        if row["setting"] == "fraction" and row["size"] == "1.0":
            assert int(row["n_train"]) == train.known[:, c].sum()  # every known label, no masked one
            assert float(row["auc_test"]) >= 0.95
        if row["setting"] == "shots":
            assert (int(row["n_train"]), int(row["n_pos"])) == (2 * int(row["size"]), int(row["size"]))

    md = (tmp_path / "out" / "probe.md").read_text()
    assert md in out + "\n"  # the table is printed
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    table = {row[0]: row[1:] for row in cells}  # setting -> mean, left, right
    names = {("shots", "2"): "2 shots", ("shots", "4"): "4 shots", ("fraction", "0.1"): "10% of train",
             ("fraction", "1.0"): "100% of train"}

    def spread(values):
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"  # ddof 0, as the harnesses report

    for (setting, size), name in names.items():
        mine = [r for r in rows if (r["setting"], r["size"]) == (setting, size)]
        by_seed = [statistics.mean(float(r["auc_test"]) for r in mine if r["seed"] == s) for s in "012"]
        by_class = [spread([float(r["auc_test"]) for r in mine if r["class"] == label]) for label in ("left", "right")]
        assert table[name] == [spread(by_seed), *by_class], name
    with Image.open(tmp_path / "out" / "probe.png") as image:
        assert image.format == "PNG" and image.width > 400
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES)


@pytest.fixture()
def small_root(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "val", "test"):
        x, target, mask = separable(rng, 40, labels_flipped_where_masked=False)
        write_split(tmp_path / "emb", "sep", split, features=x, target=target, mask=mask, labels=["left", "right"],
                    columns=("backbone",))
    return tmp_path / "emb"


@pytest.mark.parametrize("case, argv, message", [
    ("unknown dataset", ["--target", "nih", "--feature", "backbone"], "no dataset 'nih' under {root}; found: sep"),
    ("missing split", ["--target", "sep", "--feature", "backbone", "--remove", "val"], "no 'val' split of 'sep'"),
    ("feature missing", ["--target", "sep", "--feature", "projector"], "feature 'projector' not in"),
    ("no such root", ["--target", "sep", "--feature", "backbone", "--root", "nowhere"], "no embeddings at"),
])
def test_bad_input_is_one_error_line(small_root, tmp_path, capsys, case, argv, message):
    argv = list(argv)
    root = small_root
    if "--remove" in argv:
        shutil.rmtree(small_root / "sep" / argv.pop(argv.index("--remove") + 1))
        argv.remove("--remove")
    if "--root" in argv:
        root = tmp_path / argv.pop(argv.index("--root") + 1)
        argv.remove("--root")
    code, out, err = run_probe(capsys, "--embeddings", root, *argv, "--shots", "1", "--fractions", "", "--seeds", "1",
                               "--out", tmp_path / "out")
    assert code == 2, case
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message.format(root=root) in err, err
    assert not (tmp_path / "out").exists()
