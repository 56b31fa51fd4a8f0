"""Where the work runs and in what precision: the device, the precision a name means on it, autocast, and
what this CPU can do (bf16 instructions, its model name for benchmark tables)."""

from __future__ import annotations

import contextlib
import platform

import torch

from .version import __version__

__all__ = [
    "PRECISIONS",
    "autocast_for",
    "bf16_is_emulated",
    "cpu_has_amx",
    "cpu_has_bf16",
    "cpu_model",
    "legacy_precision",
    "machine_info",
    "resolve_device",
    "resolve_precision",
]

# auto: bf16 where the hardware multiplies it fast (CUDA; a CPU with AMX), fp32 elsewhere
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device;
    ValueError for an unknown name or a device this machine lacks."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if dev.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' requested but MPS is not available on this machine")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def bf16_is_emulated(device: torch.device) -> bool:
    """Whether bf16 on ``device`` is computed without bf16 instructions: a CPU with neither AMX nor
    AVX512_BF16 (AVX2 only), where PyTorch converts to fp32 and back and bf16 is slower than fp32."""
    return device.type == "cpu" and not cpu_has_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) means on ``device``: ``fp32``, ``bf16``
    or ``fp16``. ``auto`` is bf16 on CUDA and on a CPU with bf16 dot-product instructions
    (:func:`cpu_has_bf16`), fp32 elsewhere (MPS included)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    if precision != "fp32" and device.type not in ("cuda", "cpu"):
        raise ValueError(f"precision {precision} runs on CUDA or the CPU, not on {device.type}; use fp32 or auto")
    return precision


def legacy_precision(cpu_amp: str = "off") -> str:
    """The ``precision`` of a config or command line from before it existed, from its ``cpu_amp``
    (``off``/``on``/``auto``: bf16 on the CPU): ``fp32``, ``bf16`` or ``auto``. Its ``amp`` (bf16 on CUDA)
    does not enter: every such run was made on the CPU, where ``cpu_amp`` alone decided, so the mapping is
    exact there; on CUDA it is exact for ``amp`` with ``cpu_amp`` ``on``/``auto`` and for neither, while
    ``amp`` alone (bf16 on CUDA, fp32 on the CPU) has no single equivalent and maps to fp32."""
    if cpu_amp not in ("off", "on", "auto"):
        raise ValueError(f"unknown cpu amp mode {cpu_amp!r}; use off, on or auto")
    return {"off": "fp32", "on": "bf16", "auto": "auto"}[cpu_amp]


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (resolved: ``fp32``, ``bf16``, ``fp16``, see :func:`resolve_precision`)
    on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def _cpuinfo_field(prefix: str) -> str | None:
    """The first value of a ``/proc/cpuinfo`` line starting with ``prefix`` (Linux); None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else ""
    except OSError:
        pass
    return None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Xeon Sapphire Rapids and later), read from Linux's
    /proc/cpuinfo; False where it cannot be read."""
    return "amx_bf16" in (_cpuinfo_field("flags") or "").split()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions, AMX tiles (``amx_bf16``) or AVX-512's
    ``avx512_bf16`` (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), read from Linux's
    /proc/cpuinfo; False where it cannot be read."""
    return bool({"amx_bf16", "avx512_bf16"} & set((_cpuinfo_field("flags") or "").split()))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere), for benchmark tables. A
    name without a model number, as many virtual machines show (``AMD EPYC``: a Zen 3, 4 or 5 alike), gets
    the CPU's family and model numbers, so that tables keep different CPUs apart."""
    name = _cpuinfo_field("model name")
    if not name:
        return platform.processor() or platform.machine() or "unknown"
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model\t")
    if not any(c.isdigit() for c in name) and family and model:
        name += f" (family {family}, model {model})"
    return name


def machine_info(device: torch.device, processes: int = 1) -> dict:
    """What a run trained on, for its checkpoint and model card: the device, its name (the GPU's, else the
    CPU's), the threads of each process, the processes, and the versions of torch and this package."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": device.type,
        "name": name,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "processes": processes,
        "torch": str(torch.__version__),
        "cifar_resnet": __version__,
    }
