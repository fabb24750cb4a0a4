"""Callbacks for ``Sequential.fit``, in the style of Keras.

```python
from nnxp import callbacks
hist = net.fit(x, y, ..., validation_data=(xv, yv), callbacks=[
    callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
    callbacks.ModelCheckpoint("best.npz", monitor="val_loss", save_best_only=True),
    callbacks.ModelCheckpoint("last.npz"),
    callbacks.CSVLogger("training.csv"),
    lambda model, epoch, logs: print(epoch, logs["loss"]),   # plain callables still work
])
```

A callback sees the model (``self.model``) and, after each epoch, that
epoch's logs: the host floats ``fit`` records in its
:class:`~nnxp.History` (``loss``, ``accuracy``, ``val_loss``, ``lr``, ...).
Epochs are numbered from 1, continuing across ``fit`` calls
(``model.epoch``), as everywhere in nnxp. There are no per-batch hooks: a
step never waits on the host, and a hook that read the loss would make it.
Setting ``model.stop_training = True`` in a callback ends ``fit`` after the
current epoch.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model calls this module, never the reverse
    from .model import Sequential

__all__ = ["CSVLogger", "Callback", "CallbackList", "EarlyStopping", "ModelCheckpoint", "restore_snapshot",
           "snapshot"]


class Callback:
    """Base class: override the hooks you need.

    Attributes:
        model: the model being trained (set by ``fit`` before ``on_train_begin``).
    """

    model: Sequential | None = None

    def set_model(self, model: Sequential) -> None:
        """Attach the model ``fit`` trains."""
        self.model = model

    @property
    def writes_files(self) -> bool:
        """True unless this process is a rank other than 0 of a data-parallel ``fit``
        (where rank 0 alone writes, as it alone prints)."""
        comm = getattr(self.model, "comm", None)
        return comm is None or comm.rank == 0

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        """Before the first epoch of a ``fit`` call."""

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Before epoch ``epoch`` (1-based, continuing across ``fit`` calls)."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        """After epoch ``epoch`` with its logs (training and validation metrics, ``lr``, ``time``)."""

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """After the last epoch (also when a callback stopped training; not after an exception)."""


class _FunctionCallback(Callback):
    """A plain function ``fn(model, epoch, logs)`` run after each epoch (what ``fit`` makes of a callable).

    Args:
        fn: the function.
    """

    def __init__(self, fn: Callable[[Any, int, Mapping[str, float]], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.fn(self.model, epoch, logs)


class CallbackList:
    """The callbacks of one ``fit`` call, dispatched in order.

    Args:
        callbacks: :class:`Callback` objects or callables ``cb(model, epoch, logs)``.
        model: the model being trained.

    Raises:
        TypeError: an entry is neither.
    """

    def __init__(self, callbacks: Iterable[Any], model: Sequential) -> None:
        self.callbacks: list[Callback] = []
        for i, cb in enumerate(callbacks or ()):
            if isinstance(cb, Callback):
                pass
            elif callable(cb):
                cb = _FunctionCallback(cb)
            else:
                raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}: pass nnxp.callbacks.Callback objects "
                                "or functions cb(model, epoch, logs).")
            cb.set_model(model)
            self.callbacks.append(cb)

    def on_train_begin(self) -> None:
        """Every callback's :meth:`Callback.on_train_begin`, in order."""
        for cb in self.callbacks:
            cb.on_train_begin({})

    def on_epoch_begin(self, epoch: int) -> None:
        """Every callback's :meth:`Callback.on_epoch_begin` for 1-based ``epoch``."""
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, {})

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Every callback's :meth:`Callback.on_epoch_end` with the epoch's logs (one dict, shared)."""
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """Every callback's :meth:`Callback.on_train_end` with the last epoch's logs (``{}`` after no epoch)."""
        for cb in self.callbacks:
            cb.on_train_end(dict(logs or {}))


class _Monitor:
    """Tracks the best value of one log entry (shared by early stopping and checkpoints)."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        from .schedules import _mode

        self.monitor = monitor
        self.mode = _mode(mode, monitor)
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.best: float | None = None

    def value(self, logs: Mapping[str, float], who: str) -> float | None:
        """``logs[monitor]``, or ``None`` with a warning naming what the logs hold."""
        if self.monitor not in logs:
            warnings.warn(f"{who} watches {self.monitor!r} but the epoch's logs hold only {sorted(logs)}; "
                          "pass validation_data to fit for val_* entries. Skipping this epoch.",
                          RuntimeWarning, stacklevel=3)
            return None
        return float(logs[self.monitor])

    def improved(self, value: float, reference: float | None = None) -> bool:
        """``value`` beats ``reference`` (default: the best so far) by more than ``min_delta``."""
        ref = self.best if reference is None else reference
        if math.isnan(value):
            return False
        if ref is None:
            return True
        return value < ref - self.min_delta if self.mode == "min" else value > ref + self.min_delta


