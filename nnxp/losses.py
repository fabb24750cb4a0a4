"""Losses: ``forward(y_pred, y_true) -> scalar array`` (mean over the batch)
and ``backward() -> dL/dy_pred``. Scalars stay on the device."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import BackendMismatchError, backend_of
from .backends.numpy import workspace_of

Array = Any

__all__ = ["MSE", "BinaryCrossEntropy", "Loss", "SoftmaxCrossEntropy", "get_loss"]


class Loss:
    """Base class. Subclasses implement :meth:`forward` and :meth:`backward`."""

    #: the loss predicts classes, so ``fit``/``evaluate`` report accuracy
    classification = False

    def forward(self, y_pred: Array, y_true: Array) -> Array:
        """Loss value.

        Args:
            y_pred: predictions (batch first).
            y_true: targets on the same backend.

        Returns:
            A 0-d array on ``y_pred``'s device.
        """
        raise NotImplementedError

    def __call__(self, y_pred: Array, y_true: Array) -> Array:
        # not ``__call__ = forward``: that would bind this abstract method, not the subclass's
        return self.forward(y_pred, y_true)

    def backward(self) -> Array:
        """Gradient of the last :meth:`forward` with respect to ``y_pred``."""
        raise NotImplementedError

    def correct(self, y_pred: Array, y_true: Array) -> Array:
        """Number of correct predictions (0-d array on the device); classification losses only."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    # ---------------------------------------------------------------- checks
    _xp: Any = None
    _type: type | None = None

    def _namespace(self, y_pred: Array) -> Any:
        """The namespace of ``y_pred``, cached per array type (hot path)."""
        if type(y_pred) is not self._type:
            self._xp, self._type = backend_of(y_pred).xp, type(y_pred)
        return self._xp

    @staticmethod
    def _same_place(y_pred: Array, y_true: Array) -> None:
        if type(y_pred) is type(y_true) and getattr(y_pred, "device", None) == getattr(y_true, "device", None):
            return
        a, b = backend_of(y_pred).name, _where(y_true)
        raise BackendMismatchError(
            f"y_pred is on backend {a!r} but y_true is on {b!r}. Move the targets with nnxp.to_device(y_true, {a!r})."
        )

    @staticmethod
    def _check_float(y_pred: Array, xp: Any) -> None:
        if not xp.isdtype(y_pred.dtype, "real floating"):
            raise TypeError(f"Predictions must be floating point, got {y_pred.dtype}.")


def _where(x: Array) -> str:
    try:
        return backend_of(x).name
    except TypeError:
        return f"{type(x).__module__}.{type(x).__name__}"


def _shape_error(name: str, y_pred: Array, y_true: Array, hint: str) -> ValueError:
    return ValueError(f"{name}: y_pred has shape {tuple(y_pred.shape)} but y_true has shape "
                      f"{tuple(y_true.shape)}. {hint}")


