"""The command line's argparse declarations: the parser of every ``cifar-resnet`` command, its flags and
their help. :func:`build_parser` binds each command to the function that runs it, given by
:mod:`cifar_resnet.cli`; ``train`` and ``lr-find`` get one ``--field-name`` flag per
:class:`~cifar_resnet.config.TrainConfig` field, ``serve`` one per :class:`~cifar_resnet.serve_limits.ServeLimits`
limit, each with the field's own default and help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
import typing
from collections.abc import Callable

from .config import PRESETS, TrainConfig
from .console import parse_duration
from .device import PRECISIONS
from .images import RESIZE_MODES
from .lr_find import LR_FIND_FIELDS
from .serve_limits import ServeLimits

__all__ = ["PROG", "SERVE_LIMITS", "build_parser"]

PROG = "cifar-resnet"

# the limits of ServeLimits that `serve` takes as flags (those with a help text)
SERVE_LIMITS = tuple(f for f in dataclasses.fields(ServeLimits) if f.metadata.get("help"))


def build_parser(commands: dict[str, Callable]) -> argparse.ArgumentParser:
    """The parser of every command; ``commands`` maps each command's name (``"data info"`` for a
    subcommand) to its function, which parsing stores as ``args.func``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train, evaluate and inspect ResNet classifiers on CIFAR-100 and CIFAR-10."
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train_parser(sub, commands)
    _add_data_parsers(sub, commands)
    _add_inspection_parsers(sub, commands)
    _add_model_use_parsers(sub, commands)
    _add_serve_parser(sub, commands)
    _add_share_parsers(sub, commands)
    _add_sweep_parsers(sub, commands)
    return parser


