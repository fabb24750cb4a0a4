"""``Sequential``: a stack of layers with batched training and inference."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import io
from .backends import Backend, backend_of, resolve_backend
from .callbacks import CallbackList
from .distributed import Communicator, guard
from .history import History
from .layers.activations import ReLU
from .layers.base import Array, Layer
from .layers.containers import LayerContainer, first_leaf, is_container, pick_initialisers
from .layers.fused import fuse
from .layers.pooling import MaxPool2D
from .losses import Loss, check_label_range, get_loss
from .optim import Optimizer, Slot, get_optimizer

__all__ = ["NonFiniteLossError", "Sequential", "load"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; parameters are as before that step.

    Attributes:
        epoch: 1-based epoch number.
        batch: 0-based batch index within the epoch.
    """

    def __init__(self, epoch: int, batch: int, value: float) -> None:
        self.epoch, self.batch, self.value = epoch, batch, value
        super().__init__(
            f"The loss became {value} at epoch {epoch}, batch {batch}; training stopped and the "
            "parameters are left as they were before that step. Try a smaller learning rate, "
            "check the inputs for NaN/inf, or scale them (e.g. to [0, 1])."
        )


class Sequential(LayerContainer):
    """Layers applied in order, trained with mini-batch gradient descent.

    A ``Sequential`` is also a layer: placed inside another one it runs as
    one block (its parameters appear there under dotted keys such as
    ``"3.1.weight"``, see :mod:`nnxp.layers.containers`), and the outer model
    rebuilds it with its own backend, dtype and seed.

    Args:
        layers: the layers, first to last (a ``Sequential`` may be one of them).
        backend: backend name (``"numpy"``, ``"cupy:1"``, ...) or
            :class:`~nnxp.Backend`; default: the current backend.
        dtype: parameter dtype, ``"float32"`` (default) or ``"float64"``.
        seed: seeds the host NumPy generator of the initial parameters (so
            one seed gives identical parameters on every backend), the
            shuffling and the dropout streams.
    """

    def __init__(self, layers: Iterable[Layer], backend: str | Backend | None = None,
                 dtype: str = "float32", seed: int = 0) -> None:
        self.layers: list[Layer] = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer | LayerContainer):
                raise TypeError(f"Sequential takes Layer instances; item {i} is {type(layer).__name__}")
        if str(dtype) not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.backend = resolve_backend(backend)
        self.dtype = str(dtype)
        self.seed = int(seed)
        self.epoch = 0  # finished epochs, continues across fit() calls and checkpoints
        self.optimizer: Optimizer | None = None
        self.loss: Loss | None = None
        self.history = History()
        self.comm: Communicator | None = None  # of the last fit(distributed=comm): save() writes on rank 0 only
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self.build(self.backend, self.dtype, np.random.default_rng(self.seed))
        self.infer_shape(None)

    # ----------------------------------------------------------- structure
    def _pick_initialisers(self) -> None:
        """Glorot for layers followed by tanh/sigmoid, He otherwise (unless set); nested, the
        last layer follows the choice the outer model made for this block."""
        pick_initialisers(self.layers, getattr(self, "default_init", None))

    def build(self, backend: str | Backend | None = None, dtype: Any = "float32",
              rng: np.random.Generator | int | None = 0) -> Sequential:
        """(Re)create every layer's arrays: the constructor does this, and an outer
        ``Sequential`` does it again for a nested one, with its own backend, dtype and generator.

        Args:
            backend: backend name or :class:`~nnxp.Backend`.
            dtype: ``"float32"`` or ``"float64"`` (or the backend's dtype object).
            rng: host NumPy ``Generator`` (or a seed) the initialisers draw from.

        Returns:
            ``self``.
        """
        self.backend = resolve_backend(backend)
        self.dtype = str(dtype).rsplit(".", 1)[-1]
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        self._pick_initialisers()
        for layer in self.layers:
            layer.build(self.backend, self.dtype, rng)
        return self

    @property
    def built(self) -> bool:
        return True

    @property
    def xp(self) -> Any:
        """The backend's array namespace (optimizers read it from the layers they update)."""
        return self.backend.xp

    def infer_shape(self, sample_shape: tuple[int, ...] | None) -> tuple[int | None, ...] | None:
        """Check that each layer's output fits the next; return the per-sample output shape.

        Args:
            sample_shape: per-sample input shape (without the batch axis), or
                ``None`` to start from what the first layer declares.

        Raises:
            ValueError: naming the first layer whose input does not fit.
        """
        shape = sample_shape if sample_shape is not None else self._input_spec()
        if shape is None:
            return None
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(tuple(shape)))
            except ValueError as exc:
                raise ValueError(f"Layer {i} ({layer!r}): {exc}") from None
        return shape

    def _input_spec(self) -> tuple[int | None, ...] | None:
        """Per-sample input shape the first layer declares (``None`` entries unknown)."""
        first = first_leaf(self) if self.layers else None
        if hasattr(first, "in_features"):
            return (first.in_features,)
        if hasattr(first, "in_channels"):
            return (first.in_channels, None, None)
        return None

    def slots(self) -> list[Slot]:
        """``(key, layer, name)`` for every parameter; ``key`` is ``"<layer index>.<name>"``
        (``"3.1.weight"`` for layer 1 inside the container at index 3: ``name`` is then
        ``"1.weight"``, a key of the container's dotted ``params`` view)."""
        return [(f"{i}.{k}", layer, k) for i, layer in enumerate(self.layers) for k in layer.params]

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(math.prod(p.shape) for layer in self.layers for p in layer.params.values())

    def summary(self, sample_shape: tuple[int, ...] | None = None) -> str:
        """A table of layers, per-sample output shapes and parameter counts.

        Args:
            sample_shape: per-sample input shape (without the batch axis), e.g.
                ``(1, 28, 28)`` for a CNN, whose first layer only declares its
                channels; ``None`` uses what the first layer declares.

        Returns:
            The table as one string.
        """
        shape = tuple(sample_shape) if sample_shape is not None else self._input_spec()
        entries: list[tuple[str, str, Any, int]] = []

        def walk(layers: list[Layer], shape: Any, prefix: str, depth: int) -> None:
            for i, layer in enumerate(layers):
                out = layer.output_shape(shape) if shape is not None else None
                n = sum(math.prod(p.shape) for p in layer.params.values())
                # a container's row names it; its children follow, indented, from the same input
                label = "  " * depth + (type(layer).__name__ if is_container(layer) else repr(layer))
                entries.append((f"{prefix}{i}", label, out, n))
                if is_container(layer):
                    walk(layer.layers, shape, f"{prefix}{i}.", depth + 1)
                shape = out

        walk(self.layers, shape, "", 0)
        width = max([24, *(len(label) for _, label, _, _ in entries)])
        iw = max([3, *(len(idx) for idx, _, _, _ in entries)])
        rows = [f"{idx:>{iw}}  {label:<{width}} {out or '?'!s:<16} {n:>10,}" for idx, label, out, n in entries]
        head = f"Sequential on {self.backend.name}, {self.dtype}, seed {self.seed}"
        return "\n".join([head, *rows, f"     total parameters: {self.num_params():,}"])

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(layer).replace("\n", "\n    ") for layer in self.layers)
        return f"Sequential([\n    {inner},\n], backend={self.backend.name!r}, dtype={self.dtype!r}, seed={self.seed})"

    # ----------------------------------------------------------- computing
    def forward(self, x: Array, training: bool = False) -> Array:
        """Run the layers on one batch that is already on the model's backend.

        Args:
            x: input batch.
            training: training mode (dropout on, BatchNorm batch statistics).

        Returns:
            The output batch.

        Raises:
            BackendMismatchError: ``x`` is on another backend or device.
        """
        self.backend.check(x, "input")
        return self._forward(x, training)

    __call__ = forward

    def _forward(self, x: Array, training: bool) -> Array:
        for layer in self._plan():
            x = layer.forward(x, training)
        return x

    def _plan(self) -> list[Any]:
        """The steps a pass runs: ``self.layers``, but a ``ReLU`` followed by a ``MaxPool2D``
        runs after it, and a ``Conv2D, MaxPool2D[, ReLU]`` run that the backend fuses is one
        step (:func:`nnxp.layers.fused.fuse`).

        ReLU is non-decreasing, so it commutes with the maximum: ``pool(relu(x)) ==
        relu(pool(x))`` and both orders route the gradient to the same pixel (the first
        maximum; where the maximum is not positive both give zero). Pooled first, the ReLU
        passes see a quarter of the data (2x2 pooling). Not at the start of the model, where
        ``fit`` marks the first layer as not needing its input gradient.
        """
        layers = list(self.layers)
        for i in range(1, len(layers) - 1):
            if type(layers[i]) is ReLU and type(layers[i + 1]) is MaxPool2D:
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return fuse(layers)

    def backward(self, grad: Array) -> Array:
        """Backpropagate ``grad`` (dLoss/dOutput) through every layer; fills ``layer.grads``.

        Returns:
            The gradient with respect to the input (``None`` if the first
            layer skipped it).
        """
        for layer in reversed(self._plan()):
            grad = layer.backward(grad)
        return grad

    # --------------------------------------------------------------- data
    def _inputs(self, x: Any, what: str = "x") -> Array:
        """Move inputs to the model once, check dtype and shape."""
        b = self.backend
        try:
            src = backend_of(x)
        except TypeError:
            src = None
        leaf = first_leaf(self)
        if getattr(leaf, "takes_indices", False):  # Embedding first: integer indices stay integer
            x = b.asarray(x)
            if not b.xp.isdtype(x.dtype, "integral"):
                raise TypeError(f"{what} has dtype {x.dtype}, but the first layer ({leaf!r}) takes "
                                "integer indices. Pass token ids as integers, e.g. x.astype('int64').")
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(f"{what} must hold at least one sample along axis 0, got shape {tuple(x.shape)}")
            leaf.check_indices(x)  # once per data set (GPU steps skip the per-batch check)
            self.infer_shape(tuple(x.shape[1:]))
            return x
        if src is not None and not src.xp.isdtype(x.dtype, "real floating"):
            raise TypeError(
                f"{what} has dtype {x.dtype}; the model computes in {self.dtype}. Convert it first, "
                "e.g. nnxp.datasets.scale(images) for uint8 pixels, or x.astype('float32')."
            )
        x = b.asarray(x, dtype=self.dtype)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{what} must hold at least one sample along axis 0, got shape {tuple(x.shape)}")
        self.infer_shape(tuple(x.shape[1:]))
        return x

    def _targets(self, y: Any, loss: Loss, n: int, classes: int | None, what: str = "y") -> Array:
        """Move targets once: integer labels stay integer (checked against the class count)."""
        b = self.backend
        y = b.asarray(y)
        if y.shape[0] != n:
            raise ValueError(f"x has {n} samples but {what} has {y.shape[0]}: they must have the same length.")
        xp = b.xp
        # class labels stay integer: (batch,), or (batch, time) for a loss that takes label sequences
        labels = y.ndim == 1 or getattr(loss, "integer_labels", False)
        if xp.isdtype(y.dtype, "integral") and getattr(loss, "classification", False) and labels:
            y = xp.astype(y, xp.int64)
            if classes is not None:
                check_label_range(y, classes, xp)
        elif not xp.isdtype(y.dtype, "real floating"):
            y = xp.astype(y, b.dtype(self.dtype))
        elif y.dtype != b.dtype(self.dtype):
            y = xp.astype(y, b.dtype(self.dtype))
        return y

    def _classes(self, x: Array) -> int | None:
        out = self.infer_shape(tuple(x.shape[1:]))
        return out[-1] if out else None

    # ------------------------------------------------------------ training
    @guard("fit")
    def fit(self, x: Any, y: Any, loss: Loss | str | None = None, optimizer: Optimizer | str | None = None,
            epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
            validation_data: tuple[Any, Any] | None = None, verbose: int = 1,
            check_finite: str = "auto", callbacks: Sequence[Any] = (),
            metrics: Sequence[str] | None = None, distributed: Communicator | None = None) -> History:
        """Train with mini-batches.

        Args:
            x: inputs, ``(samples, ...)``, on any backend (moved once).
            y: targets: integer labels or one-hot rows for classification, values for regression.
            loss: a :class:`~nnxp.losses.Loss` or its name; default: the last one used.
            optimizer: an :class:`~nnxp.optim.Optimizer` or name; default: the last one
                used (e.g. restored from a checkpoint).
            epochs: number of epochs to run (numbering continues from ``self.epoch``).
            batch_size: samples per step; the last batch may be smaller.
            shuffle: reshuffle each epoch with a host generator seeded by
                ``(seed, epoch)``, identical on every backend and on resume.
            validation_data: ``(x_val, y_val)`` evaluated after each epoch.
            verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
            check_finite: ``"step"`` reads the loss on the host every step and stops before a
                non-finite update; ``"device"`` keeps an on-device flag, masks updates once the
                loss is non-finite and reads it at each progress refresh (no per-step sync);
                ``"auto"``: step on CPU backends, device on GPUs; ``"off"``.
            callbacks: :class:`~nnxp.callbacks.Callback` objects (``EarlyStopping``,
                ``ModelCheckpoint``, ``CSVLogger``, ...) and/or callables ``cb(model, epoch, logs)``
                run after each epoch; one that sets ``model.stop_training = True`` ends training
                after that epoch.
            metrics: training metrics kept during the epoch besides the loss: ``("accuracy",)``
                (the default for classification losses) or ``()`` (the default otherwise).
                Accuracy costs five array calls per step, which matters on a GPU at small
                batches; ``metrics=()`` skips it (validation still reports accuracy).
            distributed: a communicator from :func:`nnxp.distributed.init`: data-parallel
                training over its ranks (see :mod:`nnxp.dataparallel`). Every rank passes the
                same ``x, y`` and arguments; ``batch_size`` is per rank, and N ranks at batch
                ``b`` train like one process at batch ``N * b``. Rank 0 alone shows progress,
                and :meth:`save` writes on rank 0 only. Callbacks run on every rank.

        Returns:
            The model's :class:`~nnxp.History` (all epochs so far).

        Raises:
            NonFiniteLossError: the loss became NaN/inf (says epoch and batch).
            ValueError / TypeError: inputs of the wrong shape, length, dtype or label range.
            DistributedError: ranks passed different models, data or arguments (raised on
                every rank). Any other error on one rank ends every rank with a message.
        """
        loss = get_loss(loss) if loss is not None else self.loss
        if loss is None:
            raise ValueError("fit needs a loss, e.g. loss=nnxp.losses.SoftmaxCrossEntropy()")
        optimizer = get_optimizer(optimizer) if optimizer is not None else self.optimizer
        if optimizer is None:
            raise ValueError("fit needs an optimizer, e.g. optimizer=nnxp.optim.SGD(lr=0.1)")
        if batch_size < 1 or epochs < 0:
            raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        if check_finite not in ("auto", "step", "device", "off"):
            raise ValueError(f"check_finite must be 'auto', 'step', 'device' or 'off', got {check_finite!r}")
        if metrics is None:
            metrics = ("accuracy",) if loss.classification else ()
        elif isinstance(metrics, str):
            metrics = (metrics,)
        unknown = [m for m in metrics if m != "accuracy"]
        if unknown:
            raise ValueError(f"Unknown metric(s) {unknown}: fit keeps 'accuracy' (classification losses) or none; "
                             "pass metrics=('accuracy',) or metrics=().")
        if metrics and not loss.classification:
            raise ValueError(f"metrics=('accuracy',) needs a classification loss; {loss!r} is a regression loss. "
                             "Pass metrics=() or use SoftmaxCrossEntropy / BinaryCrossEntropy.")
        cbs = CallbackList(callbacks, self)
        self.loss, self.optimizer = loss, optimizer
        x = self._inputs(x)
        n = x.shape[0]
        y = self._targets(y, loss, n, self._classes(x) if loss.classification else None)
        if validation_data is not None:
            xv = self._inputs(validation_data[0], "validation x")
            yv = self._targets(validation_data[1], loss, xv.shape[0],
                               self._classes(xv) if loss.classification else None, "validation y")
        mode = check_finite if check_finite != "auto" else ("step" if self.backend.sync_free else "device")
        dp = None
        self.comm = distributed
        if distributed is not None and distributed.size > 1:
            from .dataparallel import DataParallel

            settings = {"epochs": epochs, "batch_size": batch_size, "shuffle": shuffle,
                        "check_finite": check_finite, "metrics": tuple(metrics)}
            dp = DataParallel(distributed, self, x, y, (xv, yv) if validation_data is not None else None,
                              loss, optimizer, settings)
            mode = "dist"  # metrics summed on the host from the reduced step buffer, loss checked globally
            if distributed.rank != 0:
                verbose = 0
            elif verbose:
                print(dp.describe(), flush=True)

        xp = self.backend.xp
        slots = self.slots()
        nb = -(-n // batch_size) if dp is None else dp.num_batches
        first = self.layers[0] if self.layers else None
        saved_flags = (first.need_input_grad if first else True, getattr(loss, "check_labels", None))
        if first is not None:
            first.need_input_grad = False
        if saved_flags[1] is not None:
            loss.check_labels = False  # validated once above
        # Layers and losses with a ``reuse_buffers`` switch may write a training step's outputs into
        # arrays reused by the next step (the backend's out= kernels): nothing here keeps them across steps.
        reusers = [o for o in (*self.layers, loss) if hasattr(type(o), "reuse_buffers")]
        saved_reuse = [o.reuse_buffers for o in reusers]
        for o in reusers:
            o.reuse_buffers = True
        saved_loss_backend, loss.backend = loss.backend, self.backend  # the model's kernels, portable or not
        self.stop_training = False
        scope = contextlib.ExitStack()
        try:
            scope.enter_context(self.backend.kernel_scope(self._leaf_layers()))
            cbs.on_train_begin()
            for _ in range(epochs):
                epoch = self.epoch + 1
                cbs.on_epoch_begin(epoch)
                t0 = time.perf_counter()
                for i, layer in enumerate(self.layers):  # per-epoch streams: resume gives the same numbers
                    layer.init_state(np.random.default_rng([self.seed, epoch, i, *(dp.stream if dp else ())]))
                xs, ys, order = x, y, None
                if shuffle:
                    perm = np.random.default_rng([self.seed, epoch]).permutation(n)
                    idx = self.backend.from_host(perm)
                    if self.backend.sync_free:
                        # CPU: gather each batch when it is used; it is still in cache for the first
                        # matmul, and no shuffled copy of the whole data set is made
                        order = idx
                    else:
                        # GPU: one gather per epoch, so a step slices views instead of launching two kernels
                        xs, ys = xp.take(x, idx, axis=0), xp.take(y, idx, axis=0)
                logs = self._run_epoch(xs, ys, order, loss, optimizer, slots, epoch, nb, batch_size, mode,
                                       verbose, bool(metrics), dp)
                if dp is not None:
                    dp.end_epoch(epoch)
                if validation_data is not None:
                    if dp is None:
                        val = self.evaluate(xv, yv, loss=loss, batch_size=max(batch_size, 256))
                    else:
                        val = dp.evaluate(xv, yv, loss, max(batch_size, 256))
                    logs.update({f"val_{k}": v for k, v in val.items()})
                logs["lr"] = optimizer.lr  # the rate of the epoch's last update
                logs["time"] = time.perf_counter() - t0
                self.epoch = epoch
                self.history.append(epoch, logs)
                optimizer.end_epoch(logs)  # per-epoch schedules move on; ReduceOnPlateau reads its metric
                if verbose == 2 or (verbose == 1 and _tqdm() is None):
                    print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}"
                                                         for k, v in logs.items()), flush=True)
                cbs.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            cbs.on_train_end(logs if epochs else None)
        finally:
            scope.close()
            if first is not None:
                first.need_input_grad = saved_flags[0]
            if saved_flags[1] is not None:
                loss.check_labels = saved_flags[1]
            for o, flag in zip(reusers, saved_reuse):
                o.reuse_buffers = flag
            loss.backend = saved_loss_backend
        return self.history

    def _run_epoch(self, xs: Array, ys: Array, order: Array | None, loss: Loss, optimizer: Optimizer,
                   slots: list[Slot], epoch: int, nb: int, bs: int, mode: str, verbose: int,
                   track_accuracy: bool, dp: Any = None) -> dict[str, float]:
        """One epoch of steps over ``xs``/``ys`` in ``order`` (batch ``b`` takes rows
        ``order[b*bs:(b+1)*bs]``), or in their own order when ``order`` is ``None``;
        ``track_accuracy``: keep the running training accuracy. With ``dp`` (a
        :class:`~nnxp.dataparallel.DataParallel`, ``mode == "dist"``) this rank takes its
        slice of each global batch and the gradients are averaged over the ranks."""
        xp, n = self.backend.xp, xs.shape[0]
        layers = self._plan()
        zero = xp.zeros((), dtype=self.backend.dtype(self.dtype), device=self.backend.device)
        # device sums: of the mean losses of full batches (times bs when read: one call per step, not
        # two), of the last, partial batch's loss, and of the hits
        total, partial, correct = zero, zero, zero
        ok = xp.ones((), dtype=xp.bool, device=self.backend.device) if mode == "device" else None
        # on CPU backends reading a scalar costs nothing: sum loss and hits as host floats, no 0-d arrays
        host = mode == "dist" or (mode != "device" and self.backend.sync_free)
        total_h = correct_h = 0.0
        # the last batch whose loss was finite; ``ok`` never turns True again, so the first bad one
        # is the next. Batch numbers live on the device, made once: indexing gives a 0-d view, not a
        # host-to-device copy per step.
        last_ok = xp.full((), -1, dtype=xp.int64, device=self.backend.device) if mode == "device" else None
        batch_ids = xp.arange(nb, dtype=xp.int64, device=self.backend.device) if mode == "device" else None

        def loss_sum() -> float:
            return total_h if host else float(total) * bs + float(partial)

        tqdm = _tqdm() if verbose == 1 else None
        bar = tqdm(total=n, desc=f"epoch {epoch}", unit="sample", leave=True, dynamic_ncols=True) if tqdm else None
        refresh = max(1, nb // 20)
        seen = 0
        value = out = hits = None
        for b in range(nb):
            # the standard leaves out-of-range slice stops unspecified
            start, stop = (b * bs, min((b + 1) * bs, n)) if dp is None else dp.rows(epoch, b)
            if order is None:
                xb, yb = xs[start:stop, ...], ys[start:stop, ...]
            else:
                sel = order[start:stop]
                xb, yb = xp.take(xs, sel, axis=0), xp.take(ys, sel, axis=0)
            m = xb.shape[0]
            if m:  # always, but for a rank with no rows in a distributed run's short last batch
                out = xb
                for layer in layers:
                    out = layer.forward(out, True)
                lv = loss.forward(out, yb)
                if host or mode == "step":
                    value = float(lv)
                    if mode == "step" and not math.isfinite(value):
                        raise NonFiniteLossError(epoch, b, value)
                elif mode == "device":  # three calls, no sync: the flag, and the batch it last held for
                    ok = ok & xp.isfinite(lv)
                    last_ok = xp.where(ok, batch_ids[b], last_ok)
                grad = loss.backward()
                for layer in reversed(layers):
                    grad = layer.backward(grad)
            if dp is not None:  # one allreduce: gradients, loss and hits of the whole global batch
                value, hits, m = dp.reduce_step(b, m, value, out, yb, loss)
                if dp.check_finite and not math.isfinite(value):
                    raise dp.non_finite(epoch, b, value)
            optimizer.step(slots, ok)
            if host:
                total_h += value * m
                if track_accuracy:
                    correct_h += hits if dp is not None else float(loss.correct(out, yb))
            else:
                if m == bs:
                    total = total + lv
                else:
                    partial = lv * m
                if track_accuracy:
                    correct = correct + loss.correct(out, yb)
            seen += m
            if (b + 1) % refresh == 0 or b == nb - 1:  # the only host reads of an epoch
                if ok is not None and not bool(ok):
                    bad = int(last_ok) + 1
                    optimizer.steps -= b - bad + 1  # masked steps changed nothing: keep Adam's step count true
                    raise NonFiniteLossError(epoch, bad, float("nan"))
                if bar is not None:
                    bar.update(seen - bar.n)
                    post = {"loss": f"{loss_sum() / seen:.4f}"}
                    if track_accuracy:
                        post["acc"] = f"{(correct_h if host else float(correct)) / seen:.4f}"
                    bar.set_postfix(post, refresh=False)
        if bar is not None:
            bar.close()
        logs = {"loss": loss_sum() / n}
        if track_accuracy:
            logs["accuracy"] = (correct_h if host else float(correct)) / n
        return logs

    # ----------------------------------------------------------- inference
    def _leaf_layers(self) -> list[Layer]:
        """Every layer of the model, those inside containers included."""
        out: list[Layer] = []
        stack = list(reversed(self.layers))
        while stack:
            layer = stack.pop()
            out.append(layer)
            if is_container(layer):
                stack.extend(reversed(layer.layers))
        return out

    def predict(self, x: Any, batch_size: int = 1024) -> Array:
        """Outputs for ``x``, computed in batches (evaluation mode).

        Args:
            x: inputs on any backend (moved once).
            batch_size: samples per forward pass; bounds the activations held on the device.

        Returns:
            The outputs, on the model's backend.
        """
        x = self._inputs(x)
        xp = self.backend.xp
        n = x.shape[0]
        with self.backend.kernel_scope(self._leaf_layers()):
            outs = [self._forward(x[i:min(i + batch_size, n), ...], False) for i in range(0, n, batch_size)]
        return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)

    def evaluate(self, x: Any, y: Any, loss: Loss | str | None = None, batch_size: int = 1024) -> dict[str, float]:
        """Mean loss (and accuracy for classification losses) over a dataset.

        Args:
            x: inputs on any backend.
            y: targets.
            loss: the loss (default: the one last used by ``fit``).
            batch_size: samples per forward pass.

        Returns:
            ``{"loss": float}`` plus ``"accuracy"`` for classification.
        """
        loss = get_loss(loss) if loss is not None else self.loss
        if loss is None:
            raise ValueError("evaluate needs a loss, e.g. loss=nnxp.losses.SoftmaxCrossEntropy()")
        x = self._inputs(x)
        n = x.shape[0]
        y = self._targets(y, loss, n, self._classes(x) if loss.classification else None)
        xp = self.backend.xp
        zero = xp.zeros((), dtype=self.backend.dtype(self.dtype), device=self.backend.device)
        total, correct = zero, zero
        saved_loss_backend, loss.backend = loss.backend, self.backend
        try:
            with self.backend.kernel_scope(self._leaf_layers()):
                for i in range(0, n, batch_size):
                    stop = min(i + batch_size, n)
                    xb, yb = x[i:stop, ...], y[i:stop, ...]
                    out = self._forward(xb, False)
                    total = total + loss.forward(out, yb) * xb.shape[0]
                    if loss.classification:
                        correct = correct + loss.correct(out, yb)
        finally:
            loss.backend = saved_loss_backend
        res = {"loss": float(total) / n}
        if loss.classification:
            res["accuracy"] = float(correct) / n
        return res

    # ------------------------------------------------------------- devices
    def to(self, backend: str | Backend) -> Sequential:
        """Move every parameter, gradient, buffer and the optimizer state.

        Args:
            backend: target backend name or :class:`~nnxp.Backend`.

        Returns:
            ``self``.
        """
        target = resolve_backend(backend)
        for layer in self.layers:
            layer.to(target)
        if self.optimizer is not None:
            self.optimizer.to(target)
        self.backend = target
        return self

    # ---------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (see :func:`nnxp.save`).

        Args:
            path: target file; conventionally ``*.npz``.
        """
        io.save(self, path)

    def load_weights(self, path: str | os.PathLike) -> Sequential:
        """Load parameters, buffers, optimizer state and epoch from a checkpoint
        of the same architecture (see :func:`nnxp.load`).

        Args:
            path: the checkpoint file.

        Returns:
            ``self``.

        Raises:
            CheckpointError: the checkpoint's layers or shapes differ from this model's.
        """
        return io.load_into(self, path)


def load(path: str | os.PathLike, backend: str | Backend | None = None) -> Sequential:
    """Rebuild a model saved with :func:`nnxp.save`, on any backend.

    Args:
        path: the checkpoint file.
        backend: where to put the arrays (default: the current backend), so a
            checkpoint written on CuPy loads on NumPy, torch or JAX, and the reverse.

    Returns:
        The :class:`~nnxp.Sequential` with parameters, buffers, optimizer
        state, loss, epoch and history restored.

    Raises:
        CheckpointError: not a checkpoint, truncated, or inconsistent.
    """
    meta, arrays = io.read(path)
    model = Sequential(io.build_layers(meta, path), backend=backend, dtype=meta["dtype"], seed=meta["seed"])
    io.restore(model, meta, arrays, os.fspath(path))
    return model


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm
