"""Batch normalisation over features ``(N, C)`` or channels ``(N, C, ...)``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._windows import dtype_error
from .base import Array, Layer


class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015) over axis 1.

    ``(N, C)`` inputs are normalised per feature, ``(N, C, H, W)`` (or any
    ``(N, C, ...)``) per channel over the batch and spatial axes, like
    PyTorch's ``BatchNorm1d`` / ``BatchNorm2d``. In training the batch mean
    and biased variance normalise, and the running estimates in
    ``self.buffers`` move by ``momentum`` towards the batch mean and the
    *unbiased* batch variance (PyTorch's convention); evaluation uses the
    running estimates.

    Args:
        num_features: size ``C`` of axis 1.
        momentum: weight of the new batch statistics in the running estimates.
        eps: added to the variance for numerical stability.
    """

    _ndims: tuple[int, ...] | None = None  # accepted input ranks (None: any >= 2)

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        name = type(self).__name__
        if (not isinstance(num_features, int | np.integer) or isinstance(num_features, bool)
                or num_features <= 0):
            raise ValueError(f"{name} num_features must be a positive integer, got {num_features!r}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{name} momentum must be in [0, 1], got {momentum!r}")
        if not float(eps) > 0:
            raise ValueError(f"{name} eps must be positive, got {eps!r}")
        self.num_features = int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self._cache: dict[str, Any] = {}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"weight": np.ones(self.num_features), "bias": np.zeros(self.num_features)}

    def init_buffers(self) -> dict[str, np.ndarray]:
        return {"running_mean": np.zeros(self.num_features), "running_var": np.ones(self.num_features)}

    def _check(self, x: Array) -> None:
        self.backend.check(x, f"input of {self!r}")
        shape, c = tuple(x.shape), self.num_features
        ranks = self._ndims or ()
        if x.ndim < 2 or (ranks and x.ndim not in ranks) or shape[1] != c:
            if ranks == (4,):
                want = f"(batch, {c}, height, width)"
            elif ranks:
                want = f"(batch, {c}) or (batch, {c}, length)"
            else:
                want = f"(batch, {c}) or (batch, {c}, height, width)"
            hint = "Set num_features to the size of axis 1 or fix the previous layer."
            if x.ndim >= 3 and shape[-1] == c:
                hint = "The input looks channels-last; BatchNorm normalises axis 1 (NCHW)."
            elif x.ndim >= 2 and (not ranks or x.ndim in ranks):
                hint = f"Use num_features={shape[1]} (the size of axis 1) or fix the previous layer."
            raise ValueError(f"{self!r} expects input of shape {want}, got {shape}. {hint}")
        if x.dtype != self.dtype:
            raise dtype_error(self, x)

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._check(x)
        xp = self.xp
        axes = (0, *range(2, x.ndim))
        bshape = (1, self.num_features) + (1,) * (x.ndim - 2)
        gamma = xp.reshape(self.params["weight"], bshape)
        beta = xp.reshape(self.params["bias"], bshape)
        if not training:
            invstd = 1.0 / xp.sqrt(xp.reshape(self.buffers["running_var"], bshape) + self.eps)
            mean = xp.reshape(self.buffers["running_mean"], bshape)
            scale = gamma * invstd
            self._cache = {"training": False, "x": x, "mean": mean, "invstd": invstd, "scale": scale,
                           "axes": axes}
            return x * scale + (beta - mean * scale)
        n = math.prod(x.shape) // self.num_features
        if n < 2:
            raise ValueError(
                f"{self!r} needs more than one value per channel in training, "
                f"got input shape {tuple(x.shape)}. "
                "Use a batch of at least 2 samples, or call with training=False."
            )
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        var = xp.mean(xc * xc, axis=axes, keepdims=True)
        invstd = 1.0 / xp.sqrt(var + self.eps)
        xhat = xc * invstd
        m = self.momentum
        self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * xp.reshape(mean, (-1,))
        self.buffers["running_var"] = ((1 - m) * self.buffers["running_var"]
                                       + (m * n / (n - 1)) * xp.reshape(var, (-1,)))
        self._cache = {"training": True, "xhat": xhat, "invstd": invstd, "gamma": gamma, "axes": axes, "n": n}
        return xhat * gamma + beta

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp = self.xp
        c = self._cache
        axes = c["axes"]
        dbeta = xp.sum(grad_y, axis=axes, keepdims=True)
        self.grads["bias"] = xp.reshape(dbeta, (-1,))
        if not c["training"]:
            xhat = (c["x"] - c["mean"]) * c["invstd"]
            self.grads["weight"] = xp.sum(grad_y * xhat, axis=axes)
            return grad_y * c["scale"] if self.need_input_grad else None
        xhat, n = c["xhat"], c["n"]
        dgamma = xp.sum(grad_y * xhat, axis=axes, keepdims=True)
        self.grads["weight"] = xp.reshape(dgamma, (-1,))
        if not self.need_input_grad:
            return None
        # dx = gamma * invstd / n * (n * g - sum(g) - xhat * sum(g * xhat))
        k = c["gamma"] * c["invstd"]
        return k * (grad_y - (dbeta + xhat * dgamma) / n)

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        ranks = self._ndims
        if not shape or shape[0] not in (None, self.num_features) or (ranks and len(shape) + 1 not in ranks):
            raise ValueError(
                f"{self!r} normalises axis 1 and expects per-sample shape ({self.num_features}, ...), "
                f"got {shape}. Set num_features to the previous layer's output size"
                + (f" ({shape[0]})" if shape and shape[0] is not None else "") + "."
            )
        return shape

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"num_features": self.num_features}
        if self.momentum != 0.1:
            cfg["momentum"] = self.momentum
        if self.eps != 1e-5:
            cfg["eps"] = self.eps
        return cfg


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C)`` or ``(N, C, L)`` inputs, like PyTorch's.

    Args:
        num_features: size ``C`` of axis 1.
        momentum: weight of the new batch statistics in the running estimates.
        eps: added to the variance for numerical stability.
    """

    _ndims = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C, H, W)`` inputs, like PyTorch's.

    Args:
        num_features: size ``C`` of axis 1.
        momentum: weight of the new batch statistics in the running estimates.
        eps: added to the variance for numerical stability.
    """

    _ndims = (4,)
