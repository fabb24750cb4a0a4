"""Checkpoints: architecture, parameters, buffers, optimizer state, dtype and
epoch in one ``.npz`` file of little-endian arrays, written atomically.

This module knows the file format; it never imports :mod:`nnxp.model`
(which calls it): :func:`nnxp.load`, which builds a new model, lives there.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import to_numpy
from .layers.base import Layer, layer_class
from .losses import get_loss
from .optim import get_optimizer

if TYPE_CHECKING:  # the model calls this module, never the reverse
    from .model import Sequential

__all__ = ["CheckpointError", "build_layers", "load_into", "read", "restore", "save"]

FORMAT = "nnxp-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file is not an nnxp checkpoint, is damaged, or does not fit the model."""


def _le(a: np.ndarray) -> np.ndarray:
    """Little-endian copy (checkpoints read the same on every machine)."""
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename.

    A crash mid-write leaves the previous file at ``path`` untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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

    Args:
        model: the :class:`~nnxp.Sequential` to save.
        path: target file; conventionally ``*.npz``.
    """
    from . import __version__

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
        "layers": [{"type": type(layer).__name__, "config": layer.config()} for layer in model.layers],
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
        return [layer_class(spec["type"])(**spec["config"]) for spec in meta["layers"]]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{os.fspath(path)}: cannot rebuild the layers: {exc}") from exc


def load_into(model: Sequential, path: str | os.PathLike) -> Sequential:
    """Load a checkpoint into an existing model of the same architecture.

    Raises:
        CheckpointError: the checkpoint's layers or shapes differ from ``model``'s.
    """
    meta, arrays = _read(path)
    saved = [(s["type"], s["config"]) for s in meta["layers"]]
    mine = [(type(layer).__name__, layer.config()) for layer in model.layers]
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
