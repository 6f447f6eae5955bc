"""`bench step`: what its figures claim, checked where the test can see it (no timing is asserted:
the figures are for the notes, measured with the commands themselves).

- the FLOPs per step equal a count by hand of the tiny Swin's matrix products;
- the plain path times exactly `--steps` steps of `--batch` images per window, trains, and reports
  images over the time it measured;
- both paths run end to end (the ark-dist path in Ray workers, whose steps this process cannot
  see: it is checked to run and report one rate per window), for the Ark step and for Foundation X's
  box and mask steps (`--task`)."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from ark_dist.train import bench

BATCH, STEPS, WARMUP, REPEATS = 2, 2, 1, 2


def _args(*extra: str):
    return bench._args(["--tiny", "--batch", str(BATCH), "--steps", str(STEPS), "--warmup", str(WARMUP),
                        "--repeats", str(REPEATS), "--device", "cpu", "--precision", "fp32", *extra])


def swin_step_flops(cfg, batch: int) -> int:
    """FLOPs (2 per multiply-add) of one Ark step on the bench model, counted by hand from its
    config: the student's forward (all heads) and backward, and the teacher's forward (no heads).
    Only matrix products count (as torch's FlopCounterMode counts them)."""
    kw = cfg.model.backbone_kwargs
    patch, mlp, channels = 4, 4, 3
    side, width = kw["img_size"] // patch, kw["embed_dim"]
    stem = side * side * width * channels * patch * patch  # the patch embedding convolution
    backbone = stem
    for stage, depth in enumerate(kw["depths"]):
        if stage:  # patch merging: 2x2 neighbours (4C) -> 2C
            side //= 2
            backbone += side * side * 4 * width * 2 * width
            width *= 2
        tokens, window = side * side, min(kw["window_size"], side) ** 2
        # qkv, output projection, MLP, and per token q.k over its window and attention x v
        backbone += depth * (tokens * width * 3 * width + tokens * width * width + 2 * tokens * width * mlp * width
                             + 2 * tokens * window * width)
    projector = width * cfg.model.projector_dim
    heads = cfg.model.projector_dim * sum(bench.HEADS.values())
    student = backbone + projector + heads
    teacher = backbone + projector
    # Backward: a product's gradient to each of its two inputs costs one forward each, except the
    # stem's gradient to the image, which nothing needs.
    backward = 2 * student - stem
    return 2 * batch * (student + backward + teacher)


def test_the_step_flops_are_the_students_forward_and_backward_and_the_teachers_forward():
    cfg = bench.bench_config(_args())
    counted = bench.step_flops(cfg, bench.synthetic_batch(BATCH, cfg.data.views), torch.device("cpu"))
    assert counted == swin_step_flops(cfg, BATCH)


def test_the_plain_path_times_the_requested_steps_of_the_requested_batch_and_trains(monkeypatch):
    """Every ark_loss call and clock reading of the plain loop, in order: the windows hold exactly
    `steps` steps of `batch` images after `warmup` untimed ones, the losses are numbers, the student
    and its EMA teacher move, and each window's img/s is its images over its measured time."""
    events, models = [], {}
    real_loss = bench.ark_loss

    def ark_loss(student, teacher, batch, **kw):
        if not models:
            models.update(student=student, teacher=teacher,
                          before=[p.detach().clone() for p in (*student.parameters(), *teacher.parameters())])
        loss, task = real_loss(student, teacher, batch, **kw)
        events.append(("step", batch["image"].shape[0], loss.item()))
        return loss, task

    def perf_counter():
        events.append(("clock", real_clock()))
        return events[-1][1]

    real_clock = bench.time.perf_counter
    monkeypatch.setattr(bench, "ark_loss", ark_loss)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=perf_counter))
    args = _args()
    rates = bench.plain_loop(bench.bench_config(args), args)

    window = ["clock"] + ["step"] * STEPS + ["clock"]
    assert [e[0] for e in events] == ["step"] * WARMUP + window * REPEATS
    steps = [e for e in events if e[0] == "step"]
    assert all(size == BATCH for _, size, _ in steps) and all(math.isfinite(loss) for _, _, loss in steps)
    clocks = [e[1] for e in events if e[0] == "clock"]
    assert rates == pytest.approx([BATCH * STEPS / (end - start) for start, end in zip(clocks[::2], clocks[1::2])],
                                  rel=1e-12)
    student, teacher = list(models["student"].parameters()), list(models["teacher"].parameters())
    before_student, before_teacher = models["before"][:len(student)], models["before"][len(student):]
    assert any(not torch.equal(p, q) for p, q in zip(student, before_student)), "the student never moved"
    assert any(not torch.equal(p, q) for p, q in zip(teacher, before_teacher)), "the teacher never moved"


