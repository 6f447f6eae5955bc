"""The benchmark commands run end to end at a tiny size and report consistent figures (no timing
is asserted: the figures are for the notes, measured with the commands themselves)."""

from __future__ import annotations

import json
import statistics

import pytest


@pytest.mark.slow
def test_bench_step_runs_both_paths_and_reports_their_ratio(tmp_path, capsys):
    import torch

    from ark_dist.train.bench import main

    out = tmp_path / "step.json"
    threads = torch.get_num_threads()
    try:
        code = main(["--tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--repeats", "2", "--threads", "1",
                     "--json", str(out), "--storage", str(tmp_path / "runs")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    figures = json.loads(out.read_text())
    assert len(figures["plain_img_per_s"]) == len(figures["ark_dist_img_per_s"]) == 2
    assert all(r > 0 for r in figures["plain_img_per_s"] + figures["ark_dist_img_per_s"])
    assert figures["ratio"] == pytest.approx(statistics.median(figures["ark_dist_img_per_s"])
                                             / statistics.median(figures["plain_img_per_s"]))
    assert figures["step_gflops_per_image"] > 0
    printed = capsys.readouterr().out
    assert "plain PyTorch loop" in printed and "ark-dist (Ray + DeepSpeed)" in printed and "ratio" in printed
