"""The ``cifar-resnet`` command: argparse subcommands over the package's public functions.

Each command parses its flags, loads what the call needs (a checkpoint and the evaluation options that its
run and the flags give, :func:`~cifar_resnet.inference.eval_options`), calls one library function and
prints what it returns; the figures and files are the library's. What is decided here is only how flags
become arguments: one ``--field-name`` per :class:`~cifar_resnet.config.TrainConfig` field, and the
deprecated ``--amp``/``--cpu-amp`` of ``train`` and ``lr-find`` mapped to ``--precision``
(:func:`~cifar_resnet.device.legacy_precision`) with a warning.

User mistakes (``ValueError`` and file errors) print as one line on stderr with exit status 2; set
``CIFAR_RESNET_TRACEBACK=1`` (or pass ``--traceback``) to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import textwrap
import typing

import torch

from .calibration import calibrate
from .checkpoint import Checkpoint, RunDir, load_checkpoint
from .config import PRESETS, TrainConfig, get_preset, preset_for_run
from .data import DEFAULT_ROOT, describe, download, load_data
from .device import PRECISIONS, legacy_precision
from .engine import EvalOptions
from .evaluate import evaluate_checkpoint, format_report
from .export import export_model
from .images import RESIZE_MODES
from .inference import EvalData, EvalOverrides, eval_options, load_predictor
from .interpret import Interpretation, check_out_dir, format_interpretation, write_report
from .lr_find import LR_FIND_FIELDS, lr_find_config
from .models import create_model, list_models
from .plots import plot_lr_find, plot_reliability, plot_run, save_figure
from .predict import DatasetImages, ImageFiles, format_results, predict, show_results
from .sweep import load_sweep, report, rows_with_emulated_bf16, run_workers, select_variants, work
from .train import TrainingInterrupted, fit

PROG = "cifar-resnet"


def _duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``1.5h``."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 10m or 1h, got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"the duration must be > 0, got {text!r}")
    return seconds


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One --field-name flag per TrainConfig field, with the field's own help text."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training configuration (defaults: the chosen preset's)")
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_text = f.metadata["help"]
        if typ is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typ is dict:
            group.add_argument(flag, dest=f.name, type=_json_dict, default=None, metavar="JSON", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=None, metavar=f.name.upper(), help=help_text)


def _add_legacy_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--amp/--no-amp`` and ``--cpu-amp off|on|auto``, the flags of the release before ``--precision``:
    still accepted for one release, hidden from --help (see :func:`_legacy_precision`)."""
    parser.add_argument(
        "--amp", dest="legacy_amp", action=argparse.BooleanOptionalAction, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--cpu-amp", dest="legacy_cpu_amp", choices=["off", "on", "auto"], default=None, help=argparse.SUPPRESS
    )


