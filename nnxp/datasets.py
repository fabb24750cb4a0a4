"""MNIST and Fashion-MNIST: find, download, verify and parse them; prepare arrays.

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

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import array_api_compat
import numpy as np

from .backends import Backend, to_device

__all__ = [
    "CHECKSUMS",
    "FASHION_MNIST_CLASSES",
    "MIRRORS",
    "MNIST_CLASSES",
    "SYSTEM_DIRS",
    "ChecksumMismatchError",
    "DatasetNotFoundError",
    "DownloadError",
    "IDXFormatError",
    "default_cache_dir",
    "flatten",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "one_hot",
    "prepare",
    "read_idx",
    "scale",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Data set tables
# ---------------------------------------------------------------------------

MNIST_CLASSES: list[str] = [str(d) for d in range(10)]
"""Class names of MNIST: the digits ``"0"`` to ``"9"``."""

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
"""Class names of Fashion-MNIST, in label order (label 0 is ``"T-shirt/top"``)."""

# The four files of both data sets, in the order they are downloaded.
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}
"""Base URLs tried in order for each data set; the file name is appended.
Change it (or pass ``mirrors=``) to use a local mirror."""

# SHA-256 of the published .gz files (what the mirrors serve).
#
# Fashion-MNIST: verified in this repository's development. The Debian package
# dataset-fashion-mnist ships the same deflate streams with a different gzip
# header (no FNAME field, new mtime), so its .gz files hash differently; putting
# back the upstream header (FNAME = the file name, mtime 1504176606 for train and
# 1504176627 for t10k, 2017-08-31) rebuilds files whose MD5 equals the MD5 that
# the Fashion-MNIST README publishes and whose SHA-256 equals the values below.
#
# MNIST: the widely published sums of the original LeCun files, identical on the
# ossci-datasets and cvdf-datasets mirrors (the same values are used by
# TensorFlow Datasets and many other loaders). No local copy was available to
# recompute them, so they are taken from those published sources.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}
"""SHA-256 of each published ``.gz`` file, per data set; downloads must match."""

SYSTEM_DIRS: dict[str, list[str]] = {
    "mnist": ["/usr/share/datasets/mnist"],
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
}
"""System-wide directories searched after the user cache."""

_DISPLAY = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
# Other spellings accepted for the dataset subdirectory of $NNXP_DATA_DIR.
_SUBDIR_ALIASES = {
    "mnist": ["mnist", "MNIST"],
    "fashion-mnist": ["fashion-mnist", "fashion_mnist", "FashionMNIST"],
}
# apt packages that install a system copy, and where (there is none for MNIST in Debian).
_APT_PACKAGES = {"fashion-mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist")}
_NUM_CLASSES = 10
_CHUNK = 1 << 16

DatasetSplits = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``((x_train, y_train), (x_test, y_test))``."""


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class IDXFormatError(ValueError):
    """An IDX file (or a pair of them) is malformed; the message names the file and the fault."""


