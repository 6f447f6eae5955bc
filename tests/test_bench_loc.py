"""`bench loc` end to end with tiny settings: both candidates train, with no connection opened, and
are scored and timed (no timing or mAP level is asserted: the figures are for the notes, measured
with the command itself)."""

from __future__ import annotations

import math
import socket

import numpy as np

from ark_dist.model import bench_loc


def test_the_look_alike_boxes_hold_their_stripes_inside_the_image():
    images, truths = bench_loc.look_alike(np.random.default_rng(0), count=24, side=64)
    assert images.shape == (24, 3, 64, 64)
    counts = [len(t["labels"]) for t in truths]
    assert 0 in counts and max(counts) == 2  # negatives, and images with two findings
    boxes = np.concatenate([t["boxes"].numpy() for t in truths])
    sides = boxes[:, 2:] - boxes[:, :2]
    assert boxes.min() >= 0 and boxes.max() <= 64 and sides.min() >= 12 and sides.max() <= 28
    assert {int(k) for t in truths for k in t["labels"]} == {0, 1}


def test_both_candidates_train_offline_and_the_table_gives_a_finite_step_time_and_an_map_for_each(capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"bench loc opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # nothing may be downloaded
    assert bench_loc.main(["--steps", "4", "--images", "8", "--batch", "4", "--seed", "1"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] in (["fcos"], ["deformable_detr"])}
    assert rows.keys() == {"fcos", "deformable_detr"}
    for name, (_, params, step_ms, map50, map_, loss) in rows.items():
        assert int(params.replace(",", "")) > 0, name
        assert math.isfinite(float(step_ms)) and float(step_ms) > 0, name
        assert 0 <= float(map50) <= 1 and 0 <= float(map_) <= 1, name
        assert math.isfinite(float(loss)), name
