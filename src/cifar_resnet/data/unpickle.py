"""A restricted unpickler for the official CIFAR files.

The official files are python 2 pickles of dicts of numpy arrays. They are read with an unpickler that
can only build numpy arrays, lists, bytes and numbers, so a tampered archive cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from ..console import one_line
from .errors import DataError

try:  # numpy >= 2 moved the pickle helper; files written by numpy 1.x / python 2 name the old module
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes bytes this way under pickle protocol 2."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin1")


def _safe_dtype(*args: Any) -> np.dtype:
    # Object arrays could hold arbitrary unpickled objects; CIFAR only ever stores plain numbers.
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


# Everything the official files (python 2 cPickle of numpy arrays) and their protocol-2 re-pickles by
# Python 3 need; nothing else can be named by the pickle stream, so nothing else can be called.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: IO[bytes], where: str) -> None:
        # encoding="bytes": the files are python 2 pickles whose str keys/names must stay bytes.
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: refusing to unpickle {module}.{name} (not part of the official CIFAR files)"
            ) from None


def safe_unpickle(file: IO[bytes], where: str) -> dict[str, Any]:
    """Read one official pickle (a dict) from ``file``; keys come back as str."""
    try:
        obj = _RestrictedUnpickler(file, where).load()
    except DataError:
        raise
    except (EOFError, OSError, zlib.error) as e:  # a truncated/damaged gzip stream surfaces here too
        raise DataError(f"{where}: truncated or corrupt ({one_line(e)})") from e
    except Exception as e:  # any failure to parse is the file's fault, reported as such
        raise DataError(f"{where}: not a valid CIFAR pickle ({type(e).__name__}: {one_line(e)})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}
