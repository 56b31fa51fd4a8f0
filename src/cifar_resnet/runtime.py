"""Where and how the work runs: the device, autocast, progress bars, the random-number state and the
signals that ask a run to stop.

Nothing here holds a global: callers pass the device and flags in and get objects back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import signal
import sys
import threading

import torch
from tqdm.auto import tqdm

__all__ = [
    "PRECISIONS",
    "StopSignals",
    "autocast_for",
    "bf16_is_emulated",
    "cpu_has_amx",
    "cpu_has_bf16",
    "cpu_model",
    "format_duration",
    "get_rng_state",
    "keep_freed_memory",
    "legacy_precision",
    "parse_duration",
    "progress_bar",
    "release_freed_memory",
    "resolve_device",
    "resolve_precision",
    "set_rng_state",
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
    AVX512_BF16 (AVX2 only, as AMD Zen 3 and older Xeons), where PyTorch's kernels convert to fp32 and
    back, and the fast nets' training step takes many times the fp32 one (benchmarks/profile_step.py; the
    figures for an AMD Zen 3 are in docs/performance.md, "bf16 without bf16 instructions")."""
    return device.type == "cpu" and not cpu_has_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) means on ``device``: ``fp32``, ``bf16``
    or ``fp16``. ``auto`` is bf16 on CUDA and on a CPU with bf16 dot-product instructions
    (:func:`cpu_has_bf16`: AMX, or AVX512_BF16 as on AMD Zen 4), fp32 elsewhere (MPS included). The fast
    nets' training step takes 3.3x less time in bf16 on an AMX Xeon and 1.3-1.8x less on a Zen 4 EPYC
    (16-32 px); on a CPU without those instructions bf16 is emulated and slower than fp32."""
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step, instead of handing
    it back to the kernel; returns whether it is in effect. By default glibc serves every allocation over
    its mmap threshold (at most 32 MB; the activations of a batch of 512 are larger) from fresh pages and
    returns them when freed, so each step faults in every page of its activations again, zero-filled by
    the kernel: 60,000-70,000 page faults a step at 32 px, and 0.93x the fp32 step time (0.87x in bf16)
    once turned off (``python benchmarks/malloc_step.py``, 2 cores of a Zen 5). Here both are turned off
    (``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 1 GiB): freed blocks stay in the heap for the next step; the
    process's peak memory is unchanged (the same blocks are reused). Per process, idempotent (each call sets
    the same two values); nothing
    elsewhere than Linux with glibc (musl's mallopt does nothing: False), nor with
    ``CIFAR_RESNET_MALLOC=default`` in the environment."""
    if not sys.platform.startswith("linux") or os.environ.get("CIFAR_RESNET_MALLOC", "").lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


def release_freed_memory() -> bool:
    """Hand the memory that malloc holds freed back to the kernel (glibc's ``malloc_trim``); returns whether
    it could be asked. What :func:`keep_freed_memory` keeps for the next step stays resident after a run
    ends: a process that runs several (a sweep's worker) calls this between them, or the next run's resident
    set, and the peak measured from it, starts from the last run's (1.27-1.30 GB for ``fast_small``, whose own
    peak is 0.85 GB, after a run of ``fast``: docs/performance.md). Nothing elsewhere than Linux with glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    malloc_trim(0)
    return True


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str, flag: str = "--budget") -> float | None:
    """Seconds of a duration such as ``900s``, ``900``, ``15m``, ``1h``, ``1h30m`` or ``2.5m``; None for
    ``none``. ValueError naming ``flag`` for anything else, zero or negative."""
    t = str(text).strip().lower()
    if t in ("none", "off", ""):
        return None
    m = _DURATION.fullmatch(t)
    if not m or not any(m.groups()):
        raise ValueError(f"{flag}: expected a duration such as 900s, 15m or 1h (or none), got {text!r}")
    seconds = sum(float(v) * unit for v, unit in zip(m.groups(), (3600.0, 60.0, 1.0)) if v)
    if not seconds > 0:
        raise ValueError(f"{flag}: a budget must be longer than 0 s, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``14m 20s``, ``52s``, ``1h 05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "img") -> tqdm:
    """The one progress bar of the package: tqdm on stderr (a widget in Jupyter, text elsewhere), shown
    when ``enabled`` (``None``: when stderr is a terminal), a silent no-op otherwise; a context manager."""
    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(
        total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr, disable=not enabled
    )


def get_rng_state() -> dict:
    """The global torch generators' state (CPU and every CUDA device), for an exact resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) as a request to stop, while the context is active.

    The first signal only sets :attr:`received` (its number), so that the training loop finishes the
    step it is in, writes a resumable checkpoint and exits with ``128 + received``; a second SIGINT
    raises ``KeyboardInterrupt`` at once (the user insists). A signal ignored when the context opens stays
    ignored, as Python itself leaves an ignored SIGINT: a shell script starts a background job
    (``nohup cifar-resnet train ... &``) with SIGINT ignored, so that a Ctrl-C at the terminal stops the
    script and not the job. Outside the main thread, where Python cannot install handlers, this does
    nothing. The previous handlers come back on exit.

    Nested inside another ``StopSignals`` (a sweep worker around ``fit``), a request the outer one had
    already received counts as received here too, and one received here is passed out on exit: a
    signal that arrives while the worker sets a trial up stops that trial after its first step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        outer = self._outer()
        if outer is not None and self.received is None:
            self.received = outer.received
        return self

    def __exit__(self, *exc) -> None:
        outer = self._outer()
        if outer is not None and outer.received is None:
            outer.received = self.received
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _outer(self) -> StopSignals | None:
        """The ``StopSignals`` whose handler this one replaced, if any."""
        for handler in self._previous.values():
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, StopSignals):
                return owner
        return None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
