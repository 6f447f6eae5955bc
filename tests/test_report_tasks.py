"""`launch.py report` on a Foundation X run: tasks.png (mAP and Dice per dataset), the task table in
summary.md, the losses of `loss/<dataset>:<task>/<kind>` keys and their skip counts.

The fixture run: a recipe of six steps (three classification, two localization, one segmentation),
so nine passes a cycle (a loc or seg step is a lock pass of half a round, then a release pass),
4 steps a round, for 3 cycles, evaluated after every cycle as the trainer does (the last pass's
row); one NaN mAP, a Dice that peaks at the second evaluation, and loader skip counters that repeat
each dataset's last count in every row."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from test_report import assert_real_image
from test_report import true_rows as ark_rows
from test_report import write_run as write_ark_run

from ark_dist.report import FILES, TASKS, draw, main, read_metrics

PASSES = [("chexpert:cls", "train"), ("node21:cls", "train"), ("node21:loc", "lock"), ("node21:loc", "release"),
          ("siim_acr:cls", "train"), ("siim_acr:loc", "lock"), ("siim_acr:loc", "release"), ("siim_acr:seg", "lock"),
          ("siim_acr:seg", "release")]
NUM_CYCLES, ROUND_STEPS = 3, 4
FAMILIES = {"node21": ["map50", "map"], "siim_acr": ["map50", "map", "dice", "dice_global"]}  # per dense dataset
SKIPS = {(0, 2): 2, (1, 8): 1, (2, 0): 4}  # (cycle, pass index) -> samples its round skipped
NAN = float("nan")


def evaluation(cycle: int) -> dict[str, float]:
    """The evaluation after cycle `cycle` (0-based): AUC per classification step, mAP and Dice per dense
    one; siim_acr's teacher val Dice peaks after the second cycle; node21's student test mAP is NaN
    after the first (no box predicted)."""
    out = {}
    for s, split in enumerate(("val", "test")):
        for m, model in enumerate(("teacher", "student")):
            offset = 0.1 * cycle - 0.02 * s - 0.03 * m
            for d, dataset in enumerate(("chexpert", "node21", "siim_acr")):
                out[f"auc/{split}/{dataset}/{model}"] = 0.6 + offset + 0.01 * d
            for d, (dataset, families) in enumerate(FAMILIES.items()):
                for f, family in enumerate(families):
                    out[f"{family}/{split}/{dataset}/{model}"] = 0.2 + offset + 0.05 * d + 0.01 * f
    out["dice/val/siim_acr/teacher"] = {0: 0.5, 1: 0.8, 2: 0.7}[cycle]
    if cycle == 0:
        out["map/test/node21/student"] = NAN
    return out


def fx_rows(num_cycles: int = NUM_CYCLES) -> list[dict]:
    """The run's metrics.jsonl rows, one per pass, as ark_dist/train/foundation_worker.py writes them."""
    rows, last_skips, step = [], {}, 0
    for cycle in range(num_cycles):
        for index, (recipe_step, kind) in enumerate(PASSES):
            step += ROUND_STEPS // 2 if kind == "lock" else ROUND_STEPS
            dataset = recipe_step.split(":")[0]
            last_skips[dataset] = float(SKIPS.get((cycle, index), 0))  # a new round's loaders count from 0
            name = f"{recipe_step}/{kind}"
            row = {"step": step, f"loss/{name}": 3.0 - step / 50 + index / 10, f"loss/task/{name}": 2.0 - step / 60,
                   "ema/momentum": 0.8, "lr": 1e-5 * (1 + cycle), "lr/head": 1e-4 * (1 + cycle), "optim/steps": step,
                   "epoch": cycle, "round": index, "throughput/img_per_s": 50.0 + step, "time/data_wait_pct": 1.0,
                   **{f"data/skipped/{d}": n for d, n in last_skips.items()},
                   "epochs_done": cycle + (index + 1) / len(PASSES)}
            if index == len(PASSES) - 1:
                row.update(evaluation(cycle))
            rows.append(row)
    return rows