def _legacy_precision(args, overrides: dict, warn) -> None:
    """Map the deprecated ``--amp``/``--no-amp``/``--cpu-amp`` given on the command line to ``precision`` in
    ``overrides`` (unless ``--precision`` was given too) and ``warn`` one line for each.

    ``--cpu-amp`` alone or with ``--[no-]amp`` is :func:`~cifar_resnet.device.legacy_precision` (exact on
    the CPU); ``--no-amp`` alone is fp32; ``--amp`` alone (bf16 on CUDA, the old default) is ``auto``."""
    amp, cpu_amp = args.legacy_amp, args.legacy_cpu_amp
    given = [
        flag for flag, value in (("--amp" if amp else "--no-amp", amp), ("--cpu-amp", cpu_amp)) if value is not None
    ]
    if not given:
        return
    if "precision" in overrides:
        for flag in given:
            warn(f"warning: {flag} is deprecated and ignored beside --precision")
        return
    precision = "auto" if amp and cpu_amp is None else legacy_precision(cpu_amp or "off")
    overrides["precision"] = precision
    for flag in given:
        warn(f"warning: {flag} is deprecated; use --precision {precision}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train, evaluate and inspect ResNet classifiers on CIFAR-100 and CIFAR-10."
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="train a model (or resume a run)",
        description="Train a model; every run directory gets config.json, history.json, "
        "metrics.csv, last.pt (each epoch) and best.pt (best validation top-1).",
    )
    p.add_argument(
        "--preset",
        default="seed",
        choices=sorted(PRESETS),
        help="named configuration to start from (default: seed, the notebook's recipe)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>-<model>)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="LAST_PT|auto",
        help="continue the run of this last.pt exactly where it stopped (only --device may change); "
        "auto: continue OUT/last.pt when it exists, else start afresh (for restarted or "
        "requeued jobs; the preset and flags must then be the run's)",
    )
    p.add_argument(
        "--save-every",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="also write last.pt inside an epoch every DURATION of training (e.g. 30s, 10m, 1h)",
    )
    p.add_argument(
        "--save-every-steps",
        type=int,
        default=None,
        metavar="K",
        help="also write last.pt inside an epoch every K steps",
    )
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUT/tensorboard")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    _add_config_arguments(p)
    _add_legacy_precision_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--params", action="store_true", help="also count parameters (100 classes)")
    p.set_defaults(func=cmd_models)

    data = sub.add_parser("data", help="data sources: info, download")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("info", help="sizes, classes, per-channel mean/std of a data source")
    p.add_argument(
        "--data", required=True, help="an .npz file, an official archive, an extracted folder, or cifar100/cifar10"
    )
    p.add_argument("--root", default=None, help="download cache for cifar100/cifar10 (default ~/.cache/cifar-resnet)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("download", help="download an official archive (progress bar, md5 check)")
    p.add_argument("--dataset", required=True, choices=["cifar100", "cifar10"], help="which archive to download")
    p.add_argument("--root", default=None, help="directory to download into (default ~/.cache/cifar-resnet)")
    p.add_argument("--url", default=None, help="download from this URL instead of the official one (a mirror)")
    p.set_defaults(func=cmd_data_download)

    _add_inspection_parsers(sub)

    p = sub.add_parser(
        "calibrate",
        help="fit a temperature so that the probabilities match the accuracy",
        description="Temperature scaling (Guo et al. 2017): fit one temperature T on the run's validation split "
        "by minimising the NLL of softmax(logits / T), store it in the checkpoint (atomically, the "
        "rest kept) and print ECE and NLL before and after. evaluate, predict, interpret, serve and "
        "exported models use it from then on. Also writes a reliability diagram.",
        epilog="example: cifar-resnet calibrate runs/demo/best.pt",
    )
    _add_checkpoint_arguments(p)
    p.set_defaults(split="val")
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="reliability diagram before/after (default: reliability.png beside the checkpoint)",
    )
    p.add_argument("--dry-run", action="store_true", help="fit and report, but leave the checkpoint as it is")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or torch.export (.pt2), checked against PyTorch",
        description="Export a checkpoint as a model that takes images and returns calibrated probabilities: "
        "ONNX (needs `pip install 'cifar-resnet[onnx]'`) or torch.export's .pt2. Class names, "
        "superclasses, normalisation, temperature and the checkpoint's SHA-256 travel inside. The "
        "export is run on up to 256 real images of the run's data and refused (nothing written) "
        "when a probability differs from PyTorch's by 1e-4 or more.",
        epilog="example: cifar-resnet export runs/demo/best.pt --format onnx --out demo.onnx",
    )
    p.add_argument("checkpoint", help="a checkpoint written by `cifar-resnet train`")
    p.add_argument("--format", dest="fmt", default="onnx", choices=["onnx", "pt2"], help="onnx (default) or pt2")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument(
        "--input",
        dest="input_kind",
        default="uint8",
        choices=["uint8", "float"],
        help="uint8: (N, 32, 32, 3) RGB bytes (default); float: (N, 3, 32, 32) in [0, 1]",
    )
    p.add_argument("--data", default=None, help=DATA_HELP + " (the check images come from it)")
    p.add_argument(
        "--split",
        default=None,
        choices=["train", "val", "test"],
        help="split of the check images (default: the run's evaluation split)",
    )
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve",
        help="HTTP service and web page for a checkpoint or an exported .onnx model",
        description="Serve a model over HTTP (FastAPI on uvicorn; needs `pip install 'cifar-resnet[serve]'`): "
        "a web page at /, POST /predict (multipart images, top_k), GET /health, GET /classes, "
        "OpenAPI docs at /docs. Concurrent requests are batched together.",
        epilog="example: cifar-resnet serve runs/demo/best.pt --port 8000",
    )
    p.add_argument("model", help="a checkpoint (best.pt) or a model exported with `cifar-resnet export` (.onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=64, help="most images in one forward pass (default 64)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch (default 5 ms)",
    )
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest request body in MB (default 8)")
    p.add_argument("--max-files", type=int, default=32, help="most images in one request (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (checkpoints only)")
    p.set_defaults(func=cmd_serve)

    _add_sweep_parsers(sub)
    return parser


