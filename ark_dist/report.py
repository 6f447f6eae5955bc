"""`python launch.py report RUN [--out DIR]`: plots and a summary of a run for people without W&B.

RUN is a run folder (local or s3://) holding `metrics.jsonl`, one JSON object per training round
(ark_dist/track/runfolder.py). Out come losses.png (loss/<dataset> solid, loss/task dashed, against
step), auc.png (a panel per dataset and the mean: teacher and student, val solid and test dashed,
against epochs done), schedule.png (lr, ema/momentum, consistency/coef against step), subgroups.png
(each dataset's headline AUC per sex, age band and view at the last evaluation that has them:
teacher, test split) and summary.md; with `--heatmaps N`, heatmaps.png (ark_dist/heatmaps.py).
All is drawn in a temporary folder and renamed into place, so every file is whole or absent; a user
mistake (no folder, no metrics, a bad line) is one `error:` line and exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import uuid
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ark_dist.fs import filesystem, is_local, join

# ark_dist.track.runfolder.METRICS, not imported: that module pulls in torch through the config tree.
METRICS = "metrics.jsonl"
FILES = ("losses.png", "auc.png", "schedule.png", "subgroups.png", "summary.md")
HEATMAPS = "heatmaps.png"  # with --heatmaps N
SCHEDULE = ("lr", "ema/momentum", "consistency/coef")
# The keys read here must hold numbers where present; any other key may hold anything.
NUMERIC_KEYS = ("step", "epochs_done", "throughput/img_per_s", "time/data_wait_pct", *SCHEDULE)
NUMERIC_PREFIXES = ("loss/", "auc/", "auc_all/", "auc_group/", "auc_gap/", "data/skipped/")
# AUC families: `auc` over a dataset's headline classes (data.metric_labels), `auc_all` over all
# of them where those differ.
AUC_FAMILIES = {"auc": "", "auc_all": " (all classes)"}
SPLITS = (("val", "-"), ("test", "--"))  # (split, line style)
MODELS = (("teacher", "C0"), ("student", "C1"))  # (model, colour)

Series = dict[str, dict[str, tuple[list[float], list[float]]]]  # file -> metric key -> (x, y)


class ReportError(ValueError):
    """A user-facing failure, one line naming the file (and the line in it)."""


def parse_metrics(data: bytes, *, name: str) -> list[dict]:
    """metrics.jsonl's rows, one per step in step order. A resumed run re-runs the rounds after its
    checkpoint and appends them again, so where a step repeats the later line wins."""
    rows: dict[int, dict] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():  # holds no round (a trailing newline left by an editor, say)
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ReportError(f"{name} line {number}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ReportError(f"{name} line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        problem = _problem(row)
        if problem:
            raise ReportError(f"{name} line {number}: {problem}")
        rows[row["step"]] = row
    if not rows:
        raise ReportError(f"{name} is empty")
    return [rows[step] for step in sorted(rows)]


def _problem(row) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        return "no integer 'step'"
    if "epochs_done" not in row:
        return "no 'epochs_done'"
    for key, value in row.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number and (key in NUMERIC_KEYS or key.startswith(NUMERIC_PREFIXES)):
            return f"{key!r} is {value!r}, not a number"
    return None


def read_metrics(run: str) -> list[dict]:
    """The rows of RUN's metrics.jsonl (RUN a local path or URL), checked and de-duplicated by step."""
    url = join(run, METRICS)
    fs, path = filesystem(url)
    try:
        data = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):
        run_fs, run_path = filesystem(run)
        if not run_fs.exists(run_path):
            raise ReportError(f"run folder not found: {run}") from None
        raise ReportError(f"{url} not found: is {run} a run folder?") from None
    except OSError as exc:  # permissions, an unreachable store: still the user's to fix
        raise ReportError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    return parse_metrics(data, name=url)


def _points(rows: list[dict], key: str, *, x: str) -> tuple[list, list]:
    """(row[x], row[key]) for the rows that hold `key`."""
    hits = [row for row in rows if key in row]
    return [row[x] for row in hits], [row[key] for row in hits]


