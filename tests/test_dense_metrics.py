"""Box mAP, Dice and the soft Dice loss against values worked out by hand.

COCO's AP, as used for the oracles below: rank a class's detections by score over all images, mark
each TP/FP (greedy, one ground truth per detection), take precision p(r) along the ranking, replace it
by its envelope max_{r' >= r} p(r'), and average that at the 101 recalls 0, 0.01, ..., 1 (0 beyond
the last recall reached).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from ark_dist.train.dense_metrics import BoxMeter, DiceMeter, soft_dice_loss


def pred(boxes, scores, labels):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "scores": np.array(scores, dtype=float),
            "labels": np.array(labels, dtype=int)}


def truth(boxes, labels):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels, dtype=int)}


# Class "a": one truth in each of images 1 and 2; three detections, the middle one (score 0.8) a false
# positive in empty space. Class "b": one truth (image 3) and no detection. Image 4: nothing at all.
PREDICTIONS = [pred([[0, 0, 10, 10]], [0.9], [0]),
               pred([[100, 100, 110, 110], [20, 20, 40, 40]], [0.8, 0.7], [0, 0]),
               pred([], [], []),
               pred([], [], [])]
TRUTHS = [truth([[0, 0, 10, 10]], [0]), truth([[20, 20, 40, 40]], [0]), truth([[5, 5, 25, 30]], [1]),
          truth([], [])]
# Class a, ranked: TP (recall 1/2, precision 1), FP (1/2, 1/2), TP (1, 2/3). Envelope: 1 for recall
# <= 1/2 (the 51 points 0..0.50), 2/3 above it (the 50 points 0.51..1.00).
AP_A = (51 * 1.0 + 50 * (2 / 3)) / 101  # = 0.834983...
AP_B = 0.0  # a truth but no detection: recall never reaches any point above 0... nor 0 itself


def test_hand_computed_ap50_and_class_mean():
    meter = BoxMeter()
    meter.update(PREDICTIONS, truths=TRUTHS)
    out = meter.compute(class_names=["a", "b"])
    assert out["ap50/a"] == pytest.approx(AP_A, abs=1e-6)
    assert out["ap50/b"] == pytest.approx(AP_B, abs=1e-6)
    assert out["map50"] == pytest.approx((AP_A + AP_B) / 2, abs=1e-6)
    # every true positive overlaps exactly (IoU 1), so each of the 10 thresholds gives the same AP
    assert out["map"] == pytest.approx((AP_A + AP_B) / 2, abs=1e-6)


def test_map_averages_the_ten_coco_thresholds():
    # Image 1: truth 50x10 = 500 px; the 0.9 detection covers 29x10 = 290 px of it: IoU 290/500 = 0.58,
    # a match at 0.50 and 0.55 only. Image 2: an exact detection at 0.8.
    meter = BoxMeter()
    meter.update([pred([[0, 0, 29, 10]], [0.9], [0]), pred([[0, 0, 10, 10]], [0.8], [0])], 
                 truths=[truth([[0, 0, 50, 10]], [0]), truth([[0, 0, 10, 10]], [0])])
    out = meter.compute(class_names=["a"])
    # 0.50, 0.55: both TP -> AP 1. 0.60..0.95 (8 thresholds): FP then TP, precision 0 then 1/2 at
    # recall 1/2; envelope 1/2 at the 51 recalls 0..0.50, 0 above -> AP 25.5/101.
    assert out["map50"] == pytest.approx(1.0, abs=1e-6)
    assert out["map"] == pytest.approx((2 * 1.0 + 8 * 25.5 / 101) / 10, abs=1e-6)  # = 0.3019...


def test_perfect_predictions_score_one():
    truths = [truth([[0, 0, 10, 10], [30, 30, 60, 50]], [0, 1]), truth([[5, 5, 15, 25]], [1])]
    predictions = [pred(t["boxes"], [0.9] * len(t["labels"]), t["labels"]) for t in truths]
    meter = BoxMeter()
    meter.update(predictions, truths=truths)
    out = meter.compute(class_names=["a", "b"])
    assert out["map50"] == pytest.approx(1.0) and out["map"] == pytest.approx(1.0)


def test_no_ground_truth_is_nan():
    meter = BoxMeter()
    meter.update([pred([[0, 0, 10, 10]], [0.9], [0])], truths=[truth([], [])])
    out = meter.compute(class_names=["a", "b"])
    assert all(math.isnan(v) for v in out.values()) and set(out) == {"map50", "map", "ap50/a", "ap50/b"}
    assert math.isnan(BoxMeter().compute(class_names=["a"])["map"])


def test_class_without_truth_is_nan_and_left_out_of_the_mean():
    # class a perfect; class b has only a false positive and no truth (COCOeval's -1)
    meter = BoxMeter()
    meter.update([pred([[0, 0, 10, 10], [40, 40, 50, 50]], [0.9, 0.95], [0, 1])], truths=[truth([[0, 0, 10, 10]], [0])])
    out = meter.compute(class_names=["a", "b"])
    assert math.isnan(out["ap50/b"])
    assert out["ap50/a"] == pytest.approx(1.0)
    assert out["map50"] == pytest.approx(1.0) and out["map"] == pytest.approx(1.0)  # not (1 + 0) / 2


def test_merged_states_equal_one_meter_and_tensors_are_accepted():
    whole = BoxMeter()
    whole.update(PREDICTIONS, truths=TRUTHS)
    first, second = BoxMeter(), BoxMeter()
    first.update(PREDICTIONS[:1], truths=TRUTHS[:1])
    as_torch = [{k: torch.as_tensor(v) for k, v in d.items()} for d in PREDICTIONS[1:]]
    second.update(as_torch, truths=[{k: torch.as_tensor(v) for k, v in d.items()} for d in TRUTHS[1:]])
    states = pickle.loads(pickle.dumps([first.state(), second.state()]))  # as all_gather_object would
    merged = BoxMeter.merge(states).compute(class_names=["a", "b"])
    assert merged == pytest.approx(whole.compute(class_names=["a", "b"]))
    assert merged["map50"] == pytest.approx((AP_A + AP_B) / 2, abs=1e-6)


def test_label_outside_class_names_is_an_error():
    meter = BoxMeter()
    meter.update([pred([[0, 0, 1, 1]], [0.5], [2])], truths=[truth([[0, 0, 1, 1]], [0])])
    with pytest.raises(ValueError, match="label"):
        meter.compute(class_names=["a", "b"])


def dice_batch():
    """(B=2, C=2, 4, 4) probabilities and targets, and known (2, 2)."""
    probs, target = np.full((2, 2, 4, 4), 0.1), np.zeros((2, 2, 4, 4))
    target[0, 0, :2, :2] = 1  # |T| = 4
    probs[0, 0, 0, :] = 0.9  # |P| = 4 (top row), |P∧T| = 2 -> Dice 4/8 = 0.5
    probs[0, 1, 2, 2] = 0.5  # not above 0.5: image 0 class 1 is empty and empty -> Dice 1
    probs[1, 0, 3, 3] = 0.8  # |P| = 1, |T| = 0 -> Dice 0
    target[1, 1] = 1  # unknown (and missed entirely): must not count
    known = np.array([[True, True], [True, False]])
    return probs, target, known


def test_dice_by_hand():
    meter = DiceMeter()
    probs, target, known = dice_batch()
    meter.update(probs, target=target, known=known)
    out = meter.compute(class_names=["lung", "heart"])
    assert out["dice"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert out["dice/lung"] == pytest.approx((0.5 + 0) / 2)
    assert out["dice/heart"] == pytest.approx(1.0)
    assert out["dice_global"] == pytest.approx(2 * 2 / ((4 + 0 + 1) + (4 + 0 + 0)))  # 4/9


def test_dice_other_threshold_merge_and_empty():
    probs, target, known = dice_batch()
    whole = DiceMeter(thresholds=(0.5, 0.85))
    whole.update(torch.as_tensor(probs), target=torch.as_tensor(target), known=torch.as_tensor(known))
    parts = [DiceMeter(thresholds=(0.5, 0.85)) for _ in range(2)]
    for i, part in enumerate(parts):
        part.update(probs[i:i + 1], target=target[i:i + 1], known=known[i:i + 1])
    merged = DiceMeter.merge(pickle.loads(pickle.dumps([p.state() for p in parts])))
    for threshold in (0.5, 0.85):
        assert merged.compute(class_names=["a", "b"], threshold=threshold) == pytest.approx(
            whole.compute(class_names=["a", "b"], threshold=threshold))
    # at 0.85 the 0.8 pixel is gone: image 1 class 0 becomes empty and empty -> (0.5 + 1 + 1) / 3
    assert whole.compute(class_names=["a", "b"], threshold=0.85)["dice"] == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="threshold"):
        whole.compute(class_names=["a", "b"], threshold=0.3)
    nothing = DiceMeter()
    nothing.update(np.zeros((1, 1, 4, 4)), target=np.zeros((1, 1, 4, 4)), known=np.ones((1, 1), dtype=bool))
    out = nothing.compute(class_names=["a"])
    assert out["dice"] == 1.0 and math.isnan(out["dice_global"])


def test_soft_dice_loss_value_and_gradient():
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)  # p = 0.5 everywhere
    target = torch.zeros(1, 3, 2, 2)
    target[0, 0, 0, :] = 1  # class 0: sum pt 1, sum p 2, sum t 2 -> 1 - (2 + 1) / (4 + 1) = 0.4
    target[0, 2] = 1  # class 2 is unknown; class 1: 1 - (0 + 1) / (2 + 0 + 1) = 2/3
    known = torch.tensor([[True, True, False]])
    loss = soft_dice_loss(logits, target=target, known=known)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((0.4 + 2 / 3) / 2, abs=1e-6)
    loss.backward()
    # dL/dp_i = -(2 t_i D - N) / D^2, times dp/dlogit = 1/4 and the mean's 1/2.
    # class 0 (N 3, D 5): t=1 -> -7/25, t=0 -> 3/25; class 1 (N 1, D 3): 1/9; class 2: 0
    expected = torch.tensor([[[-7 / 25, -7 / 25], [3 / 25, 3 / 25]], [[1 / 9] * 2] * 2, [[0.0] * 2] * 2]) / 8
    torch.testing.assert_close(logits.grad[0], expected)


def test_soft_dice_loss_with_nothing_known_is_zero_and_connected():
    logits = torch.randn(2, 1, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    loss = soft_dice_loss(logits, target=torch.ones(2, 1, 3, 3), known=torch.zeros(2, 1, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.dtype == torch.float32 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and not logits.grad.any()
