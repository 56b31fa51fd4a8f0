"""The core commands (train, data, models) end to end, and their one-line errors."""

import copy
import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cifar_resnet import cli as cli_module
from cifar_resnet.cli import main
from cifar_resnet.config import PRESETS, TrainConfig, get_preset
from cifar_resnet.sweep import SweepError, load_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = [
    "--model",
    "fast",
    "--model-kwargs",
    '{"widths": [8, 16, 16], "stem_width": 8}',
    "--batch-size",
    "20",
    "--device",
    "cpu",
    "--no-progress",
    "--val-split",
    "20",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
]


def _one_error_line(capsys):
    # progress bars (tqdm, carriage returns) may precede the error; the error itself is one line
    err = [ln for ln in capsys.readouterr().err.replace("\r", "\n").strip().splitlines() if "%|" not in ln]
    assert len(err) == 1 and err[0].startswith("cifar-resnet: error: "), err
    return err[0]


def test_train_then_resume_then_refuse_finished(tmp_path, capsys, write_npz):
    data = write_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "2", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "Epoch 1, last_lr: " in text and "Epoch 2, last_lr: " in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["model_kwargs"] == {"widths": [8, 16, 16], "stem_width": 8}
    assert main(["train", "--resume", str(out / "last.pt")]) == 2
    assert "finished run (2 of 2 epochs)" in _one_error_line(capsys)
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "5"]) == 2
    assert "drop --epochs" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--model-kwargs", '{"blocks": 3}'], "unknown argument blocks"),
        (["--optimizer", "rmsprop"], "unknown optimizer"),
        (
            ["--val-split", "100000"],
            "the validation split (--val-split) must be between 0 and 50, got 100000",
        ),  # 60 images of 10 classes, each keeping one
    ],
)
def test_train_bad_arguments_one_line(tmp_path, capsys, write_npz, args, message):
    data = write_npz(tmp_path / "d.npz")
    argv = ["train", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r"), *TINY, *args]
    assert main(argv) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file"),
        ("labels", "must lie in 0..99"),
        ("dtype", "uint8"),
        ("keys", "y_train"),
        ("garbage", "d.npz"),
    ],
)
def test_bad_npz_is_one_line(tmp_path, capsys, write_npz, kind, message):
    path = tmp_path / "d.npz"
    if kind == "labels":
        write_npz(path, y_train=np.full(60, 200, dtype=np.uint8))
    elif kind == "dtype":
        write_npz(path, x_train=np.zeros((60, 32, 32, 3), dtype=np.float32))
    elif kind == "keys":
        np.savez(path, images=np.zeros((4, 32, 32, 3), dtype=np.uint8))
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not a zip")
    assert main(["data", "info", "--data", str(path)]) == 2
    assert message in _one_error_line(capsys)