@pytest.mark.slow
def test_bench_step_runs_both_paths_end_to_end(tmp_path, capsys):
    out = tmp_path / "step.json"
    threads = torch.get_num_threads()
    try:
        code = bench.main(["--tiny", "--batch", str(BATCH), "--steps", str(STEPS), "--warmup", str(WARMUP),
                           "--repeats", str(REPEATS), "--threads", "1", "--json", str(out),
                           "--storage", str(tmp_path / "runs")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    figures = json.loads(out.read_text())
    for path in ("plain_img_per_s", "ark_dist_img_per_s"):  # one rate per timed window
        assert len(figures[path]) == REPEATS and all(math.isfinite(r) and r > 0 for r in figures[path]), figures
    cfg = bench.bench_config(bench._args(["--tiny", "--batch", str(BATCH)]))
    assert figures["step_gflops_per_image"] * 1e9 * BATCH == pytest.approx(swin_step_flops(cfg, BATCH), rel=1e-12)
    printed = capsys.readouterr().out
    assert "plain PyTorch loop" in printed and "ark-dist (Ray + DeepSpeed)" in printed


@pytest.mark.slow
def test_bench_step_task_runs_foundation_x_box_and_mask_steps_on_both_paths(tmp_path, capsys):
    """`--task loc` and `--task seg` on the test-sized four-stage Swin: both paths run the task's
    step and the table names it, with a finite img/s per path."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one cluster for both runs
    threads = torch.get_num_threads()
    try:
        for task in ("loc", "seg"):
            out = tmp_path / f"{task}.json"
            code = bench.main(["--tiny", "--task", task, "--batch", str(BATCH), "--steps", str(STEPS),
                               "--warmup", str(WARMUP), "--repeats", str(REPEATS), "--threads", "1",
                               "--json", str(out), "--storage", str(tmp_path / "runs")])
            assert code == 0
            printed = capsys.readouterr().out
            assert f"bench step --task {task}: Foundation X chestx_det:{task}" in printed, printed
            for path in ("plain PyTorch loop", "ark-dist (Ray + DeepSpeed)"):
                row, = [line for line in printed.splitlines() if line.startswith(path)]
                fx, step, median = row[len(path):].split()[:3]  # then TFLOP/s and the windows
                assert fx == "FX", row
                assert step == f"chestx_det:{task}" and math.isfinite(float(median)) and float(median) > 0, row
            figures = json.loads(out.read_text())
            assert figures["step"] == f"FX chestx_det:{task}"
            for path in ("plain_img_per_s", "ark_dist_img_per_s"):
                assert len(figures[path]) == REPEATS and all(math.isfinite(r) and r > 0 for r in figures[path])
    finally:
        torch.set_num_threads(threads)
        ray.shutdown()


def test_bench_memory_fits_a_line_through_the_peaks_and_predicts_the_batch_within_capacity():
    """A hand-built case: 1 GiB fixed and 30 MiB per image, read at three batches with a little
    noise; the line is found back and the prediction is the largest batch under capacity."""
    from ark_dist.train.bench_memory import MIB, fit_line, predicted_batch

    points = {8: 1024 * MIB + 8 * 30 * MIB + MIB, 16: 1024 * MIB + 16 * 30 * MIB - MIB, 32: 1024 * MIB + 32 * 30 * MIB}
    fixed, per_image = fit_line(points)
    assert fixed / MIB == pytest.approx(1024, abs=2) and per_image / MIB == pytest.approx(30, abs=0.1)
    assert predicted_batch(points, capacity=(1024 + 30 * 100 + 15) * MIB) == 100
    assert predicted_batch(points, capacity=512 * MIB) == 0
    with pytest.raises(ValueError, match="does not grow"):
        predicted_batch({8: 2 * MIB, 16: 2 * MIB}, capacity=4 * MIB)


def test_bench_memory_without_a_gpu_is_one_line(capsys):
    from ark_dist.train.bench_memory import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tests/test_gpu.py runs bench memory")
    assert main(["--tiny"]) == 2
    assert capsys.readouterr().out.strip() == "error: bench memory measures GPU memory, and no CUDA device is visible"


def test_every_bench_command_of_the_gpu_check_script_parses(tmp_path):
    """cluster/gpu-check.sh runs on a GPU lease of minutes: a flag it passes that a bench no longer
    takes would waste it. Each `launch.py bench ...` line goes through that bench's own parser."""
    import re
    import shlex
    from pathlib import Path

    from ark_dist.data.bench import _args as data_args
    from ark_dist.train.bench import _args as step_args
    from ark_dist.train.bench_memory import _args as memory_args

    parsers = {"step": step_args, "data": data_args, "memory": memory_args}
    script = Path("cluster/gpu-check.sh").read_text().replace("\\\n", " ")
    commands = [shlex.split(line.split("launch.py bench", 1)[1].replace('"$out"', str(tmp_path)).rstrip("; "))
                for line in script.splitlines() if "launch.py bench" in line and not line.lstrip().startswith("#")]
    assert sorted({c[0] for c in commands}) == sorted(parsers), commands
    for name, *argv in commands:
        parsers[name](argv)  # argparse exits (SystemExit) on a flag it does not know
    # It runs tests/test_gpu.py alone (other modules import moto and wandb at the top).
    assert "pytest -m gpu tests/test_gpu.py" in script
    gpu = re.compile(r"^\s*(@pytest\.mark\.gpu|pytestmark\s*=.*pytest\.mark\.gpu)", re.MULTILINE)
    marked = sorted(p.name for p in Path("tests").rglob("test_*.py") if gpu.search(p.read_text()))
    assert marked == ["test_gpu.py"], marked


def test_the_offline_bundle_names_only_pinned_packages():
    """cluster/offline-bundle.sh takes each package's version from constraints.txt (it needs PyPI,
    so it does not run here): every package it names must be pinned there."""
    import re
    from pathlib import Path

    script = Path("cluster/offline-bundle.sh").read_text()
    names = re.search(r'PACKAGES="([^"]+)"', script).group(1).split()
    pinned = {line.split("==")[0].lower() for line in Path("constraints.txt").read_text().splitlines() if "==" in line}
    assert len(names) > 10 and "ray" in names and "deepspeed" in names
    assert [n for n in names if n.lower() not in pinned] == []
