"""A trained model as a folder to share: ``model.safetensors``, ``config.json`` and a model card ``README.md``.

``export_hub`` writes the folder from a checkpoint (the layout of a Hugging Face Hub model repository:
weights that run no code when loaded, a config with the architecture, its arguments, the class names,
the input size, the normalisation, the calibration temperature and the evaluation's test-time
augmentation, and a card generated from the run: what it was trained on, how, how well, on what machine
and within which limits). The card's metrics are measured while exporting, by the same code as
``cifar-resnet evaluate``, and the folder is kept only when, reloaded, it gives the checkpoint's
probabilities on real images. ``from_pretrained`` loads a folder or a Hub repository id as a
:class:`~cifar_resnet.inference.Predictor`; ``push`` and ``pull`` go through ``huggingface_hub``
(``pip install 'cifar-resnet[hub]'``), which reads the user's token (``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import TrainConfig
from .console import format_duration
from .inference import EvalData, Predictor, resolve_split, run_checkpoint
from .metrics import compute_report, expected_calibration_error
from .model_folder import CARD, CONFIG, DTYPES, WEIGHTS, is_model_folder, sha256_file
from .version import __version__

__all__ = ["HubReport", "export_hub", "from_pretrained", "model_card", "pull", "push"]

TOLERANCE = 1e-6
CHECK_IMAGES = 256
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what the Hub calls the datasets this package trains on, and what their card says of them
DATASETS = {
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100", 100),
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10", 10),
}


@dataclass
class HubReport:
    path: Path
    dtype: str
    max_abs_diff: float  # largest |p_reloaded - p_checkpoint| over the check images (checkpoint in ``dtype``)
    dtype_diff: float  # largest difference to the checkpoint's own fp32 weights (0 for fp32 weights)
    images_checked: int
    check_split: str
    metrics: dict

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path)}


def _rounded(ckpt: Checkpoint, dtype: str) -> Checkpoint:
    """The checkpoint with its floating weights rounded to ``dtype`` (what the folder will hold)."""
    if dtype == "fp32":
        return ckpt
    weights = {k: v.to(DTYPES[dtype]).float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    return ckpt.replace(model=weights)


def _measure(ckpt: Checkpoint, source: EvalData) -> dict:
    """The card's metrics: ``evaluate``'s report on the split, with the ECE of the uncalibrated model."""
    run = run_checkpoint(ckpt, source, device="cpu", progress=False)
    report = compute_report(
        run.logits, run.labels, ckpt.classes, coarse_map=run.coarse_map, coarse_classes=run.coarse_classes
    )
    # the description names the data by its local path: not something to publish
    description = run.description.removeprefix(f"{run.data.source}: ")
    return {
        "split": run.split_name,
        "split_description": description,
        "images": len(run.labels),
        "top1": report["top1"],
        "top5": report["top5"],
        "superclass_top1": report.get("coarse_top1"),
        "loss": report["loss"],
        "ece": report["ece"],
        "ece_uncalibrated": expected_calibration_error(run.raw_logits.softmax(dim=1), run.labels),
        "temperature": ckpt.temperature,
        "tta": run.options.tta,
        "tta_translate": run.options.tta_translate,
        "precision": run.options.precision,
    }


def export_hub(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    *,
    dtype: str = "fp32",
    source: EvalData | None = None,
    license: str = "mit",
    log=print,
) -> HubReport:
    """Write ``checkpoint`` as a model folder ``out`` (weights in ``dtype``: fp32 or bf16), with a model card
    whose metrics are measured on the split ``source`` names (default: the run's own evaluation split).
    The folder is reloaded and run on up to 256 of those images; it is kept only when every probability
    is within 1e-6 of the checkpoint's (its weights rounded to ``dtype``), and it replaces ``out`` whole."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown weights dtype {dtype!r}; use fp32 or bf16")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and not (out.is_dir() and (is_model_folder(out) or not any(out.iterdir()))):
        raise ValueError(f"{out} exists and is not a model folder; give a new or empty folder")
    source = source or EvalData()
    metrics = _measure(ckpt, source)
    reference = Predictor.from_checkpoint(ckpt, "cpu", precision="fp32")
    split_name, split, _ = resolve_split(ckpt, source.load(ckpt), source.split)
    images = split.images[:CHECK_IMAGES]
    full = reference.probabilities(images).numpy()
    expected = Predictor.from_checkpoint(_rounded(ckpt, dtype), "cpu", precision="fp32").probabilities(images).numpy()
    extra = _extra_config(ckpt, reference, images.shape[1:3], metrics, license)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        config = ckpt.write_folder(tmp, dtype, extra)
        (tmp / CARD).write_text(model_card(config))
        reloaded = Predictor.from_checkpoint(load_checkpoint(tmp), "cpu", precision="fp32")
        got = reloaded.probabilities(images).numpy()
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE:
            raise ValueError(
                f"the model folder, reloaded, differs from the checkpoint by {diff:.2e} in a probability "
                f"(limit {TOLERANCE:g}); nothing was written"
            )
        for f in (WEIGHTS, CONFIG, CARD):
            os.chmod(tmp / f, 0o644)
        os.chmod(tmp, 0o755)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = HubReport(out, dtype, diff, float(np.abs(got - full).max()), len(images), split_name, metrics)
    if log:
        log(
            f"wrote {out}/ ({WEIGHTS} {(out / WEIGHTS).stat().st_size / 1e6:.1f} MB {dtype}, {CONFIG}, {CARD}); "
            f"reloaded and checked on {len(images)} {split_name} images: largest probability difference {diff:.1e}"
            + (f" ({report.dtype_diff:.1e} to the fp32 weights)" if dtype != "fp32" else "")
        )
    return report


def _extra_config(ckpt: Checkpoint, reference: Predictor, size, metrics: dict, license: str) -> dict:
    """What config.json holds beside the checkpoint's own description: superclasses, the input size, the
    metrics of the card, the source checkpoint, the package version and the licence."""
    return {
        "superclasses": reference.superclasses if any(reference.superclasses) else None,
        "pretrained_cfg": {
            "input_size": [3, *size],
            "mean": list(ckpt.mean),
            "std": list(ckpt.std),
            "input": "RGB, scaled to [0, 1], then (x - mean) / std",
        },
        "metrics": metrics,
        "source_checkpoint": Path(ckpt.source).name,
        "source_checkpoint_sha256": sha256_file(Path(ckpt.source)) if Path(ckpt.source).is_file() else None,
        "source_checkpoint_checksum": ckpt.checksum,
        "cifar_resnet_version": __version__,
        "license": license,
    }


def _replace_folder(new: Path, out: Path) -> None:
    """Put the folder ``new`` at ``out``: a rename, the old folder (if any) moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _command(training: dict) -> str:
    """The ``cifar-resnet train`` command that gives ``training``: its fields that differ from the defaults."""
    defaults = TrainConfig().to_dict()
    parts = ["cifar-resnet train"]
    for key, value in training.items():
        if key in ("plan",) or key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "data" and ("/" in str(value) or os.sep in str(value)):
            value = Path(value).name  # a local path: its name only
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, dict):
            parts.append(f"{flag} '{json.dumps(value)}'")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _front_matter(config: dict, name: str, dataset) -> list[str]:
    metrics = config["metrics"]
    hub_id, title, _ = dataset or (None, config.get("dataset") or "its own images", 0)
    lines = [
        "---",
        "library_name: cifar-resnet",
        f"license: {config.get('license') or 'other'}",
        "pipeline_tag: image-classification",
        "tags:",
        *(f"- {t}" for t in ("image-classification", "pytorch", "safetensors", "cifar-resnet", config["architecture"])),
    ]
    if hub_id:
        lines += ["datasets:", f"- {hub_id}"]
    lines += ["metrics:", "- accuracy", "model-index:", f"- name: {name}", "  results:", "  - task:"]
    lines += ["      type: image-classification", "      name: Image Classification", "    dataset:"]
    lines += [f"      name: {title} ({metrics['split_description']})", f"      type: {hub_id or 'imagefolder'}"]
    lines += [f"      split: {metrics['split']}", "    metrics:"]
    for label, value in (("Validation top-1", metrics["top1"]), ("Validation top-5", metrics["top5"])):
        lines += ["    - type: accuracy", f"      name: {label}", f"      value: {100 * value:.2f}"]
    return [*lines, "---", ""]


def model_card(config: dict) -> str:
    """The model card (``README.md``) of a model folder's ``config.json``: the Hub's metadata block, then
    what the model is, how to use it, how well it does on which split, how it was trained and on what
    machine, the dataset and its licence, and the limits of its use."""
    m, training = config["metrics"], config.get("training") or {}
    dataset = DATASETS.get(config.get("dataset") or "")
    title = dataset[1] if dataset else (config.get("dataset") or "its own images")
    name = f"{config['architecture']}-{(config.get('dataset') or 'images').replace('/', '-')}"
    size = "x".join(str(s) for s in config["pretrained_cfg"]["input_size"][1:])
    lines = _front_matter(config, name, dataset)
    lines += [
        f"# {config['architecture']} on {title}",
        "",
        (
            f"A `{config['architecture']}` image classifier for {size} RGB images of the {config['num_classes']} "
            f"classes of {title}, trained with cifar-resnet {config.get('cifar_resnet_version', '?')}. "
            f"{_pct(m['top1'])} top-1 on "
            f"{m['images']:,} validation images ({m['split_description']})."
        ),
        "",
        "## How to use",
        "",
        "```python",
        "from cifar_resnet import from_pretrained",
        "",
        'model = from_pretrained("USER/REPO")  # or the path of this folder',
        "probabilities = model.probabilities(images)  # uint8 (N, H, W, 3) RGB; calibrated",
        "print(model.top_k(probabilities, k=5))",
        "```",
        "",
        (
            "or `cifar-resnet predict FOLDER image.png`, `cifar-resnet evaluate FOLDER`, `cifar-resnet serve FOLDER`. "
            "Loading reads `model.safetensors` and `config.json` only: no pickle, no code from the folder."
        ),
        "",
    ]
    lines += _results(m)
    lines += _training(config, training, m)
    lines += ["", "## Dataset and licence", "", _dataset_text(config.get("dataset"), dataset, config.get("license"))]
    lines += _limits(config, size)
    return "\n".join(lines)


def _results(m: dict) -> list[str]:
    tta = [t for t, on in (("flip", m["tta"]), (f"{m['tta_translate']} px translate", m["tta_translate"])) if on]
    lines = [
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 | {_pct(m['top1'])} |",
        f"| top-5 | {_pct(m['top5'])} |",
    ]
    if m.get("superclass_top1") is not None:
        lines.append(
            f"| superclass top-1 (a prediction in the true superclass counts) | {_pct(m['superclass_top1'])} |"
        )
    lines += [
        f"| expected calibration error, 15 bins, before calibration | {m['ece_uncalibrated']:.4f} |",
        f"| expected calibration error, after (temperature {m['temperature']:.3f}) | {m['ece']:.4f} |",
        "",
        (
            f"Measured while exporting on {m['images']:,} images: {m['split_description']}, "
            f"{' + '.join(tta) + ' test-time augmentation' if tta else 'no test-time augmentation'}, {m['precision']}. "
            "These are validation figures, held out from the training images; they are not the official test "
            "split's."
        ),
    ]
    return lines


def _training(config: dict, training: dict, m: dict) -> list[str]:
    history, machine, init = config.get("history") or [], config.get("machine"), config.get("init")
    train_s = history[-1].get("train_seconds") if history else None
    total_s = sum(r.get("seconds", 0.0) for r in history) if history else None
    lines = [
        "",
        "## Training",
        "",
        "```",
        _command(training),
        "```",
        "",
        f"- recipe: {training.get('optimizer', '?')}, peak learning rate {training.get('lr', '?')}, batch "
        f"{training.get('batch_size', '?')}, {training.get('schedule', '?')} schedule, weight decay "
        f"{training.get('weight_decay', '?')}, label smoothing {training.get('label_smoothing', 0)}, "
        f"{config.get('epoch', '?')} epochs, {m['precision']}"
        + (f", within a {training['budget']} budget" if training.get("budget") not in (None, "", "none") else ""),
        f"- training time: {format_duration(train_s) if train_s else 'not recorded'}"
        + (f" ({format_duration(total_s)} with the evaluation after each epoch)" if total_s else ""),
        "- machine: "
        + (
            f"{machine['name']} ({machine['device']}, {machine['threads']} threads x {machine['processes']} "
            f"process{'es' if machine['processes'] > 1 else ''}), torch {machine['torch']}"
            if machine
            else "not recorded"
        ),
    ]
    if init:
        lines.append(
            f"- fine-tuned from `{init['source']}` ({init['model']}, {init['classes']} classes of "
            f"{init.get('dataset') or '?'}; {init['classifier']} classifier)"
        )
    return lines


def _limits(config: dict, size: str) -> list[str]:
    return [
        "",
        "## Intended use and limits",
        "",
        f"- For {size} RGB images of the {config['num_classes']} classes it knows; an image of anything else "
        "still gets one of them. Larger images are resized to " + size + " by `predict` and `serve`, which "
        "loses detail the model never saw.",
        (
            "- The accuracy above is on held-out images from the same collection; photos from another source "
            "(another camera, framing or resolution) will score lower."
        ),
        (
            "- The calibration temperature was fitted on the validation split; probabilities on other images may "
            "be over- or under-confident."
        ),
        "- Not for decisions about people. The training images were collected from the web and carry its biases.",
        "",
        "## Files",
        "",
        f"- `model.safetensors`: the weights ({config['weights_dtype']}), SHA-256 `{config['weights_sha256']}`",
        (
            "- `config.json`: architecture and arguments, class names, input size and normalisation, temperature, "
            "the training configuration and history, and the checksum of the weights"
        ),
        "",
    ]


def _dataset_text(name, dataset, license) -> str:
    if dataset is None:
        return (
            f"Trained on `{name or 'a folder of images'}`, the user's own images. The weights are released under "
            f"the `{license}` licence; the images' own licences apply to the data."
        )
    return (
        f"{dataset[1]} (Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, 2009): 32x32 "
        f"images in {dataset[2]} classes, a labelled subset of the 80 Million Tiny Images collection, which "
        "its authors withdrew in 2020 for offensive labels and images. CIFAR itself was labelled by hand "
        "and is still distributed by its authors (https://www.cs.toronto.edu/~kriz/cifar.html), with no "
        f"licence stated. The weights are released under the `{license}` licence."
    )


def _hub():
    try:  # an optional dependency: pip install 'cifar-resnet[hub]'
        import huggingface_hub
    except ImportError:
        raise ValueError("sharing on the Hub needs huggingface_hub: pip install 'cifar-resnet[hub]'") from None
    return huggingface_hub


def _check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repository id (USER/REPO)")


def push(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None, token=None):
    """Upload a model folder to the Hub repository ``repo_id`` (created when missing) as one commit of its
    three files; returns the commit's information. The folder is read back first: a folder whose files
    disagree is not pushed."""
    folder = Path(folder)
    _check_repo_id(repo_id)
    ckpt = load_checkpoint(folder)
    if not (folder / CARD).is_file():
        raise ValueError(f"{folder} has no {CARD}: write the folder with `cifar-resnet export --format hub`")
    hub = _hub()
    api = hub.HfApi(token=token)
    operations = [
        hub.CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in (WEIGHTS, CONFIG, CARD)
    ]
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.create_commit(
        repo_id,
        operations,
        commit_message=message or f"{ckpt.model_name} ({ckpt.num_classes} classes) from cifar-resnet {__version__}",
        repo_type="model",
    )


def pull(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of a Hub model repository, downloaded into (or, offline, found in) huggingface_hub's cache."""
    _check_repo_id(repo_id)
    hub = _hub()
    try:
        path = hub.snapshot_download(repo_id, revision=revision, allow_patterns=[WEIGHTS, CONFIG, CARD])
    except Exception as e:  # noqa: BLE001 - the hub raises many types (offline, not found, gated, ...)
        raise ValueError(
            f"could not get {repo_id} from the Hub: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    return Path(path)


def from_pretrained(path_or_repo_id: str | Path, device: str | torch.device = "auto", revision: str | None = None):
    """A shared model ready to predict (:class:`~cifar_resnet.inference.Predictor`: class names, normalisation,
    temperature): a model folder's path, or a Hub repository id (``USER/REPO``) fetched with :func:`pull`."""
    path = Path(path_or_repo_id)
    if not path.exists() and REPO_ID.match(str(path_or_repo_id)):
        path = pull(str(path_or_repo_id), revision)
    if not is_model_folder(path):
        raise CheckpointError(f"{path_or_repo_id} is not a model folder (model.safetensors and config.json)")
    return Predictor.from_checkpoint(load_checkpoint(path), device)
