"""CIFAR-100 / CIFAR-10 data: sources -> :class:`CifarData`, split and summarised.

Modules, each importing only those before it: ``errors`` (:class:`DataError`, the one exception for a problem
with the user's data), ``unpickle`` (the restricted unpickler that reads the official pickled files without
running code), ``download`` (:data:`DATASETS`: URL, md5, folder; :func:`download` with a progress bar and an
md5 check; the cache :data:`DEFAULT_ROOT`), ``sources`` (:class:`Split`, :class:`CifarData`, the class names,
the loaders of ``.npz``, official archive and extracted folder, and the CIFAR ``load_data``, which picks one
from a path or a data set name), then apart ``splits`` (:func:`split_validation`, :func:`subsample`,
:func:`channel_stats`, :func:`describe`) and ``folders`` (your own images: a folder of class subfolders or a
CSV, decoded once and cached, and :func:`load_data`, which takes any source). The sources are described in
docs/data.md.
"""

from .download import DATASETS, DEFAULT_ROOT, download
from .errors import DataError
from .folders import cache_dir, load_csv, load_data, load_image_folder
from .sources import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
    CifarData,
    Split,
    load_archive,
    load_folder,
    load_npz,
)
from .splits import channel_stats, describe, split_validation, subsample

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_TO_COARSE",
    "DATASETS",
    "DEFAULT_ROOT",
    "CifarData",
    "DataError",
    "Split",
    "cache_dir",
    "channel_stats",
    "describe",
    "download",
    "load_archive",
    "load_csv",
    "load_data",
    "load_folder",
    "load_image_folder",
    "load_npz",
    "split_validation",
    "subsample",
]