def _add_sweep_parsers(sub) -> None:
    sweep = sub.add_parser(
        "sweep",
        help="grids of variants x seeds and searches on Optuna, shared by many workers",
        description="Run a sweep file (TOML): a grid of named variants x seeds, each cell run once, or a search "
        "over ranges with Optuna's TPE and a pruner. The study lives in an Optuna storage (default: an "
        "SQLite file in the sweep's directory); every `sweep run` on the same storage, on this machine or "
        "another, is a worker that takes the next trial. Needs `pip install 'cifar-resnet[sweep]'`. "
        "The file's format: docs/sweeps.md.",
    )
    ssub = sweep.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)
    storage_help = (
        "an Optuna storage URL, e.g. postgresql://user:password@host/db (default: the file's [sweep] storage, "
        "else sqlite:///DIRECTORY/optuna.db)"
    )
    out_help = "the sweep's directory: trials' run directories, the SQLite study, the report (default: the file's)"
    p = ssub.add_parser(
        "run",
        help="work on a sweep: take trials from its study until none is left",
        description="Work on a sweep: create its study (or join it), queue the grid's cells, and train trials "
        "one after another until none is left. Start it on several machines with one --storage to share "
        "the work. A worker killed outright leaves its trial to another worker, which resumes it from its "
        "last.pt after the grace period; Ctrl-C stops after the current step with the trial resumable.",
        epilog="example: cifar-resnet sweep run docs/sweeps/ablation.toml --data ../shared/data/cifar100-train.npz "
        "--workers 2",
    )
    p.add_argument("file", help="the sweep file (TOML)")
    p.add_argument("--storage", default=None, metavar="URL", help=storage_help)
    p.add_argument("--out", default=None, metavar="DIR", help=out_help)
    p.add_argument("--data", default=None, help="the data source on this machine (overrides the file's [base] data)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="start N worker processes here (default: one per GPU, else 1); on a CPU they share the cores",
    )
    p.add_argument("--max-trials", type=int, default=None, metavar="K", help="stop this worker after K trials")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="take only the cells of these grid rows: variant names or shell-style patterns ('fast-net*'); "
        "e.g. the bf16 rows on machines with AMX or AVX512_BF16, where bf16 is not emulated, the others elsewhere "
        "(default: every row)",
    )
    p.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="take bf16 cells on a CPU without AMX or AVX512_BF16 too, where bf16 is emulated and a step takes "
        "many times the fp32 one (default: leave them to workers on machines with bf16 instructions or a GPU)",
    )
    p.set_defaults(func=cmd_sweep_run)
    p = ssub.add_parser(
        "report",
        help="the sweep's table and figures",
        description="Report on a sweep: for a grid, one row per variant with mean ± sd over seeds and the "
        "difference to the baseline with its standard error, and accuracy.png; for a search, the best "
        "trials, the parameters' importances and history.png; and where each running trial is (its worker, "
        "epochs done, and whether its worker stopped sending heartbeats). Writes report.md and report.json too.",
        epilog="example: cifar-resnet sweep report docs/sweeps/ablation.toml",
    )
    p.add_argument("file", help="the sweep file (TOML)")
    p.add_argument("--storage", default=None, metavar="URL", help=storage_help)
    p.add_argument("--out", default=None, metavar="DIR", help=out_help)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_sweep_report)


