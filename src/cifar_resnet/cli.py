"""The ``cifar-resnet`` command: argparse subcommands over the package's public functions, no logic of its own.

User mistakes (``ValueError`` and file errors) print as one line on stderr with exit status 2; set
``CIFAR_RESNET_TRACEBACK=1`` (or pass ``--traceback``) to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

PROG = "cifar-resnet"

# help text for every TrainConfig field: the CLI exposes each one as --field-name
CONFIG_HELP = {
    "data": "data source: an .npz file, an official archive (.tar.gz), an extracted folder, or cifar100/cifar10 "
            "(looked up in the download cache)",
    "val_split": "images held out from training (stratified, seeded) for validation; 0 evaluates on the "
                 "source's test split",
    "train_subset": "train on a stratified subset of this many images (0: all)",
    "model": "model name (see `cifar-resnet models`)",
    "model_kwargs": "model arguments as JSON, e.g. '{\"widths\": [32, 64, 128]}'",
    "epochs": "number of epochs",
    "batch_size": "training batch size",
    "optimizer": "adam | adamw | sgd | nesterov",
    "lr": "peak learning rate (OneCycleLR's max_lr)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "schedule": "per-batch schedule: onecycle | linear | cosine | constant",
    "warmup": "fraction of the steps spent warming up (OneCycleLR's pct_start)",
    "grad_clip": "gradient clipping threshold (0: off)",
    "grad_clip_mode": "value (clip each gradient element, the notebook's) | norm",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "crop_pad": "random-crop padding in pixels (reflect); 0 disables",
    "flip": "horizontal flips: none | random | alternating",
    "cutout": "cutout square side in pixels (0: off)",
    "tta": "flip test-time augmentation when evaluating",
    "eval_batch_size": "evaluation batch size",
    "seed": "random seed (initialisation, split, shuffling, augmentation)",
    "device": "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps",
    "amp": "bf16 autocast on CUDA",
    "channels_last": "channels_last memory format",
    "compile": "torch.compile the model for training",
}


class _Error(Exception):
    pass


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training configuration (defaults: the chosen preset's)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_text = CONFIG_HELP[f.name]
        if typ is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typ is dict:
            group.add_argument(flag, dest=f.name, type=_json_dict, default=None, metavar="JSON", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=None, metavar=f.name.upper(), help=help_text)


def get_args_parser() -> argparse.ArgumentParser:
    from .train import PRESETS

    parser = argparse.ArgumentParser(
        prog=PROG, description="Train, evaluate and inspect ResNet classifiers on CIFAR-100 and CIFAR-10.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model (or resume a run)",
                       description="Train a model; every run directory gets config.json, history.json, "
                                   "metrics.csv, last.pt (each epoch) and best.pt (best validation top-1).")
    p.add_argument("--preset", default="seed", choices=sorted(PRESETS),
                   help="named configuration to start from (default: seed, the notebook's recipe)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>-<model>)")
    p.add_argument("--resume", default=None, metavar="LAST_PT",
                   help="continue the run of this last.pt exactly where it stopped (only --device may change)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUT/tensorboard")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--params", action="store_true", help="also count parameters (100 classes)")
    p.set_defaults(func=cmd_models)

    data = sub.add_parser("data", help="data sources: info, download")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("info", help="sizes, classes, per-channel mean/std of a data source")
    p.add_argument("--data", required=True, help="an .npz file, an official archive, an extracted folder, "
                                                 "or cifar100/cifar10")
    p.add_argument("--root", default=None, help="download cache for cifar100/cifar10 "
                                                "(default ~/.cache/cifar-resnet)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("download", help="download an official archive (progress bar, md5 check)")
    p.add_argument("--dataset", required=True, choices=["cifar100", "cifar10"])
    p.add_argument("--root", default=None, help="directory to download into (default ~/.cache/cifar-resnet)")
    p.add_argument("--url", default=None, help="download from this URL instead of the official one (a mirror)")
    p.set_defaults(func=cmd_data_download)
    return parser


def cmd_train(args) -> int:
    from .train import TrainConfig, fit, get_preset

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    if args.resume:
        from .checkpoint import load_checkpoint
        state = load_checkpoint(args.resume)
        if "config" not in state:
            raise ValueError(f"{args.resume} holds no training configuration")
        extra = sorted(set(overrides) - {"device"})
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise ValueError(f"--resume continues a run as it was configured; drop {flags}")
        config = TrainConfig.from_dict({**state["config"], **overrides})
        out = args.out
    else:
        config = dataclasses.replace(get_preset(args.preset), **overrides)
        out = args.out or os.path.join("runs", f"{args.preset}-{config.model}")
    history = fit(config, out_dir=out, resume=args.resume, progress=args.progress,
                  tensorboard=args.tensorboard)
    if history.out_dir is not None:
        print(f"run directory: {history.out_dir}")
    return 0


def cmd_models(args) -> int:
    from .models import create_model, list_models

    for name in list_models():
        if args.params:
            n = sum(p.numel() for p in create_model(name, num_classes=100).parameters())
            print(f"{name:16s} {n:>12,d}")
        else:
            print(name)
    return 0


def cmd_data_info(args) -> int:
    from .datasets import describe, load_data

    info = describe(load_data(args.data, root=args.root))
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_data_download(args) -> int:
    from .datasets import download

    root = args.root or os.path.join(os.path.expanduser("~"), ".cache", "cifar-resnet")
    path = download(args.dataset, root, url=args.url)  # a mirror must match the official md5 too
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
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
