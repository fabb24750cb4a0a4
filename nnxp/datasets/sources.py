"""Where the data sets come from: the search order, verified downloads and the loaders.

See :mod:`nnxp.datasets` for the search order."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .idx import IDXFormatError, read_idx

logger = logging.getLogger("nnxp.datasets")

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