# --------------------------------------------------------------------------------------------------
# Inspection: evaluate, plot, predict, interpret, lr-find
# --------------------------------------------------------------------------------------------------

SPLIT_HELP = (
    "split to use: train, val or test (default: the split the run evaluated on). val and train are "
    "the run's own held-out and training images: the run's --val-split, --train-subset and --seed "
    "(saved in the checkpoint) are applied to DATA again, after checking that DATA is the run's "
    "source (its training images reproduce the checkpoint's normalisation statistics); test is "
    "the source's official test split"
)
DATA_HELP = (
    "data source (.npz, official archive, extracted folder, or cifar100/cifar10); default: the data "
    "the checkpoint was trained on, from its config"
)


def _add_checkpoint_arguments(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    p.add_argument("checkpoint", help="a checkpoint written by `cifar-resnet train` (best.pt or last.pt)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    if split:
        p.add_argument("--split", default=None, choices=["train", "val", "test"], help=SPLIT_HELP)
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation: average the logits of each image and its mirror image "
        "(default: as the run evaluated, from the checkpoint's config)",
    )
    p.add_argument(
        "--tta-translate",
        type=int,
        default=None,
        metavar="PX",
        help="translate test-time augmentation: also the image shifted PX pixels up-left and "
        "down-right, with half the weight; 0 turns it off (default: as the run evaluated)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: the run's evaluation batch size)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="autocast of the forward passes: auto (bf16 on CUDA and on CPUs with AMX, else fp32), fp32, "
        "bf16 or fp16 (default: the checkpoint's, the precision its run trained and evaluated in, "
        "so that the run's own split gives the numbers training recorded)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _add_inspection_parsers(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, loss, calibration of a checkpoint on a split",
        description="Evaluate a checkpoint: top-1 and top-5 accuracy, mean loss, superclass accuracy "
        "(CIFAR-100: a fine prediction counts as right when its superclass is the true one's), "
        "expected calibration error and per-class accuracy. The normalisation is the "
        "checkpoint's, never recomputed.",
        epilog="example: cifar-resnet evaluate runs/demo/best.pt --data cifar100 --split test --tta",
    )
    _add_checkpoint_arguments(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (keys: top1, top5, coarse_top1, loss, ece, n, per_class, "
        "per_superclass, split, split_description, tta, tta_translate, precision, model, epoch, "
        "checkpoint, data, temperature)",
    )
    p.add_argument(
        "--no-per-class",
        dest="per_class",
        action="store_false",
        help="leave the per-class table out of the text output",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "plot",
        help="loss, accuracy and learning-rate curves of a run directory",
        description="Draw the curves of a run (finished or in progress) as PNG files: loss.png (training vs "
        "validation loss), accuracy.png (top-1, top-5) and lr.png (learning rate per step).",
        epilog="example: cifar-resnet plot runs/demo   # writes runs/demo/plots/{loss,accuracy,lr}.png",
    )
    p.add_argument("run_dir", help="a run directory (holding history.json)")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR/plots)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "predict",
        help="top-k predictions for image files or dataset images",
        description=textwrap.fill(
            "Predict the class of image files (any size and mode: RGB, RGBA, grayscale, palette; PNG, JPEG, "
            "WebP, ...), made 32x32 as CIFAR's images were (centre square, area-averaging downscale), or of "
            "dataset images chosen with --index or --sample. Unreadable files are reported one line each on "
            "stderr and the others are still predicted (exit status 2).",
            79,
        ),
        epilog="examples:\n  cifar-resnet predict runs/demo/best.pt cat.jpg more/*.png --top-k 3\n"
        "  cifar-resnet predict runs/demo/best.pt --data DATA --index 100 --show out.png\n"
        "  cifar-resnet predict runs/demo/best.pt --sample 32 --show grid.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_checkpoint_arguments(p)
    p.add_argument("images", nargs="*", help="image files to predict")
    p.add_argument(
        "--index",
        type=int,
        nargs="+",
        action="extend",
        default=None,
        metavar="I",
        help="predict images I... of the dataset split (with --data / --split)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="predict N images of the dataset split drawn at random (seeded by --seed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to list per image (default 5)")
    p.add_argument(
        "--resize",
        default="crop",
        choices=RESIZE_MODES,
        help="how a non-square file becomes 32x32: crop (centre square, default) or squash "
        "(whole frame, aspect ratio not kept)",
    )
    p.add_argument(
        "--show",
        default=None,
        metavar="PNG",
        help="also write a figure: one image with its true and predicted labels and the top-k "
        "probabilities, or a grid of several with the wrong ones marked in red",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list: {path or index, true (dataset images), correct, top: "
        "[{class, prob}]} or {path, error} per image",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "interpret",
        help="confusion matrix, most confused pairs, top losses, per-superclass accuracy",
        description="Interpret a checkpoint's mistakes on a split (after fastai's ClassificationInterpretation): "
        "writes confusion_matrix.png (sorted by superclass for CIFAR-100), top_losses.png (the "
        "images with the highest loss, with their labels), confusion_matrix.csv, "
        "most_confused.csv, per_superclass.csv and report.json into --out, and prints the most "
        "confused pairs and the per-superclass table.",
        epilog="example: cifar-resnet interpret runs/demo/best.pt --data DATA --out report/",
    )
    _add_checkpoint_arguments(p)
    p.add_argument("--out", default=None, help="output folder (default: interpret/ beside the checkpoint)")
    p.add_argument(
        "--top-losses", type=int, default=24, metavar="K", help="how many highest-loss images to show (default 24)"
    )
    p.add_argument(
        "--most-confused",
        type=int,
        default=20,
        metavar="K",
        help="how many most-confused (true, predicted) pairs to list (default 20)",
    )
    p.add_argument("--json", action="store_true", help="print report.json's content instead of the tables")
    p.set_defaults(func=cmd_interpret)

    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: suggested max_lr and a plot",
        description="The learning-rate range test (Smith 2017; fastai's lr_find): train from the "
        "configuration's initial weights while the learning rate grows exponentially from "
        "--start-lr to --end-lr, record the smoothed loss, stop once it diverges, and suggest "
        "max_lr (a tenth of the rate at the smoothed minimum). Uses the training step of "
        "`train` (same model, data, optimizer, clipping, label smoothing); nothing is saved "
        "but the plot.",
        epilog="example: cifar-resnet lr-find --model seed_resnet --data DATA --out lr_find.png",
    )
    p.add_argument(
        "--preset",
        default="seed",
        choices=sorted(PRESETS),
        help="named configuration to start from (default: seed, the notebook's recipe)",
    )
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    p.add_argument("--steps", type=int, default=200, help="length of the sweep in training steps (default 200)")
    p.add_argument(
        "--beta",
        type=float,
        default=0.98,
        help="smoothing of the loss for the divergence test (exponential moving average factor, default 0.98)",
    )
    p.add_argument(
        "--diverge",
        type=float,
        default=4.0,
        help="stop when the moving average of the loss exceeds this many times its minimum (default 4)",
    )
    p.add_argument("--out", default="lr_find.png", help="where to write the plot (default lr_find.png)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (suggestion, min_loss_lr, steepest_lr, stopped, lrs, losses, smoothed)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    _add_config_arguments(p, only=LR_FIND_FIELDS)
    _add_legacy_precision_arguments(p)
    p.set_defaults(func=cmd_lr_find)


def _overrides(args) -> EvalOverrides:
    """The evaluation options the flags give (``None`` each where the run's own stands)."""
    return EvalOverrides(args.tta, args.tta_translate, args.batch_size, args.precision)


def _evaluation(args) -> tuple[Checkpoint, EvalOptions]:
    """The checkpoint of ``args`` and how to evaluate it: the run's own options, overridden by the flags given."""
    ckpt = load_checkpoint(args.checkpoint)
    return ckpt, eval_options(ckpt, args.device, _overrides(args))


def cmd_evaluate(args) -> int:
    ckpt, options = _evaluation(args)
    source = EvalData(args.data, args.split)
    report = evaluate_checkpoint(ckpt, source, options, device=args.device, progress=args.progress)
    print(json.dumps(report, indent=1) if args.json else format_report(report, per_class=args.per_class))
    return 0


def cmd_plot(args) -> int:
    for path in plot_run(args.run_dir, args.out).values():
        print(path)
    return 0


def cmd_predict(args) -> int:
    predictor = load_predictor(args.checkpoint, args.device)
    options = predictor.eval_options(_overrides(args))
    from_data = args.index is not None or args.sample is not None
    if args.images and from_data:
        raise ValueError("give image files or --index/--sample (dataset images), not both")
    images = (
        DatasetImages(EvalData(args.data, args.split), args.index, args.sample, args.seed)
        if from_data
        else ImageFiles(args.images, args.resize)
    )
    prediction = predict(predictor, images, k=args.top_k, options=options, progress=args.progress)
    for message in prediction.errors:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    text = json.dumps(prediction.results, indent=1) if args.json else format_results(prediction.results)
    if args.show is not None and len(prediction.images):
        show_results(prediction.results, prediction.images, args.show)
        if not args.json:
            text += f"\nwrote {args.show}"
    if text:
        print(text)
    return 2 if prediction.errors else 0


def cmd_interpret(args) -> int:
    out = check_out_dir(args.out or RunDir.of_checkpoint(args.checkpoint).interpret)
    ckpt, options = _evaluation(args)
    source = EvalData(args.data, args.split)
    interp = Interpretation.from_checkpoint(ckpt, source, options, device=args.device, progress=args.progress)
    result = write_report(interp, out, top_losses=args.top_losses, most_confused=args.most_confused)
    if args.json:
        print(result["files"]["report.json"].read_text(encoding="utf-8").rstrip())
    else:
        print(format_interpretation(result, interp.meta))
    return 0


def cmd_calibrate(args) -> int:
    ckpt, options = _evaluation(args)
    source = EvalData(args.data, args.split)
    report, logits, labels = calibrate(
        ckpt, source, options, device=args.device, progress=args.progress, write=not args.dry_run
    )
    plot = str(args.plot or RunDir.of_checkpoint(args.checkpoint).reliability_png)
    save_figure(
        plot_reliability(
            {
                "before (T = 1)": (logits.softmax(1).numpy(), labels.numpy(), report.ece_before),
                f"after (T = {report.temperature:.3f})": (
                    (logits / report.temperature).softmax(1).numpy(),
                    labels.numpy(),
                    report.ece_after,
                ),
            },
            title=f"Reliability on {report.n:,} {report.split} images ({report.precision})",
        ),
        plot,
    )
    if args.json:
        print(json.dumps({**report.to_dict(), "plot": plot, "written": not args.dry_run}, indent=1))
        return 0
    print(
        f"temperature {report.temperature:.4f} (was {report.previous_temperature:g}), fitted on {report.n:,} "
        f"images: {report.split_description} ({report.precision})"
    )
    print(f"ECE  {report.ece_before:.4f} -> {report.ece_after:.4f}  (expected calibration error, 15 bins)")
    print(f"NLL  {report.nll_before:.4f} -> {report.nll_after:.4f}  (mean negative log-likelihood)")
    print(("left unchanged (--dry-run): " if args.dry_run else "stored in ") + args.checkpoint + f"; plot: {plot}")
    return 0


def cmd_export(args) -> int:
    report = export_model(
        args.checkpoint,
        args.out,
        fmt=args.fmt,
        input_kind=args.input_kind,
        source=EvalData(args.data, args.split),
        log=None if args.json else print,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    return 0


def cmd_serve(args) -> int:
    try:  # an optional dependency: imported only when asked for
        from .serve import ServeLimits, serve
    except ImportError as e:
        raise ValueError(
            f"serve needs the serve extra ({e.name} is missing): pip install 'cifar-resnet[serve]'"
        ) from None
    limits = ServeLimits(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
    )
    serve(args.model, limits, host=args.host, port=args.port, device=args.device)
    return 0


def _config_overrides(args, only: tuple[str, ...] | None = None) -> dict:
    """The TrainConfig fields given on the command line."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if (only is None or f.name in only) and getattr(args, f.name) is not None
    }


def _preset_config(name: str, overrides: dict, log) -> TrainConfig:
    """The command's config: its preset (or the preset's fp32 recipe, where the run trains in fp32) with the
    flags given on top; says so in one line when the fp32 recipe is taken."""
    used, config = preset_for_run(name, overrides)
    base, fp32 = get_preset(name).to_dict(), get_preset(used).to_dict()
    changed = ", ".join(
        f"{key}={json.dumps(value) if isinstance(value, dict) else value}"
        for key, value in fp32.items()
        if key not in ("precision", *overrides) and value != base[key]
    )
    if changed and log is not None:  # nothing to say where the command line set every field the recipe changes
        why = "--precision fp32" if config.precision == "fp32" else "--precision auto: no bf16 on this device"
        log(f"{name} trains in fp32 here ({why}), so from its fp32 recipe, preset {used}: {changed}")
    return config


def _warn(message: str) -> None:
    if _rank() == 0:
        print(message, file=sys.stderr)


def cmd_lr_find(args) -> int:
    overrides = _config_overrides(args, LR_FIND_FIELDS)
    _legacy_precision(args, overrides, _warn)
    config = _preset_config(args.preset, overrides, None if args.json else print)
    result = lr_find_config(
        config,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_steps=args.steps,
        beta=args.beta,
        diverge=args.diverge,
        progress=args.progress,
        log=None if args.json else print,
    )
    save_figure(
        plot_lr_find(
            result.lrs,
            result.losses,
            result.smoothed,
            suggestion=result.suggestion,
            title=f"Learning-rate range test: {config.model}, {config.optimizer}, batch {config.batch_size}",
        ),
        args.out,
    )
    if args.json:
        print(json.dumps({**result.to_dict(), "plot": args.out}, indent=1))
    else:
        print(
            f"suggested max_lr {result.suggestion:.3g}  (a tenth of {result.min_loss_lr:.3g}, where the smoothed "
            f"loss is lowest; steepest descent at {result.steepest_lr:.3g})"
        )
        print(f"{len(result.lrs)} steps, {result.stopped}; plot: {args.out}")
    return 0


def cmd_train(args) -> int:
    overrides = _config_overrides(args)
    _legacy_precision(args, overrides, _warn)
    options = {
        "save_every": args.save_every,
        "save_every_steps": args.save_every_steps,
        "progress": args.progress,
        "tensorboard": args.tensorboard,
        "log": print if _rank() == 0 else None,
    }
    try:
        if args.resume and args.resume != "auto":
            extra = sorted(set(overrides) - {"device"})
            if extra:
                flags = ", ".join("--" + k.replace("_", "-") for k in extra)
                raise ValueError(f"--resume continues a run as it was configured; drop {flags}")
            history = fit(None, out_dir=args.out, resume=args.resume, device=overrides.get("device"), **options)
        else:
            config = _preset_config(args.preset, overrides, options["log"])
            out = args.out or RunDir.default(args.preset, config.model).path
            history = fit(config, out_dir=out, resume=args.resume, **options)
    except TrainingInterrupted as stop:
        if _rank() == 0:
            resume = f"; resume with: {PROG} train --resume {stop.checkpoint}" if stop.checkpoint else ""
            print(f"{PROG}: {stop}{resume}", file=sys.stderr)
        return stop.exit_code
    if history.out_dir is not None and _rank() == 0:
        print(f"run directory: {history.out_dir}")
    return 0


def cmd_sweep_run(args) -> int:
    spec = load_sweep(args.file, directory=args.out, data=args.data)
    for value, flag in ((args.workers, "--workers"), (args.max_trials, "--max-trials")):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    variants = select_variants(spec, args.variants)
    left = [] if args.emulated_bf16 else rows_with_emulated_bf16(spec, variants)
    if left:
        variants = (variants if variants is not None else frozenset(spec.variants)) - frozenset(left)
        _say(
            f"bf16 is emulated on this CPU (no AMX or AVX512_BF16: a step takes many times the fp32 one), so this "
            f"worker leaves the cells of {', '.join(left)} to workers on machines with bf16 instructions or a GPU "
            f"(--emulated-bf16 takes them here)"
        )
        if not variants:
            _say(f"no row of {args.file} is left for this worker")
            return 0
    workers = args.workers if args.workers is not None else max(1, torch.cuda.device_count())
    if workers > 1:
        argv = ["sweep", "run", args.file, "--out", str(spec.directory)]
        for flag, value in (("--storage", args.storage), ("--data", args.data), ("--max-trials", args.max_trials)):
            if value is not None:
                argv += [flag, str(value)]
        if left:  # the rows decided here, each name matching only itself
            argv += ["--variants", *(glob.escape(v) for v in sorted(variants)), "--emulated-bf16"]
        elif args.variants:
            argv += ["--variants", *args.variants]
        if args.emulated_bf16:
            argv += ["--emulated-bf16"]
        return run_workers(spec, args.storage, workers, argv, log=_say)
    result = work(spec, args.storage, log=_say, max_trials=args.max_trials, variants=variants)
    _say(
        f"worker done: {result.completed} complete, {result.pruned} pruned, {result.failed} failed; "
        f"report: {PROG} sweep report {args.file}"
    )
    return result.exit_code or (1 if result.failed else 0)


def _say(line: str) -> None:
    print(line, flush=True)  # workers share a terminal: a line at a time


def cmd_sweep_report(args) -> int:
    result = report(load_sweep(args.file, directory=args.out), args.storage, args.out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1, default=str))
    else:
        print(result["markdown"], end="")
        print(f"figures: {', '.join(result['figures']) or 'none yet'}")
    return 0


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank() -> int:
    """This process's rank under torchrun (0 in a plain process)."""
    return int(os.environ.get("RANK", "0"))


def cmd_models(args) -> int:
    for name in list_models():
        if args.params:
            n = sum(p.numel() for p in create_model(name, num_classes=100).parameters())
            print(f"{name:16s} {n:>12,d}")
        else:
            print(name)
    return 0


def cmd_data_info(args) -> int:
    info = describe(load_data(args.data, root=args.root))
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_data_download(args) -> int:
    path = download(args.dataset, args.root or DEFAULT_ROOT, url=args.url)  # a mirror must match the md5 too
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    show_tb = args.traceback or os.environ.get("CIFAR_RESNET_TRACEBACK") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        if show_tb:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f" (rank {_rank()})" if _distributed() else ""
        print(f"{PROG}: error{where}: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # under torchrun, a process whose peer failed sees the broken connection; the peer printed why
        if show_tb or not _distributed():
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(
            f"{PROG}: error (rank {_rank()}): lost contact with another process, which probably failed "
            f"(see its message): {detail}",
            file=sys.stderr,
        )
        return 1


def run(argv: list[str] | None = None) -> typing.NoReturn:
    """The ``cifar-resnet`` command: :func:`main`, then exit with its code. Under torchrun the process ends
    with ``os._exit`` once its output is flushed, skipping the interpreter's shutdown: DistributedDataParallel
    keeps the gloo process group alive past ``destroy_process_group`` (its threads with it), and a gloo
    thread that frees a finished collective's tensors while the interpreter shuts down aborts the process
    (SIGABRT, "terminate called without an active exception"): 6 of about 110 finished two-process runs here
    ended with a non-zero exit code. Everything the run writes is closed and renamed before ``main`` returns."""
    code = main(argv)
    if _distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