def _subjects(rows: list[dict]) -> list[tuple[str, str]]:
    """(family, dataset) of each AUC panel (keys `<family>/<split>/<dataset>/<model>`, families in
    AUC_FAMILIES), first seen first and `mean` last."""
    seen = dict.fromkeys((parts[0], parts[2]) for row in rows for parts in map(lambda k: k.split("/"), row)
                         if parts[0] in AUC_FAMILIES and len(parts) == 4)
    return sorted(seen, key=lambda subject: subject[1] == "mean")  # stable: only moves the mean


def _title(family: str, dataset: str) -> str:
    return dataset + AUC_FAMILIES[family]


def _figure(**kwargs) -> Figure:
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)  # Agg, not pyplot: no display, no global figure registry
    return figure


def _losses(rows: list[dict]) -> Figure:
    figure = _figure(figsize=(8, 4.5))
    ax = figure.subplots()
    datasets = dict.fromkeys(k.removeprefix("loss/") for row in rows for k in row
                             if k.startswith("loss/") and "/" not in k.removeprefix("loss/"))
    for index, dataset in enumerate(datasets):
        for key, style, label in ((f"loss/{dataset}", "-", dataset), (f"loss/task/{dataset}", "--", "_nolegend_")):
            x, y = _points(rows, key, x="step")
            if x:
                ax.plot(x, y, style, color=f"C{index % 10}", marker=".", label=label, gid=key)
    ax.set(xlabel="step", ylabel="loss (mean over the round)", title="loss (solid) and task loss (dashed)")
    ax.grid(alpha=0.3)
    if datasets:
        ax.legend(fontsize="small")
    return figure


def _aucs(rows: list[dict]) -> Figure:
    subjects = _subjects(rows)
    num_cols = min(3, max(1, len(subjects)))
    num_rows = max(1, math.ceil(len(subjects) / num_cols))
    figure = _figure(figsize=(4.5 * num_cols, 3.2 * num_rows))
    axes = figure.subplots(num_rows, num_cols, squeeze=False).ravel()
    if not subjects:
        axes[0].text(0.5, 0.5, "no evaluation in this run yet", ha="center", va="center")
        axes[0].set_axis_off()
        return figure
    for ax, (family, dataset) in zip(axes, subjects):
        for split, style in SPLITS:
            for model, colour in MODELS:
                key = f"{family}/{split}/{dataset}/{model}"
                x, y = _points(rows, key, x="epochs_done")
                if x:  # a single point between NaNs still shows: markers
                    ax.plot(x, y, style, color=colour, marker="o", label=f"{model} {split}", gid=key)
        ax.set(title=_title(family, dataset), xlabel="epochs done", ylabel="ROC-AUC")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # evaluations follow whole epochs
        ax.grid(alpha=0.3)
    for ax in axes[len(subjects):]:
        figure.delaxes(ax)
    axes[0].legend(fontsize="small")
    return figure


def _schedule(rows: list[dict]) -> Figure:
    figure = _figure(figsize=(8, 6))
    for ax, key in zip(figure.subplots(len(SCHEDULE), 1, sharex=True), SCHEDULE):
        x, y = _points(rows, key, x="step")
        if x:
            ax.plot(x, y, marker=".", gid=key)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    ax.set_xlabel("step")
    return figure


def group_aucs(rows: list[dict]) -> tuple[dict, dict[str, dict[str, dict[str, float]]]]:
    """(row, {dataset: {attribute: {group: AUC}}}) of the last row with subgroup AUCs of the
    teacher on the test split (`auc_group/test/<dataset>/teacher/<attribute>=<group>`), gaps under
    the group "gap"; ({}, {}) when no row has them."""
    prefix = "auc_group/test/"
    row = next((r for r in reversed(rows) if any(k.startswith(prefix) and k.split("/")[3] == "teacher" for k in r)), {})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in row.items():
        parts = key.split("/")
        if key.startswith(prefix) and len(parts) == 5 and parts[3] == "teacher":
            attribute, group = parts[4].split("=", 1)
            out.setdefault(parts[2], {}).setdefault(attribute, {})[group] = value
    for key, value in row.items():
        parts = key.split("/")
        if key.startswith("auc_gap/test/") and len(parts) == 5 and parts[3] == "teacher" and parts[2] in out:
            out[parts[2]].setdefault(parts[4], {})["gap"] = value
    return row, out


