"""ark_dist.reuse.stats against oracles written here: AUC as a count of concordant pairs, the
interval against a plain numpy bootstrap loop, subgroup rows against per-group counts."""

import numpy as np
import pytest

from ark_dist.reuse.stats import auc_interval, gaps, mean_std, roc_plot, shots_plot, subgroup_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pair_auc(scores, labels) -> float:
    """The share of (positive, negative) pairs ranked right, ties counting one half."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def sample(n: int, *, seed: int, rate: float = 0.3, ties: bool = False):
    """Scores that rank positives above negatives with AUC about 0.75; rounded ones hold ties."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rate).astype(np.int64)
    scores = rng.normal(size=n) + 0.95 * labels
    return (np.round(scores, 1) if ties else scores), labels


def test_auc_is_the_concordant_pair_share_with_ties():
    scores, labels = sample(80, seed=1, ties=True)
    assert len(np.unique(scores)) < len(scores)  # the oracle's tie rule is exercised
    out = auc_interval(scores, labels, resamples=200)
    assert out["auc"] == pytest.approx(pair_auc(scores, labels), abs=1e-12)
    assert (out["n"], out["positives"]) == (80, int(labels.sum()))


def test_interval_matches_a_plain_bootstrap_loop():
    scores, labels = sample(120, seed=2, ties=True)
    ours = auc_interval(scores, labels, resamples=4000, seed=5)
    rng, aucs = np.random.default_rng(99), []
    while len(aucs) < 4000:  # paired resampling, one-class resamples skipped
        index = rng.integers(0, len(labels), len(labels))
        if 0 < labels[index].sum() < len(labels):
            aucs.append(pair_auc(scores[index], labels[index]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    # Each 2.5% quantile of 4000 resamples has a Monte-Carlo sd of about 0.002 here (sd of the AUC
    # ~0.045): 0.01 is ~3.5 sd of the difference of two independent estimates.
    assert ours["low"] == pytest.approx(low, abs=0.01)
    assert ours["high"] == pytest.approx(high, abs=0.01)
    assert ours["low"] < ours["auc"] < ours["high"]


def test_interval_is_seeded_and_shrinks_with_n():
    small, large = sample(100, seed=3), sample(2000, seed=3)
    first = auc_interval(*small, resamples=300, seed=7)
    assert auc_interval(*small, resamples=300, seed=7) == first
    assert auc_interval(*small, resamples=300, seed=8)["low"] != first["low"]
    wide = first["high"] - first["low"]
    narrow = auc_interval(*large, resamples=300, seed=7)
    assert narrow["low"] < narrow["auc"] < narrow["high"]
    assert narrow["high"] - narrow["low"] < wide / 2  # ~sqrt(20) narrower in theory


def test_one_class_resamples_are_redrawn_at_their_rate():
    scores, labels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.9], [0, 0, 0, 0, 0, 1]
    out = auc_interval(scores, labels, resamples=2000, seed=0)
    # P(a resample holds one class) = (5/6)^6 + (1/6)^6 = 0.335: about 2000 * 0.335 / 0.665 redraws
    expected = 2000 * 0.335 / 0.665
    assert abs(out["redrawn"] - expected) < 0.15 * expected
    assert out["auc"] == 1.0 and out["low"] == out["high"] == 1.0  # every two-class resample ranks right
    assert auc_interval(scores, labels, resamples=2000, seed=0) == out


def test_one_class_set_has_no_auc():
    out = auc_interval([0.2, 0.4, 0.9], [1, 1, 1])
    assert out == {"auc": None, "low": None, "high": None, "n": 3, "positives": 3, "redrawn": 0}


@pytest.mark.parametrize("scores, labels, words", [
    ([0.1, 0.2], [0, 2], "0 or 1"),
    ([0.1, float("nan")], [0, 1], "finite"),
    ([0.1, 0.2, 0.3], [0, 1], "one length"),
])
def test_bad_inputs_are_named(scores, labels, words):
    with pytest.raises(ValueError, match=words):
        auc_interval(scores, labels)


def facts_and_groups(n: int, *, seed: int):
    """Per-sample facts with unknowns and an impossible age, and the group each sample is in."""
    rng = np.random.default_rng(seed + 1000)  # a stream apart from sample(seed)
    sex = rng.choice(np.array(["F", "M", None], dtype=object), n, p=[0.45, 0.45, 0.1])
    age = rng.uniform(5, 95, n).round(1)
    age_known = rng.random(n) > 0.1
    age[:2], age_known[:2] = [414.0, 59.99], True  # a typo in years (NIH ChestX-ray14 has such), and a bin edge
    view = np.where(rng.random(n) < 0.6, "PA", "AP").astype(object)
    view[rng.random(n) < 0.05] = None
    records = [{"sex": s, "age": float(a) if k else None, "view": v} for s, a, k, v in zip(sex, age, age_known, view)]
    by_hand = {
        "sex": [s or "unknown" for s in sex],
        "age": ["unknown" if not k else "out of range" if a >= 200 else
                "0-39" if a < 40 else "40-59" if a < 60 else "60-79" if a < 80 else "80+"
                for a, k in zip(age, age_known)],
        "view": [v or "unknown" for v in view],
    }
    return records, by_hand


def test_subgroup_rows_match_each_group_by_hand():
    scores, labels = sample(400, seed=4)
    records, by_hand = facts_and_groups(400, seed=4)
    rows = subgroup_table(scores, labels, records, resamples=100)
    assert [(r["attribute"], r["group"]) for r in rows] == [
        ("sex", "F"), ("sex", "M"), ("sex", "unknown"),
        ("age", "0-39"), ("age", "40-59"), ("age", "60-79"), ("age", "80+"), ("age", "out of range"),
        ("age", "unknown"),
        ("view", "AP"), ("view", "PA"), ("view", "unknown")]
    for row in rows:
        keep = np.array(by_hand[row["attribute"]]) == row["group"]
        assert (row["n"], row["positives"]) == (int(keep.sum()), int(labels[keep].sum())), row
        if 0 < labels[keep].sum() < keep.sum():
            assert row["auc"] == pytest.approx(pair_auc(scores[keep], labels[keep]), abs=1e-12)
            assert row["low"] <= row["auc"] <= row["high"]
        else:  # the single out-of-range age
            assert row["auc"] is None and row["low"] is None
    assert sum(r["n"] for r in rows if r["attribute"] == "age") == 400  # no sample dropped


def test_facts_as_columns_give_the_same_rows_and_gaps():
    scores, labels = sample(300, seed=5)
    records, _ = facts_and_groups(300, seed=5)
    columns = {"sex": [r["sex"] for r in records], "view": [r["view"] for r in records],
               "age": np.array([np.nan if r["age"] is None else r["age"] for r in records], dtype=np.float32)}
    rows = subgroup_table(scores, labels, columns, resamples=50)
    assert rows == subgroup_table(scores, labels, records, resamples=50)
    found = {g["attribute"]: g for g in gaps(rows)}
    for attribute in ("sex", "age", "view"):
        known = {r["group"]: r["auc"] for r in rows if r["attribute"] == attribute
                 and r["group"] not in ("unknown", "out of range") and r["auc"] is not None}
        high, low = max(known, key=known.get), min(known, key=known.get)
        assert found[attribute] == {"attribute": attribute, "gap": pytest.approx(known[high] - known[low]),
                                    "high_group": high, "high_auc": known[high],
                                    "low_group": low, "low_auc": known[low]}


def test_absent_attributes_are_skipped_and_one_group_has_no_gap():
    rows = subgroup_table([0.1, 0.9, 0.4, 0.6], [0, 1, 0, 1], [{"sex": "F"}] * 4, resamples=20)
    assert [(r["attribute"], r["group"], r["n"]) for r in rows] == [("sex", "F", 4)]
    assert gaps(rows) == [{"attribute": "sex", "gap": None, "high_group": None, "high_auc": None,
                           "low_group": None, "low_auc": None}]
    with pytest.raises(ValueError, match="facts hold 3 samples, scores 4"):
        subgroup_table([0.1, 0.9, 0.4, 0.6], [0, 1, 0, 1], [{"sex": "F"}] * 3)


def test_plots_write_png_files(tmp_path):
    scores, labels = sample(200, seed=6)
    roc_plot({"nodule": (scores, labels), "empty": ([0.3, 0.5], [1, 1])}, tmp_path / "roc.png", title="zero-shot")
    rows = [{"series": name, "shots": shots, "auc": 0.6 + 0.05 * np.log10(shots) + 0.01 * trial}
            for name in ("Nodule", "Mass") for shots in (1, 10, 100) for trial in range(3)]
    rows.append({"series": "Mass", "shots": 1000, "auc": None})
    shots_plot(rows, tmp_path / "nested" / "shots.png", title="probe")
    for name in ("roc.png", "nested/shots.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


def test_mean_std_is_the_population_std():
    values = [0.81, 0.84, 0.80, 0.83]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=0))
    assert std != pytest.approx(np.std(values, ddof=1))
    assert mean_std([0.9]) == (0.9, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        mean_std([])