class DownloadError(OSError):
    """Fetching one URL failed (HTTP error, network error, timeout, short read)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's SHA-256 differs from the published one; the file was discarded."""


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of a data set was found and it could not be downloaded.

    Attributes:
        tried: one line per place looked at (directories and URLs) with the
            reason it did not work.
    """

    def __init__(self, message: str, tried: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tried = list(tried)

    def __str__(self) -> str:  # FileNotFoundError would format (errno, strerror) otherwise
        return str(self.args[0])


# ---------------------------------------------------------------------------
# IDX parsing
# ---------------------------------------------------------------------------

# IDX type codes (http://yann.lecun.com/exdb/mnist/); multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path_or_fileobj: str | os.PathLike[str] | IO[bytes]) -> np.ndarray:
    """Read an IDX file (as used by MNIST), gzip-compressed or raw.

    Compression is detected from the content (the gzip magic bytes), not the
    file name, so a ``.gz`` that was unpacked in place still loads.

    Args:
        path_or_fileobj: a file path, or a binary file object open for reading.

    Returns:
        A writable NumPy array in native byte order with the shape and dtype
        the header gives (``uint8``, ``int8``, ``int16``, ``int32``,
        ``float32`` or ``float64``).

    Raises:
        IDXFormatError: bad gzip stream, wrong magic number, unknown type
            code, a file shorter than its header says (truncated), or extra
            bytes after the data (trailing garbage).
        FileNotFoundError: the path does not exist.
    """
    if hasattr(path_or_fileobj, "read"):
        name = str(getattr(path_or_fileobj, "name", "<file object>"))
        data = path_or_fileobj.read()  # type: ignore[union-attr]
    else:
        name = os.fspath(path_or_fileobj)
        with open(name, "rb") as f:
            data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise IDXFormatError(f"{name}: corrupt or truncated gzip stream ({exc})") from exc
    return _parse_idx(data, name)


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    if len(data) < 4:
        raise IDXFormatError(
            f"{name}: truncated IDX file: {len(data)} bytes, too short for the 4-byte magic number"
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00":
        raise IDXFormatError(
            f"{name}: not an IDX file: magic number 0x{magic:08X} does not start with two zero bytes "
            "(expected 0x0000TTNN, TT = type code, NN = number of dimensions)"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in _IDX_DTYPES.items())
        raise IDXFormatError(
            f"{name}: unknown IDX type code 0x{code:02X} in magic 0x{magic:08X}; known: {known}"
        )
    if ndim == 0:
        raise IDXFormatError(f"{name}: IDX header declares 0 dimensions (magic 0x{magic:08X})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{name}: truncated IDX file: header needs {header} bytes for {ndim} dimensions, "
            f"file has {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise IDXFormatError(
            f"{name}: truncated IDX file: header says shape {shape} of {dtype.name} = {expected} data bytes, "
            f"but only {got} follow the header"
        )
    if got > expected:
        raise IDXFormatError(
            f"{name}: {got - expected} bytes of trailing garbage after the {expected} data bytes "
            f"of shape {shape} ({dtype.name})"
        )
    # astype copies: the result is writable and in native byte order.
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


# ---------------------------------------------------------------------------
# Locating and downloading
# ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The root of nnxp's download cache.

    Returns:
        ``$XDG_CACHE_HOME/nnxp`` when that variable holds an absolute path,
        else ``~/.cache/nnxp``. Data sets live in subdirectories named after
        them (``~/.cache/nnxp/fashion-mnist``).
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "nnxp"


def _find_file(directory: Path, base: str) -> Path | None:
    # Prefer the .gz: it is what the mirrors and the Debian package ship.
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    return None


def _probe(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The four files in ``directory``, or None and why not."""
    if not directory.is_dir():
        return None, "does not exist" if not directory.exists() else "is not a directory"
    found, missing = {}, []
    for key, base in FILES.items():
        f = _find_file(directory, base)
        if f is None:
            missing.append(f"{base}[.gz]")
        else:
            found[key] = f
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, "found"


def _local_candidates(
    name: str, path: str | os.PathLike[str] | None, cache: Path
) -> list[tuple[str, Path | None]]:
    out: list[tuple[str, Path | None]] = []
    if path is not None:
        out.append(("path argument", Path(path).expanduser()))
    env = os.environ.get("NNXP_DATA_DIR", "")
    if env:
        root = Path(env).expanduser()
        # The dataset subdirectory first: MNIST and Fashion-MNIST share file names,
        # so a bare $NNXP_DATA_DIR can only hold one of them.
        for sub in _SUBDIR_ALIASES[name]:
            out.append(("$NNXP_DATA_DIR", root / sub))
        out.append(("$NNXP_DATA_DIR", root))
    else:
        out.append(("$NNXP_DATA_DIR", None))
    out.append(("user cache", cache))
    for d in SYSTEM_DIRS.get(name, []):
        out.append(("system copy", Path(d)))
    return out


