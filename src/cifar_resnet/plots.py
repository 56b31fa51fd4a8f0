"""Figures from histories, reports and predictions: PNG files, never windows.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot``: no global figure
state, no GUI backend, safe in threads and servers), optionally saves it with :func:`save_figure` and
returns it. Saving is atomic (a temporary file in the same folder, then ``os.replace``), so a reader,
e.g. a web page polling ``runs/demo/plots/loss.png`` of a run in progress, never sees half a file.

Images are shown as the uint8 pixels the model was given (or, for normalised tensors, denormalised
with :func:`to_uint8` and clamped to [0, 255]), so matplotlib never clips and never warns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .checkpoint import EpochRecord, RunDir, atomic_write

__all__ = [
    "ClassLayout",
    "draw_accuracy",
    "draw_loss",
    "draw_lr",
    "normalise_history",
    "plot_accuracy",
    "plot_budget",
    "plot_confusion",
    "plot_image_grid",
    "plot_loss",
    "plot_lr",
    "plot_lr_find",
    "plot_prediction",
    "plot_reliability",
    "plot_run",
    "plot_search_curves",
    "plot_search_history",
    "plot_sweep_variants",
    "save_figure",
    "short_label",
    "to_uint8",
]

TRAIN_COLOUR, VAL_COLOUR, TOP5_COLOUR = "tab:blue", "tab:red", "tab:orange"
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red that stay legible for most colour-vision types


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file in the same folder, then rename)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _finish(fig: Figure, path: str | Path | None, dpi: int = 100) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


def to_uint8(image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 array for ``imshow`` from a uint8 HWC array or a (3, H, W) float tensor.

    A float image is denormalised (``x * std + mean``, [0, 1] units) when ``mean``/``std`` are given,
    then clamped to [0, 1] and scaled to bytes: what matplotlib would otherwise clip with a warning.
    """
    arr = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.dtype == np.uint8:
        return arr if arr.shape[-1] == 3 else arr.transpose(1, 2, 0)
    if arr.ndim != 3:
        raise ValueError(f"expected one image of 3 dimensions, got shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if std is not None:
        arr = arr * np.asarray(std, dtype=np.float32)
    if mean is not None:
        arr = arr + np.asarray(mean, dtype=np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------


# the fields of a per-epoch record (:class:`~cifar_resnet.checkpoint.EpochRecord`), and the names the
# notebook's ``fit`` history gives some of them
RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(EpochRecord))
NOTEBOOK_NAMES = {"val_acc": "val_top1"}


def normalise_history(history: Sequence[dict]) -> list[dict]:
    """Per-epoch records keyed by :class:`~cifar_resnet.checkpoint.EpochRecord`'s field names, every field
    present (None where the history lacks it; ``lr`` from the last of ``lrs``, ``eval_split`` "val"), from
    either a run's history (``history.json``, ``fit(...).records``, a checkpoint's) or the notebook's ``fit``
    history (``val_acc``; its first entry may be the untrained ``evaluate`` with no ``train_loss``, plotted
    at epoch 0)."""
    if not history:
        raise ValueError("the history is empty: no epoch has finished yet")
    out = []
    for i, r in enumerate(history):
        named = {**{NOTEBOOK_NAMES[k]: v for k, v in r.items() if k in NOTEBOOK_NAMES}, **r}
        rec = {name: named.get(name) for name in RECORD_FIELDS}
        rec["epoch"] = named.get("epoch", i)
        rec["lrs"] = list(named.get("lrs") or [])
        if rec["lr"] is None and rec["lrs"]:
            rec["lr"] = rec["lrs"][-1]
        rec["eval_split"] = rec["eval_split"] or "val"
        out.append(rec)
    return out


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["epoch"], r[key]) for r in records if r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def draw_loss(ax, history: Sequence[dict], note: str | None = None) -> None:
    """Training and validation loss per epoch on ``ax`` (the notebook's plot, titled and labelled)."""
    records = normalise_history(history)
    x, y = _series(records, "train_loss")
    if x:
        ax.plot(x, y, "-x", color=TRAIN_COLOUR, label="training")
    x, y = _series(records, "val_loss")
    split = records[-1]["eval_split"]
    ax.plot(x, y, "-x", color=VAL_COLOUR, label="validation" if split == "val" else split)
    ax.set_ylabel("loss (cross-entropy)")
    ax.set_title("Loss vs. No. of epochs" + (f"\n{note}" if note else ""))
    _epoch_axis(ax)
    ax.legend()


