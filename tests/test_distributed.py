"""Training under torchrun (gloo, 2 CPU processes) and its faults, on real CIFAR-100 images.

Tolerance between 1 and 2 processes: with --sync-bn both compute the same global-batch statistics and the
same mean gradient, only summed in another order (two partial sums of float32 values instead of one), so
the first step differs by a few float32 roundings (~1e-7 relative). Training amplifies such differences
(momentum SGD on a network with batch norm is chaotic): measured on these runs (2 epochs of 20 steps, lr
0.05), the largest difference of a weight was 9e-5 and of a BN running statistic 3e-4, and 5e-4 / 8e-3
after a third epoch. The tests therefore compare after 2 epochs with 1e-3 on every weight, 5e-3 on the
running statistics, 1e-3 on losses and two images (2/200) on accuracies. A real difference stays well
outside: the same 2 processes without --sync-bn (BN statistics of half the batch) differ by 4e-2 on the
weights and 0.45 on the running statistics (``test_without_sync_bn_the_processes_differ_measurably``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_resnet import TrainConfig, engine, fit, load_checkpoint
from cifar_resnet.checkpoint import CheckpointError, payload_checksum
from cifar_resnet.cli import main
from cifar_resnet.signals import StopSignals
from cifar_resnet.train import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL_WEIGHTS, ATOL_STATS, ATOL_LOSS, ATOL_ACC = 1e-3, 5e-3, 1e-3, 2 / 200
TINY = {
    "model": "fast",
    "model_kwargs": {"widths": [8, 16, 16], "stem_width": 8},
    "optimizer": "sgd",
    "lr": 0.05,
    "grad_clip": 0.0,
    "batch_size": 40,
    "eval_batch_size": 100,
    "device": "cpu",
    "val_split": 200,
    "epochs": 2,
    "sync_bn": True,
    # fp32 whatever the CPU (auto is bf16 where it has AMX or AVX512_BF16): these tests compare N processes
    # with one to 1e-3, which bf16's rounding of differently ordered sums would exceed
    "precision": "fp32",
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _args(npz: Path, out: Path, **overrides) -> list[str]:
    config = {**TINY, "data": str(npz), **overrides}
    args = ["train", "--out", str(out), "--no-progress"]
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def _cmd(args: list[str], nproc: int = 1, torchrun: tuple[str, ...] = ()) -> list[str]:
    if nproc == 1 and not torchrun:
        return [sys.executable, "-m", "cifar_resnet", *args]
    launch = list(torchrun) or ["--standalone", "--nproc-per-node", str(nproc)]
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "cifar_resnet", *args]


def _run(args, nproc=1, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(args, nproc, **kwargs), env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _interrupt_mid_epoch(args: list[str], out: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    """Start a run that saves every 2 steps, send SIGTERM once its first checkpoint (step 2 of epoch 1)
    is there, and return the finished process: it stops a few steps into its first epoch."""
    proc = subprocess.Popen(
        _cmd([*args, "--save-every-steps", "2"], nproc),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def _max_diff(a: dict, b: dict, stats: bool = False) -> float:
    """The largest difference of the weights (``stats``: of the BN running statistics)."""
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max())
        for k in a
        if a[k].is_floating_point() and ("running_" in k) == stats
    )


def _assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert _max_diff(wa, wb) <= ATOL_WEIGHTS and _max_diff(wa, wb, stats=True) <= ATOL_STATS


def _assert_same_history(a: list[dict], b: list[dict], exact: bool = False) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
            if exact:
                assert ra[key] == rb[key], (key, ra, rb)
            else:
                assert abs(ra[key] - rb[key]) <= (ATOL_ACC + 1e-9 if "top" in key else ATOL_LOSS), (key, ra, rb)
        assert len(ra["lrs"]) == len(rb["lrs"])


@pytest.fixture(scope="module")
def small_npz(real_data, tmp_path_factory) -> Path:
    """1,000 real CIFAR-100 training images (10 per class) as an .npz, quick for every process to load."""
    rng = np.random.default_rng(0)
    idx = np.sort(
        np.concatenate([rng.choice(np.flatnonzero(real_data.train.labels == c), 10, replace=False) for c in range(100)])
    )
    path = tmp_path_factory.mktemp("small") / "cifar100-small.npz"
    np.savez(
        path,
        x_train=real_data.train.images[idx],
        y_train=real_data.train.labels[idx],
        fine_label_names=np.array(real_data.classes),
    )
    return path


@pytest.fixture(scope="module")
def one_process(small_npz, tmp_path_factory) -> Path:
    """The reference: one process (in this process, one thread), uninterrupted."""
    out = tmp_path_factory.mktemp("one")
    fit(TrainConfig(**{**TINY, "data": str(small_npz)}), out_dir=out, log=None, progress=False)
    return out


@pytest.fixture(scope="module")
def two_processes(small_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two")
    _run(_args(small_npz, out), nproc=2)
    return out


def test_two_processes_with_sync_bn_compute_what_one_computes(one_process, two_processes):
    _assert_close_weights(one_process / "last.pt", two_processes / "last.pt")
    _assert_same_history(
        load_checkpoint(one_process / "last.pt").history, load_checkpoint(two_processes / "last.pt").history
    )


@pytest.mark.long
def test_without_sync_bn_the_processes_differ_measurably(small_npz, one_process, tmp_path):
    """The tolerance above is tight enough to see per-process BN statistics (what --sync-bn removes)."""
    _run(_args(small_npz, tmp_path, sync_bn=False), nproc=2)
    two = _weights(tmp_path / "last.pt")
    one = _weights(one_process / "last.pt")  # sync_bn changes nothing in one process
    assert _max_diff(one, two) > 10 * ATOL_WEIGHTS and _max_diff(one, two, stats=True) > 10 * ATOL_STATS


def test_only_rank_0_prints_and_writes(two_processes):
    files = sorted(p.name for p in two_processes.iterdir())
    assert files == ["best.pt", "config.json", "history.json", "last.pt", "metrics.csv"]


_GLOO_THREADS = r"""
import os, torch
from cifar_resnet.distributed import setup, teardown

