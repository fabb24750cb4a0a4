"""Checkpoints: architecture, parameters, buffers, optimizer state, dtype and
epoch in one ``.npz`` file of little-endian arrays, written atomically.

This module knows the file format; it never imports :mod:`nnxp.model`
(which calls it): :func:`nnxp.load`, which builds a new model, lives there.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import zipfile
from typing import TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # Windows: no flock; stale temp files are then left in place
    fcntl = None  # type: ignore[assignment]

import numpy as np

from .backends import to_numpy
from .layers.base import Layer
from .layers.containers import layer_from_spec, layer_spec
from .losses import get_loss
from .optim import get_optimizer

if TYPE_CHECKING:  # the model calls this module, never the reverse
    from .model import Sequential

__all__ = ["CheckpointError", "atomic_write", "build_layers", "load_into", "read", "remove_stale_temp_files",
           "restore", "save"]

FORMAT = "nnxp-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file is not an nnxp checkpoint, is damaged, or does not fit the model."""


def _le(a: np.ndarray) -> np.ndarray:
    """Little-endian copy (checkpoints read the same on every machine)."""
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


_TMP_SUFFIX = ".nnxp.tmp"


def _tmp_name(path: str) -> str:
    """``.<name>.<host>.<pid>.<random>.nnxp.tmp`` beside ``path``: says who wrote it."""
    host = socket.gethostname().replace(os.sep, "_") or "host"
    return os.path.join(os.path.dirname(path),
                        f".{os.path.basename(path)}.{host}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _lock(fd: int, block: bool) -> bool:
    """Take an exclusive ``flock`` on ``fd``; False when another process holds it.

    A live writer holds the lock on its temp file until it has renamed it; the
    kernel drops it when the writer dies, even by ``kill -9``. Where locks are not
    available (no ``fcntl``, or a file system without them) this returns True for the
    writer and False for the cleaner, so nothing is ever removed there.
    """
    if fcntl is None:
        return block
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, EBADF on some network file systems
        return block
    return True


def remove_stale_temp_files(directory: str | os.PathLike) -> list[str]:
    """Remove the temp files of :func:`atomic_write` calls whose process died mid-write.

    A temp file is stale when no process holds its lock: its writer ended without
    renaming it (killed, or its machine went down). Files of live writers, on this
    machine or another one sharing the directory, are locked and left alone.

    Args:
        directory: where to look.

    Returns:
        The paths removed.
    """
    removed = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(".") and n.endswith(_TMP_SUFFIX)]
    except OSError:
        return removed
    for name in names:
        tmp = os.path.join(directory, name)
        try:
            fd = os.open(tmp, os.O_RDWR)
        except OSError:  # gone meanwhile (renamed by its writer), or not ours to touch
            continue
        try:
            if not _lock(fd, block=False):
                continue
            # locked by us: its writer is dead, unless the name now holds another file
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                os.unlink(tmp)
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename.

    A crash mid-write leaves the previous file at ``path`` untouched. The file gets
    the usual permissions (``0o666`` less the umask, as ``open`` gives). The temp file,
    ``.<name>.<host>.<pid>.<random>.nnxp.tmp``, is locked (``flock``) while it is
    written; each call first removes the temp files of earlier writers that died
    mid-write (no lock held), never one a live writer is still writing.

    Args:
        path: the target file.
        write: called with the open binary temp file.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    remove_stale_temp_files(directory)
    while True:
        tmp = _tmp_name(path)
        # os.open applies the umask to 0o666, as open() does for any new file (mkstemp would give 0o600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        _lock(fd, block=True)
        try:  # a cleaner may have taken the lock and removed the file between open and flock: start over
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    f = os.fdopen(fd, "wb")
    try:
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is None:  # Windows cannot rename an open file (and there is no lock to keep)
                f.close()
            os.replace(tmp, path)
        finally:
            f.close()  # drops the lock, after the rename: the temp name never held a lock-free live file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(model: Sequential, path: str | os.PathLike) -> None:
    """Write ``model`` (and its optimizer) to ``path`` atomically.

    After ``fit(..., distributed=comm)`` with several ranks, only rank 0 writes (the
    ranks hold the same numbers); on the others this returns without writing, so a
    script may call it on every rank.

    Args:
        model: the :class:`~nnxp.Sequential` to save.
        path: target file; conventionally ``*.npz``.
    """
    from . import __version__

    comm = getattr(model, "comm", None)
    if comm is not None and comm.rank != 0:
        return

    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(model.layers):
        for k, v in layer.params.items():
            arrays[f"param/{i}/{k}"] = _le(to_numpy(v))
        for k, v in layer.buffers.items():
            arrays[f"buffer/{i}/{k}"] = _le(to_numpy(v))
    opt = model.optimizer
    if opt is not None:
        for key, st in opt.state.items():
            for k, v in st.items():
                arrays[f"optim/{key}/{k}"] = _le(to_numpy(v))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "nnxp": __version__,
        "dtype": model.dtype,
        "seed": model.seed,
        "epoch": model.epoch,
        "backend": model.backend.name,
        "layers": [layer_spec(layer) for layer in model.layers],  # containers carry their children
        "optimizer": None if opt is None else {"type": type(opt).__name__, "config": opt.config(),
                                                **opt.counters()},
        "loss": None if model.loss is None else {"type": type(model.loss).__name__, "config": model.loss.config()},
        "history": {"epochs": model.history.epochs, "metrics": model.history.history},
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a bare .npy array: np.load returned an ndarray, not an archive
            raise CheckpointError(f"{path} holds a single .npy array, not an nnxp checkpoint (.npz archive).")
        with loaded as data:
            if "__meta__" not in data.files:
                raise CheckpointError(f"{path} is an .npz file but not an nnxp checkpoint (no __meta__ entry).")
            meta = json.loads(bytes(data["__meta__"]).decode())
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable nnxp checkpoint (truncated or not an .npz file): {exc}") \
            from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nnxp checkpoint (format {meta.get('format')!r}).")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer nnxp (checkpoint version {meta['version']}); upgrade nnxp."
        )
    return meta, arrays


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and the host arrays of a checkpoint, checked for format and version.

    Args:
        path: the checkpoint file.

    Returns:
        ``(meta, arrays)``.

    Raises:
        CheckpointError: not a checkpoint, truncated, or written by a newer nnxp.
    """
    return _read(path)


def build_layers(meta: dict[str, Any], path: str | os.PathLike) -> list[Layer]:
    """Fresh (unbuilt) layers of the architecture a checkpoint's metadata describes.

    Args:
        meta: the checkpoint's metadata (from :func:`read`).
        path: the file, for error messages.

    Returns:
        The layers, first to last.

    Raises:
        CheckpointError: a layer type is unknown or its configuration invalid.
    """
    try:
        return [layer_from_spec(spec) for spec in meta["layers"]]  # containers: with their children
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{os.fspath(path)}: cannot rebuild the layers: {exc}") from exc


def load_into(model: Sequential, path: str | os.PathLike) -> Sequential:
    """Load a checkpoint into an existing model of the same architecture.

    Raises:
        CheckpointError: the checkpoint's layers or shapes differ from ``model``'s.
    """
    meta, arrays = _read(path)
    saved = meta["layers"]
    mine = json.loads(json.dumps([layer_spec(layer) for layer in model.layers]))  # tuples -> lists, as saved
    if saved != mine:
        raise CheckpointError(
            f"{os.fspath(path)} holds a different architecture:\n  saved: {saved}\n  model: {mine}"
        )
    restore(model, meta, arrays, os.fspath(path))
    return model


def restore(model: Sequential, meta: dict[str, Any], arrays: dict[str, np.ndarray], path: str) -> None:
    """Put a checkpoint's arrays, optimizer, loss, epoch and history into ``model`` (same architecture).

    Raises:
        CheckpointError: an array is missing or has the wrong shape.
    """
    b = model.backend
    for i, layer in enumerate(model.layers):
        for store, prefix in ((layer.params, "param"), (layer.buffers, "buffer")):
            for k, v in store.items():
                key = f"{prefix}/{i}/{k}"
                if key not in arrays:
                    raise CheckpointError(f"{path} lacks {key}: incompatible architecture or damaged file.")
                a = arrays[key]
                if tuple(a.shape) != tuple(v.shape):
                    raise CheckpointError(f"{path}: {key} has shape {a.shape} but layer {i} ({layer!r}) "
                                          f"needs {tuple(v.shape)}: incompatible architecture.")
                store[k] = b.from_host(a, model.dtype)
    model.epoch = int(meta.get("epoch", 0))
    opt_meta = meta.get("optimizer")
    if opt_meta is not None:
        from . import optim

        try:  # the schedule's position and state, the step and epoch counts travel in opt_meta too
            opt = optim.from_config(opt_meta["type"], opt_meta["config"], opt_meta)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot rebuild the optimizer: {exc}") from exc
        for name, a in arrays.items():
            if name.startswith("optim/"):
                _, key, slot = name.split("/")
                opt.state.setdefault(key, {})[slot] = b.from_host(a, model.dtype)
        model.optimizer = get_optimizer(opt)
    loss_meta = meta.get("loss")
    if loss_meta is not None:
        from . import losses

        model.loss = get_loss(getattr(losses, loss_meta["type"])(**loss_meta["config"]))
    hist = meta.get("history") or {}
    model.history.epochs = list(hist.get("epochs", []))
    model.history.history = {k: list(v) for k, v in hist.get("metrics", {}).items()}