def write_run(folder, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def expected_series(rows: list[dict], key: str, x: str) -> tuple[list, list]:
    hits = [r for r in rows if key in r]
    return [r[x] for r in hits], [r[key] for r in hits]


def assert_drawn(series: dict, rows: list[dict], keys: list[str], *, x: str) -> None:
    assert sorted(series) == sorted(keys)
    for key in keys:
        want_x, want_y = expected_series(rows, key, x)
        np.testing.assert_array_equal(series[key][0], want_x, err_msg=key)
        np.testing.assert_array_equal(series[key][1], want_y, err_msg=key)  # NaN equals NaN here


def tables(markdown: str) -> dict[str, dict[tuple[str, ...], list[str]]]:
    """summary.md's tables by their first header cell's row shape: 'auc' -> {(dataset,): cells},
    'tasks' -> {(dataset, metric): cells}."""
    out: dict[str, dict] = {}
    for block in markdown.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("| ")]
        if not lines:
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        width = 2 if header[1] == "metric" else 1
        out["tasks" if width == 2 else "auc"] = {
            tuple(cells[:width]): cells[width:]
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    return out


def test_tasks_png_has_a_panel_per_dataset_and_family_with_the_files_numbers(tmp_path):
    rows = fx_rows()
    write_run(tmp_path / "run", rows)
    series = draw(read_metrics(str(tmp_path / "run")), tmp_path)

    task_keys = [f"{family}/{split}/{dataset}/{model}" for dataset, families in FAMILIES.items() for family in families
                 for split in ("val", "test") for model in ("teacher", "student")]
    assert len(task_keys) == 6 * 4  # six panels of val and test, teacher and student
    assert_drawn(series[TASKS], rows, task_keys, x="epochs_done")
    assert {tuple(k.split("/")[i] for i in (0, 2)) for k in series[TASKS]} == {
        (family, dataset) for dataset, families in FAMILIES.items() for family in families}
    assert math.isnan(series[TASKS]["map/test/node21/student"][1][0])
    assert series[TASKS]["dice/val/siim_acr/teacher"] == ([1.0, 2.0, 3.0], [0.5, 0.8, 0.7])
    with Image.open(tmp_path / TASKS) as image:  # a row per dataset, four panels wide at most, 100 dpi
        assert image.size == (4 * 450, 2 * 320)
    assert_real_image(tmp_path / TASKS)

    aucs = [f"auc/{split}/{dataset}/{model}" for dataset in ("chexpert", "node21", "siim_acr")
            for split in ("val", "test") for model in ("teacher", "student")]
    assert_drawn(series["auc.png"], rows, aucs, x="epochs_done")
    losses = [f"loss/{prefix}{step}/{kind}" for step, kind in PASSES for prefix in ("", "task/")]
    assert_drawn(series["losses.png"], rows, losses, x="step")
    with Image.open(tmp_path / "losses.png") as image:  # a panel per task: cls, loc, seg
        assert image.size == (800, 3 * 350)


def test_the_summary_holds_the_last_evaluations_map_and_dice(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    write_run(run, fx_rows())
    out.mkdir()
    (out / TASKS).write_text("stale")  # an earlier report's: replaced like the others
    assert main([str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, TASKS])
    assert_real_image(out / TASKS)
    printed = capsys.readouterr().out
    assert f"wrote {out}/: {' '.join(FILES)} {TASKS}" in printed

    text = (out / "summary.md").read_text()
    assert "No evaluation" not in text
    found = tables(text)
    last = evaluation(NUM_CYCLES - 1)
    # columns: teacher val, student val, teacher test, student test, best teacher val, at epoch (done)
    assert list(found["tasks"]) == [("node21", "mAP@0.5"), ("node21", "mAP@[.50:.95]"), ("siim_acr", "mAP@0.5"),
                                    ("siim_acr", "mAP@[.50:.95]"), ("siim_acr", "Dice (mean per image)"),
                                    ("siim_acr", "global Dice")]
    for (dataset, metric), cells in found["tasks"].items():
        family = {"mAP@0.5": "map50", "mAP@[.50:.95]": "map", "Dice (mean per image)": "dice",
                  "global Dice": "dice_global"}[metric]
        latest = [f"{last[f'{family}/{split}/{dataset}/{model}']:.4f}" for split in ("val", "test")
                  for model in ("teacher", "student")]
        assert cells[:4] == latest, (dataset, metric)
    assert found["tasks"][("siim_acr", "Dice (mean per image)")][4:] == ["0.8000", "2"]  # the best, not the last
    assert found["tasks"][("node21", "mAP@0.5")][4:] == [f"{last['map50/val/node21/teacher']:.4f}", "3"]
    assert list(found["auc"]) == [("chexpert",), ("node21",), ("siim_acr",)]
    assert found["auc"][("chexpert",)][0] == f"{last['auc/val/chexpert/teacher']:.4f}"
    # Each pass's round counted once for the dataset it trained, not the repeats in other rows.
    assert "- skipped samples (rank 0's loaders): 7 (chexpert 4, node21 2, siim_acr 1)" in text
    assert f"- run length: {NUM_CYCLES} epochs, {fx_rows()[-1]['step']} steps" in text


def test_a_run_without_map_or_dice_writes_no_tasks_png(tmp_path, capsys):
    ark, out = tmp_path / "ark", tmp_path / "out"
    write_ark_run(ark, ark_rows())
    assert main([str(ark), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert TASKS not in capsys.readouterr().out
    assert "Localization" not in (out / "summary.md").read_text()
    assert TASKS not in draw(read_metrics(str(ark)), tmp_path)

    before = tmp_path / "fx"  # a Foundation X run before its first evaluation
    write_run(before, fx_rows(1)[:-1])
    assert main([str(before), "--out", str(tmp_path / "before")]) == 0
    assert sorted(p.name for p in (tmp_path / "before").iterdir()) == sorted(FILES)
    assert "No evaluation in this run yet." in (tmp_path / "before" / "summary.md").read_text()


@pytest.mark.parametrize("family", ["map50", "map", "dice", "dice_global"])
def test_a_task_metric_that_is_not_a_number_is_one_error_line(tmp_path, capsys, family):
    run = tmp_path / "run"
    write_run(run, [{"step": 4, "epochs_done": 1.0, f"{family}/val/siim_acr/teacher": None}])
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: {run}/metrics.jsonl line 1: "
                                       f"'{family}/val/siim_acr/teacher' is None, not a number\n")
    assert not (tmp_path / "out").exists()
