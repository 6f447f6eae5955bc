"""evaluate.roc_auc against scikit-learn's roc_auc_score (the independent oracle): random scores
with ties of every density, and the degenerate splits that have no AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from ark_dist.train.evaluate import roc_auc


def _case(seed: int, size: int, levels: int | None, positive_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores drawn from `levels` distinct values (None: continuous, no ties) and labels that lean on
    the scores, so the AUC sits anywhere in [0, 1] rather than near 0.5."""
    rng = np.random.default_rng(seed)
    raw = rng.random(size)
    scores = raw if levels is None else np.floor(raw * levels) / levels  # fewer levels, more ties
    lean = rng.uniform(-3, 3)
    labels = (rng.random(size) < 1 / (1 + np.exp(-lean * (raw - 0.5) - np.log(positive_rate / (1 - positive_rate)))))
    return scores.astype(np.float32), labels.astype(np.int64)


@pytest.mark.parametrize("levels", [None, 1000, 20, 3, 2])
def test_roc_auc_equals_scikit_learn_on_random_scores_with_ties(levels):
    compared = 0
    for seed in range(60):
        for size in (2, 3, 7, 50, 400):
            scores, labels = _case(seed * 31 + size, size, levels, positive_rate=(0.05, 0.3, 0.5, 0.8)[seed % 4])
            if labels.min() == labels.max():
                continue  # no AUC: the degenerate test below covers it
            assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12), \
                (seed, size, levels)
            compared += 1
    assert compared > 200  # the loop really compared, it did not skip its way through


def test_roc_auc_with_every_score_tied_is_one_half_and_perfect_orders_are_0_and_1():
    labels = np.array([0, 1, 1, 0, 1])
    assert roc_auc(np.full(5, 0.7, dtype=np.float32), labels) == pytest.approx(0.5)
    assert roc_auc(labels.astype(np.float32), labels) == pytest.approx(1.0)
    assert roc_auc(-labels.astype(np.float32), labels) == pytest.approx(0.0)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0, 0], [1], [0], []])
def test_roc_auc_is_none_when_a_split_has_one_outcome_only(labels):
    labels = np.array(labels, dtype=np.int64)
    scores = np.linspace(0, 1, len(labels)).astype(np.float32)
    assert roc_auc(scores, labels) is None
    if len(labels):  # scikit-learn agrees that there is no AUC there
        with pytest.warns(UndefinedMetricWarning, match="Only one class"):
            assert np.isnan(roc_auc_score(labels, scores))