def _fetch(url: str, dest_dir: Path, filename: str, sha256: str | None, timeout: float) -> Path:
    """Download ``url`` into ``dest_dir/filename`` atomically; verify ``sha256``.

    The bytes go to a temporary file in the same directory (so the final
    ``os.replace`` is an atomic rename on one file system), are fsynced, and
    only then replace the target. Any failure removes the temporary file, so a
    reader never sees a partial or unverified file.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    out = os.fdopen(fd, "wb")
    done = False
    try:
        digest = hashlib.sha256()
        received = 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "nnxp-datasets (python urllib)"})
            with out, urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length is not None and length.strip().isdigit() else None
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                # http.client returns a short body without raising when the server
                # closes early, so compare with Content-Length ourselves.
                if expected is not None and received != expected:
                    raise DownloadError(
                        f"{url}: download interrupted: received {received} of {expected} bytes"
                    )
                out.flush()
                os.fsync(out.fileno())
        except DownloadError:
            raise
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise DownloadError(f"{url}: {exc.reason}") from exc
        except (http.client.HTTPException, OSError, ValueError) as exc:
            # IncompleteRead, RemoteDisconnected, reset, timeouts, bad URLs.
            raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ChecksumMismatchError(
                f"{url}: SHA-256 mismatch for {filename}: expected {sha256}, got {actual} "
                f"({received} bytes); the file was discarded"
            )
        # mkstemp makes the file private (0600); these are public data, and a shared
        # cache_dir should be readable by everyone, like a file written with open().
        os.chmod(tmp_name, 0o644)
        target = dest_dir / filename
        os.replace(tmp_name, target)
        done = True
        _fsync_dir(dest_dir)
        return target
    finally:
        if not done:  # also on KeyboardInterrupt
            out.close()
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _how_to_get(name: str, cache: Path, mirrors: Sequence[str]) -> str:
    display = _DISPLAY[name]
    lines = [f"To get {display}, do one of:"]
    if name in _APT_PACKAGES:
        package, where = _APT_PACKAGES[name]
        lines.append(f"  * sudo apt-get install {package}   (Debian/Ubuntu; installs {where})")
    urls = [m.rstrip("/") + "/" + FILES[k] + ".gz" for m in mirrors[:1] for k in FILES]
    lines.append("  * download the four files by hand" + (":" if urls else " (no mirror is configured)"))
    lines += [f"      {u}" for u in urls]
    if len(mirrors) > 1:
        lines.append("    (other mirrors: " + ", ".join(mirrors[1:]) + ")")
    lines.append(
        f"    into a directory and pass it as path=..., or set NNXP_DATA_DIR to it (or to a directory "
        f"holding it as '{name}/'), or put them in {cache}"
    )
    lines.append(f"  * go online and call again with download=True (files are cached in {cache})")
    return "\n".join(lines)


def load_dataset(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 60.0,
) -> DatasetSplits:
    """Load ``"mnist"`` or ``"fashion-mnist"`` from the first place that has it.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        path: a directory holding the four IDX files (``.gz`` or raw); searched
            first.
        download: fetch missing files from the mirrors into the cache when no
            local copy is found.
        cache_dir: root of the download cache; files go to
            ``<cache_dir>/<name>``. Default :func:`default_cache_dir`.
        mirrors: base URLs to try in order; default ``MIRRORS[name]``.
        timeout: seconds a connection or read may stall before the mirror is
            given up.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``uint8`` images of shape
        ``(N, 28, 28)`` and ``int64`` labels of shape ``(N,)``, host NumPy
        arrays.

    Raises:
        DatasetNotFoundError: no local copy and the download was disabled or
            failed on every mirror; the message lists every place tried.
        ChecksumMismatchError: every mirror failed and at least one served a
            file whose SHA-256 differs from :data:`CHECKSUMS`.
        IDXFormatError: the files found are malformed, the image and label
            counts differ, or a label is outside ``[0, 10)``.
        ValueError: ``name`` is not a known data set.

    Note:
        MNIST and Fashion-MNIST use the same file names, so a directory can
        hold only one of them and the loader cannot tell which one it is: keep
        each in its own ``$NNXP_DATA_DIR/<name>`` subdirectory. A ``path`` that
        lacks the files is logged and the search goes on.
    """
    key = name.lower().replace("_", "-")
    if key not in _DISPLAY:
        raise ValueError(f"Unknown data set {name!r}; choose one of {sorted(_DISPLAY)}")
    display = _DISPLAY[key]
    cache = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / key
    mirror_list = list(MIRRORS.get(key, []) if mirrors is None else mirrors)

    tried: list[str] = []
    for label, directory in _local_candidates(key, path, cache):
        if directory is None:
            tried.append(f"{label}: not set")
            continue
        files, why = _probe(directory)
        tried.append(f"{label}: {directory} ({why})")
        if files is None and label == "path argument":
            logger.warning("%s: no %s here (%s); searching elsewhere", directory, display, why)
        if files is not None:
            logger.debug("Loading %s from %s", display, directory)
            return _load_files(files)

    if not download:
        tried.append("download: disabled (download=False)")
        raise _not_found(key, tried, cache, mirror_list)
    if not mirror_list:
        tried.append("download: no mirrors configured")
        raise _not_found(key, tried, cache, mirror_list)

    # Keep what an earlier, partly failed run already verified; fetch the rest.
    files: dict[str, Path] = {}
    for fkey, base in FILES.items():
        existing = _find_file(cache, base)
        if existing is not None:
            files[fkey] = existing
            continue
        filename = f"{base}.gz"
        errors: list[DownloadError] = []
        for i, mirror in enumerate(mirror_list):
            url = mirror.rstrip("/") + "/" + filename
            logger.info("Downloading %s", url)
            try:
                files[fkey] = _fetch(url, cache, filename, CHECKSUMS.get(key, {}).get(filename), timeout)
                break
            except DownloadError as exc:
                errors.append(exc)
                if i + 1 < len(mirror_list):  # the last failure is reported by the exception
                    logger.warning("%s; trying the next mirror", exc)
        else:
            tried += [f"download: {exc}" for exc in errors]
            mismatches = [e for e in errors if isinstance(e, ChecksumMismatchError)]
            if mismatches:
                # Wrong bytes are not "offline": they point at a bad mirror or tampering.
                raise ChecksumMismatchError(
                    f"Could not download a verified copy of {display} {filename}:\n  "
                    + "\n  ".join(str(e) for e in errors)
                    + "\nA mirror that serves re-compressed files (e.g. Debian's) cannot match the published "
                    "sums: put such files in a directory and pass path=... instead."
                ) from mismatches[-1]
            raise _not_found(key, tried, cache, mirror_list) from errors[-1]
    return _load_files(files)


def _not_found(key: str, tried: list[str], cache: Path, mirrors: Sequence[str]) -> DatasetNotFoundError:
    msg = (
        f"{_DISPLAY[key]} was not found. Places tried, in order:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + "\n"
        + _how_to_get(key, cache, mirrors)
    )
    return DatasetNotFoundError(msg, tried)


def _load_files(files: Mapping[str, Path]) -> DatasetSplits:
    out = []
    for split in ("train", "test"):
        img_path, lab_path = files[f"{split}_images"], files[f"{split}_labels"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise IDXFormatError(
                f"{img_path}: expected uint8 images of shape (N, rows, cols), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise IDXFormatError(
                f"{lab_path}: expected 1-D integer labels, got {labels.dtype} {labels.shape}"
            )
        if images.shape[0] != labels.shape[0]:
            raise IDXFormatError(
                f"{split} image/label count mismatch: {img_path} holds {images.shape[0]} images but "
                f"{lab_path} holds {labels.shape[0]} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
            bad = labels[(labels < 0) | (labels >= _NUM_CLASSES)]
            raise IDXFormatError(
                f"{lab_path}: {bad.size} labels outside [0, {_NUM_CLASSES}) (e.g. {int(bad[0])})"
            )
        out.append((images, labels.astype(np.int64)))
    return out[0], out[1]


def load_mnist(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 60.0,
) -> DatasetSplits:
    """Load MNIST (handwritten digits; class names in :data:`MNIST_CLASSES`).

    Args:
        path: a directory holding the four IDX files; searched first.
        download: fetch missing files from :data:`MIRRORS` when no local copy exists.
        cache_dir: root of the download cache (files go to ``<cache_dir>/mnist``).
        mirrors: base URLs to try in order instead of ``MIRRORS["mnist"]``.
        timeout: seconds a connection or read may stall.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``uint8`` images
        ``(60000, 28, 28)`` / ``(10000, 28, 28)`` and ``int64`` labels.

    Raises:
        DatasetNotFoundError: nothing found and no download possible.
        ChecksumMismatchError: a mirror served a file with the wrong SHA-256.
        IDXFormatError: the files found are malformed or inconsistent.

    .. admonition:: Example

        >>> (x, y), (xt, yt) = load_mnist()        # doctest: +SKIP
        >>> x, y = prepare(x, y, backend="cupy")   # doctest: +SKIP
    """
    return load_dataset(
        "mnist", path, download=download, cache_dir=cache_dir, mirrors=mirrors, timeout=timeout
    )


def load_fashion_mnist(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 60.0,
) -> DatasetSplits:
    """Load Fashion-MNIST (Zalando article images; names in :data:`FASHION_MNIST_CLASSES`).

    On Debian/Ubuntu ``apt-get install dataset-fashion-mnist`` provides a
    system copy in ``/usr/share/datasets/fashion-mnist`` that is used without
    any download.

    Args:
        path: a directory holding the four IDX files; searched first.
        download: fetch missing files from :data:`MIRRORS` when no local copy exists.
        cache_dir: root of the download cache (files go to ``<cache_dir>/fashion-mnist``).
        mirrors: base URLs to try in order instead of ``MIRRORS["fashion-mnist"]``.
        timeout: seconds a connection or read may stall.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``uint8`` images
        ``(60000, 28, 28)`` / ``(10000, 28, 28)`` and ``int64`` labels.

    Raises:
        DatasetNotFoundError: nothing found and no download possible.
        ChecksumMismatchError: a mirror served a file with the wrong SHA-256.
        IDXFormatError: the files found are malformed or inconsistent.
    """
    return load_dataset(
        "fashion-mnist", path, download=download, cache_dir=cache_dir, mirrors=mirrors, timeout=timeout
    )


# ---------------------------------------------------------------------------
# Preparation helpers (array API standard only)
# ---------------------------------------------------------------------------


def _as_array(x: Any, backend: str | Backend | None) -> Any:
    if backend is not None:
        return to_device(x, backend)
    if array_api_compat.is_array_api_obj(x):
        return x
    return np.asarray(x)  # lists and scalars: host NumPy, like the loaders return


def _dtype(xp: Any, dtype: Any) -> Any:
    """The namespace's dtype for a name, a NumPy dtype, or the namespace's own dtype."""
    if isinstance(dtype, str):
        return getattr(xp, dtype)
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return getattr(xp, np.dtype(dtype).name)
    return dtype


def scale(x: Any, dtype: Any = "float32", backend: str | Backend | None = None) -> Any:
    """Pixel values ``0..255`` to floats in ``[0, 1]``: ``x / 255``.

    Args:
        x: an image array of any backend (usually ``uint8``).
        dtype: floating dtype of the result (name or dtype object).
        backend: move ``x`` there first (``nnxp.to_device``); ``None`` keeps
            it on its own backend and device.

    Returns:
        A floating array on the same (or the given) backend and device.
    """
    # Move before converting: uint8 is 4x less to copy to a GPU than float32.
    x = _as_array(x, backend)
    xp = array_api_compat.array_namespace(x)
    dt = _dtype(xp, dtype)
    if not xp.isdtype(dt, "real floating"):
        raise ValueError(f"scale() needs a real floating dtype, got {dtype!r}")
    return xp.astype(x, dt) / 255.0


def flatten(x: Any) -> Any:
    """Collapse every axis after the first: ``(N, 28, 28)`` -> ``(N, 784)``.

    Args:
        x: an array of any backend with at least one axis.

    Returns:
        An array of shape ``(N, prod(x.shape[1:]))`` on the same backend and device.
    """
    xp = array_api_compat.array_namespace(x)
    if x.ndim < 1:
        raise ValueError("flatten() needs an array with a leading batch axis, got a 0-d array")
    # An explicit size (not -1) so that N == 0 works too.
    return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))


def one_hot(labels: Any, num_classes: int, dtype: Any = "float32") -> Any:
    """One-hot encode integer class labels.

    Args:
        labels: integer array of any backend and shape; values in ``[0, num_classes)``.
        num_classes: number of classes (length of the new last axis).
        dtype: dtype of the result (name or dtype object).

    Returns:
        Array of shape ``labels.shape + (num_classes,)`` with 1 at each
        label's index and 0 elsewhere, on the labels' backend and device.

    Raises:
        ValueError: ``labels`` is not integer, ``num_classes`` < 1, or a label
            is out of range (checking reads two scalars back to the host).
    """
    xp = array_api_compat.array_namespace(labels)
    if not xp.isdtype(labels.dtype, "integral"):
        raise ValueError(f"one_hot() needs integer labels, got dtype {labels.dtype}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    # int64 so that arange(num_classes) cannot overflow a narrow label dtype.
    lab = xp.astype(labels, xp.int64)
    if math.prod(lab.shape) > 0:
        lo, hi = int(xp.min(lab)), int(xp.max(lab))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"one_hot(): labels must lie in [0, {num_classes}), got values from {lo} to {hi}"
            )
    classes = xp.arange(num_classes, dtype=xp.int64, device=array_api_compat.device(lab))
    return xp.astype(xp.expand_dims(lab, axis=-1) == classes, _dtype(xp, dtype))


def prepare(
    images: Any,
    labels: Any,
    flatten: bool = True,
    backend: str | Backend | None = None,
    dtype: Any = "float32",
) -> tuple[Any, Any]:
    """Turn loaded images and labels into training arrays.

    Args:
        images: ``uint8`` images ``(N, H, W)`` (or ``(N, C, H, W)``) of any backend.
        labels: integer labels ``(N,)`` of any backend.
        flatten: reshape the images to ``(N, H*W)`` for dense layers; keep
            ``False`` for convolutions (add a channel axis yourself).
        backend: move both arrays there (``nnxp.to_device``); ``None`` keeps
            them where they are.
        dtype: floating dtype of the images.

    Returns:
        ``(x, y)``: ``x`` scaled to ``[0, 1]`` in ``dtype``, ``y`` ``int64``,
        both on the same backend and device.
    """
    x = scale(images, dtype=dtype, backend=backend)
    if flatten:
        x = _flatten(x)
    y = _as_array(labels, backend)
    xp = array_api_compat.array_namespace(y)
    y = xp.astype(y, xp.int64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"prepare(): {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


_flatten = flatten  # prepare()'s ``flatten`` argument shadows the function
