"""`cifar-resnet plot` and the figures of plots.py, checked by opening the PNG files they write."""

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
import torch

from cifar_resnet import plots
from cifar_resnet.checkpoint import CSV_FIELDS, EpochRecord
from cifar_resnet.notebook import plot_loss as notebook_plot_loss

pytestmark = pytest.mark.usefixtures("one_thread")

BLUE, RED, ORANGE = (31, 119, 180), (214, 39, 40), (255, 127, 14)  # matplotlib's tab: colours


def fake_run(path, epochs=2, lrs=False, config=True):
    """A run directory as `train` leaves it after ``epochs`` epochs (history.json, config.json)."""
    path.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "epoch": e,
            "lr": 0.1 / e,
            "train_loss": 4.6 - 0.3 * e,
            "train_top1": 0.02 * e,
            "val_loss": 4.5 - 0.25 * e,
            "val_top1": 0.03 * e,
            "val_top5": 0.1 * e,
            "eval_split": "val",
            "seconds": 1.0,
            "images_per_s": 100.0,
        }
        for e in range(1, epochs + 1)
    ]
    if lrs:
        for r in records:
            r["lrs"] = [0.1] * 5
    (path / "history.json").write_text(json.dumps(records))
    if config:
        (path / "config.json").write_text(json.dumps({"model": "fast", "epochs": 10, "label_smoothing": 0.1}))
    return records


def test_plot_command_on_a_real_run(real_run, tmp_path, cli, open_png, count_colour):
    code, out, err = cli("plot", real_run, "--out", tmp_path / "plots")
    assert code == 0, err
    paths = out.split()
    assert [os.path.basename(p) for p in paths] == ["loss.png", "accuracy.png", "lr.png"]
    loss = open_png(tmp_path / "plots" / "loss.png", (640, 420))
    assert count_colour(loss, BLUE) > 100 and count_colour(loss, RED) > 100  # training and validation curves
    acc = open_png(tmp_path / "plots" / "accuracy.png", (640, 420))
    assert min(count_colour(acc, c) for c in (BLUE, RED, ORANGE)) > 50  # train top-1, val top-1, val top-5
    lr = open_png(tmp_path / "plots" / "lr.png", (640, 420))
    assert count_colour(lr, BLUE) > 200  # per-step learning rates, taken from last.pt
    assert not [p for p in os.listdir(tmp_path / "plots") if p.endswith(".tmp")]


def test_a_run_in_progress_is_plotted_into_its_plots_folder(tmp_path, cli, open_png, count_colour):
    run = tmp_path / "run"
    fake_run(run, epochs=1)
    (run / "last.pt").write_bytes(b"being written")  # unreadable: the per-epoch learning rate is drawn instead
    code, _, err = cli("plot", run)
    assert code == 0, err
    for name in ("loss", "accuracy", "lr"):
        open_png(run / "plots" / f"{name}.png", (640, 420))
        assert oct((run / "plots" / f"{name}.png").stat().st_mode & 0o777) == oct(0o644)
    one_epoch = open_png(run / "plots" / "loss.png", (640, 420))
    fake_run(run, epochs=3)  # the next epochs finished: plotting again replaces the files
    assert cli("plot", run)[0] == 0
    three_epochs = open_png(run / "plots" / "loss.png", (640, 420))
    assert count_colour(three_epochs, BLUE) > 3 * count_colour(one_epoch, BLUE)  # a line through 3 points now


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.mkdir(), "no history.json"),
        (lambda p: p.write_text("x"), "is not a run directory"),
        (lambda p: (p.mkdir(), (p / "history.json").write_text("[]")), "no epoch has finished yet"),
        (lambda p: (p.mkdir(), (p / "history.json").write_text("{oops")), "unreadable"),
    ],
)
def test_not_a_run_directory(tmp_path, cli, assert_one_line_error, setup, message):
    path = tmp_path / "thing"
    setup(path)
    code, _, err = cli("plot", path)
    assert_one_line_error(code, err, message)


