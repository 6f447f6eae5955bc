"""The method's clock (which r, when) and the headline AUC's classes, on their own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ark_dist.data import DataConfig
from ark_dist.method import ArkSchedule, MethodConfig
from ark_dist.train.evaluate import metric_classes, summarize


def reference_m(r: int, total: int, m0: float = 0.9) -> float:
    """Ark's momentum_schedule, written out: 1 - (1 - m0) (cos(pi r / R) + 1) / 2."""
    return 1 - (1 - m0) * (math.cos(math.pi * r / total) + 1) / 2


def test_round_updates_use_the_rounds_done_before_the_pass():
    """Ark's reference loop: `for epoch ... for d, dataset ...: train(); teacher.update(m[epoch*D + d])`."""
    schedule = ArkSchedule(config=MethodConfig(), steps=(5, 2, 7), epochs=4)
    total = 12
    seen = [(schedule.round_index(e, d), schedule.round_momentum(e, d)) for e in range(4) for d in range(3)]
    assert [r for r, _ in seen] == list(range(total))
    assert [m for _, m in seen] == pytest.approx([reference_m(r, total) for r in range(total)])
    assert seen[0][1] == pytest.approx(0.9) and seen[-1][1] < 1.0  # the last update still moves the teacher
    assert schedule.consistency(0, 0) == 0.0 and schedule.consistency(3, 2) < 0.5


def test_step_updates_count_optimizer_steps_over_the_run():
    schedule = ArkSchedule(config=MethodConfig(ema="step"), steps=(5, 2, 7), epochs=2)
    assert schedule.ema_per_step and schedule.total_steps == 28
    assert [schedule.first_step(e, d) for e in range(2) for d in range(3)] == [0, 5, 7, 14, 19, 21]
    assert schedule.step_momentum(0) == pytest.approx(0.9)
    assert schedule.step_momentum(27) == pytest.approx(reference_m(27, 28)) and schedule.step_momentum(27) < 1.0


CHEXPERT = {"name": "chexpert", "task": "multilabel",
            "labels": ["No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
                       "Fracture"]}


def test_the_headline_auc_averages_the_configured_classes_only():
    """CheXpert's headline is its 5 competition classes; the other classes are in `auc_all`. The
    expectation is built by hand: class k's scores separate its labels perfectly (AUC 1) for the
    five, and are reversed (AUC 0) for the other two."""
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 7)) < 0.5).astype(np.float64)
    targets[0], targets[1] = 1, 0  # both outcomes in every class
    scores = np.where(np.isin(np.arange(7), [0, 6]), 1 - targets, targets) + 0.01 * rng.random((40, 7))
    out = summarize(CHEXPERT, scores, targets, np.ones_like(targets), metric=metric_classes(CHEXPERT, DataConfig()))
    assert out["auc"] == pytest.approx(1.0) and out["auc_all"] == pytest.approx(5 / 7)
    everything = summarize(CHEXPERT, scores, targets, np.ones_like(targets), metric=CHEXPERT["labels"])
    assert everything["auc"] == pytest.approx(5 / 7) and "auc_all" not in everything


def test_a_headline_class_the_manifest_lacks_is_one_error_naming_the_key():
    config = DataConfig(metric_labels={"chexpert": ["Edema", "Pneumonia"]})
    with pytest.raises(ValueError, match=r"data\.metric_labels\.chexpert: \['Pneumonia'\] not among its labels"):
        metric_classes(CHEXPERT, config)
    assert metric_classes({**CHEXPERT, "name": "mimic_cxr"}, config) == CHEXPERT["labels"]