def gloo_threads():
    names = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    return sum(name.startswith(("pt_gloo", "gloo")) for name in names)

dist, _ = setup("cpu")
dist.agree(True)
dist.sum(torch.ones(3))
before = gloo_threads()
teardown(dist)
line = f"rank {dist.rank}: {before} gloo threads before teardown, {gloo_threads()} after\n"
os.write(1, line.encode())  # one write: the two ranks share the pipe
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
@pytest.mark.long
def test_teardown_ends_gloo_s_threads_before_the_interpreter_exits(tmp_path):
    """A gloo worker thread still alive at interpreter shutdown can abort a finished run (SIGABRT, "terminate
    called without an active exception": the thread frees an all-reduce's tensors while the interpreter is
    finalising). ``Dist.control`` kept the group, so its threads, alive past teardown. (DDP keeps it too,
    beyond our reach: ``cli.run`` therefore ends a torchrun process with ``os._exit``, tested below.)"""
    script = tmp_path / "threads.py"
    script.write_text(_GLOO_THREADS)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank"))
    assert len(lines) == 2 and all(line.endswith(", 0 after") for line in lines), proc.stdout
    assert all(" 0 gloo threads before" not in line for line in lines), proc.stdout  # the count sees them


def test_under_torchrun_the_command_ends_without_the_interpreter_s_shutdown(monkeypatch, capsys):
    """``cli.run`` flushes and ends a torchrun process with ``os._exit(code)`` (see its docstring); a plain
    process exits as usual."""
    from cifar_resnet import cli

    exits = []
    monkeypatch.setattr(cli.os, "_exit", lambda code: exits.append(code))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):  # the patched os._exit returns, so run goes on to sys.exit
        cli.run(["models"])
    assert exits == [0] and "fast" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as plain:
        cli.run(["models"])
    assert plain.value.code == 0 and exits == [0]


