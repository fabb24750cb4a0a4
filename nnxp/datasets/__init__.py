"""Data sets: MNIST and Fashion-MNIST (find, download, verify and parse them; prepare
arrays), and text for character-level language models (:mod:`nnxp.datasets.text`).

Loading looks for the four IDX files of a data set (``.gz`` or uncompressed)
in these places, first match wins:

1. the ``path`` argument;
2. ``$NNXP_DATA_DIR/<name>``, then ``$NNXP_DATA_DIR``;
3. the user cache, ``$XDG_CACHE_HOME/nnxp/<name>`` (default
   ``~/.cache/nnxp/<name>``), or ``<cache_dir>/<name>`` when ``cache_dir``
   is given;
4. system copies (:data:`SYSTEM_DIRS`), e.g. ``/usr/share/datasets/fashion-mnist``
   from the Debian package ``dataset-fashion-mnist``;
5. a download from :data:`MIRRORS` into the cache, each file checked against
   the SHA-256 sums in :data:`CHECKSUMS`.

When nothing works, :class:`DatasetNotFoundError` lists every place tried and
how to get the files. The loaders return host NumPy arrays; :func:`prepare`
(or :func:`scale`, :func:`flatten`, :func:`one_hot`) turns them into training
arrays on any backend, using only array API standard calls.

Only the standard library is used for HTTP (``urllib``), so the module works
wherever NumPy does.
"""

from .idx import IDXFormatError, read_idx
from .sources import (
    CHECKSUMS,
    FASHION_MNIST_CLASSES,
    FILES,
    MIRRORS,
    MNIST_CLASSES,
    SYSTEM_DIRS,
    ChecksumMismatchError,
    DatasetNotFoundError,
    DownloadError,
    default_cache_dir,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
)
from .text import (
    FORTUNES_DIR,
    FORTUNES_PACKAGE,
    CharDataset,
    CharVocab,
    TextTooShortError,
    char_dataset,
    char_windows,
    load_fortunes,
    load_text,
    read_strfile,
)
from .transforms import flatten, one_hot, prepare, scale

__all__ = [
    "CHECKSUMS",
    "FORTUNES_DIR",
    "FORTUNES_PACKAGE",
    "FASHION_MNIST_CLASSES",
    "FILES",
    "MIRRORS",
    "MNIST_CLASSES",
    "SYSTEM_DIRS",
    "CharDataset",
    "CharVocab",
    "ChecksumMismatchError",
    "DatasetNotFoundError",
    "DownloadError",
    "IDXFormatError",
    "TextTooShortError",
    "char_dataset",
    "char_windows",
    "default_cache_dir",
    "flatten",
    "load_dataset",
    "load_fashion_mnist",
    "load_fortunes",
    "load_mnist",
    "load_text",
    "one_hot",
    "prepare",
    "read_idx",
    "read_strfile",
    "scale",
]
