"""glibc's malloc, tuned for training: keep the memory a step frees for the next step, and hand it back
between runs."""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "release_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step instead of handing it
    back to the kernel (``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 1 GiB), so a step does not fault in and
    zero-fill its activations' pages again; the peak is unchanged, the step faster
    (experiments/kept-freed-memory). Returns whether it is in effect: per process, idempotent; False
    elsewhere than Linux with glibc, or with ``CIFAR_RESNET_MALLOC=default`` in the environment."""
    if not sys.platform.startswith("linux") or os.environ.get("CIFAR_RESNET_MALLOC", "").lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


def release_freed_memory() -> bool:
    """Hand the memory malloc holds freed back to the kernel (glibc's ``malloc_trim``); returns whether it
    could be asked. A process that runs several trainings (a sweep's worker) calls it between them, so the
    next run's peak memory starts from its own baseline. False elsewhere than Linux with glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    malloc_trim(0)
    return True