def _duration(text: str) -> float | None:
    """An argparse type: the seconds of a duration in the package's one grammar
    (:func:`~cifar_resnet.console.parse_duration`: ``900``, ``900s``, ``15m``, ``1h30m``, ``2.5m``;
    ``none``: None)."""
    try:
        return parse_duration(text, flag="")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(": ")) from None


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
    still accepted for one release, hidden from --help (see :func:`cifar_resnet.cli._legacy_precision`)."""
    parser.add_argument(
        "--amp", dest="legacy_amp", action=argparse.BooleanOptionalAction, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--cpu-amp", dest="legacy_cpu_amp", choices=["off", "on", "auto"], default=None, help=argparse.SUPPRESS
    )


def _add_train_parser(sub, commands: dict) -> None:
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
        "--replay",
        default=None,
        metavar="RUN_DIR",
        help="train RUN_DIR's budget run again as it was configured, making the decisions its trace records "
        "instead of timing anything: the same weights, bit for bit (only --device may change)",
    )
    p.add_argument(
        "--save-every",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="also write last.pt inside an epoch every DURATION of training (e.g. 30s, 10m, 1h30m; none: off)",
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
    p.set_defaults(func=commands["train"])


def _add_data_parsers(sub, commands: dict) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--params", action="store_true", help="also count parameters (100 classes)")
    p.set_defaults(func=commands["models"])

    data = sub.add_parser("data", help="data sources: info, download")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("info", help="sizes, classes, per-channel mean/std of a data source")
    p.add_argument(
        "--data",
        required=True,
        help="a folder of class subfolders, a CSV of path,label rows, an .npz file, an official archive, an "
        "extracted CIFAR folder, or cifar100/cifar10",
    )
    p.add_argument("--root", default=None, help="download cache for cifar100/cifar10 (default ~/.cache/cifar-resnet)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=commands["data info"])
    p = dsub.add_parser("download", help="download an official archive (progress bar, md5 check)")
    p.add_argument("--dataset", required=True, choices=["cifar100", "cifar10"], help="which archive to download")
    p.add_argument("--root", default=None, help="directory to download into (default ~/.cache/cifar-resnet)")
    p.add_argument("--url", default=None, help="download from this URL instead of the official one (a mirror)")
    p.set_defaults(func=commands["data download"])


def _add_model_use_parsers(sub, commands: dict) -> None:
    """calibrate and export."""
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
    p.set_defaults(func=commands["calibrate"])

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, torch.export (.pt2) or a model folder to share, checked against PyTorch",
        description="Export a checkpoint as a model that takes images and returns calibrated probabilities: "
        "ONNX (needs `pip install 'cifar-resnet[onnx]'`) or torch.export's .pt2. Class names, "
        "superclasses, normalisation, temperature and the checkpoint's SHA-256 travel inside. The "
        "export is run on up to 256 real images of the run's data and refused (nothing written) "
        "when a probability differs from PyTorch's by 1e-4 or more. --format hub writes a model folder "
        "to share (a Hugging Face Hub repository's layout): model.safetensors, config.json and a model "
        "card README.md whose metrics are measured while exporting; reloaded, it must give the "
        "checkpoint's probabilities within 1e-6.",
        epilog="examples: cifar-resnet export runs/demo/best.pt --format onnx --out demo.onnx\n"
        "          cifar-resnet export runs/demo/best.pt --format hub --out demo-model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by `cifar-resnet train`, or a model folder")
    p.add_argument(
        "--format", dest="fmt", default="onnx", choices=["onnx", "pt2", "hub"], help="onnx (default), pt2 or hub"
    )
    p.add_argument("--out", required=True, help="the file to write (hub: the folder)")
    p.add_argument(
        "--weights-dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="hub: the weights' dtype in model.safetensors (bf16: half the size)",
    )
    p.add_argument("--license", default="mit", help="hub: the licence the model card gives the weights (default mit)")
    p.add_argument(
        "--input",
        dest="input_kind",
        default="uint8",
        choices=["uint8", "float"],
        help="uint8: (N, S, S, 3) RGB bytes (default); float: (N, 3, S, S) in [0, 1]; S: 32, or the run's --image-size",
    )
    p.add_argument("--data", default=None, help=DATA_HELP + " (the check images come from it)")
    p.add_argument(
        "--split",
        default=None,
        choices=["train", "val", "test"],
        help="split of the check images (default: the run's evaluation split)",
    )
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=commands["export"])


def _add_share_parsers(sub, commands: dict) -> None:
    """push and pull: a model folder to and from the Hugging Face Hub."""
    p = sub.add_parser(
        "push",
        help="upload a model folder to the Hugging Face Hub",
        description="Upload a model folder written by `export --format hub` to a Hub model repository (created "
        "when missing) as one commit of its three files. Needs `pip install 'cifar-resnet[hub]'` and a "
        "token, read as huggingface_hub reads it (HF_TOKEN, or `hf auth login`).",
        epilog="example: cifar-resnet push demo-model USER/cifar100-fast",
    )
    p.add_argument("folder", help="a model folder (model.safetensors, config.json, README.md)")
    p.add_argument("repo_id", help="USER/REPO")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--message", default=None, help="the commit message")
    p.set_defaults(func=commands["push"])
    p = sub.add_parser(
        "pull",
        help="download a model folder from the Hugging Face Hub and print its path",
        description="Download a Hub model repository's model folder into huggingface_hub's cache (offline "
        "with HF_HUB_OFFLINE=1: the cached copy) and print its path, for evaluate, predict, interpret, "
        "serve or export. Needs `pip install 'cifar-resnet[hub]'`.",
        epilog='example: cifar-resnet predict "$(cifar-resnet pull USER/cifar100-fast)" cat.png',
    )
    p.add_argument("repo_id", help="USER/REPO")
    p.add_argument("--revision", default=None, help="a branch, tag or commit (default main)")
    p.set_defaults(func=commands["pull"])


def _add_serve_parser(sub, commands: dict) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP service and web page for a checkpoint or an exported .onnx model",
        description="Serve a model over HTTP (FastAPI on uvicorn; needs `pip install 'cifar-resnet[serve]'`): "
        "a web page at /, POST /predict (multipart images, top_k), GET /health, GET /classes, "
        "OpenAPI docs at /docs. Concurrent requests are batched together.",
        epilog="example: cifar-resnet serve runs/demo/best.pt --port 8000",
    )
    p.add_argument(
        "model", help="a checkpoint (best.pt), a model folder or a model exported with `cifar-resnet export` (.onnx)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    hints = typing.get_type_hints(ServeLimits)
    for f in SERVE_LIMITS:
        flag, help_text = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default {f.default:g})"
        p.add_argument(flag, type=hints[f.name], default=f.default, help=help_text)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (checkpoints only)")
    p.set_defaults(func=commands["serve"])


def _add_sweep_parsers(sub, commands: dict) -> None:
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
        epilog="example: cifar-resnet sweep run experiments/ablation-sweep/ablation.toml "
        "--data ../shared/data/cifar100-train.npz --workers 2",
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
    p.set_defaults(func=commands["sweep run"])
    p = ssub.add_parser(
        "report",
        help="the sweep's table and figures",
        description="Report on a sweep: for a grid, one row per variant with mean ± sd over seeds and the "
        "difference to the baseline with its standard error, and accuracy.png; for a search, the best "
        "trials, the parameters' importances, every finished trial, history.png and curves.png; and where "
        "each running trial is (its worker, epochs done, and whether its worker stopped sending heartbeats). "
        "Writes report.md and report.json too.",
        epilog="example: cifar-resnet sweep report experiments/ablation-sweep/ablation.toml",
    )
    p.add_argument("file", help="the sweep file (TOML)")
    p.add_argument("--storage", default=None, metavar="URL", help=storage_help)
    p.add_argument("--out", default=None, metavar="DIR", help=out_help)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=commands["sweep report"])


SPLIT_HELP = (
    "split to use: train, val or test (default: the split the run evaluated on). val and train are "
    "the run's own held-out and training images: the run's --val-split, --train-subset and --seed "
    "(saved in the checkpoint) are applied to DATA again, after checking that DATA is the run's "
    "source (its training images reproduce the checkpoint's normalisation statistics); test is "
    "the source's test split (CIFAR's official one, a folder's test/)"
)
DATA_HELP = (
    "data source (a folder of class subfolders, a CSV of path,label rows, an .npz, an official archive, an "
    "extracted CIFAR folder, or cifar100/cifar10); default: the data "
    "the checkpoint was trained on, from its config"
)


def _add_checkpoint_arguments(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    p.add_argument(
        "checkpoint", help="a checkpoint written by `cifar-resnet train` (best.pt or last.pt), or a model folder"
    )
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


def _add_inspection_parsers(sub, commands: dict) -> None:
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
    p.set_defaults(func=commands["evaluate"])

    p = sub.add_parser(
        "plot",
        help="loss, accuracy and learning-rate curves of a run directory",
        description="Draw the curves of a run (finished or in progress) as PNG files: loss.png (training vs "
        "validation loss), accuracy.png (top-1, top-5) and lr.png (learning rate per step).",
        epilog="example: cifar-resnet plot runs/demo   # writes runs/demo/plots/{loss,accuracy,lr}.png",
    )
    p.add_argument("run_dir", help="a run directory (holding history.json)")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR/plots)")
    p.set_defaults(func=commands["plot"])

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
    p.set_defaults(func=commands["predict"])

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
    p.set_defaults(func=commands["interpret"])

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
    p.set_defaults(func=commands["lr-find"])
