"""The speed recipe's knobs: bf16 on the CPU, progressive resizing, the batch-norm biases' learning rate, cheap
evaluation during training. Each is a TrainConfig field, and a run that uses them resumes exactly."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cifar_resnet import TrainConfig, fit, load_checkpoint
from cifar_resnet.device import autocast_for, cpu_has_amx, cpu_has_bf16, cpu_model, legacy_precision, resolve_precision
from cifar_resnet.engine import resize_batch
from cifar_resnet.models import create_model
from cifar_resnet.optim import MuonSGD

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": "fast",
    "model_kwargs": {"widths": [8, 16, 16], "stem_width": 8},
    "batch_size": 20,
    "eval_batch_size": 40,
    "device": "cpu",
    "val_split": 0,
}


def test_progressive_sizes_scale_with_the_epochs():
    c = TrainConfig(progressive="16:0.25,24:0.25", epochs=16)
    assert c.train_sizes == [16] * 4 + [24] * 4 + [None] * 8
    assert TrainConfig(progressive="20:0.5", epochs=3).train_sizes == [20, 20, None]
    assert TrainConfig(epochs=2).train_sizes == [None, None]


@pytest.mark.parametrize(
    "text, match",
    [
        ("16", "SIZE:FRACTION"),
        ("16:x", "SIZE:FRACTION"),
        ("4:0.2", "8-64"),
        ("16:1.5", "8-64"),
        ("16:0.5,24:0.5", "full size"),
    ],
)
def test_progressive_rejects_bad_schedules(text, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(progressive=text, epochs=10)


def test_other_recipe_fields_are_checked():
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="yes")
    with pytest.raises(ValueError, match="muon only"):
        TrainConfig(optimizer="adam", bn_bias_lr=64.0)
    with pytest.raises(ValueError, match="> 0"):
        TrainConfig(optimizer="muon", bn_bias_lr=0.0)


def test_resize_batch_downscales_whole_images():
    x = torch.zeros(2, 3, 32, 32)
    x[..., :, 16:] = 1.0  # right half white
    y = resize_batch(x.contiguous(memory_format=torch.channels_last), 16)
    assert y.shape == (2, 3, 16, 16) and y.is_contiguous(memory_format=torch.channels_last)
    # the whole image at half resolution (not a crop): still half black, half white
    assert torch.allclose(y[..., :, :7], torch.zeros(())) and torch.allclose(y[..., :, 9:], torch.ones(()))
    assert resize_batch(x, None) is x and resize_batch(x, 32) is x


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_bf16_instructions(monkeypatch, amx):
    monkeypatch.setattr("cifar_resnet.device.cpu_has_bf16", lambda: amx)
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_precision("auto", cpu) == ("bf16" if amx else "fp32")
    assert resolve_precision("auto", cuda) == "bf16" and resolve_precision("auto", mps) == "fp32"
    for precision in ("fp32", "bf16", "fp16"):  # an explicit precision is kept, AMX or not
        assert resolve_precision(precision, cpu) == precision == resolve_precision(precision, cuda)
    assert resolve_precision("fp32", mps) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half", cpu)
    with pytest.raises(ValueError, match="use fp32 or auto"):
        resolve_precision("bf16", mps)
    # what auto means here is what autocast does
    conv, x = nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with autocast_for(cpu, resolve_precision("auto", cpu)):
        assert conv(x).dtype == (torch.bfloat16 if amx else torch.float32)


# /proc/cpuinfo as Linux writes it (abridged): one block per logical CPU, "key<tabs>: value"; "model" (a
# number) comes before "model name", "vmx flags" after "flags"
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model\t\t: 17
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx
"""
ZEN3 = """processor\t: 0
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse2 avx2 fma
"""
VM_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(
    "text, model, amx, bf16",
    [
        (XEON, "Intel(R) Xeon(R) Platinum 8480+", True, True),
        (EPYC, "AMD EPYC 9654 96-Core Processor", False, True),  # bf16 in AVX-512, no AMX tiles ("amx" alone)
        (ZEN3, "AMD EPYC 7B13 64-Core Processor", False, False),
        (
            VM_EPYC,
            "AMD EPYC (family 26, model 2)",
            False,
            True,
        ),  # a VM's name without a number: family, model  # AVX2 only: bf16 is emulated, auto is fp32
        (ARM, None, False, False),  # no "model name" line (many ARM kernels): the platform's name
        (None, None, False, False),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_cpu_model_and_bf16_instructions_are_read_from_proc_cpuinfo(monkeypatch, tmp_path, text, model, amx, bf16):
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_text(text)
    real_open = open

    def fake_open(file, *args, **kwargs):  # the module's open: /proc/cpuinfo is this text (or absent)
        return real_open(path if file == "/proc/cpuinfo" else file, *args, **kwargs)

    monkeypatch.setattr("cifar_resnet.device.open", fake_open, raising=False)
    monkeypatch.setattr("platform.processor", lambda: "")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert cpu_model() == (model or "aarch64")
    assert cpu_has_amx() is amx and cpu_has_bf16() is bf16


def test_autocast_for_each_precision():
    conv, x, cpu = nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), torch.device("cpu")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast_for(cpu, precision):
            assert conv(x).dtype == dtype, precision
        assert conv(x).dtype == torch.float32  # and nothing after the block


@pytest.mark.parametrize(
    "amp, cpu_amp, precision",
    [
        (True, "off", "fp32"),
        (False, "off", "fp32"),  # the CPU ran in fp32 (amp alone was CUDA's)
        (True, "on", "bf16"),
        (False, "on", "bf16"),
        (True, "auto", "auto"),
        (False, "auto", "auto"),  # auto: bf16 where the CPU has AMX, as cpu_amp auto did
    ],
)
def test_legacy_precision_of_the_old_amp_flags(amp, cpu_amp, precision):
    assert legacy_precision(cpu_amp) == precision
    assert TrainConfig.from_dict({"amp": amp, "cpu_amp": cpu_amp}).precision == precision


def test_legacy_precision_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="cpu amp mode 'always'"):
        legacy_precision("always")