class MSE(Loss):
    """Mean squared error over all elements: ``mean((y_pred - y_true) ** 2)``."""

    def forward(self, y_pred: Array, y_true: Array) -> Array:
        self._same_place(y_pred, y_true)
        if y_pred.shape != y_true.shape:
            raise _shape_error("MSE", y_pred, y_true, "They must match (reshape the targets, e.g. y[:, None]).")
        xp = self._namespace(y_pred)
        self._check_float(y_pred, xp)
        self._diff = y_pred - (y_true if y_true.dtype == y_pred.dtype else xp.astype(y_true, y_pred.dtype))
        self._scale = 2.0 / self._diff.size if self._diff.size else 0.0
        return xp.mean(self._diff * self._diff)

    def backward(self) -> Array:
        return self._diff * self._scale


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, mean over all elements.

    Args:
        from_logits: ``y_pred`` are logits (stable log-sigmoid form) rather
            than probabilities (e.g. the output of ``Sigmoid``).
        eps: probabilities are clipped to ``[eps, 1 - eps]`` (probability input only).
    """

    classification = True

    def __init__(self, from_logits: bool = False, eps: float = 1e-7) -> None:
        self.from_logits = from_logits
        self.eps = eps

    def forward(self, y_pred: Array, y_true: Array) -> Array:
        self._same_place(y_pred, y_true)
        xp = self._namespace(y_pred)
        self._check_float(y_pred, xp)
        if y_pred.shape != y_true.shape:
            raise _shape_error("BinaryCrossEntropy", y_pred, y_true, "Give one target in {0, 1} per output.")
        t = xp.astype(y_true, y_pred.dtype)
        self._t, self._n = t, y_pred.size
        if self.from_logits:
            z = y_pred
            self._z = z
            # log(1 + exp(-|z|)) never overflows; loss = max(z, 0) - z t + log1p(exp(-|z|))
            return xp.mean(xp.maximum(z, xp.zeros_like(z)) - z * t + xp.log1p(xp.exp(-xp.abs(z))))
        p = xp.clip(y_pred, self.eps, 1 - self.eps)
        self._p, self._inside = p, (y_pred > self.eps) & (y_pred < 1 - self.eps)
        return -xp.mean(t * xp.log(p) + (1 - t) * xp.log(1 - p))

    def backward(self) -> Array:
        xp, t = self._xp, self._t
        if self.from_logits:
            z = self._z
            e = xp.exp(-xp.abs(z))
            sig = xp.where(z >= 0, 1 / (1 + e), e / (1 + e))
            return (sig - t) / self._n
        p = self._p
        g = (p - t) / (p * (1 - p)) / self._n
        return xp.where(self._inside, g, xp.zeros_like(g))  # clipping has zero gradient

    def correct(self, y_pred: Array, y_true: Array) -> Array:
        xp = self._namespace(y_pred)
        cut = 0.0 if self.from_logits else 0.5
        hit = (y_pred > cut) == (xp.astype(y_true, y_pred.dtype) > 0.5)
        return xp.sum(xp.astype(hit, y_pred.dtype)) / (y_pred.size // y_pred.shape[0])

    def config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits} if self.from_logits else {}


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, on logits; mean over the batch.

    ``y_true`` holds integer class labels ``(batch,)`` or one-hot/probability
    rows ``(batch, classes)``. The log-sum-exp is shifted by the row maximum,
    so logits of +-1e4 are fine. The gradient is the fused
    ``(softmax - onehot) / batch``.

    Args:
        check_labels: verify integer labels lie in ``[0, classes)`` (one
            device reduction per call; ``fit`` validates once up front and
            turns this off for its steps).

    Attributes:
        use_fast_path: NumPy arrays with integer labels take a NumPy-specific
            path (row indexing instead of ``take_along_axis`` and a one-hot
            matrix; while ``reuse_buffers`` is on, the softmax lives in a buffer
            reused from step to step and :meth:`backward`, which may then be
            called once per :meth:`forward`, turns it into the gradient in
            place). The numbers are the same as the portable path's. ``False``
            keeps the portable path everywhere.
        reuse_buffers: set by ``Sequential.fit`` during training.
    """

    classification = True
    use_fast_path = True
    reuse_buffers = False

    def __init__(self, check_labels: bool = True) -> None:
        self.check_labels = check_labels

    def forward(self, y_pred: Array, y_true: Array) -> Array:
        if (self.use_fast_path and type(y_pred) is np.ndarray and type(y_true) is np.ndarray
                and y_pred.ndim == 2 and y_true.ndim == 1 and y_true.dtype.kind in "iu"
                and y_pred.dtype.kind == "f"):
            return self._forward_numpy(y_pred, y_true)
        self._same_place(y_pred, y_true)
        xp = self._namespace(y_pred)
        self._check_float(y_pred, xp)
        if y_pred.ndim != 2:
            raise ValueError(
                f"SoftmaxCrossEntropy expects logits of shape (batch, classes), got {tuple(y_pred.shape)}."
            )
        n, k = y_pred.shape
        shifted = y_pred - xp.max(y_pred, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        self._prob = e / s
        logsumexp = xp.log(s)
        if y_true.ndim == 1:
            if xp.isdtype(y_true.dtype, "real floating") or y_true.dtype == xp.bool:
                raise TypeError(f"Integer class labels expected, got {y_true.dtype}; cast with xp.astype(y, xp.int64)"
                                " or pass one-hot rows of shape (batch, classes).")
            if y_true.shape[0] != n:
                raise _shape_error("SoftmaxCrossEntropy", y_pred, y_true, "Give one label per row of logits.")
            if self.check_labels:
                check_label_range(y_true, k, xp)
            self._labels, self._onehot = y_true, None
            picked = xp.take_along_axis(shifted, xp.reshape(y_true, (n, 1)), axis=1)
            self._n = n
            return xp.mean(logsumexp - picked)
        if y_true.shape != y_pred.shape:
            raise _shape_error("SoftmaxCrossEntropy", y_pred, y_true,
                               "Pass integer labels (batch,) or one-hot rows (batch, classes).")
        t = xp.astype(y_true, y_pred.dtype)
        self._labels, self._onehot, self._n = None, t, n
        return xp.sum(t * (logsumexp - shifted)) / n

    def _forward_numpy(self, y_pred: np.ndarray, y_true: np.ndarray) -> Any:
        """NumPy fast path of :meth:`forward` for integer labels (same arithmetic)."""
        n, k = y_pred.shape
        if y_true.shape[0] != n:
            raise _shape_error("SoftmaxCrossEntropy", y_pred, y_true, "Give one label per row of logits.")
        if self.check_labels:
            check_label_range(y_true, k, np)
        self._xp, self._type = np, np.ndarray
        # ufunc reductions: what np.max/np.sum/np.mean run, without their Python wrappers
        mx = np.maximum.reduce(y_pred, axis=1, keepdims=True)
        if self.reuse_buffers:
            ws = workspace_of(self)
            shifted = np.subtract(y_pred, mx, out=ws.get("shifted", y_pred.shape, y_pred.dtype))
            e = np.exp(shifted, out=ws.get("prob", y_pred.shape, y_pred.dtype))
        else:
            shifted = y_pred - mx
            e = np.exp(shifted)
        s = np.add.reduce(e, axis=1, keepdims=True)
        self._prob = np.divide(e, s, out=e)
        rows = self._rows(n)
        self._labels, self._onehot, self._n = y_true, None, n
        return np.add.reduce(np.log(s[:, 0]) - shifted[rows, y_true]) / n  # = mean, as np.mean computes it

    _row_cache: dict[int, np.ndarray] | None = None

    def _rows(self, n: int) -> np.ndarray:
        """``arange(n)``, kept for the batch sizes seen (usually two: full and last)."""
        cache = self._row_cache
        if cache is None:
            cache = self._row_cache = {}
        rows = cache.get(n)
        if rows is None:
            if len(cache) > 8:
                cache.clear()
            rows = cache[n] = np.arange(n)
        return rows

    def backward(self) -> Array:
        xp = self._xp
        if self._onehot is not None:
            return (self._prob * xp.sum(self._onehot, axis=1, keepdims=True) - self._onehot) / self._n
        g = self._prob
        if self.use_fast_path and type(g) is np.ndarray and type(self._labels) is np.ndarray:
            # (softmax - onehot) / n without the one-hot matrix; in place under reuse_buffers
            if not self.reuse_buffers:
                g = g.copy()
            g[self._rows(self._n), self._labels] -= 1
            return np.divide(g, self._n, out=g)
        n, k = g.shape
        onehot = xp.astype(xp.reshape(self._labels, (n, 1)) == self._classes_row(xp, k, self._labels), g.dtype)
        return (g - onehot) / n

    _classes_cache: Any = None

    def _classes_row(self, xp: Any, k: int, labels: Array) -> Array:
        """``arange(k)`` as a ``(1, k)`` row of the labels' dtype and device, made once
        (on a GPU each ``arange`` is a kernel launch, and steps are bound by their count)."""
        row = self._classes_cache
        if row is None or row.shape[1] != k or row.dtype != labels.dtype or row.device != labels.device:
            row = self._classes_cache = xp.reshape(xp.arange(k, dtype=labels.dtype, device=labels.device), (1, k))
        return row

    def correct(self, y_pred: Array, y_true: Array) -> Array:
        if (self.use_fast_path and type(y_pred) is np.ndarray and type(y_true) is np.ndarray
                and y_pred.ndim == 2 and y_true.ndim == 1):
            return y_pred.dtype.type(np.count_nonzero(y_pred.argmax(axis=1) == y_true))
        xp = self._namespace(y_pred)
        pred = xp.argmax(y_pred, axis=1)
        target = y_true if y_true.ndim == 1 else xp.argmax(y_true, axis=1)
        if target.dtype != pred.dtype:
            target = xp.astype(target, pred.dtype)
        return xp.sum(xp.astype(pred == target, y_pred.dtype))

    def config(self) -> dict[str, Any]:
        return {} if self.check_labels else {"check_labels": False}


def check_label_range(labels: Array, classes: int, xp: Any) -> None:
    """Raise ``ValueError`` unless every label lies in ``[0, classes)`` (one host read)."""
    if labels.shape[0] == 0:
        return
    lo, hi = int(xp.min(labels)), int(xp.max(labels))
    if lo < 0 or hi >= classes:
        raise ValueError(f"Labels must lie in [0, {classes}) for {classes} output classes, "
                         f"found labels in [{lo}, {hi}]. Check the labels or the last layer's out_features.")


_LOSSES = {"mse": MSE, "binary_cross_entropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy,
           "softmax_cross_entropy": SoftmaxCrossEntropy, "cross_entropy": SoftmaxCrossEntropy}


def get_loss(loss: str | Loss) -> Loss:
    """A loss instance from a name (``"mse"``, ``"cross_entropy"``, ...) or an instance."""
    if isinstance(loss, Loss):
        return loss
    try:
        return _LOSSES[loss]()
    except (KeyError, TypeError):
        raise ValueError(f"Unknown loss {loss!r}; pass a Loss instance or one of {sorted(_LOSSES)}.") from None