def _subgroups(rows: list[dict]) -> Figure:
    _, groups = group_aucs(rows)
    figure = _figure(figsize=(4.5 * max(1, min(3, len(groups))), 3.2 * max(1, math.ceil(len(groups) / 3))))
    axes = figure.subplots(max(1, math.ceil(len(groups) / 3)), max(1, min(3, len(groups))), squeeze=False).ravel()
    if not groups:
        axes[0].text(0.5, 0.5, "no subgroup facts (sex, age, view) evaluated", ha="center", va="center")
        axes[0].set_axis_off()
        return figure
    for ax, (dataset, attributes) in zip(axes, groups.items()):
        names, x = [], 0
        for index, (attribute, values) in enumerate(attributes.items()):
            shown = [(g, v) for g, v in values.items() if g != "gap"]
            xs = list(range(x, x + len(shown)))
            ax.plot(xs, [v for _, v in shown], "o", color=f"C{index % 10}", label=attribute,
                    gid=f"auc_group/test/{dataset}/teacher/{attribute}")
            names += [g for g, _ in shown]
            x += len(shown) + 1
            names.append("")
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize="small")
        ax.set(title=f"{dataset} (teacher, test)", ylabel="ROC-AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(groups):]:
        figure.delaxes(ax)
    return figure


def draw(rows: list[dict], out_dir: Path) -> Series:
    """losses.png, auc.png, schedule.png and subgroups.png into `out_dir`. Returns, per file, the
    series drawn as read back from its lines: metric key (e.g. `auc/val/chexpert/teacher`) -> (x, y)."""
    series: Series = {}
    for name, figure in (("losses.png", _losses(rows)), ("auc.png", _aucs(rows)), ("schedule.png", _schedule(rows)),
                         ("subgroups.png", _subgroups(rows))):
        figure.savefig(out_dir / name, dpi=100)
        series[name] = {line.get_gid(): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
                        for ax in figure.axes for line in ax.get_lines()}
    return series


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4f}"


def _auc_cells(rows: list[dict], family: str, dataset: str) -> list[str]:
    """The latest teacher/student val/test AUCs, then the best teacher val (NaNs left out) and the
    epochs done when it was reached."""
    cells = []
    for split, _ in SPLITS:
        for model, _ in MODELS:
            values = _points(rows, f"{family}/{split}/{dataset}/{model}", x="step")[1]
            cells.append(_fmt(values[-1]) if values else "–")
    epochs, values = _points(rows, f"{family}/val/{dataset}/teacher", x="epochs_done")
    scored = [(value, epoch) for epoch, value in zip(epochs, values) if not math.isnan(value)]
    best = max(scored, key=lambda pair: pair[0], default=None)  # the earliest of equals
    return cells + ([_fmt(best[0]), f"{best[1]:g}"] if best else ["–", "–"])


def _median(rows: list[dict], key: str, unit: str) -> str:
    values = [v for v in _points(rows, key, x="step")[1] if not math.isnan(v)]
    return f"{statistics.median(values):.1f} {unit}" if values else "–"