def draw_accuracy(ax, history: Sequence[dict], note: str | None = None) -> None:
    """Top-1 (training and validation) and validation top-5 accuracy in percent per epoch."""
    records = normalise_history(history)
    split = "validation" if records[-1]["eval_split"] == "val" else records[-1]["eval_split"]
    for key, colour, style, label in (
        ("train_top1", TRAIN_COLOUR, "-x", "training top-1"),
        ("val_top1", VAL_COLOUR, "-x", f"{split} top-1"),
        ("val_top5", TOP5_COLOUR, "--o", f"{split} top-5"),
    ):
        x, y = _series(records, key)
        if x:
            ax.plot(x, [100 * v for v in y], style, color=colour, label=label)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("Accuracy vs. No. of epochs" + (f"\n{note}" if note else ""))
    _epoch_axis(ax)
    ax.legend()


def draw_lr(ax, history: Sequence[dict], note: str | None = None) -> None:
    """The learning rate: every step when the records carry ``lrs``, else the last one of each epoch."""
    records = normalise_history(history)
    if all(r["lrs"] for r in records if r["epoch"] > 0):
        xs, ys = [], []
        for r in records:
            lrs = r["lrs"]
            n = len(lrs)
            xs += [r["epoch"] - 1 + (i + 1) / n for i in range(n)]  # step i of epoch e at e-1+(i+1)/n
            ys += list(lrs)
        ax.plot(xs, ys, "-", color=TRAIN_COLOUR, label="per step")
        x, y = _series(records, "lr")
        ax.plot(x, y, "o", color=VAL_COLOUR, label="end of epoch")
        ax.legend()
    else:
        x, y = _series(records, "lr")
        ax.plot(x, y, "-o", color=TRAIN_COLOUR)
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title("Learning rate vs. No. of epochs" + (f"\n{note}" if note else ""))
    _epoch_axis(ax)


