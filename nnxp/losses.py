"""Losses: ``forward(y_pred, y_true) -> scalar array`` (mean over the batch)
and ``backward() -> dL/dy_pred``. Scalars stay on the device."""

from __future__ import annotations

import math
from typing import Any

from .backends import Backend, BackendMismatchError, backend_of

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
    _key: Any = None
    _kernels: Backend | None = None
    #: the backend whose kernels the loss uses, set by ``Sequential`` (``None``: the predictions')
    backend: Backend | None = None

    def _backend_of(self, y_pred: Array) -> Backend:
        """The backend whose kernels compute the loss: the model's while ``Sequential``
        sets one (so a model on ``backend.portable()`` runs portable kernels
        everywhere), else the predictions' own, cached per array type and device (hot path)."""
        if self.backend is not None:
            if self._kernels is not self.backend:
                self._kernels, self._xp, self._key = self.backend, self.backend.xp, None
            return self.backend
        key = (type(y_pred), y_pred.device)
        if key != self._key:
            self._kernels = backend_of(y_pred)
            self._xp, self._key = self._kernels.xp, key
        return self._kernels

    def _namespace(self, y_pred: Array) -> Any:
        """The namespace of ``y_pred`` (see :meth:`_backend_of`)."""
        return self._backend_of(y_pred).xp

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
        size = math.prod(self._diff.shape)
        self._scale = 2.0 / size if size else 0.0
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
        self._t, self._n = t, math.prod(y_pred.shape)
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
        return xp.sum(xp.astype(hit, y_pred.dtype)) / (math.prod(y_pred.shape) // y_pred.shape[0])

    def config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits} if self.from_logits else {}


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, on logits; mean over the samples.

    ``y_pred`` holds logits ``(batch, classes)``, or ``(..., classes)`` for
    sequences (a language model's ``(batch, time, vocab)``), the mean then
    running over every position. ``y_true`` holds integer class labels of the
    leading shape (``(batch,)``, ``(batch, time)``) or one-hot/probability
    rows of the logits' shape. The log-sum-exp is shifted by the row maximum,
    so logits of +-1e4 are fine. The gradient is the fused
    ``(softmax - onehot) / samples`` (the backend's ``softmax_cross_entropy``
    kernels; on NumPy during ``fit`` the softmax lives in a buffer reused
    from step to step and turns into the gradient in place, so
    :meth:`backward` may then be called once per :meth:`forward`).

    Args:
        check_labels: verify integer labels lie in ``[0, classes)`` (one
            device reduction per call; ``fit`` validates once up front and
            turns this off for its steps).
    """

    classification = True
    #: integer targets of any shape are class labels (``fit`` keeps them integer)
    integer_labels = True
    reuse_buffers = False

    def __init__(self, check_labels: bool = True) -> None:
        self.check_labels = check_labels

    def forward(self, y_pred: Array, y_true: Array) -> Array:
        self._same_place(y_pred, y_true)
        b = self._backend_of(y_pred)
        xp = b.xp
        self._check_float(y_pred, xp)
        if y_pred.ndim < 2:
            raise ValueError(
                f"SoftmaxCrossEntropy expects logits of shape (batch, classes), got {tuple(y_pred.shape)}."
            )
        k = y_pred.shape[-1]
        self._shape = tuple(y_pred.shape)
        logits = y_pred if y_pred.ndim == 2 else xp.reshape(y_pred, (-1, k))
        n = logits.shape[0]
        self._n = n
        if y_true.ndim == y_pred.ndim - 1:
            if xp.isdtype(y_true.dtype, "real floating") or y_true.dtype == xp.bool:
                raise TypeError(f"Integer class labels expected, got {y_true.dtype}; cast with xp.astype(y, xp.int64)"
                                " or pass one-hot rows of shape (batch, classes).")
            if tuple(y_true.shape) != self._shape[:-1]:
                raise _shape_error("SoftmaxCrossEntropy", y_pred, y_true, "Give one label per row of logits.")
            labels = y_true if y_true.ndim == 1 else xp.reshape(y_true, (-1,))
            if self.check_labels:
                check_label_range(labels, k, xp)
            ws = b.workspace(self) if self.reuse_buffers else None
            value, self._prob = b.softmax_cross_entropy(logits, labels, ws)
            self._labels, self._onehot, self._ws = labels, None, ws
            return value
        if tuple(y_true.shape) != self._shape:
            raise _shape_error("SoftmaxCrossEntropy", y_pred, y_true,
                               "Pass integer labels (batch,) or one-hot rows (batch, classes).")
        t = xp.astype(y_true, y_pred.dtype)
        t = t if t.ndim == 2 else xp.reshape(t, (-1, k))
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        self._prob = e / s
        self._labels, self._onehot = None, t
        return xp.sum(t * (xp.log(s) - shifted)) / n

    def backward(self) -> Array:
        xp = self._xp
        if self._onehot is not None:
            g = (self._prob * xp.sum(self._onehot, axis=1, keepdims=True) - self._onehot) / self._n
        else:
            g = self._kernels.softmax_cross_entropy_backward(self._prob, self._labels, self._ws)
        return g if len(self._shape) == 2 else xp.reshape(g, self._shape)

    def correct(self, y_pred: Array, y_true: Array) -> Array:
        """Correct predictions, counted per sample: a sample of ``T`` positions (a
        sequence) adds the fraction of its positions predicted right, so dividing by
        the number of samples gives the accuracy over positions."""
        b = self._backend_of(y_pred)
        if y_true.ndim == y_pred.ndim:  # one-hot or probability rows
            y_true = b.xp.argmax(y_true, axis=-1)
        hits = b.count_correct(y_pred, y_true)
        per_sample = math.prod(y_true.shape[1:])
        return hits if per_sample == 1 else hits / per_sample

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