def skipped(rows: list[dict]) -> dict[str, int]:
    """Samples skipped as undecodable, per dataset. The loaders' counters restart every round, but a
    row repeats each dataset's last count (ark_dist/data/meter.py), so a row counts only for the
    datasets it trained: `loss/<dataset>`, or all of them under the mixed schedule (`loss/interleaved`)."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            dataset = key.removeprefix("data/skipped/")
            if dataset != key and (f"loss/{dataset}" in row or "loss/interleaved" in row):
                out[dataset] = out.get(dataset, 0) + value
    return {dataset: round(count) for dataset, count in out.items()}


def summary(rows: list[dict], *, run: str) -> str:
    """summary.md: per dataset the latest AUCs and the best teacher val AUC, then the run's totals."""
    lines = [f"# Run {_run_name(run)}", "", f"From `{join(run, METRICS)}`: {len(rows)} rounds.", ""]
    subjects = _subjects(rows)
    if subjects:
        lines += ["| dataset | teacher val | student val | teacher test | student test | best teacher val | at epoch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for family, dataset in subjects:
            lines.append("| " + " | ".join([_title(family, dataset), *_auc_cells(rows, family, dataset)]) + " |")
        lines += ["", "ROC-AUC at the last evaluation; epochs count epochs done (2 = after the second epoch).", ""]
    else:
        lines += ["No evaluation in this run yet.", ""]
    row, groups = group_aucs(rows)
    if groups:
        lines += [f"Subgroups at epoch {row['epochs_done']:g} (teacher, test split; the headline AUC of each group's "
                  "samples; gap = best - worst group, unknown left out; per class with 95 % intervals: the run "
                  "folder's subgroups.md):", "", "| dataset | attribute | group | AUC |", "|---|---|---|---:|"]
        lines += [f"| {dataset} | {attribute} | {group} | {_fmt(value)} |" for dataset, attributes in groups.items()
                  for attribute, values in attributes.items() for group, value in values.items()]
        lines.append("")
    last = rows[-1]
    counts = skipped(rows)
    lines += [f"- run length: {last['epochs_done']:g} epochs, {last['step']} steps",
              f"- median throughput (rank 0): {_median(rows, 'throughput/img_per_s', 'img/s')}",
              f"- median data wait (rank 0): {_median(rows, 'time/data_wait_pct', '%')}",
              f"- skipped samples (rank 0's loaders): {sum(counts.values())}"
              + (" (" + ", ".join(f"{d} {n}" for d, n in counts.items()) + ")" if counts else "")]
    return "\n".join(lines) + "\n"


def _run_name(run: str) -> str:
    return run.rstrip("/").rsplit("/", 1)[-1]


def write_report(rows: list[dict], out: Path, *, run: str, heatmaps: int = 0) -> tuple[Series, str]:
    """Draw and summarise into a temporary folder beside `out`, then move it into place: a new `out`
    appears whole, an existing one has each report file replaced atomically. With `heatmaps`, also
    heatmaps.png: that many validation images per dataset explained by the run's latest teacher.
    Returns (series, summary)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        series = draw(rows, tmp)
        text = summary(rows, run=run)
        (tmp / "summary.md").write_text(text)
        if heatmaps:
            from ark_dist.heatmaps import run_heatmaps  # torch and the model: only when asked

            (tmp / HEATMAPS).write_bytes(run_heatmaps(run, per_dataset=heatmaps))
        if out.is_dir():
            for name in FILES + ((HEATMAPS,) if heatmaps else ()):
                os.replace(tmp / name, out / name)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return series, text


def _out_dir(run: str, out: str | None) -> Path:
    if out is None:
        return Path(run.removeprefix("file://")) / "report" if is_local(run) else Path(f"report-{_run_name(run)}")
    if not is_local(out):
        raise ReportError(f"--out must be a local folder, not {out}")
    path = Path(out.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py report", description="Plots and a summary of a run's metrics.")
    parser.add_argument("run", help="run folder: a local path or an s3:// URL (AWS_ENDPOINT_URL for other stores)")
    parser.add_argument("--out", help="local output folder (default: RUN/report, or ./report-<name> for a URL)")
    parser.add_argument("--heatmaps", type=int, default=0, metavar="N",
                        help="also heatmaps.png: Grad-CAM of the latest teacher's top class on N validation images "
                             "per dataset (reads the run's checkpoint and store)")
    args = parser.parse_args(argv)
    try:
        if args.heatmaps < 0:
            raise ReportError(f"--heatmaps {args.heatmaps}: a number of images, 0 or more")
        rows = read_metrics(args.run)
        out = _out_dir(args.run, args.out)
        _, text = write_report(rows, out, run=args.run, heatmaps=args.heatmaps)
    except (ReportError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {out}/: {' '.join(FILES + ((HEATMAPS,) if args.heatmaps else ()))}")
    return 0