def _one_axes_figure(draw, history, path, note=None, size=(6.4, 4.2)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    draw(fig.add_subplot(), history, note)
    return _finish(fig, path)


def plot_loss(history: Sequence[dict], path: str | Path | None = None, note: str | None = None) -> Figure:
    """Training vs validation loss per epoch; saved to ``path`` (PNG) when given."""
    return _one_axes_figure(draw_loss, history, path, note)


def plot_accuracy(history: Sequence[dict], path: str | Path | None = None, note: str | None = None) -> Figure:
    """Top-1 / top-5 accuracy per epoch; saved to ``path`` (PNG) when given."""
    return _one_axes_figure(draw_accuracy, history, path, note)


def plot_lr(history: Sequence[dict], path: str | Path | None = None, note: str | None = None) -> Figure:
    """Learning rate per step (or per epoch); saved to ``path`` (PNG) when given."""
    return _one_axes_figure(draw_lr, history, path, note)


def plot_budget(
    history: Sequence[dict], trace: dict, path: str | Path | None = None, note: str | None = None
) -> Figure:
    """How a budget run spent its clock: each epoch's mean step time and every step's learning rate against
    the budget's seconds, the re-plans that changed the run marked, the budget drawn. ``trace``: the run's
    config ``plan`` (its decisions); epoch ``e`` starts at the decision made after ``e`` epochs (the first
    after measuring) and trains for its record's ``seconds``; the last epoch's re-fits are marked too."""
    decisions = {d["epoch"]: d for d in trace["decisions"] if not d.get("step")}  # each epoch's start
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    start = decisions[0]["elapsed_s"]
    for r in normalise_history(history):
        e = r["epoch"] - 1
        start = decisions[e]["elapsed_s"] if e in decisions else start
        lrs, seconds = r["lrs"], r.get("seconds") or 0.0
        if not lrs or not seconds:
            continue
        ends = [(start + seconds * (i + 1) / len(lrs)) / 60 for i in range(len(lrs))]
        top.plot([start / 60, start / 60 + seconds / 60], [seconds / len(lrs)] * 2, "-", color=TRAIN_COLOUR, lw=2)
        bottom.plot(ends, lrs, "-", color=TRAIN_COLOUR)
        start += seconds
    previous = None
    for d in trace["decisions"]:
        shape = (d["epochs"], d["last_steps"], d["sizes"][-1], d.get("step", 0))
        if previous is not None and shape != previous:
            for ax in (top, bottom):
                ax.axvline(d["elapsed_s"] / 60, color="grey", ls=":", lw=1)
            top.annotate(
                f"{d['epochs']} ep.",
                (d["elapsed_s"] / 60, 1),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
                ha="right",
                color="grey",
            )
        previous = shape
    for ax in (top, bottom):
        ax.axvline(trace["budget_s"] / 60, color=VAL_COLOUR, lw=1.5, label="budget")
    top.set_ylabel("seconds a step (epoch mean)")
    top.set_ylim(bottom=0)
    top.set_title("Step time and learning rate against the budget's clock" + (f"\n{note}" if note else ""))
    top.legend(loc="lower right")
    bottom.set_ylabel("learning rate")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("minutes of the budget (re-plans that changed the run dotted)")
    return _finish(fig, path)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Loss, accuracy and learning-rate curves of a run directory as ``loss.png``, ``accuracy.png``
    and ``lr.png`` in ``out_dir`` (default ``run_dir/plots``), and for a budget run ``budget.png`` (its
    clock: :func:`plot_budget`); returns ``{name: path}``."""
    run = RunDir(run_dir)
    records, config = run.read_history()
    out = Path(out_dir) if out_dir is not None else run.plots
    model = config.get("model", "")
    epochs = config.get("epochs")
    progress = f"{records[-1]['epoch']}/{epochs} epochs" if epochs else f"{records[-1]['epoch']} epochs"
    note = f"{model}, {progress}" if model else progress
    loss_note = note
    if config.get("label_smoothing"):
        loss_note += f"; training loss includes label smoothing {config['label_smoothing']:g}"
    figures = {
        "loss": save_figure(plot_loss(records, note=loss_note), out / "loss.png"),
        "accuracy": save_figure(plot_accuracy(records, note=note), out / "accuracy.png"),
        "lr": save_figure(plot_lr(records, note=note), out / "lr.png"),
    }
    plan = config.get("plan") or {}
    if plan.get("decisions") and all(r.get("lrs") for r in records):
        figures["budget"] = save_figure(plot_budget(records, plan, note=note), out / "budget.png")
    return figures


# --------------------------------------------------------------------------------------------------
# Images and predictions
# --------------------------------------------------------------------------------------------------


def _show(ax, image: np.ndarray) -> None:
    # "nearest": 32x32 pixels drawn as the blocks the model saw, not smoothed into something sharper
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _mark(ax, colour: str, width: float = 3.0) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def plot_prediction(
    image,
    top: Sequence[tuple[str, float]],
    path: str | Path | None = None,
    *,
    true: str | None = None,
    title: str | None = None,
) -> Figure:
    """One image with its true label (when known), the prediction, and a bar chart of the top-k
    probabilities (the notebook's ``Label: ..., Predicted: ...`` for one test image)."""
    image = to_uint8(image)
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 1.35])
    _show(ax_img, image)
    pred = top[0][0]
    label = f"Label: {true}, Predicted: {pred}" if true is not None else f"Predicted: {pred}"
    ax_img.set_title(label, fontsize=10, color=WRONG if true is not None and true != pred else "black")
    if true is not None:
        _mark(ax_img, RIGHT if true == pred else WRONG)
    names = [n for n, _ in top][::-1]
    probs = [100 * p for _, p in top][::-1]
    colours = [RIGHT if true is not None and n == true else TRAIN_COLOUR for n in names]
    ax_bar.barh(range(len(names)), probs, color=colours)
    ax_bar.set_yticks(range(len(names)), names, fontsize=9)
    top_p = max(probs)
    ax_bar.set_xlim(0, min(100.0, top_p * 1.3) if top_p > 0 else 1.0)  # a weak model's bars stay visible
    ax_bar.set_xlabel("probability (%)")
    for i, p in enumerate(probs):
        ax_bar.text(p, i, f" {p:.1f}%", va="center", fontsize=8)
    ax_bar.set_title(f"top-{len(top)} probabilities", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def plot_image_grid(
    images,
    titles: Sequence[str],
    path: str | Path | None = None,
    *,
    wrong: Sequence[bool] | None = None,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """Images in a grid with a caption each; where ``wrong[i]`` the caption is red and the image framed
    in red (right ones in green); without ``wrong`` captions are black and frames plain."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    ncols = ncols or min(n, 8)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(1.55 * ncols, 1.75 * nrows + (0.45 if title else 0.1)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        _show(ax, to_uint8(images[i]))
        colour = "black"
        if wrong is not None:
            colour = WRONG if wrong[i] else RIGHT
            _mark(ax, colour)
        ax.set_title(titles[i], fontsize=7.5, color=colour)
    if title:
        fig.suptitle(title, fontsize=11)
    return _finish(fig, path)


def short_label(name: str, width: int = 16) -> str:
    """``name`` cut to ``width`` characters (a dot marks the cut), for captions and tick labels."""
    return name if len(name) <= width else name[: width - 1] + "."


def prediction_captions(true: Sequence[str | None], pred: Sequence[str], prob: Sequence[float]) -> list[str]:
    """``pred (p%)`` captions, with ``true: ...`` above when the truth is known."""
    out = []
    for t, p, q in zip(true, pred, prob):
        line = f"{short_label(p)} {100 * q:.0f}%"
        out.append(line if t is None else f"true: {short_label(t)}\npred: {line}")
    return out


# --------------------------------------------------------------------------------------------------
# Confusion matrix and learning-rate finder
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassLayout:
    """How a confusion matrix lays out its classes: ``order`` permutes them (e.g. sorted by superclass);
    ``groups`` gives each class's group (superclass) index, so that group boundaries are drawn, and
    ``group_names`` are written on the top and right edges."""

    order: Sequence[int] | None = None
    groups: Sequence[int] | None = None
    group_names: Sequence[str] | None = None


def plot_confusion(
    cm: np.ndarray,
    classes: Sequence[str],
    path: str | Path | None = None,
    *,
    layout: ClassLayout | None = None,
    title: str = "Confusion matrix",
    normalise: bool = True,
) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted) as a heat map, its classes laid out as
    ``layout`` says. Rows are normalised to per-true-class fractions unless ``normalise`` is false. With up
    to 20 classes every cell carries its count.
    """
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} classes")
    layout = layout or ClassLayout()
    order = np.arange(n) if layout.order is None else np.asarray(layout.order)
    m = cm[np.ix_(order, order)].astype(np.float64)
    names = [classes[i] for i in order]
    if normalise:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    big = n > 20
    size = 13.0 if big else max(5.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(size * 1.04, size), layout="constrained")
    ax = fig.add_subplot()
    # a square-root colour scale keeps the many small off-diagonal confusions visible next to the diagonal
    im = ax.imshow(m, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=max(m.max(), 1e-9)), interpolation="nearest")
    font = 5.2 if big else 9
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted class", fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    ax.tick_params(length=1.5, pad=1)
    if layout.groups is not None:
        _draw_groups(ax, np.asarray(layout.groups)[order], layout.group_names, font + 1.3)
    if not big:
        _write_counts(ax, cm[np.ix_(order, order)], m)
    cbar = fig.colorbar(im, ax=ax, shrink=0.5, pad=0.01, aspect=30)
    cbar.set_label("fraction of the true class" if normalise else "images")
    ax.set_title(title, fontsize=12)
    return _finish(fig, path)


