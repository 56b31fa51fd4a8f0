"""The ``cifar-resnet`` command: one function per subcommand over the package's public functions.

Each command loads what the call needs (a checkpoint and the evaluation options its run and the flags give,
:func:`~cifar_resnet.inference.eval_options`), calls one library function and prints what it returns; the
figures and files are the library's. The flags are declared in :mod:`cifar_resnet.cli_parsers`; the deprecated
``--amp``/``--cpu-amp`` of ``train`` and ``lr-find`` map to ``--precision``
(:func:`~cifar_resnet.device.legacy_precision`) with a warning. User mistakes (``ValueError``, file errors)
print as one line on stderr with exit status 2; ``--traceback`` or ``CIFAR_RESNET_TRACEBACK=1`` shows the
full traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import typing
from pathlib import Path

import torch

from .budget import replay_config
from .calibration import calibrate
from .checkpoint import Checkpoint, RunDir, load_checkpoint
from .cli_parsers import PROG, SERVE_LIMITS, build_parser
from .config import TrainConfig, get_preset, preset_for_run
from .console import one_line
from .data import DEFAULT_ROOT, describe, download, load_data
from .device import legacy_precision
from .engine import EvalOptions
from .evaluate import evaluate_checkpoint, format_report
from .export import export_model
from .hub import export_hub, pull, push
from .inference import EvalData, EvalOverrides, eval_options, load_predictor
from .interpret import Interpretation, check_out_dir, format_interpretation, write_report
from .lr_find import LR_FIND_FIELDS, lr_find_config
from .models import create_model, list_models
from .plots import plot_lr_find, plot_reliability, plot_run, save_figure
from .predict import DatasetImages, ImageFiles, format_results, predict, show_results
from .serve_limits import ServeLimits
from .sweep import load_sweep, report, rows_with_emulated_bf16, run_workers, select_variants, work
from .train import TrainingInterrupted, fit


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
    """The parser of every command (declared in :mod:`cifar_resnet.cli_parsers`), each bound to its function."""
    return build_parser(
        {
            "train": cmd_train,
            "models": cmd_models,
            "data info": cmd_data_info,
            "data download": cmd_data_download,
            "evaluate": cmd_evaluate,
            "plot": cmd_plot,
            "predict": cmd_predict,
            "interpret": cmd_interpret,
            "lr-find": cmd_lr_find,
            "calibrate": cmd_calibrate,
            "export": cmd_export,
            "push": cmd_push,
            "pull": cmd_pull,
            "serve": cmd_serve,
            "sweep run": cmd_sweep_run,
            "sweep report": cmd_sweep_report,
        }
    )


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
    if args.fmt == "hub":
        report = export_hub(
            args.checkpoint,
            args.out,
            dtype=args.weights_dtype,
            source=EvalData(args.data, args.split),
            license=args.license,
            log=None if args.json else print,
        )
        if args.json:
            print(json.dumps(report.to_dict(), indent=1))
        return 0
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


def cmd_push(args) -> int:
    commit = push(args.folder, args.repo_id, private=args.private, message=args.message)
    print(f"pushed {args.folder} to {getattr(commit, 'commit_url', args.repo_id)}")
    return 0


def cmd_pull(args) -> int:
    print(pull(args.repo_id, args.revision))
    return 0


def cmd_serve(args) -> int:
    try:  # an optional dependency: imported only when asked for
        from .serve import serve
    except ImportError as e:
        raise ValueError(
            f"serve needs the serve extra ({e.name} is missing): pip install 'cifar-resnet[serve]'"
        ) from None
    limits = ServeLimits(**{f.name: getattr(args, f.name) for f in SERVE_LIMITS})
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
        if (args.resume and args.resume != "auto") or args.replay:
            flag = "--replay reruns" if args.replay else "--resume continues"
            extra = sorted(set(overrides) - {"device"})
            if extra:
                flags = ", ".join("--" + k.replace("_", "-") for k in extra)
                raise ValueError(f"{flag} a run as it was configured; drop {flags}")
        if args.replay:
            if args.resume:
                raise ValueError("--replay starts a run afresh; --resume continues one: give one of them")
            config = _replay_config(args.replay, overrides)
            out = args.out or Path(args.replay).with_name(Path(args.replay).name + "-replay")
            history = fit(config, out_dir=out, **options)
        elif args.resume and args.resume != "auto":
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


def _replay_config(run_dir: str, overrides: dict) -> TrainConfig:
    """The config of ``run_dir``'s budget run, set to replay its trace (on ``--device`` where given)."""
    path = RunDir(run_dir).config_json
    if not path.is_file():
        raise ValueError(f"--replay {run_dir}: no config.json there (is it a run directory?)")
    try:
        config = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"--replay: {path} is not a run's config ({one_line(e)})") from None
    return dataclasses.replace(replay_config(config, str(path)), **overrides)


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
        where = f" (rank {_rank()})" if _distributed() else ""
        print(f"{PROG}: error{where}: {one_line(e, limit=1000)}", file=sys.stderr)  # a user's mistake, whole
        return 2
    except RuntimeError as e:
        # under torchrun, a process whose peer failed sees the broken connection; the peer printed why
        if show_tb or not _distributed():
            raise
        print(
            f"{PROG}: error (rank {_rank()}): lost contact with another process, which probably failed "
            f"(see its message): {one_line(e)}",
            file=sys.stderr,
        )
        return 1


def run(argv: list[str] | None = None) -> typing.NoReturn:
    """The ``cifar-resnet`` command: :func:`main`, then exit with its code. Under torchrun the process ends
    with ``os._exit`` once its output is flushed, skipping the interpreter's shutdown: DistributedDataParallel
    keeps the gloo process group alive past ``destroy_process_group`` (its threads with it), and a gloo
    thread that frees a finished collective's tensors while the interpreter shuts down can abort the process
    (SIGABRT, "terminate called without an active exception") after a finished run. Everything the run
    writes is closed and renamed before ``main`` returns."""
    code = main(argv)
    if _distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
