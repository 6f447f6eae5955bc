"""`report`'s evaluation panels, per task: classification (ROC-AUC, auc.png) and Foundation X's
localization (COCO mAP) and segmentation (Dice) steps (tasks.png, drawn only for a run that has
them). Each is a panel per (metric family, dataset), teacher and student, val solid and test dashed,
against epochs done, and a summary row with the latest values and the best teacher val. Also the
small helpers every report figure uses (report.py imports them from here, so neither module imports
the other's importer)."""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Metric families, keys `<family>/<split>/<dataset>/<model>`: family -> (panel title, y label).
# Classification: `auc` over a dataset's headline classes (data.metric_labels), `auc_all` over all
# of them where those differ. Localization: COCO mAP at IoU 0.5 and averaged over 0.50:0.95.
# Segmentation: Dice per image averaged over the images, and Dice of all pixels pooled (global).
AUC_FAMILIES = {"auc": ("{}", "ROC-AUC"), "auc_all": ("{} (all classes)", "ROC-AUC")}
TASK_FAMILIES = {"map50": ("{}: mAP@0.5", "mAP@0.5"), "map": ("{}: mAP@[.50:.95]", "mAP@[.50:.95]"),
                 "dice": ("{}: Dice", "Dice (mean per image)"), "dice_global": ("{}: global Dice", "global Dice")}
FAMILIES = {**AUC_FAMILIES, **TASK_FAMILIES}
SPLITS = (("val", "-"), ("test", "--"))  # (split, line style)
MODELS = (("teacher", "C0"), ("student", "C1"))  # (model, colour)
COLUMNS = "teacher val | student val | teacher test | student test | best teacher val | at epoch |"


def points(rows: list[dict], key: str, *, x: str) -> tuple[list, list]:
    """(row[x], row[key]) for the rows that hold `key`."""
    hits = [row for row in rows if key in row]
    return [row[x] for row in hits], [row[key] for row in hits]


def new_figure(**kwargs) -> Figure:
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)  # Agg, not pyplot: no display, no global figure registry
    return figure


def fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4f}"


def subjects(rows: list[dict], families: dict) -> list[tuple[str, str]]:
    """(family, dataset) of each panel of `families`: datasets first seen first and `mean` last, a
    dataset's families in the order of `families`."""
    seen = dict.fromkeys((parts[0], parts[2]) for row in rows for parts in map(lambda k: k.split("/"), row)
                         if parts[0] in families and len(parts) == 4)
    datasets, order = list(dict.fromkeys(dataset for _, dataset in seen)), list(families)
    return sorted(seen, key=lambda s: (s[1] == "mean", datasets.index(s[1]), order.index(s[0])))


def title(family: str, dataset: str) -> str:
    return FAMILIES[family][0].format(dataset)


def panels(rows: list[dict], grid: list[list[tuple[str, str]]]) -> Figure:
    """A panel per (family, dataset) of `grid` (rows of panels): teacher and student, val solid and
    test dashed, against epochs done."""
    num_cols, num_rows = max([1, *map(len, grid)]), max(1, len(grid))
    figure = new_figure(figsize=(4.5 * num_cols, 3.2 * num_rows))
    axes = figure.subplots(num_rows, num_cols, squeeze=False)
    if not grid:
        axes[0, 0].text(0.5, 0.5, "no evaluation in this run yet", ha="center", va="center")
        axes[0, 0].set_axis_off()
        return figure
    for ax_row, panel_row in zip(axes, grid):
        for ax, (family, dataset) in zip(ax_row, panel_row):
            for split, style in SPLITS:
                for model, colour in MODELS:
                    key = f"{family}/{split}/{dataset}/{model}"
                    x, y = points(rows, key, x="epochs_done")
                    if x:  # a single point between NaNs still shows: markers
                        ax.plot(x, y, style, color=colour, marker="o", label=f"{model} {split}", gid=key)
            ax.set(title=title(family, dataset), xlabel="epochs done", ylabel=FAMILIES[family][1])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # evaluations follow whole epochs
            ax.grid(alpha=0.3)
        for ax in ax_row[len(panel_row):]:
            figure.delaxes(ax)
    axes[0, 0].legend(fontsize="small")
    return figure


def tasks_figure(rows: list[dict]) -> Figure | None:
    """tasks.png: a row of panels per localization or segmentation dataset (its mAP and/or Dice
    families); None when the run has no such metrics."""
    by_dataset: dict[str, list[tuple[str, str]]] = {}
    for family, dataset in subjects(rows, TASK_FAMILIES):
        by_dataset.setdefault(dataset, []).append((family, dataset))
    return panels(rows, list(by_dataset.values())) if by_dataset else None


def cells(rows: list[dict], family: str, dataset: str) -> list[str]:
    """The latest teacher/student val/test values, then the best teacher val (NaNs left out) and the
    epochs done when it was reached: the cells of COLUMNS."""
    out = []
    for split, _ in SPLITS:
        for model, _ in MODELS:
            values = points(rows, f"{family}/{split}/{dataset}/{model}", x="step")[1]
            out.append(fmt(values[-1]) if values else "–")
    epochs, values = points(rows, f"{family}/val/{dataset}/teacher", x="epochs_done")
    scored = [(value, epoch) for epoch, value in zip(epochs, values) if not math.isnan(value)]
    best = max(scored, key=lambda pair: pair[0], default=None)  # the earliest of equals
    return out + ([fmt(best[0]), f"{best[1]:g}"] if best else ["–", "–"])


def task_table(rows: list[dict]) -> list[str]:
    """summary.md's lines for the localization and segmentation metrics (none when the run has none)."""
    found = subjects(rows, TASK_FAMILIES)
    if not found:
        return []
    lines = ["Localization (COCO mAP) and segmentation (Dice) at the last evaluation:", "",
             f"| dataset | metric | {COLUMNS}", "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {dataset} | {FAMILIES[family][1]} | " + " | ".join(cells(rows, family, dataset)) + " |"
              for family, dataset in found]
    return lines + [""]