def test_bn_biases_get_their_own_learning_rate_and_decay():
    model = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    opt = MuonSGD(model, lr=0.5, momentum=0.9, weight_decay=1e-3, muon_lr=0.1, muon_momentum=0.6, bn_bias_lr=64.0)
    assert len(opt.param_groups) == 3
    bn = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    g = opt.param_groups[2]
    assert {id(p) for p in g["params"]} == bn and len(bn) == 6
    assert g["lr"] == pytest.approx(32.0) and g["weight_decay"] == pytest.approx(1e-3 / 64)
    assert not bn & {id(p) for p in opt.param_groups[0]["params"]}
    # a bias's first step is Nesterov's (1 + momentum) * gradient at 64x the base lr (the bias starts at 0,
    # so no decay yet)
    bias = next(m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    bias.grad = torch.ones_like(bias)
    opt.step()
    assert torch.allclose(bias.detach(), torch.full_like(bias, -32.0 * 1.9))
    assert len(MuonSGD(model, lr=0.5, momentum=0.9, weight_decay=0.0, muon_lr=0.1, muon_momentum=0.6).param_groups) == 2


class Stop(Exception):
    pass


def test_a_run_with_the_recipe_knobs_resumes_exactly(tmp_path, synthetic):
    data = synthetic()
    config = TrainConfig(
        **TINY,
        epochs=4,
        optimizer="muon",
        lr=0.05,
        bn_bias_lr=16.0,
        progressive="16:0.25,24:0.25",
        precision="bf16",
        tta=True,
        tta_translate=1,
        tta_every_epoch=False,
    )
    full = fit(config, data, tmp_path / "full", log=None, progress=False)
    assert [r["train_size"] for r in full.records] == [16, 24, 32, 32]
    assert [r["eval_tta"] for r in full.records] == ["none", "none", "none", "flip+translate1"]

    def interrupt(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(config, data, tmp_path / "cut", log=None, progress=False, on_epoch_end=interrupt)
    resumed = fit(config, data, resume=tmp_path / "cut" / "last.pt", log=None, progress=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_loss"] for r in resumed.records] == [r["val_loss"] for r in full.records]
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith("train_images,train_size,eval_tta,progress")
    assert rows[-1].endswith(",32,flip+translate1,1")  # the whole schedule done
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["progressive"] == "16:0.25,24:0.25"
    assert load_checkpoint(tmp_path / "cut" / "last.pt").epoch == 4


def test_every_epoch_tta_is_the_default(synthetic):
    hist = fit(TrainConfig(**TINY, epochs=2, tta=True), synthetic(), None, log=None, progress=False)
    assert [r["eval_tta"] for r in hist.records] == ["flip", "flip"]


def test_drop_easy_trains_late_epochs_on_the_hardest_images_and_resumes_mid_epoch(tmp_path, synthetic, monkeypatch):
    import cifar_resnet.train as train_module

    data = synthetic()  # 120 training images, batches of 20
    config = TrainConfig(**TINY, epochs=4, optimizer="muon", lr=0.05, drop_easy=0.5, drop_easy_from=0.5)
    assert config.drop_start == 2
    full = fit(config, data, tmp_path / "full", log=None, progress=False)
    assert [len(r["lrs"]) for r in full.records] == [6, 6, 3, 3]
    assert [r["train_images"] for r in full.records] == [120, 120, 60, 60]
    # the one-cycle schedule spans the 18 steps the run has: its last step is at the final lr, max_lr / 25e4
    assert full.records[-1]["lrs"][-1] == pytest.approx(0.05 / 25e4, rel=1e-6)
    loss = load_checkpoint(tmp_path / "full" / "last.pt").example_loss
    assert loss.shape == (120,) and torch.isfinite(loss).all()

    # stop in epoch 3, step 2, with last.pt written after every step; the resumed run is bit-identical
    real_step, calls = train_module.train_step, []

    def stop_at_step_15(*args, **kwargs):
        calls.append(1)
        if len(calls) == 15:
            raise Stop
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", stop_at_step_15)
    with pytest.raises(Stop):
        fit(config, data, tmp_path / "cut", log=None, progress=False, save_every_steps=1)
    monkeypatch.setattr(train_module, "train_step", real_step)
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ckpt.epoch == 2 and ckpt.partial["step"] == 2 and len(ckpt.partial["keep"]) == 60
    resumed = fit(config, data, resume=tmp_path / "cut" / "last.pt", log=None, progress=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_loss"] for r in resumed.records] == [r["val_loss"] for r in full.records]


def test_drop_easy_is_checked():
    with pytest.raises(ValueError, match="drop easy"):
        TrainConfig(drop_easy=1.0)
    assert TrainConfig(epochs=10).drop_start == 10  # off: never


def test_loader_subset_shuffles_only_the_kept_images(synthetic):
    from cifar_resnet.loader import CifarLoader

    loader = CifarLoader(synthetic().train, 10, mean=(0.5,) * 3, std=(0.25,) * 3, train=True)
    keep = torch.arange(0, 120, 3)
    loader.set_subset(keep)
    assert len(loader) == 4
    seen = []
    for _ in loader:
        seen += loader.batch_indices.tolist()
    assert sorted(seen) == keep.tolist()
    loader.set_subset(None)
    assert len(loader) == 12
    with pytest.raises(ValueError, match="below 120"):
        loader.set_subset(torch.tensor([5, 120]))


_FAULTS = """
import resource, sys, torch
from cifar_resnet.memory import keep_freed_memory
kept = keep_freed_memory()
for _ in range(3):  # first the heap settles: where glibc places the first few blocks varies from run to run
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # 64 MB, freed each time: fresh pages every time, unless freed memory is kept
    torch.empty(16 * 2**20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_kept_for_the_next_step_unless_the_environment_says_default():
    """8 allocations of 64 MB, each freed, after a few that let the heap settle: with glibc's default each is
    16,384 fresh pages; kept, the settled heap serves them with a fraction of those faults."""
    faults = {}
    for setting in ("default", "kept"):
        env = {**os.environ, "CIFAR_RESNET_MALLOC": setting}
        out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
        kept, n = out.stdout.split()
        assert kept == ("True" if setting == "kept" else "False")
        faults[setting] = int(n)
    assert faults["default"] > 8 * 16_384 * 0.9 and faults["kept"] < faults["default"] / 3, faults


_RELEASE = """
from pathlib import Path
import torch
from cifar_resnet.memory import keep_freed_memory, release_freed_memory
from cifar_resnet.sweep.worker import peak_memory_mb, reset_peak_memory

def rss_mb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

assert keep_freed_memory()
base = rss_mb()
torch.empty(64 * 2**20).fill_(1.0)  # 256 MB, freed at once: kept resident for the next step
kept = rss_mb()
assert release_freed_memory()
released = rss_mb()
torch.empty(64 * 2**20).fill_(1.0)
assert reset_peak_memory()  # a sweep's next trial: released first, so its peak is its own
print(round(kept - base), round(released - base), round(peak_memory_mb() - base))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_freed_memory_kept_by_one_trial_is_released_before_the_next_measures_its_peak():
    """A sweep's worker runs trial after trial in one process: the 256 MB one trial freed stay resident
    (kept for its next step) until released, and must not count in the next trial's peak."""
    out = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True)
    kept, released, peak = (int(v) for v in out.stdout.split())
    assert kept > 200 and released < 50 and peak < 50, out.stdout