def _state_arrays(model: Sequential) -> list[tuple[dict[str, Any], str]]:
    """``(dict, key)`` for every parameter and buffer of ``model``: the arrays that make its weights."""
    out = [(layer.params, name) for _, layer, name in model.slots()]
    seen: set[int] = set()
    stack = list(model.layers)
    while stack:  # buffers (BatchNorm's running statistics), also of nested containers
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out += [(layer.buffers, k) for k in getattr(layer, "buffers", {})]
        stack += [s for s in getattr(layer, "layers", ()) if hasattr(s, "buffers")]
    return out


def snapshot(model: Sequential) -> list[Any]:
    """Copies of every parameter and buffer of ``model``, on its device (no host transfer).

    Returns:
        The copies, in the order :func:`restore_snapshot` expects.
    """
    b = model.backend
    return [b.asarray(store[k], copy=True) for store, k in _state_arrays(model)]


def restore_snapshot(model: Sequential, arrays: list[Any]) -> None:
    """Put :func:`snapshot`'s copies back into ``model`` (copies again: the snapshot stays valid)."""
    b = model.backend
    for (store, k), a in zip(_state_arrays(model), arrays, strict=True):
        store[k] = b.asarray(a, copy=True)


class EarlyStopping(Callback):
    """Stop training when a monitored metric stops improving (Keras's ``EarlyStopping``).

    Args:
        monitor: the log entry to watch (``"val_loss"`` needs ``validation_data``).
        min_delta: an improvement must beat the best value by more than this (absolute).
        patience: epochs without improvement before stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracies).
        baseline: a value to beat: training stops after ``patience`` epochs
            that do not beat it, even if they improve on each other.
        restore_best_weights: at the end of training (stopped or not), put back
            the parameters and buffers of the best epoch. The copies stay on
            the device; the optimizer state is not rolled back.
        start_from_epoch: epochs of this ``fit`` call to wait before watching (warmup).
        verbose: 1 prints when it stops and when it restores.

    Attributes:
        best: the best value seen; ``best_epoch`` its epoch; ``stopped_epoch``
            the epoch after which training stopped (0: it ran to the end).
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 baseline: float | None = None, restore_best_weights: bool = False, start_from_epoch: int = 0,
                 verbose: int = 0) -> None:
        self._mon = _Monitor(monitor, mode, min_delta)
        if int(patience) != patience or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.monitor, self.mode, self.min_delta = monitor, self._mon.mode, self._mon.min_delta
        self.patience, self.baseline = int(patience), baseline
        self.restore_best_weights, self.start_from_epoch = bool(restore_best_weights), int(start_from_epoch)
        self.verbose = verbose
        self.best: float | None = None
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.wait = 0
        self.best_weights: list[Any] | None = None
        self._epochs_seen = 0

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        self._mon.best = None
        self.best, self.best_epoch, self.stopped_epoch, self.wait = None, 0, 0, 0
        self.best_weights = None
        self._epochs_seen = 0

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        self._epochs_seen += 1
        if self._epochs_seen <= self.start_from_epoch:
            return
        value = self._mon.value(logs, "EarlyStopping")
        if value is None:
            return
        self.wait += 1
        if self._mon.improved(value):
            self._mon.best = self.best = value
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = snapshot(self.model)
            if self.baseline is None or self._mon.improved(value, float(self.baseline)):
                self.wait = 0
                return
        if self.wait >= self.patience and self._epochs_seen > 1:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"epoch {epoch}: early stopping ({self.monitor} best {self.best} at epoch {self.best_epoch})")

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None and self.best_epoch != self.model.epoch:
            if self.verbose:
                print(f"restoring the weights of epoch {self.best_epoch} ({self.monitor} {self.best})")
            restore_snapshot(self.model, self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model after epochs, atomically, through ``model.save`` (Keras's ``ModelCheckpoint``).

    ``ModelCheckpoint("last.npz")`` keeps the latest epoch;
    ``ModelCheckpoint("best.npz", save_best_only=True)`` the best one by
    ``monitor``. A checkpoint holds the optimizer and its schedule, so
    ``nnxp.load(path)`` and ``fit`` resume training exactly from there.

    Args:
        path: target file; may hold ``str.format`` fields filled from the
            epoch and its logs, e.g. ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``.
        monitor: the log entry that decides what is best.
        save_best_only: write only when ``monitor`` improved on the best so far.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracies).
        min_delta: an improvement must beat the best by more than this (absolute).
        save_freq: write every this many epochs (with ``save_best_only=False``).
        verbose: 1 prints each write.

    Attributes:
        best: the best monitored value so far (``save_best_only``); ``last_path`` the last file written.
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", min_delta: float = 0.0, save_freq: int = 1, verbose: int = 0) -> None:
        self.path = os.fspath(path)
        self._mon = _Monitor(monitor, mode, min_delta)
        if int(save_freq) != save_freq or save_freq < 1:
            raise ValueError(f"save_freq must be an integer >= 1 (epochs), got {save_freq!r}")
        self.monitor, self.mode, self.save_best_only = monitor, self._mon.mode, bool(save_best_only)
        self.save_freq, self.verbose = int(save_freq), verbose
        self.last_path: str | None = None

    @property
    def best(self) -> float | None:
        """The best monitored value written so far (``save_best_only``), else ``None``."""
        return self._mon.best

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        if self.save_best_only:
            value = self._mon.value(logs, "ModelCheckpoint")
            if value is None or not self._mon.improved(value):
                return
            self._mon.best = value
        elif epoch % self.save_freq:
            return
        try:
            path = self.path.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint path {self.path!r} cannot be filled from epoch={epoch} and the "
                             f"logs {sorted(logs)}: {exc}") from exc
        self.model.save(path)
        self.last_path = path
        if self.verbose:
            print(f"epoch {epoch}: saved {path}" + (f" ({self.monitor} {self._mon.best})" if self.save_best_only
                                                    else ""))


class CSVLogger(Callback):
    """Append one row per epoch to a CSV file: ``epoch`` and the epoch's logs (Keras's ``CSVLogger``).

    The columns are those of the first epoch written (a later epoch's missing
    entries are left empty). Each row is written and flushed when its epoch
    ends, so the file is readable while training runs.

    Args:
        path: the CSV file.
        separator: the field separator.
        append: add to an existing file (its header is kept) instead of starting a new one.
    """

    def __init__(self, path: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        self.path, self.separator, self.append = os.fspath(path), separator, bool(append)
        self.fields: list[str] | None = None
        self._started = False  # a later fit call with the same logger continues its file

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        if not self.writes_files:
            return
        if not self._started and not self.append:
            open(self.path, "w").close()
        self._started = True
        self.fields = None
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="") as f:
                self.fields = next(csv.reader(f, delimiter=self.separator), None)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        if not self.writes_files:
            return
        row = {"epoch": epoch, **logs}
        with open(self.path, "a", newline="") as f:
            if self.fields is None:
                self.fields = list(row)
                csv.writer(f, delimiter=self.separator).writerow(self.fields)
            csv.DictWriter(f, self.fields, delimiter=self.separator, restval="", extrasaction="ignore").writerow(row)