def test_notebook_history_and_plot_loss(tmp_path, open_png, count_colour):
    # the notebook API's history: an untrained evaluate() first, then fit()'s epochs with val_acc and lrs
    history = [{"val_loss": 4.61, "val_acc": 0.01}]
    history += [
        {
            "val_loss": 4.4 - 0.2 * e,
            "val_acc": 0.05 * e,
            "train_loss": 4.5 - 0.2 * e,
            "lrs": list(np.linspace(0.001, 0.0001, 4)),
        }
        for e in range(1, 4)
    ]
    notebook_plot_loss(history, tmp_path / "loss.png")
    pixels = open_png(tmp_path / "loss.png", (640, 420))
    assert count_colour(pixels, BLUE) > 100 and count_colour(pixels, RED) > 100
    plots.plot_accuracy(history, tmp_path / "acc.png")
    plots.plot_lr(history, tmp_path / "lr.png")
    open_png(tmp_path / "acc.png", (640, 420))
    open_png(tmp_path / "lr.png", (640, 420))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_loss([])


def test_histories_are_read_by_the_epoch_records_field_names():
    run_record = {
        "epoch": 2,
        "lr": 0.1,
        "train_loss": 1.0,
        "train_top1": 0.5,
        "val_loss": 1.2,
        "val_top1": 0.4,
        "val_top5": 0.8,
        "seconds": 3.0,
        "lrs": [0.2, 0.1],
    }  # an older run: no train_size, eval_tta...
    notebook_record = {"val_loss": 4.0, "val_acc": 0.3, "train_loss": 4.1, "lrs": [0.01, 0.002]}
    a, b = plots.normalise_history([run_record, notebook_record])
    assert tuple(a) == tuple(b) == plots.RECORD_FIELDS == tuple(f.name for f in dataclasses.fields(EpochRecord))
    assert set(CSV_FIELDS) <= set(a)
    assert (a["epoch"], a["val_top1"], a["eval_split"], a["train_size"]) == (2, 0.4, "val", None)
    assert (b["epoch"], b["val_top1"], b["lr"], b["val_top5"]) == (1, 0.3, 0.002, None)  # val_acc is val_top1


def test_denormalised_images_round_trip_without_clipping_warnings(tmp_path, open_png):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.48, 0.44), (0.27, 0.26, 0.28)
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(
        std
    )[:, None, None]
    assert np.array_equal(plots.to_uint8(x, mean, std), image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Clipping input data" would fail here
        plots.plot_prediction(x * 3, [("cat", 0.7), ("dog", 0.2)], tmp_path / "p.png", true="dog")
    open_png(tmp_path / "p.png", (750, 340))


def test_confusion_matrix_figure_small_and_sorted(tmp_path, open_png):
    cm = np.array([[5, 1, 0], [0, 3, 2], [1, 0, 4]])
    order = [2, 0, 1]
    fig = plots.plot_confusion(
        cm, ["a", "b", "c"], tmp_path / "cm.png", layout=plots.ClassLayout(order, [1, 0, 0], ["g0", "g1"])
    )
    open_png(tmp_path / "cm.png", (520, 500))  # small: 3 classes (100 classes make 1487 x 1430)
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert [t.get_text() for t in labels] == ["c", "a", "b"]
    shown = cm[np.ix_(order, order)]
    np.testing.assert_allclose(ax.images[0].get_array(), shown / shown.sum(axis=1, keepdims=True))  # row fractions
    # every non-zero cell carries its count, in its sorted place
    assert {(tuple(t.get_position()), t.get_text()) for t in ax.texts} == {
        ((j, i), str(shown[i, j])) for i in range(3) for j in range(3) if shown[i, j]
    }
    with pytest.raises(ValueError, match="shape"):
        plots.plot_confusion(cm, ["a", "b"])


def test_a_sweep_figure_with_long_variant_names_keeps_its_title_and_labels_inside():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    names = ["base", "bf16+plain-eval+progressive+label-smoothing-0.1", "fast-net+drop-easy"]
    title = "ablation: validation top-1 over seeds (mean ± sd)"
    variants = list(zip(names, [0.65, 0.66, 0.73], [0.01, 0.02, 0.0], [3, 3, 2]))
    fig = plots.plot_sweep_variants(variants, baseline="base", title=title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer, width = canvas.get_renderer(), fig.bbox.x1
    heading = fig._suptitle or fig.axes[0].title  # over the figure or over the axes: it must fit either way
    texts = [heading, *fig.axes[0].get_yticklabels()]  # the title and the variants' names
    assert [t.get_text() for t in texts] == [title, *(f"{n} (n={k})" for n, k in zip(names, [3, 3, 2]))]
    for t in texts:
        box = t.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width, (t.get_text(), box, width)
