"""Subgroup AUCs in every evaluation (`ark_dist.train.subgroups`) and in `report`: each group's
headline AUC equals scikit-learn's on that group's samples, averaged over the headline classes by
hand; gaps leave 'unknown' out; the interval table has a row per class and group and the gap rows of
`stats.gaps`; report's subgroup table and plot carry the last evaluation's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ark_dist.report import draw, group_aucs, summary
from ark_dist.train.subgroups import group_aucs as evaluation_groups
from ark_dist.train.subgroups import interval_rows, markdown

LABELS = ["A", "B", "C"]


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < 0.4).astype(np.float32)
    scores = np.clip(targets * 0.3 + rng.random((n, 3)) * 0.7, 0, 1).astype(np.float32)
    masks = (rng.random((n, 3)) < 0.9).astype(np.float32)
    sexes, views = ["F", "M", None], ["PA", "AP"]
    facts = [{"sex": sexes[i % 3], "age": float(rng.integers(20, 90)), "view": views[i % 2]} for i in range(n)]
    return scores, targets, masks, facts


def test_each_group_is_the_mean_of_sklearn_aucs_over_the_headline_classes_and_the_gap_leaves_unknown_out():
    scores, targets, masks, facts = _data()
    out = evaluation_groups(scores, targets, masks, facts, labels=LABELS, metric=["A", "C"])

    def by_hand(keep):
        aucs = []
        for k in (0, 2):
            rows = keep & (masks[:, k] > 0)
            aucs.append(roc_auc_score(targets[rows, k], scores[rows, k]))
        return float(np.mean(aucs))

    sex = np.array([f["sex"] for f in facts], dtype=object)
    assert out["sex=F"] == pytest.approx(by_hand(sex == "F"))
    assert out["sex=M"] == pytest.approx(by_hand(sex == "M"))
    assert out["sex=unknown"] == pytest.approx(by_hand(np.array([s is None for s in sex])))
    assert out["gap/sex"] == pytest.approx(abs(out["sex=F"] - out["sex=M"]))  # unknown is no group of the gap
    ages = np.array([f["age"] for f in facts])
    assert out["age=60-79"] == pytest.approx(by_hand((ages >= 60) & (ages < 80)))
    assert {k for k in out if k.startswith("view=")} == {"view=AP", "view=PA"}
    # No facts, no groups: the datasets without sex, age or view log nothing.
    assert evaluation_groups(scores, targets, masks, [{}] * len(facts), labels=LABELS, metric=LABELS) == {}


def test_the_interval_table_has_every_class_and_group_and_the_gaps():
    scores, targets, masks, facts = _data(seed=1)
    rows = interval_rows(scores, targets, masks, facts, labels=LABELS, resamples=200)
    for k, name in enumerate(LABELS):
        mine = [r for r in rows if r["class"] == name and r["attribute"] == "sex" and r["group"] != "gap"]
        assert sum(r["n"] for r in mine) == int((masks[:, k] > 0).sum())  # every labelled sample in one group
        female = next(r for r in mine if r["group"] == "F")
        keep = (masks[:, k] > 0) & np.array([f["sex"] == "F" for f in facts])
        assert female["auc"] == pytest.approx(roc_auc_score(targets[keep, k], scores[keep, k]))
        assert female["low"] <= female["auc"] <= female["high"]
        gap = next(r for r in rows if r["class"] == name and r["attribute"] == "sex" and r["group"] == "gap")
        by_sex = {r["group"]: r["auc"] for r in mine if r["group"] in ("F", "M")}
        assert gap["auc"] == pytest.approx(max(by_sex.values()) - min(by_sex.values()))
    text = markdown(rows, title="t")
    assert f"| A | sex | F | {int(((masks[:, 0] > 0) & np.array([f['sex'] == 'F' for f in facts])).sum())} |" in text


def _rows() -> list[dict]:
    """Two evaluations; the last one's subgroup AUCs are the ones report shows."""
    rows = []
    for epoch, shift in ((1, 0.0), (2, 0.1)):
        row = {"step": 10 * epoch, "epochs_done": epoch, "auc/test/chexpert/teacher": 0.7 + shift,
               "auc_group/test/chexpert/teacher/sex=F": 0.6 + shift, "auc_group/test/chexpert/teacher/sex=M": 0.7 + shift,
               "auc_group/test/chexpert/teacher/age=40-59": 0.65 + shift,
               "auc_group/test/chexpert/student/sex=F": 0.1, "auc_gap/test/chexpert/teacher/sex": 0.1}
        rows.append(row)
    rows.append({"step": 25, "epochs_done": 2.5, "loss/chexpert": 0.3})  # a later round without evaluation
    return rows


def test_report_shows_the_last_evaluations_subgroups_in_its_table_and_plot(tmp_path):
    rows = _rows()
    row, groups = group_aucs(rows)
    assert row["epochs_done"] == 2
    assert groups == {"chexpert": {"sex": {"F": pytest.approx(0.7), "M": pytest.approx(0.8), "gap": 0.1},
                                   "age": {"40-59": pytest.approx(0.75)}}}
    text = summary(rows, run=str(tmp_path))
    assert "| chexpert | sex | F | 0.7000 |" in text and "| chexpert | sex | gap | 0.1000 |" in text
    series = draw(rows, tmp_path)["subgroups.png"]
    assert series["auc_group/test/chexpert/teacher/sex"][1] == pytest.approx([0.7, 0.8])
    assert series["auc_group/test/chexpert/teacher/age"][1] == pytest.approx([0.75])
    assert (tmp_path / "subgroups.png").stat().st_size > 0
    json.dumps(groups)  # plain data