def test_data_info_json(tmp_path, capsys, write_npz):
    assert main(["data", "info", "--data", str(write_npz(tmp_path / "d.npz")), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"] == 60 and info["num_classes"] == 10 and len(info["mean"]) == 3


def test_download_md5_mismatch_leaves_nothing(tmp_path, capsys):
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"not the archive")
    root = tmp_path / "cache"
    assert main(["data", "download", "--dataset", "cifar10", "--root", str(root), "--url", fake.as_uri()]) == 2
    assert "md5" in _one_error_line(capsys)
    assert not root.exists() or not any(root.iterdir())


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert {"seed_resnet", "resnet18", "resnet50", "fast", "fast_small"} <= set(names)


def test_console_entry_point_runs_without_traceback(tmp_path):
    """The installed command (python -m) prints one line and exits 2 on a missing file."""
    r = subprocess.run(
        [sys.executable, "-m", "cifar_resnet", "data", "info", "--data", str(tmp_path / "x.npz")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-resnet: error: no such file"), r.stderr


@pytest.mark.parametrize(
    "flags, precision, warnings",
    [
        (["--cpu-amp", "on"], "bf16", ["warning: --cpu-amp is deprecated; use --precision bf16"]),
        (["--cpu-amp", "off"], "fp32", ["warning: --cpu-amp is deprecated; use --precision fp32"]),
        (["--cpu-amp", "auto"], "auto", ["warning: --cpu-amp is deprecated; use --precision auto"]),
        (["--no-amp"], "fp32", ["warning: --no-amp is deprecated; use --precision fp32"]),
        (["--amp"], "auto", ["warning: --amp is deprecated; use --precision auto"]),  # bf16 on CUDA, as before
        (
            ["--no-amp", "--cpu-amp", "on"],
            "bf16",
            [
                "warning: --no-amp is deprecated; use --precision bf16",
                "warning: --cpu-amp is deprecated; use --precision bf16",
            ],
        ),
        (
            ["--cpu-amp", "on", "--precision", "fp32"],
            "fp32",
            ["warning: --cpu-amp is deprecated and ignored beside --precision"],
        ),
        (["--precision", "fp16"], "fp16", []),
    ],
)
@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_deprecated_amp_flags_map_to_precision_and_warn(monkeypatch, capsys, command, flags, precision, warnings):
    configs = []

    def fake_fit(config, **kwargs):
        configs.append(config)
        return SimpleNamespace(out_dir=None)

    def fake_lr_find(config, **kwargs):
        configs.append(config)
        raise ValueError("stopped here")

    monkeypatch.setattr(cli_module, "fit", fake_fit)
    monkeypatch.setattr(cli_module, "lr_find_config", fake_lr_find)
    main([command, "--preset", "seed", "--device", "cpu", *flags])
    assert [c.precision for c in configs] == [precision]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == warnings


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_deprecated_amp_flags_are_hidden_from_help(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--precision" in out and "--cpu-amp" not in out and "--amp" not in out and "--no-amp" not in out


# what fast-cpu-fp32 changes in fast-cpu: the recipe of experiments/fp32-recipe-search
FP32_NET = {"widths": [32, 128, 128], "act": "relu"}
FP32_RECIPE = {
    "model_kwargs": FP32_NET,
    "progressive": "20:0.5",
    "lr": 3.0,
    "muon_lr": 0.2,
    "weight_decay": 1.1e-4,
    "label_smoothing": 0.11,
    "warmup": 0.19,
    "channels_last": False,
    "precision": "fp32",
    "epochs": 30,
}
# each of those fields set on the command line (to fast-cpu's own values but progressive's and epochs')
FAST_CPU_FLAGS = ["--model-kwargs", "{}", "--progressive", "16:0.25", "--epochs", "17", "--lr", "2.0"]
FAST_CPU_FLAGS += ["--muon-lr", "0.1", "--weight-decay", "5e-4", "--label-smoothing", "0.2", "--warmup", "0.2"]
FAST_CPU_FLAGS += ["--channels-last"]
WIDE_NET = {"widths": [64, 128, 128]}


@pytest.mark.parametrize(
    "bf16, flags, preset, model_kwargs, progressive, precision",
    [
        (False, [], "fast-cpu-fp32", FP32_NET, "20:0.5", "auto"),  # a CPU without bf16: the fp32 recipe
        (True, [], "fast-cpu", {}, "16:0.25,24:0.25", "auto"),  # bf16 here: the preset as it is
        (True, ["--precision", "fp32"], "fast-cpu-fp32", FP32_NET, "20:0.5", "fp32"),
        (False, ["--precision", "bf16"], "fast-cpu", {}, "16:0.25,24:0.25", "bf16"),
        # a flag given on the command line wins over the fp32 recipe's value
        (False, ["--progressive", "16:0.25"], "fast-cpu-fp32", FP32_NET, "16:0.25", "auto"),
        (False, ["--model-kwargs", json.dumps(WIDE_NET)], "fast-cpu-fp32", WIDE_NET, None, "auto"),
        # every field the recipe changes set on the command line: the same run, and nothing to say
        (False, FAST_CPU_FLAGS, "fast-cpu", {}, "16:0.25", "auto"),
    ],
)
@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_fast_cpu_starts_from_its_fp32_recipe_where_it_trains_in_fp32(
    monkeypatch, capsys, command, bf16, flags, preset, model_kwargs, progressive, precision
):
    if command == "lr-find" and "--progressive" in flags:
        pytest.skip("lr-find has no --progressive (it trains at full size)")
    configs = []

    def fake_fit(config, **kwargs):
        configs.append(config)
        return SimpleNamespace(out_dir=None)

    def fake_lr_find(config, **kwargs):
        configs.append(config)
        raise ValueError("stopped here")

    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: bf16)
    monkeypatch.setattr(cli_module, "fit", fake_fit)
    monkeypatch.setattr(cli_module, "lr_find_config", fake_lr_find)
    before = copy.deepcopy(PRESETS["fast-cpu"])
    main([command, "--preset", "fast-cpu", "--device", "cpu", *flags])
    (config,) = configs
    assert config.precision == precision and config.model == "fast" and config.budget == "15m"
    assert config.model_kwargs == model_kwargs
    if progressive is not None:
        assert config.progressive == progressive
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "its fp32 recipe" in line]
    if preset == "fast-cpu":
        assert said == []
    else:  # one line says which preset and what it changes, but not what the command line set itself
        (line,) = said
        assert line.startswith("fast-cpu trains in fp32 here (") and "preset fast-cpu-fp32: " in line
        assert ("model_kwargs=" in line) == ("--model-kwargs" not in flags)
        assert ("progressive=" in line) == ("--progressive" not in flags)
        assert ("epochs=30" in line) == ("--epochs" not in flags)
    # the presets themselves never change, whatever the machine: a sweep naming fast-cpu runs it as written
    assert PRESETS["fast-cpu"] == before and get_preset("fast-cpu") == before
    assert PRESETS["fast-cpu-fp32"] == dataclasses.replace(before, **FP32_RECIPE)


# ------------------------------------------------------------------------------------------------
# one duration grammar: the command line, a config and a sweep file agree
# ------------------------------------------------------------------------------------------------

GOOD_DURATIONS = [("900", 900.0), ("900s", 900.0), ("15m", 900.0), ("1h", 3600.0), ("1h30m", 5400.0)]
GOOD_DURATIONS += [("2.5m", 150.0), ("none", None)]
BAD_DURATIONS = ["abc", "0", "0s", "-5m", "15 minutes", "1x", "h", "1e3"]


def _duration_three_ways(text, tmp_path, capsys) -> list:
    """``text`` as ``train --save-every``, as ``TrainConfig(budget=...)`` and as a sweep file's ``budget``:
    each its seconds (None for none), or ``("refused", why)``."""
    out = []
    try:
        out.append(cli_module.get_args_parser().parse_args(["train", f"--save-every={text}"]).save_every)
    except SystemExit:
        out.append(("refused", capsys.readouterr().err.strip().splitlines()[-1]))
    try:
        out.append(TrainConfig(budget=text).budget_seconds)
    except ValueError as e:
        out.append(("refused", str(e)))
    sweep = tmp_path / "durations.toml"
    sweep.write_text(f'[base]\nbudget = "{text}"\n\n[grid.variants]\nbase = {{}}\n', encoding="utf-8")
    try:
        out.append(load_sweep(sweep).grid_config("base", 0)[1].budget_seconds)
    except SweepError as e:
        out.append(("refused", str(e)))
    return out


@pytest.mark.parametrize(("text", "seconds"), GOOD_DURATIONS)
def test_a_duration_means_the_same_on_the_command_line_in_a_config_and_in_a_sweep_file(text, seconds, tmp_path, capsys):
    assert _duration_three_ways(text, tmp_path, capsys) == [seconds] * 3


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_a_bad_duration_is_refused_alike_on_the_command_line_in_a_config_and_in_a_sweep_file(text, tmp_path, capsys):
    results = _duration_three_ways(text, tmp_path, capsys)
    assert all(isinstance(r, tuple) and r[0] == "refused" for r in results), results
    why = results[1][1].removeprefix("--budget: ")  # the config's reason, without the flag it names
    assert why != results[1][1] and all(why in message for _, message in results), results
