"""Elementwise activation layers. Each keeps the smallest thing its backward
needs (the output where the derivative is a function of it)."""

from __future__ import annotations

import math
from typing import Any

from .base import Array, Layer


class _Activation(Layer):
    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        return self._forward(x)

    def _forward(self, x: Array) -> Array:
        raise NotImplementedError


class ReLU(_Activation):
    """``max(x, 0)``; NaN stays NaN (as in PyTorch), so ``fit``'s finite check sees it.

    The backend's ``relu`` / ``relu_backward`` kernels do the work (on NumPy
    the gradient is ``grad * mask``, which differs from the portable ``where``
    only where the incoming gradient is already inf/NaN).
    """

    activation_family = "relu"

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        y, self._mask = self.backend.relu(x, self.workspace(training))
        return y

    def backward(self, grad_y: Array) -> Array:
        return self.backend.relu_backward(grad_y, self._mask, self.workspace())


class LeakyReLU(_Activation):
    """``x`` for ``x > 0``, else ``negative_slope * x``.

    Args:
        negative_slope: slope for negative inputs.
    """

    activation_family = "relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _forward(self, x: Array) -> Array:
        self._mask = x > 0
        return self.xp.where(self._mask, x, x * self.negative_slope)

    def backward(self, grad_y: Array) -> Array:
        return self.xp.where(self._mask, grad_y, grad_y * self.negative_slope)

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class Tanh(_Activation):
    """Hyperbolic tangent; ``dy/dx = 1 - y**2``."""

    activation_family = "tanh"

    def _forward(self, x: Array) -> Array:
        self._y = self.xp.tanh(x)
        return self._y

    def backward(self, grad_y: Array) -> Array:
        return grad_y * (1 - self._y * self._y)


class Sigmoid(_Activation):
    """Logistic function ``1 / (1 + exp(-x))``, computed without overflow."""

    activation_family = "tanh"

    def _forward(self, x: Array) -> Array:
        xp = self.xp
        # exp of a non-positive number never overflows
        e = xp.exp(-xp.abs(x))
        self._y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self._y

    def backward(self, grad_y: Array) -> Array:
        return grad_y * self._y * (1 - self._y)


class Softmax(_Activation):
    """Softmax over the last axis. For classification prefer raw logits with
    :class:`~nnxp.losses.SoftmaxCrossEntropy`, which fuses the gradient."""

    def _forward(self, x: Array) -> Array:
        xp = self.xp
        e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
        self._y = e / xp.sum(e, axis=-1, keepdims=True)
        return self._y

    def backward(self, grad_y: Array) -> Array:
        y = self._y
        return y * (grad_y - self.xp.sum(grad_y * y, axis=-1, keepdims=True))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class GELU(_Activation):
    """Gaussian error linear unit, tanh approximation (Hendrycks & Gimpel).

    The array API standard has no ``erf``, so the exact form is not offered;
    ``approximate`` records the form in use (``"tanh"``), as in PyTorch.

    Args:
        approximate: must be ``"tanh"``.
    """

    activation_family = "relu"

    def __init__(self, approximate: str = "tanh") -> None:
        super().__init__()
        if approximate != "tanh":
            raise ValueError(
                f"GELU(approximate={approximate!r}) is not available: the array API standard has no erf. "
                "Use approximate='tanh' (max deviation from the exact GELU is about 3e-4)."
            )
        self.approximate = approximate

    def _forward(self, x: Array) -> Array:
        xp = self.xp
        self._x = x
        self._t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        return 0.5 * x * (1 + self._t)

    def backward(self, grad_y: Array) -> Array:
        x, t = self._x, self._t
        dinner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return grad_y * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner)

    def config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}
