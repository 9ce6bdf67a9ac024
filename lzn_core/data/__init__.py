"""Data on webdataset shards: writing them, converting data sets to them, reading them.

* :mod:`~lzn_core.data.shards`: the writer (public: plugin authors put their own keys in shards).
* :mod:`~lzn_core.data.convert`: CIFAR-10, image folders, caption files -> shards.
* :mod:`~lzn_core.data.digits`: the embedded data set (scikit-learn's 8x8 digits).
* :mod:`~lzn_core.data.loader`: the resumable, rank-split loader.
"""

from __future__ import annotations

from .loader import CorruptSampleWarning, LoaderState, ShardLoader, expand_pattern, iter_raw, loader
from .shards import make_sample, png_bytes, write_split

__all__ = [
    "CorruptSampleWarning",
    "LoaderState",
    "ShardLoader",
    "expand_pattern",
    "iter_raw",
    "loader",
    "make_sample",
    "png_bytes",
    "write_split",
]
