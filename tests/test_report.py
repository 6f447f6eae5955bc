"""`launch.py report`: plots and summary from a run folder's metrics.jsonl, local and on S3.

The fixture run: three datasets trained round robin (one round each per epoch, 5 steps a round) for
4 epochs, evaluated every 2 epochs, with NaN AUCs, loader skip counters that (as the trainer's do)
repeat each dataset's last count in every row, and a resume that re-ran steps 30-45 with new values.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ark_dist.report import FILES, draw, main, read_metrics

DATASETS = ["chexpert", "vindr_cxr", "rsna_pneumonia"]
NUM_EPOCHS, STEPS_PER_ROUND = 4, 5
SKIPS = {(0, "chexpert"): 1, (1, "vindr_cxr"): 3, (2, "chexpert"): 2}  # (epoch, dataset) -> skipped in its round
NAN = float("nan")


def auc_metrics(epoch: int) -> dict[str, float]:
    """The evaluation of epoch `epoch` (0-based): chexpert's teacher peaks at epoch 1; three NaNs."""
    out = {}
    for d, dataset in enumerate(DATASETS + ["mean"]):
        for s, split in enumerate(("val", "test")):
            for m, model in enumerate(("teacher", "student")):
                out[f"auc/{split}/{dataset}/{model}"] = 0.6 + 0.05 * epoch + 0.01 * d - 0.02 * s - 0.03 * m
                if dataset == "chexpert":
                    out[f"auc_all/{split}/chexpert/{model}"] = 0.7 + 0.04 * epoch - 0.01 * s - 0.02 * m
    out["auc/val/chexpert/teacher"] = {1: 0.9, 3: 0.85}[epoch]
    if epoch == 1:
        out["auc/test/vindr_cxr/student"] = out["auc_all/val/chexpert/teacher"] = NAN
    if epoch == 3:
        out["auc/val/rsna_pneumonia/teacher"] = NAN
    return out


def true_rows() -> list[dict]:
    """The run as it stands after the resume: one row per round, in step order."""
    rows, last_skips = [], {}
    for epoch in range(NUM_EPOCHS):
        for index, dataset in enumerate(DATASETS):
            step = STEPS_PER_ROUND * (len(DATASETS) * epoch + index + 1)
            last_skips[dataset] = float(SKIPS.get((epoch, dataset), 0))
            row = {"step": step, "time": 1.7e9 + step, "loss/" + dataset: 3.0 - step / 40,
                   "loss/task/" + dataset: 2.0 - step / 50, "consistency/coef": min(1.0, step / 30),
                   "ema/momentum": 0.9 + step / 1000, "lr": 1e-3 * (1 - step / 100), "epoch": epoch, "round": index,
                   "throughput/img_per_s": 100.0 + step, "time/data_wait_pct": step / 5, "data/bytes_read": 1e6,
                   **{f"data/skipped/{d}": n for d, n in last_skips.items()}, "memory/rss_gb": 1.5,
                   "teacher/ranks_identical": 1.0, "epochs_done": epoch + (index + 1) / len(DATASETS),
                   "extra/note": "unknown keys of any type are fine", "extra/nested": {"a": [1, 2]}}
            if index == len(DATASETS) - 1 and epoch % 2 == 1:
                row.update(auc_metrics(epoch))
            rows.append(row)
    return rows


def first_attempt(row: dict) -> dict:
    """What the run wrote for a step before it crashed and re-ran it: every number off."""
    off = {k: v + 100 if isinstance(v, float) and k.startswith(("loss/", "auc", "data/skipped/")) else v
           for k, v in row.items()}
    return {**off, "lr": 7.0}


def write_run(folder, rows: list[dict]) -> None:
    """metrics.jsonl as the trainer writes it, but with the crashed attempt's steps 30-45 first."""
    crashed = [first_attempt(r) for r in rows if 30 <= r["step"] <= 45]
    lines = [r for r in rows if r["step"] < 30] + crashed + [r for r in rows if r["step"] >= 30]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def assert_real_image(path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels != pixels[0, 0]).any()  # more than one colour: something was drawn


def table(markdown: str) -> dict[str, list[str]]:
    """summary.md's table: dataset -> its other cells."""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]
    return {row[0]: row[1:] for row in cells[1:]}


def expected_series(rows: list[dict], key: str, x: str) -> tuple[list, list]:
    hits = [r for r in rows if key in r]
    return [r[x] for r in hits], [r[key] for r in hits]


