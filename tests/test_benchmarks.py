"""Smoke tests of benchmarks/: every code path runs at tiny sizes and reports positive numbers.

No timing is asserted (the machine may be busy); only that the figures exist, are positive and finite, and
that the table is printed. The GPU-only sections (the seed preset's training loop, time-to-accuracy, the
correctness checks) are exercised on the CPU through the same functions.
"""

import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.memory import keep_freed_memory

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# every test here loads a benchmark script and most run one: slow
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def bench():
    return _load("bench")


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    """``bench.py --quick`` for one model, through its main() (each model still runs in a fresh process)."""
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    before = torch.get_num_threads()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            rc = bench.main(["--quick", "--models", "fast_small", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(before)
    assert rc == 0, stdout.getvalue()
    return json.loads(out.read_text()), stdout.getvalue()


def test_quick_run_json_has_every_figure(quick_run):
    res, _ = quick_run
    assert {"meta", "matmul", "loader", "loader_vs_step", "train", "wall_seconds"} <= set(res)
    assert res["meta"]["device"] == "cpu" and res["meta"]["quick"] is True
    assert _positive(res["matmul"][0]["gflops"]) and res["matmul"][0]["repeats"] >= 1

    rows = res["loader"]["rows"]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("ours") == 2 and kinds.count("baseline") >= 2
    assert {r.get("workers") for r in rows if r["kind"] == "baseline"} >= {0}
    for r in rows:
        assert _positive(r["images_per_s"]) and _positive(r["ms_per_batch"]) and r["repeats"] >= 1
        if r["kind"] == "ours":
            assert len(r["speedup"]) == kinds.count("baseline")
            assert all(_positive(v) for v in r["speedup"].values())

    fp32, bf16 = res["train"]  # one row per precision, each from its own process
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    for m in (fp32, bf16):
        assert "error" not in m, m
        assert m["model"] == "fast_small" and m["params"] > 0
        assert (m["recipe"], m["optimizer"], m["batch"]) == ("fast-cpu", "muon", 16)  # the step fit runs
        assert m["flops_per_image"]["train_step"] > 2 * m["flops_per_image"]["forward"] > 0
        for value in (
            m["train"]["median_s"],
            m["train_images_per_s"],
            m["train_gflops"],
            m["train_pct_of_matmul"],
            m["train_memory"]["peak_mb"],
        ):
            assert _positive(value)
    # inference is measured once, in the CPU's fp32
    assert "inference" not in bf16
    for value in (
        fp32["latency"]["median_ms"],
        fp32["inference"]["images_per_s"],
        fp32["inference"]["gflops"],
        fp32["inference"]["pct_of_matmul"],
        fp32["inference_memory"]["peak_mb"],
    ):
        assert _positive(value)
    assert [m["dtype"] for m in res["matmul"]] == ["float32", "bfloat16"]

    lvs = res["loader_vs_step"]
    assert "skipped" not in lvs and _positive(lvs["step_ms"]) and lvs["rows"]
    assert all(_positive(r["fraction_of_step"]) for r in lvs["rows"])


def test_quick_run_prints_the_table(quick_run):
    _, stdout = quick_run
    for heading in ("## Matrix multiply", "## Data loader", "## Training step", "## Inference", "% of a training step"):
        assert heading in stdout
    assert "median of" in stdout and "`fast_small`" in stdout


TINY = TrainConfig(
    model="fast",
    model_kwargs={"widths": [8, 16, 16], "stem_width": 8},
    epochs=2,
    batch_size=50,
    eval_batch_size=50,
    device="cpu",
    val_split=0,
)


def test_gpu_sections_run_on_cpu(bench, quick_run, synthetic):
    """The seed-preset step and time-to-accuracy code, and the table's GPU sections, at tiny sizes."""
    data = synthetic(n_train=100, n_val=50)
    step = bench.bench_preset_step(TINY, data.train, torch.device("cpu"), n_images=100, repeats=1, num_classes=10)
    assert _positive(step["images_per_s"]) and _positive(step["projected_minutes"])
    tta = bench.bench_time_to_accuracy(TINY, data, warmup_images=100)
    assert tta["epochs"] == 2 and len(tta["per_epoch"]) == 2
    assert _positive(tta["train_seconds"]) and 0 <= tta["val_top1_final"] <= 1

    res, _ = quick_run
    fake = dict(
        res,
        meta=dict(res["meta"], device="cuda", gpu="Test GPU"),
        seed_preset=step,
        time_to_accuracy={"preset": "tiny", **tta},
    )
    text = bench.render(fake)
    assert "Test GPU" in text and "validation top-1" in text and "minutes" in text
    skipped = bench.render(dict(fake, time_to_accuracy={"preset": "fast", "skipped": "no such preset"}))
    assert "Skipped: no such preset" in skipped


def test_missing_preset_is_skipped_with_a_message(bench, synthetic):
    args = bench.get_args_parser().parse_args(["--tta-preset", "no_such_preset"])
    out = bench.run_time_to_accuracy(args, synthetic(n_train=100, n_val=50), torch.device("cpu"))
    assert "skipped" in out and "no_such_preset" in out["skipped"]


def test_gpu_checks_pass_on_cpu():
    check = _load("gpu_check")
    assert check.check_loader(torch.device("cpu"), n=64, batch=32)["ok"]
    assert check.check_models_learn(torch.device("cpu"), ["fast_small"], steps=5, batch=8)["fast_small"]["ok"]


def test_peak_memory_reports_a_positive_peak(bench):
    mem = bench.PeakMemory(torch.device("cpu"))
    mem.reset()
    buf = np.ones(4 * 2**20)  # 32 MB
    buf += 1
    r = mem.read()
    assert r["peak_mb"] > 0 and r["method"]
    # every CPU method sees the 32 MB: the peak since the reset, since the process started (VmHWM, which
    # is at least the resident set with the buffer in it), or ru_maxrss (counted from 0)
    assert r["delta_mb"] >= 16, r


def test_sizes_are_consistent(bench):
    for (device, quick), s in bench.SIZES.items():
        assert s.batch <= s.loader_images and s.train_repeats >= 1 and s.latency_runs >= 1
        assert bench.STEP_REFERENCE[device] in s.models or quick
        assert dataclasses.asdict(s)["models"]
        # the loader is timed at the batch of the reference model's step, so the two compare
        reference = bench.recipe_config(
            bench.STEP_REFERENCE[device], torch.device(device), "fp32", s.train_batch, False
        )
        assert s.batch == reference.batch_size, (device, quick)


def test_the_training_rows_time_the_recipe_fit_runs(bench):
    """A row of the `fast` net is the fast-cpu preset's step: same optimizer, loss, clipping and batch."""
    from cifar_resnet.config import PRESETS

    config = bench.recipe_config("fast", torch.device("cpu"), "bf16", None, False)
    assert config == dataclasses.replace(PRESETS["fast-cpu"], precision="bf16", budget="none", device="cpu")
    assert config.batch_size == 512 and config.optimizer == "muon"
    seed = bench.recipe_config("seed_resnet", torch.device("cpu"), "fp32", 16, False)
    assert (seed.optimizer, seed.grad_clip, seed.batch_size) == ("adam", PRESETS["seed"].grad_clip, 16)


def test_step_variants_runs_every_variant(tmp_path, capsys):
    variants = _load("step_variants")
    out = tmp_path / "steps.json"
    assert (
        variants.main(["--batch-size", "8", "--repeats", "2", "--warmup", "0", "--threads", "1", "--json", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert [r["variant"] for r in res["rows"]] == list(variants.VARIANTS)
    assert all(len(r["times_s"]) == 2 and _positive(r["median_ms"]) for r in res["rows"])
    assert res["rows"][0]["ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| muon, relu |" in table and "ms/step" in table


@pytest.mark.long
def test_ddp_benchmark_runs_one_and_two_processes(tmp_path, capsys):
    ddp = _load("ddp")
    out = tmp_path / "rows.json"
    assert (
        ddp.main(
            [
                "--images",
                "400",
                "--val",
                "100",
                "--batch-size",
                "100",
                "--epochs",
                "2",
                "--model",
                "fast",
                "--model-kwargs",
                '{"widths": [8, 16, 16], "stem_width": 8}',
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["processes"] for r in rows] == [1, 2] and [r["threads_per_process"] for r in rows][1] >= 1
    assert all(math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0 for r in rows)
    assert "| 2 | " in capsys.readouterr().out


def test_serve_load_benchmark_runs_one_and_two_clients(tmp_path, capsys):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    load = _load("serve_load")
    model = load.make_checkpoint(tmp_path / "run", "fast", {"widths": [8, 16, 16], "stem_width": 8})
    out = tmp_path / "load.json"
    assert (
        load.main(
            ["--model", str(model), "--clients", "1,2", "--duration", "0.5", "--warmup", "0.2", "--json", str(out)]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["clients"] for r in rows] == [1, 2] and all(r["failed"] == 0 for r in rows)
    for r in rows:
        assert r["requests"] > 0 and r["batches"] > 0 and r["mean_batch_size"] >= 1
        assert all(_positive(r[k]) for k in ("requests_per_s", "p50_ms", "p99_ms", "server_rss_mb"))
        assert r["p50_ms"] <= r["p99_ms"]
    assert "| 2 | " in capsys.readouterr().out


def test_profile_step_prints_times_and_the_per_op_table(capsys):
    rc = _load("profile_step").main(
        [
            "--model",
            "fast",
            "--model-kwargs",
            '{"widths": [8, 16, 16]}',
            "--batch-size",
            "8",
            "--size",
            "16",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--rows",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "| fp32, channels_last |" in out and "| bf16, contiguous |" in out
    assert out.count("Per-op self CPU time") == 2 and "Self CPU" in out
    heading = out.splitlines()[0]  # names the CPU, its bf16 instructions, and that memory is kept as in fit
    assert "bf16 instructions: " in heading and "threads" in heading
    assert ("freed memory kept: yes" in heading) == keep_freed_memory()  # yes on Linux with glibc


def test_budget_report_reads_the_runs_and_draws_the_figure(tmp_path, monkeypatch, open_png):
    budget = _load("budget")
    monkeypatch.setattr(budget, "RUNS", tmp_path)
    assert budget.point_name(15, "fp32", 2, 0) == "budget-fp32-2t-15m"
    assert budget.point_name(2.5, "bf16", 1, 2, tag="zen5") == "budget-bf16-1t-2.5m-zen5-seed2"
    line = "the 15m budget: 21s measuring, then 13m 46s training and evaluating (predicted 13m 51s)"
    assert budget._trained_seconds(f"Epoch 7, ...\n{line}\n") == 21 + 13 * 60 + 46
    assert budget._trained_seconds("the 2m budget: 5s measuring, then 1m training and evaluating") == 65
    assert budget._trained_seconds("the 5m budget: 4m 57s used (99%: 12s measuring, then training") == 297
    (tmp_path / "budget-fp32-2t-5m.log").write_text("-m cifar_resnet train --budget 5m\n" + line.replace("15m", "5m"))
    config = {"epochs": 2, "plan": {"epochs": 2}, "model": "fast", "progressive": "16:0.25,24:0.25", "batch_size": 512}
    (tmp_path / "budget-fp32-2t-5m-config.json").write_text(json.dumps(config))
    (tmp_path / "budget-fp32-2t-5m-metrics.csv").write_text("epoch,val_top1\n1,0.2\n2,0.41\n")
    summary = budget.write_summary("budget-fp32-2t-5m", 5.0, "fp32", 2, 0, None)
    assert summary["val_top1"] == 0.41 and summary["epochs"] == 2 and summary["fits"]
    refused = {"name": "budget-fp32-2t-2m", "budget_min": 2, "precision": "fp32", "threads": 2, "seed": 0}
    refused.update(fits=False, cpu="X", message="cifar-resnet: error: --budget 2m: one epoch needs 3m after 20s")
    (tmp_path / "budget-fp32-2t-2m.json").write_text(json.dumps(refused))
    png = tmp_path / "budget.png"
    table = budget.report(png).splitlines()
    assert (
        len(table) == 4
        and "refused: one epoch needs 3m" in table[2]
        and "| fp32 | fast | 2 | 5 min | 0 | 2 | 14.1 | 41.00% |" in table[3]
    )
    assert open_png(png).shape[0] > 100
    # the seeds of one budget are one row: their mean, standard deviation and values
    (tmp_path / "budget-fp32-2t-5m-seed1.log").write_text("x\n" + line.replace("15m", "5m").replace("46s", "58s"))
    (tmp_path / "budget-fp32-2t-5m-seed1-config.json").write_text(json.dumps({**config, "epochs": 3}))
    (tmp_path / "budget-fp32-2t-5m-seed1-metrics.csv").write_text("epoch,val_top1\n1,0.2\n3,0.43\n")
    budget.write_summary("budget-fp32-2t-5m-seed1", 5.0, "fp32", 2, 1, None)
    table = budget.report(png).splitlines()
    assert len(table) == 4 and "| 2 | 5 min | 0, 1 | 2-3 | 14.2 | 42.00% ± 1.41 (41.00, 43.00) |" in table[3]
    # another recipe at the same budget is a row of its own; a summary may name any run (its command given)
    (tmp_path / "w48.log").write_text("fast (1,130,592 parameters) on cpu\n" + line.replace("15m", "5m"))
    (tmp_path / "w48-config.json").write_text(json.dumps({**config, "model_kwargs": {"widths": [48, 192, 192]}}))
    (tmp_path / "w48-metrics.csv").write_text("epoch,val_top1\n2,0.45\n")
    assert budget.write_summary("w48", 5.0, "fp32", 2, 0, None, command="train ...")["command"] == "train ..."
    table = budget.report(png).splitlines()
    assert len(table) == 5 and any("| fast 48/192/192 | 2 | 5 min | 0 | 2 | 14.1 | 45.00% |" in row for row in table)


@pytest.mark.long
def test_malloc_step_times_both_settings_in_processes_of_their_own(capsys):
    rc = _load("malloc_step").main(["--size", "16", "--batch", "16", "--steps", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "fast-cpu-fp32 (fp32, batch 16, 16 px)" in out
    rows = [line for line in out.splitlines() if line.startswith(("| glibc", "| freed"))]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
    assert rows[1].split("|")[2].strip() == ("yes" if sys.platform.startswith("linux") else "no")


@pytest.mark.long
def test_budget_replan_runs_quiet_and_disturbed_runs_and_tabulates_them(tmp_path, write_npz):
    """Two short budget runs of a tiny net, one disturbed by a busy process, each from its own ``src`` (this
    checkout's, and the same through a link, as a baseline checkout would be): their files, summaries, the
    budget figure of this checkout's run and the table."""
    bench = _load("budget_replan")
    npz = write_npz(tmp_path / "d.npz", n=400)
    (tmp_path / "src").symlink_to(bench.ROOT / "src")
    flags = ["--val-split", "100", "--model-kwargs", '{"widths": [8, 16, 16], "stem_width": 8}']
    flags += ["--batch-size", "50", "--eval-batch-size", "100", "--epochs", "12"]
    args = bench.argparse.Namespace(
        data=str(npz), budget="12s", disturb="1s-3s", busy=1, out=tmp_path / "out", extra=flags, tag=""
    )
    args.out.mkdir()
    quiet = bench.run_one(args, "quiet-replan-seed0", 0, False, bench.ROOT / "src")
    disturbed = bench.run_one(args, "disturbed-baseline-seed0", 0, True, tmp_path / "src")
    assert quiet["checkout"] == "replan" and disturbed["checkout"] == "baseline" and disturbed["busy"] == 1
    for s in (quiet, disturbed):
        # a 12 s budget is mostly start-up and evaluation, in whole seconds: only the plumbing is checked here
        assert 0 < s["used_share"] < 3 and 0 <= s["val_top1"] <= 1 and s["epochs"] >= 1
    assert (args.out / "quiet-replan-seed0-budget.png").is_file()
    assert not (args.out / "disturbed-baseline-seed0-budget.png").exists()
    table = bench.report(args.out).splitlines()
    assert len(table) == 4 and table[2].startswith("| quiet | replan | 0 |")
    assert table[3].startswith("| disturbed | baseline | 0 |")
    args.tag = "v2"
    assert bench.run_one(args, "quiet-replan-v2-seed0", 0, False, bench.ROOT / "src")["checkout"] == "replan (v2)"
    assert len(bench.report(args.out).splitlines()) == 5


def test_decode_times_one_at_a_time_every_core_and_the_cache(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the large JPEGs are cut from scikit-learn's bundled photographs")
    decode = _load("decode")
    assert decode.main(["--small", "40", "--large", "6", "--repeats", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "decode.json").read_text())
    for name, files in (("png-32px", 40), ("jpeg-500px", 6)):
        row = res[name]
        assert row["files"] == files and _positive(row["one_at_a_time_images_per_s"]) and _positive(row["speedup"])
        assert _positive(row["parallel_images_per_s"]) and _positive(row["cached_load_s"])
    assert "again from the cache" in capsys.readouterr().out
