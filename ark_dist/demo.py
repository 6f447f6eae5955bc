"""`python launch.py demo`: the whole path on one machine, from nothing.

Synthetic look-alikes of the six public datasets in their native layouts -> WebDataset shards in
a local store -> Ark on a local Ray cluster (2 CPU workers, DeepSpeed, tiny Swin) -> evaluation ->
the teacher exported for timm and released as a model folder -> plots and a table of per-dataset
AUCs -> one raw look-alike file scored by the released model. Every step says what it
does, training shows one progress line per round (Ray's own logs go to the run folder's
`ray_logs/`; `--verbose` prints them instead); re-running resumes (shards already built are kept,
the run resumes by name). The look-alikes show their labels (`shards.synth.FINDINGS`), so the
table shows what the run learned."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SOURCES = ["mimic_cxr", "chexpert", "chestxray14", "rsna_pneumonia", "vindr_cxr", "shenzhen"]
PER_SOURCE = 500  # enough that every test split holds a few dozen images, so its AUC means something


def step(text: str, started: float) -> None:
    print(f"[demo {time.perf_counter() - started:5.0f}s] {text}", flush=True)


def auc_table(row: dict, datasets: list[str]) -> str:
    """Per dataset: teacher and student AUC on val and test, from the last evaluation's metrics."""
    def cell(key: str) -> str:
        value = row.get(key)
        return "-" if value is None or value != value else f"{value:.3f}"

    lines = ["| dataset | teacher val | teacher test | student val | student test |", "|---|---|---|---|---|"]
    for name in [*datasets, "mean"]:
        lines.append(f"| {name} | " + " | ".join(cell(f"auc/{split}/{name}/{model}") for model in ("teacher", "student")
                                                for split in ("val", "test")) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo", help="where the raw data, store, run and weights go")
    p.add_argument("--per-source", type=int, default=PER_SOURCE, help="synthetic images per dataset")
    p.add_argument("--scale", type=float, default=0.08, help="synthetic image size, as a share of the real size")
    p.add_argument("--verbose", action="store_true", help="print Ray's and the workers' log lines, not a progress line")
    p.add_argument("overrides", nargs="*", help="dotted.key=value over configs/demo.yaml, e.g. train.epochs=2")
    args = p.parse_args(argv)
    from shards.cli import main as shards

    from ark_dist.config import load
    import ark_dist
    from ark_dist.export import export
    from ark_dist.predict import table as predict_table
    from ark_dist.release import release
    from ark_dist.report import main as report
    from ark_dist.train.console import fit_on_console

    out, started = Path(args.out), time.perf_counter()
    raw, store = out / "raw", out / "store"
    try:
        cfg = load(RECIPE, [f"data.store.url={store}", f"train.storage_path={out / 'runs'}", *args.overrides])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    step(f"1/5 synthetic raw datasets ({args.per_source} images each) -> {raw}", started)
    if shards(["synth", "--out", str(raw), "--per-source", str(args.per_source), "--scale", str(args.scale),
               "--sources", *SOURCES]):
        return 1
    for source in SOURCES:
        step(f"2/5 shards build {source} -> {store}", started)
        out_text, err_text = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out_text), contextlib.redirect_stderr(err_text):
            code = shards(["build", "--source", source, "--root", str(raw / source), "--out", str(store), "--quiet",
                           "--max-side", "96", "--samples-per-shard", "16"])
        for text, stream in ((out_text, sys.stdout), (err_text, sys.stderr)):  # all but a line per shard
            stream.write("".join(line for line in text.getvalue().splitlines(keepends=True)
                                 if not line.startswith("wrote ")))
            stream.flush()
        if code:
            return 1
    run = Path(cfg.train.storage_path) / cfg.train.name
    step(f"3/5 Ark on a local Ray cluster: {cfg.engine.num_workers} workers, {cfg.train.epochs} epochs, "
         f"{len(cfg.data.datasets)} datasets{'' if args.verbose else f' (Ray logs: {run}/ray_logs)'}", started)
    result = fit_on_console(cfg, verbose=args.verbose)
    if result.error:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    step(f"4/5 export and release the teacher from {run}", started)
    weights = export(str(run), str(out / "teacher"))
    release(str(run), str(out / "release"))
    step("5/5 plots and summary", started)
    if report([str(run), "--out", str(out / "report")]):
        return 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if "auc/val/mean/teacher" in r]
    print("\nper-dataset ROC-AUC at the last evaluation (synthetic look-alikes, each finding a texture: "
          "the numbers show that the run learned, not how Ark does on real X-rays)\n")
    print(auc_table(evaluated[-1] if evaluated else {}, cfg.data.datasets))
    sample = sorted((raw / "chestxray14").rglob("*.png"))[0]  # one raw look-alike file, as a user would have it
    print(f"\none raw file through the released model (python launch.py predict --model {out / 'release'} {sample}):\n")
    print(predict_table([str(sample)], ark_dist.load(str(out / "release")).predict([sample]), top=2), end="")
    print(f"\nraw data   {raw}\nshards     {store}/manifest.json\nrun        {run} (checkpoints, metrics.jsonl, "
          f"config.yaml, wandb/, ray_logs/)\nweights    {' '.join(weights)}\nrelease    {out / 'release'} "
          f"(timm.create_model('local-dir:{out / 'release'}', pretrained=True); ark_dist.load)\nreport     {out / 'report'}\n"
          f"took       {time.perf_counter() - started:.0f} s")
    return 0