def test_report_writes_real_plots_and_a_summary_of_the_resumed_run(tmp_path, capsys):
    run = tmp_path / "runs" / "ark6"
    write_run(run, true_rows())
    assert main([str(run)]) == 0
    out = run / "report"  # the default for a local run
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name in FILES[:3]:
        assert_real_image(out / name)
    text = (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert text in printed and str(out) in printed

    rows = table(text)
    assert list(rows) == ["chexpert", "chexpert (all classes)", "vindr_cxr", "rsna_pneumonia", "mean"]
    last = auc_metrics(3)
    # columns: teacher val, student val, teacher test, student test, best teacher val, at epoch (done)
    assert rows["chexpert"] == ["0.8500", f"{last['auc/val/chexpert/student']:.4f}",
                                f"{last['auc/test/chexpert/teacher']:.4f}", f"{last['auc/test/chexpert/student']:.4f}",
                                "0.9000", "2"]
    assert rows["rsna_pneumonia"][0] == "NaN"  # the latest is NaN; the best skips it
    assert rows["rsna_pneumonia"][4:] == [f"{auc_metrics(1)['auc/val/rsna_pneumonia/teacher']:.4f}", "2"]
    assert rows["vindr_cxr"][3] == f"{last['auc/test/vindr_cxr/student']:.4f}"  # epoch 1's NaN is not the latest
    assert rows["mean"][4:] == [f"{last['auc/val/mean/teacher']:.4f}", "4"]
    assert rows["chexpert (all classes)"][4:] == [f"{last['auc_all/val/chexpert/teacher']:.4f}", "4"]  # the NaN skipped
    assert "- run length: 4 epochs, 60 steps" in text
    assert "- median throughput (rank 0): 132.5 img/s" in text  # 100 + steps 5..60
    assert "- median data wait (rank 0): 6.5 %" in text  # steps / 5 = 1..12
    # Each round's count once (not the stale repeats, not the crashed attempt's): 1 + 2 and 3.
    assert "- skipped samples (rank 0's loaders): 6 (chexpert 3, vindr_cxr 3, rsna_pneumonia 0)" in text


def test_the_lines_drawn_are_the_files_numbers_after_the_resume(tmp_path):
    run, rows = tmp_path / "run", true_rows()
    write_run(run, rows)
    read = read_metrics(str(run))
    assert [r["step"] for r in read] == [r["step"] for r in rows]
    series = draw(read, tmp_path)

    losses = [f"loss/{d}" for d in DATASETS] + [f"loss/task/{d}" for d in DATASETS]
    aucs = sorted({k for r in rows for k in r if k.startswith(("auc/", "auc_all/"))})
    assert sorted(series["losses.png"]) == sorted(losses)
    assert sorted(series["auc.png"]) == aucs
    assert sorted(series["schedule.png"]) == ["consistency/coef", "ema/momentum", "lr"]
    for name, keys, x in (("losses.png", losses, "step"), ("auc.png", aucs, "epochs_done"),
                          ("schedule.png", ["lr", "ema/momentum", "consistency/coef"], "step")):
        for key in keys:
            want_x, want_y = expected_series(rows, key, x)
            got_x, got_y = series[name][key]
            np.testing.assert_array_equal(got_x, want_x, err_msg=key)
            np.testing.assert_array_equal(got_y, want_y, err_msg=key)  # NaN equals NaN here
    assert math.isnan(series["auc.png"]["auc/test/vindr_cxr/student"][1][0])
    assert series["auc.png"]["auc/val/chexpert/teacher"] == ([2.0, 4.0], [0.9, 0.85])


def test_a_second_report_replaces_its_files_and_keeps_others(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    write_run(run, true_rows()[:4])
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "summary.md").write_text("stale")
    assert main([str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "notes.txt"])
    assert (out / "summary.md").read_text().startswith("# Run run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no temporary folder left


def test_a_run_without_evaluation_still_reports(tmp_path, capsys):
    run = tmp_path / "run"
    write_run(run, [r for r in true_rows() if r["step"] <= 10])
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert_real_image(tmp_path / "out" / "auc.png")
    assert "No evaluation in this run yet." in (tmp_path / "out" / "summary.md").read_text()


BAD = {
    "empty": ("", "metrics.jsonl is empty"),
    "truncated": ('{"step": 5, "epochs_done": 0.3}\n{"step": 10, "epochs_done": 0.6}\n{"step": 15, "epo\n',
                  "metrics.jsonl line 3: invalid JSON"),
    "not an object": ('{"step": 5, "epochs_done": 0.3}\n[1, 2]\n', "metrics.jsonl line 2: not a JSON object"),
    "no step": ('{"epochs_done": 0.3}\n', "metrics.jsonl line 1: no integer 'step'"),
    "a string loss": ('{"step": 5, "epochs_done": 0.3}\n{"step": 10, "epochs_done": 0.6, "loss/chexpert": "low"}\n',
                      "metrics.jsonl line 2: 'loss/chexpert' is 'low', not a number"),
}


@pytest.mark.parametrize("case", [*BAD, "no metrics", "no folder"])
def test_a_bad_run_is_one_error_line_and_writes_nothing(tmp_path, capsys, case):
    run, out = tmp_path / "run", tmp_path / "out"
    if case in BAD:
        run.mkdir()
        (run / "metrics.jsonl").write_text(BAD[case][0])
        expected = f"{run}/{BAD[case][1]}"
    elif case == "no metrics":
        run.mkdir()
        expected = f"{run}/metrics.jsonl not found"
    else:
        expected = f"run folder not found: {run}"
    assert main([str(run), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert expected in captured.err
    assert not out.exists() and not (run / "report").exists()
    assert [p.name for p in tmp_path.iterdir()] == (["run"] if run.exists() else [])


def test_report_reads_a_run_folder_on_s3(tmp_path, capsys, monkeypatch, s3_endpoint, s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for name, rows in (("x", true_rows()), ("y", true_rows()[:2])):
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        s3.put_object(Bucket=s3_bucket, Key=f"runs/{name}/metrics.jsonl", Body=body)
    url = f"s3://{s3_bucket}/runs/x"
    assert main([url, "--out", str(tmp_path / "r")]) == 0
    for name in FILES[:3]:
        assert_real_image(tmp_path / "r" / name)
    text = (tmp_path / "r" / "summary.md").read_text()
    assert f"From `{url}/metrics.jsonl`: 12 rounds." in text
    assert table(text)["chexpert"][4:] == ["0.9000", "2"]

    monkeypatch.chdir(tmp_path)  # a URL's report defaults to ./report-<run name>
    assert main([f"s3://{s3_bucket}/runs/y/"]) == 0
    assert sorted(p.name for p in (tmp_path / "report-y").iterdir()) == sorted(FILES)

    capsys.readouterr()
    assert main([f"s3://{s3_bucket}/runs/missing", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"error: run folder not found: s3://{s3_bucket}/runs/missing\n"
    assert not (tmp_path / "none").exists()
