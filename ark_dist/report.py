"""`python launch.py report RUN [--out DIR]`: plots and a summary of a run for people without W&B.

RUN is a run folder (local or s3://) holding `metrics.jsonl`, one JSON object per training round
(ark_dist/track/runfolder.py). Out come losses.png (loss/<dataset> solid, loss/task dashed, against
step; a Foundation X run's `loss/<dataset>:<task>/<kind>` in a panel per task), auc.png (a panel per
dataset and the mean: teacher and student, val solid and test dashed, against epochs done), for a
Foundation X run with localization or segmentation steps tasks.png (the same, a panel per dataset
and mAP or Dice family), schedule.png (lr, ema/momentum, consistency/coef against step), subgroups.png
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

from matplotlib import colormaps
from matplotlib.figure import Figure

from ark_dist.fs import filesystem, is_local, join
from ark_dist.report_tasks import AUC_FAMILIES, COLUMNS, cells, fmt, new_figure, panels, points, subjects, task_table
from ark_dist.report_tasks import tasks_figure, title

# ark_dist.track.runfolder.METRICS, not imported: that module pulls in torch through the config tree.
METRICS = "metrics.jsonl"
FILES = ("losses.png", "auc.png", "schedule.png", "subgroups.png", "summary.md")
TASKS = "tasks.png"  # when the run has localization or segmentation metrics
HEATMAPS = "heatmaps.png"  # with --heatmaps N
SCHEDULE = ("lr", "ema/momentum", "consistency/coef")
# The keys read here must hold numbers where present; any other key may hold anything.
NUMERIC_KEYS = ("step", "epochs_done", "throughput/img_per_s", "time/data_wait_pct", *SCHEDULE)
NUMERIC_PREFIXES = ("loss/", "auc/", "auc_all/", "auc_group/", "auc_gap/", "map50/", "map/", "dice/", "dice_global/",
                    "data/skipped/")
KIND_MARKERS = {"lock": "v", "release": "^"}  # a Foundation X pass's kind; `train` (and Ark) "."

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


def _loss_panels(rows: list[dict]) -> dict[str, list[str]]:
    """Loss subjects (a loss key less `loss/`: `<dataset>`, `interleaved`, or a Foundation X pass's
    `<dataset>:<task>/<kind>`) per panel: all of Ark's in one (""), Foundation X's one per task, as
    classification, box and mask losses differ in scale."""
    by_task: dict[str, list[str]] = {}
    for subject in dict.fromkeys(k.removeprefix("loss/") for row in rows for k in row if _is_loss(k)):
        by_task.setdefault(subject.partition("/")[0].partition(":")[2], []).append(subject)
    return by_task


def _is_loss(key: str) -> bool:
    return key.startswith("loss/") and not key.startswith("loss/task/")


def _losses(rows: list[dict]) -> Figure:
    by_task = _loss_panels(rows) or {"": []}
    wide = any(len(names) > 8 for names in by_task.values())  # a legend beside its panel
    figure = new_figure(figsize=(11 if wide else 8, max(4.5, 3.5 * len(by_task))))
    for ax, (task, names) in zip(figure.subplots(len(by_task), 1, sharex=True, squeeze=False)[:, 0], by_task.items()):
        steps = list(dict.fromkeys(name.partition("/")[0] for name in names))  # a colour each
        for subject in names:
            step, _, kind = subject.partition("/")
            index = steps.index(step)
            colour = f"C{index}" if len(steps) <= 10 else colormaps["tab20"](index % 20)
            for key, style, label in ((f"loss/{subject}", "-", subject), (f"loss/task/{subject}", "--", "_nolegend_")):
                x, y = points(rows, key, x="step")
                if x:
                    ax.plot(x, y, style, color=colour, marker=KIND_MARKERS.get(kind, "."), label=label, gid=key)
        ax.set(ylabel="loss (mean over the round)",
               title=f"{task + ' passes: ' if task else ''}loss (solid) and task loss (dashed)")
        ax.grid(alpha=0.3)
        if len(names) > 8:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), ncols=math.ceil(len(names) / 16))
        elif names:
            ax.legend(fontsize="small")
    ax.set_xlabel("step")
    return figure


def _aucs(rows: list[dict]) -> Figure:
    found = subjects(rows, AUC_FAMILIES)
    return panels(rows, [found[i:i + 3] for i in range(0, len(found), 3)])


def _schedule(rows: list[dict]) -> Figure:
    figure = new_figure(figsize=(8, 6))
    for ax, key in zip(figure.subplots(len(SCHEDULE), 1, sharex=True), SCHEDULE):
        x, y = points(rows, key, x="step")
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
    figure = new_figure(figsize=(4.5 * max(1, min(3, len(groups))), 3.2 * max(1, math.ceil(len(groups) / 3))))
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
    """losses.png, auc.png, schedule.png, subgroups.png and, if the run has localization or
    segmentation metrics, tasks.png into `out_dir`. Returns, per file drawn, the series drawn as read
    back from its lines: metric key (e.g. `auc/val/chexpert/teacher`) -> (x, y)."""
    series: Series = {}
    for name, figure in (("losses.png", _losses(rows)), ("auc.png", _aucs(rows)), ("schedule.png", _schedule(rows)),
                         ("subgroups.png", _subgroups(rows)), (TASKS, tasks_figure(rows))):
        if figure is None:
            continue
        figure.savefig(out_dir / name, dpi=100)
        series[name] = {line.get_gid(): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
                        for ax in figure.axes for line in ax.get_lines()}
    return series


def _median(rows: list[dict], key: str, unit: str) -> str:
    values = [v for v in points(rows, key, x="step")[1] if not math.isnan(v)]
    return f"{statistics.median(values):.1f} {unit}" if values else "–"


def skipped(rows: list[dict]) -> dict[str, int]:
    """Samples skipped as undecodable, per dataset. The loaders' counters restart every round, but a
    row repeats each dataset's last count (ark_dist/data/meter.py), so a row counts only for the
    datasets it trained: `loss/<dataset>` (Foundation X: `loss/<dataset>:<task>/<kind>`), or all of
    them under the mixed schedule (`loss/interleaved`)."""
    out: dict[str, float] = {}
    for row in rows:
        trained = {k.removeprefix("loss/").partition("/")[0].partition(":")[0] for k in row if _is_loss(k)}
        for key, value in row.items():
            dataset = key.removeprefix("data/skipped/")
            if dataset != key and (dataset in trained or "interleaved" in trained):
                out[dataset] = out.get(dataset, 0) + value
    return {dataset: round(count) for dataset, count in out.items()}


def summary(rows: list[dict], *, run: str) -> str:
    """summary.md: per dataset the latest AUCs and the best teacher val AUC (and so for mAP and Dice
    where the run has them), then the run's totals."""
    lines = [f"# Run {_run_name(run)}", "", f"From `{join(run, METRICS)}`: {len(rows)} rounds.", ""]
    found = subjects(rows, AUC_FAMILIES)
    if found:
        lines += [f"| dataset | {COLUMNS}", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join([title(family, dataset), *cells(rows, family, dataset)]) + " |"
                  for family, dataset in found]
        lines += ["", "ROC-AUC at the last evaluation; epochs count epochs done (2 = after the second epoch).", ""]
    tasks = task_table(rows)
    lines += tasks if found or tasks else ["No evaluation in this run yet.", ""]
    row, groups = group_aucs(rows)
    if groups:
        lines += [f"Subgroups at epoch {row['epochs_done']:g} (teacher, test split; the headline AUC of each group's "
                  "samples; gap = best - worst group, unknown left out; per class with 95 % intervals: the run "
                  "folder's subgroups.md):", "", "| dataset | attribute | group | AUC |", "|---|---|---|---:|"]
        lines += [f"| {dataset} | {attribute} | {group} | {fmt(value)} |" for dataset, attributes in groups.items()
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
            for name in _written(series, heatmaps=heatmaps):
                os.replace(tmp / name, out / name)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return series, text


def _written(series: Series, *, heatmaps: int) -> tuple[str, ...]:
    """The report's files: FILES, tasks.png where drawn, heatmaps.png where asked for."""
    return FILES + ((TASKS,) if TASKS in series else ()) + ((HEATMAPS,) if heatmaps else ())


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
        series, text = write_report(rows, out, run=args.run, heatmaps=args.heatmaps)
    except (ReportError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {out}/: {' '.join(_written(series, heatmaps=args.heatmaps))}")
    return 0
