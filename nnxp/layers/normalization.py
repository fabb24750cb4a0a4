"""Layer normalisation over the trailing feature axes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._windows import dtype_error
from .base import Array, Layer


class LayerNorm(Layer):
    """Layer normalisation (Ba et al., 2016), like :class:`torch.nn.LayerNorm`.

    Each sample (each position of a sequence) is normalised over its last
    ``len(normalized_shape)`` axes with its own mean and biased variance, then
    scaled and shifted by learned ``weight`` (ones) and ``bias`` (zeros) of
    shape ``normalized_shape``. Training and evaluation compute the same thing
    (no running statistics).

    Args:
        normalized_shape: size of the last axis, or a tuple of the last axes' sizes.
        eps: added to the variance for numerical stability.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...] | list[int], eps: float = 1e-5) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int | np.integer) else tuple(normalized_shape)
        if not shape or any(not isinstance(d, int | np.integer) or isinstance(d, bool) or d <= 0 for d in shape):
            raise ValueError(f"LayerNorm normalized_shape must be a positive integer or a tuple of them, "
                             f"got {normalized_shape!r}")
        if not float(eps) > 0:
            raise ValueError(f"LayerNorm eps must be positive, got {eps!r}")
        self.normalized_shape = tuple(int(d) for d in shape)
        self.eps = float(eps)
        self._cache: tuple[Array, Array, tuple[int, ...]] | None = None

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"weight": np.ones(self.normalized_shape), "bias": np.zeros(self.normalized_shape)}

    def _check(self, x: Array) -> None:
        self.backend.check(x, f"input of {self!r}")
        k = len(self.normalized_shape)
        if x.ndim < k + 1 or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(
                f"{self!r} normalises the last {k} axis/axes, which must have shape {self.normalized_shape}, "
                f"got input of shape {tuple(x.shape)}. Set normalized_shape to the trailing feature size(s) "
                f"(here {tuple(x.shape[-k:]) if x.ndim >= k else tuple(x.shape)}) or fix the previous layer."
            )
        if x.dtype != self.dtype:
            raise dtype_error(self, x)

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._check(x)
        xp = self.xp
        axes = tuple(range(-len(self.normalized_shape), 0))
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        var = xp.mean(xc * xc, axis=axes, keepdims=True)
        invstd = 1.0 / xp.sqrt(var + self.eps)
        xhat = xc * invstd
        self._cache = (xhat, invstd, axes)
        return xhat * self.params["weight"] + self.params["bias"]

    def backward(self, grad_y: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp = self.xp
        xhat, invstd, axes = self._cache
        lead = tuple(range(grad_y.ndim - len(axes)))  # batch (and time) axes: parameters are shared over them
        self.grads["weight"] = xp.sum(grad_y * xhat, axis=lead)
        self.grads["bias"] = xp.sum(grad_y, axis=lead)
        if not self.need_input_grad:
            return None
        # dx = invstd * (gh - mean(gh) - xhat * mean(gh * xhat)), gh = grad_y * weight
        gh = grad_y * self.params["weight"]
        n = math.prod(self.normalized_shape)
        return invstd * (gh - (xp.sum(gh, axis=axes, keepdims=True)
                               + xhat * xp.sum(gh * xhat, axis=axes, keepdims=True)) / n)

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape, k = tuple(input_shape), len(self.normalized_shape)
        if len(shape) < k or any(a is not None and a != b for a, b in zip(shape[-k:], self.normalized_shape)):
            raise ValueError(f"{self!r} needs per-sample shapes ending in {self.normalized_shape}, got {shape}. "
                             "Set normalized_shape to the previous layer's trailing size(s).")
        return shape

    def config(self) -> dict[str, Any]:
        ns = self.normalized_shape
        cfg: dict[str, Any] = {"normalized_shape": ns[0] if len(ns) == 1 else list(ns)}
        if self.eps != 1e-5:
            cfg["eps"] = self.eps
        return cfg