@pytest.mark.long
def test_sigterm_mid_epoch_then_resume_is_bit_identical(small_npz, one_process, tmp_path):
    stopped = _interrupt_mid_epoch(_args(small_npz, tmp_path), tmp_path)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    partial = load_checkpoint(tmp_path / "last.pt", resumable=True)
    step = partial.partial["step"]
    assert partial.epoch == 0 and 2 <= step < 20  # written inside epoch 1, at the step it stopped after
    assert message == (
        f"cifar-resnet: stopped by SIGTERM after epoch 1, step {step} of 20; {tmp_path / 'last.pt'} "
        f"resumes it; resume with: cifar-resnet train --resume {tmp_path / 'last.pt'}"
    )
    _run(["train", "--resume", str(tmp_path / "last.pt"), "--no-progress"])
    a, b = load_checkpoint(one_process / "last.pt"), load_checkpoint(tmp_path / "last.pt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    _assert_same_history(a.history, b.history, exact=True)


@pytest.mark.long
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_under_another_number_of_processes(small_npz, two_processes, tmp_path, first, then):
    stopped = _interrupt_mid_epoch(_args(small_npz, tmp_path), tmp_path, nproc=first)
    # torchrun itself reports a signal as its own failure (status 1); the workers stop as one process does
    assert stopped.returncode == (128 + signal.SIGTERM if first == 1 else 1), stopped.stderr
    assert "cifar-resnet: stopped by SIGTERM after epoch 1, step" in stopped.stderr
    assert load_checkpoint(tmp_path / "last.pt").partial["step"] < 20
    resumed = _run(["train", "--resume", str(tmp_path / "last.pt"), "--no-progress"], nproc=then)
    assert "resuming" in resumed.stdout and resumed.stdout.count("Epoch 2,") == 1
    _assert_close_weights(two_processes / "last.pt", tmp_path / "last.pt")
    _assert_same_history(
        load_checkpoint(two_processes / "last.pt").history, load_checkpoint(tmp_path / "last.pt").history
    )


KILLS = 8


@pytest.mark.long
def test_kill_9_at_random_moments_never_leaves_a_checkpoint_that_does_not_load(small_npz, tmp_path):
    """8 starts of a run that saves every step, each killed with SIGKILL at a random moment once it has
    written a few checkpoints (so that every kill lands in training, between or inside checkpoint writes,
    however slow the start-up or fast the steps); the 9th start finishes, bit-identical to an
    uninterrupted run."""
    args = _args(small_npz, tmp_path / "run", epochs=6, save_every_steps=1) + ["--resume", "auto"]
    last = tmp_path / "run" / "last.pt"
    rng = random.Random(0)
    kills = 0
    while kills < KILLS:
        proc = subprocess.Popen(_cmd(args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # wait for this start to write 1 to 4 checkpoints (a few steps, however fast or slow the machine),
        # then kill it at a random moment of the next step or write
        writes, seen = rng.randint(1, 4), last.stat().st_mtime_ns if last.exists() else None
        deadline = time.monotonic() + 120
        while writes and proc.poll() is None and time.monotonic() < deadline:
            now = last.stat().st_mtime_ns if last.exists() else None
            if now != seen:
                writes, seen = writes - 1, now
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))
        if proc.poll() is not None:
            break  # finished (or failed) before this kill
        proc.kill()
        proc.wait()
        kills += 1
        load_checkpoint(last, resumable=True)  # raises if it does not load
    assert kills == KILLS, proc.stderr.read()[-2000:]
    _run(args)  # the last start resumes and finishes
    reference = fit(
        TrainConfig(**{**TINY, "data": str(small_npz), "epochs": 6}),
        out_dir=tmp_path / "ref",
        log=None,
        progress=False,
    )
    final = load_checkpoint(last)
    assert final.epoch == 6
    assert all(torch.equal(reference.model.state_dict()[k], final.state_dict[k]) for k in final.state_dict)


def test_a_flipped_byte_is_refused(one_process, tmp_path):
    ckpt = load_checkpoint(one_process / "last.pt").to_dict()
    assert ckpt["checksum"] == payload_checksum(ckpt)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    weight = ckpt["model"][name]
    raw = weight.contiguous().view(-1).view(torch.uint8).clone()
    raw[3] ^= 0x10  # one bit of one weight
    ckpt["model"][name] = raw.view(weight.dtype).view(weight.shape)
    torch.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="tampered.pt is corrupt"):
        load_checkpoint(tmp_path / "tampered.pt")
    raw = bytearray((one_process / "last.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a byte of the file itself, wherever it falls
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="flipped.pt"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small_npz, tmp_path, monkeypatch):
    """A loss forced to NaN from step 7 on: the run stops at the next check, names the step, its learning
    rate and the checkpoint of step 6, and writes nothing after the loss went bad."""
    calls = []

    def poisoned(*args, **kwargs):
        loss, out, lr = engine.train_step(*args, **kwargs)
        calls.append(lr)
        return (loss * float("nan") if len(calls) >= 7 else loss), out, lr

    monkeypatch.setattr("cifar_resnet.train.train_step", poisoned)
    config = TrainConfig(**{**TINY, "data": str(small_npz)})
    with pytest.raises(TrainingDiverged) as err:
        fit(config, out_dir=tmp_path, save_every_steps=2, check_every=5, log=None, progress=False)
    assert str(err.value) == (
        f"training diverged: the loss is not finite at epoch 1, step 7 (lr {calls[6]:.4g}); the "
        f"last good checkpoint is {tmp_path / 'last.pt'} (epoch 1, step 6); lower --lr or "
        "--grad-clip"
    )
    assert len(calls) == 8  # stopped at the first save point after it (step 8), before writing it
    assert load_checkpoint(tmp_path / "last.pt", resumable=True).partial["step"] == 6


def test_diverging_weights_are_never_saved(small_npz, tmp_path, capsys):
    """An absurd learning rate: the run stops within its first steps, with one line and status 2, and no
    checkpoint holds non-finite weights."""
    code = main(_args(small_npz, tmp_path, lr=1e12, schedule="constant") + ["--save-every-steps", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cifar-resnet: error: training diverged: the ")
    for path in tmp_path.glob("*.pt"):
        weights = load_checkpoint(path).state_dict
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), path


@pytest.mark.long
def test_torchrun_restarts_a_killed_worker_and_the_run_finishes(small_npz, two_processes, tmp_path):
    args = _args(small_npz, tmp_path, save_every_steps=2) + ["--resume", "auto"]
    proc = subprocess.Popen(
        _cmd(args, torchrun=("--standalone", "--nproc-per-node", "2", "--max-restarts", "1")),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is not None:  # torchrun ended before the kill: say why, rather than "no worker"
        pytest.fail(f"torchrun exited with {proc.returncode} before a checkpoint:\n{proc.communicate()[1][-3000:]}")
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False).stdout.split()
    assert workers, "no worker process found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming" in out
    assert load_checkpoint(tmp_path / "last.pt").epoch == 2
    _assert_close_weights(two_processes / "last.pt", tmp_path / "last.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_two_nodes_on_one_machine_train_like_one_two_process_run(small_npz, two_processes, tmp_path):
    port = _free_port()
    rdzv = (
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "test-two-nodes",
    )
    # both "machines" have the endpoint's address, so say which one hosts the rendezvous store (as the
    # first node of a cluster does by its address), and start the other once the store is up
    nodes = [
        subprocess.Popen(
            _cmd(_args(small_npz, tmp_path), torchrun=(*rdzv, "--rdzv-conf", "is_host=1")),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    nodes.append(
        subprocess.Popen(
            _cmd(_args(small_npz, tmp_path), torchrun=(*rdzv, "--rdzv-conf", "is_host=0")),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    assert sum(out.count("Epoch 2,") for out, _ in results) == 1  # rank 0 alone prints
    _assert_close_weights(two_processes / "last.pt", tmp_path / "last.pt")


def test_resume_auto_starts_continues_or_refuses(small_npz, tmp_path, capsys):
    args = _args(small_npz, tmp_path, epochs=1) + ["--resume", "auto"]
    assert main(args) == 0  # nothing there: a fresh run
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
    assert main(args) == 0  # finished: nothing to do
    assert "the run has finished" in capsys.readouterr().out
    code = main(_args(small_npz, tmp_path, epochs=1, lr=0.1) + ["--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "another configuration (lr differ)" in err


def test_save_every_duration_writes_inside_the_epoch(small_npz, tmp_path, monkeypatch):
    from cifar_resnet.checkpoint import RunDir

    written = []
    original = RunDir.write_checkpoint
    monkeypatch.setattr(
        RunDir, "write_checkpoint", lambda self, ckpt: (written.append(ckpt.partial["step"]), original(self, ckpt))
    )
    fit(
        TrainConfig(**{**TINY, "data": str(small_npz), "epochs": 1}),
        out_dir=tmp_path,
        save_every=1e-9,
        log=None,
        progress=False,
    )
    assert written == list(range(1, 20))  # after every step but the last (the epoch's own checkpoint)


@pytest.fixture
def sigint():
    """``sigint(handler)`` sets SIGINT's handler for one test; the inherited one comes back after it. A test
    that relies on SIGINT's disposition sets it: a shell script starts a background job (``pytest ... &``)
    with SIGINT ignored, and the test process inherits that."""
    before = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, before)


def test_a_second_ctrl_c_exits_at_once(sigint):
    sigint(signal.default_int_handler)  # Python's own, in a process started in the foreground
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM and stop.name == "SIGTERM"  # noted; training goes on
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the user insists
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_an_ignored_sigint_stays_ignored(sigint):
    """``nohup cifar-resnet train ... &`` in a script: the shell ignores SIGINT for the job, so that a Ctrl-C
    at the terminal stops the script and not the run; SIGTERM still stops the run with a checkpoint."""
    sigint(signal.SIG_IGN)
    sigterm = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert stop.received is None
        signal.raise_signal(signal.SIGTERM)
        assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is sigterm