def _draw_groups(ax, groups: np.ndarray, names: Sequence[str] | None, fontsize: float) -> None:
    """Lines between the groups of the (ordered) classes, and the groups' names on the top and right edges."""
    n = len(groups)
    bounds = [i for i in range(1, n) if groups[i] != groups[i - 1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="0.35", lw=0.6)
        ax.axvline(b - 0.5, color="0.35", lw=0.6)
    if names is None:
        return
    starts = [0, *bounds]
    ends = [*bounds, n]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends)]
    labels = [names[groups[s]] if groups[s] >= 0 else "?" for s in starts]
    top = ax.secondary_xaxis("top")
    top.set_xticks(centres, labels, rotation=90, fontsize=fontsize)
    top.tick_params(length=0)
    right = ax.secondary_yaxis("right")
    right.set_yticks(centres, labels, fontsize=fontsize)
    right.tick_params(length=0)


def _write_counts(ax, counts: np.ndarray, shown: np.ndarray) -> None:
    """Each non-zero count in its cell, white on the dark cells of ``shown``."""
    for i, j in zip(*np.nonzero(counts)):
        colour = "white" if shown[i, j] > 0.5 * shown.max() else "black"
        ax.text(int(j), int(i), str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=colour)


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    path=None,
    *,
    suggestion: float | None = None,
    title: str = "Learning-rate range test",
) -> Figure:
    """Loss against learning rate (log scale): raw per-step losses faint, the smoothed curve bold, the
    suggested maximum learning rate marked."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    lrs, losses, smoothed = np.asarray(lrs), np.asarray(losses), np.asarray(smoothed)
    ax.plot(lrs, losses, "-", color=TRAIN_COLOUR, alpha=0.25, lw=0.8, label="loss per step")
    ax.plot(lrs, smoothed, "-", color=TRAIN_COLOUR, lw=2, label="smoothed")
    ax.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    raw = losses[np.isfinite(losses)]
    if finite.size:
        lo = min(finite.min(), raw.min() if raw.size else finite.min())
        # zoom on the interesting part: from the lowest loss to a little above the starting loss; the
        # divergence leaves through the top of the frame
        span = max(finite[0] - lo, 0.05 * abs(finite[0]), 1e-6)
        hi = min(finite.max(), finite[0] + 1.5 * span)
        pad = 0.08 * max(hi - lo, 1e-6)
        ax.set_ylim(lo - pad, max(hi, lo) + pad)
    if suggestion is not None:
        ax.axvline(suggestion, color=VAL_COLOUR, ls="--", lw=1.2)
        y = np.interp(np.log(suggestion), np.log(lrs), smoothed) if len(lrs) > 1 else smoothed[0]
        ax.plot([suggestion], [y], "o", color=VAL_COLOUR, label=f"suggested max_lr {suggestion:.2g}")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend()
    return _finish(fig, path)


def plot_sweep_variants(
    variants: Sequence[tuple[str, float, float, int]],
    path=None,
    *,
    baseline: str | None = None,
    title: str = "Validation top-1 per variant",
) -> Figure:
    """A grid sweep's variants, each ``(name, mean, sd, n)``: mean validation top-1 (%) as a dot with +-1
    standard deviation over its n seeds as a bar, one row per variant in the sweep file's order, the
    baseline's mean as a dashed line."""
    names, means, sds, ns = zip(*variants) if variants else ((), (), (), ())
    labels = [f"{n} (n={k})" for n, k in zip(names, ns)]
    # the labels take their width, and the data keep about 3.6 inches beside them
    width = max(7.2, 3.6 + 0.075 * max(map(len, labels), default=0))
    fig = Figure(figsize=(width, 0.9 + 0.42 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    m = np.asarray(means, dtype=float) * 100
    e = np.nan_to_num(np.asarray(sds, dtype=float) * 100)
    colours = [VAL_COLOUR if n == baseline else TRAIN_COLOUR for n in names]
    ax.errorbar(m, y, xerr=e, fmt="none", ecolor="0.55", elinewidth=2, capsize=4)
    ax.scatter(m, y, c=colours, zorder=3)
    if baseline in names:
        ax.axvline(m[list(names).index(baseline)], color=VAL_COLOUR, ls="--", lw=1, alpha=0.7)
    ax.set_yticks(y, labels)
    ax.set_xlabel("validation top-1 (%), mean ± sd over seeds")
    fig.suptitle(title)  # over the whole figure: over the axes alone, long labels push it off the edge
    ax.grid(True, axis="x", alpha=0.25)
    return _finish(fig, path)


def plot_search_history(
    numbers: Sequence[int],
    values: Sequence[float],
    states: Sequence[str],
    path=None,
    *,
    title: str = "Validation top-1 by trial",
) -> Figure:
    """A search's history: each finished trial's validation top-1 (%) by trial number (complete trials
    filled, pruned ones hollow at their last report) and the best so far as a step line."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    x, v = np.asarray(numbers), np.asarray(values, dtype=float) * 100
    done = np.asarray([s == "complete" for s in states])
    ax.scatter(x[done], v[done], color=TRAIN_COLOUR, zorder=3, label="complete")
    if (~done).any():
        ax.scatter(x[~done], v[~done], facecolors="none", edgecolors="0.5", zorder=3, label="pruned")
    if done.any():
        order = np.argsort(x[done])
        best = np.maximum.accumulate(v[done][order])
        ax.step(x[done][order], best, where="post", color=VAL_COLOUR, lw=1.5, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.25)
    ax.legend()
    return _finish(fig, path)


def plot_search_curves(
    curves: Sequence[dict[int, float]], states: Sequence[str], path=None, *, title: str = "Validation top-1 by tenth"
) -> Figure:
    """Each finished trial's validation top-1 (%) at each tenth of its schedule it reached (its pruner reports):
    complete trials coloured, pruned ones grey, ending where they were stopped."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    labelled = set()
    for curve, state in zip(curves, states):
        if not curve:
            continue
        steps = sorted(curve)
        done = state == "complete"
        label = None if state in labelled else state
        labelled.add(state)
        ax.plot(
            steps,
            [curve[s] * 100 for s in steps],
            color=VAL_COLOUR if done else "0.6",
            lw=1.2 if done else 0.9,
            alpha=0.8,
            marker="o" if not done else None,
            markevery=[len(steps) - 1],
            label=label,
            zorder=3 if done else 2,
        )
    ax.set_xlim(0.5, 10.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tenth of the learning-rate schedule")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.25)
    if labelled:
        ax.legend()
    return _finish(fig, path)


def reliability_bins(probs, labels, n_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin (i/n, (i+1)/n]: the mean confidence, the accuracy and the count
    (NaN for an empty bin), as ``metrics.expected_calibration_error`` bins them."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    bins = np.clip(np.ceil(conf * n_bins).astype(int), 1, n_bins) - 1
    count = np.bincount(bins, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=(pred == labels).astype(float), minlength=n_bins) / count
    return mean_conf, accuracy, count


def plot_reliability(
    curves: dict[str, tuple], path: str | Path | None = None, *, n_bins: int = 15, title: str | None = None
) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, one line per ``{label: (probs, labels,
    ece)}``, with the diagonal of perfect calibration and the share of images per bin below."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    width = 1.0 / n_bins / (len(curves) + 1)
    for i, (label, (probs, labels, ece)) in enumerate(curves.items()):
        colour = (VAL_COLOUR, TRAIN_COLOUR, TOP5_COLOUR)[i % 3]
        conf, acc, count = reliability_bins(probs, labels, n_bins)
        keep = count > 0
        ax.plot(conf[keep], acc[keep], "-o", color=colour, label=f"{label} (ECE {ece:.3f})")
        centres = (np.arange(n_bins) + 0.5) / n_bins
        ax_n.bar(centres + (i - (len(curves) - 1) / 2) * width, count / count.sum(), width=width, color=colour)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title or "Reliability diagram")
    ax_n.set_xlabel("confidence (top probability)")
    ax_n.set_ylabel("share of images")
    ax_n.grid(True, alpha=0.3)
    return _finish(fig, path)
