"""Shape-only layers."""

from __future__ import annotations

import math
from typing import Any

from .base import Array, Layer


class Flatten(Layer):
    """Flatten every axis after the batch axis: ``(N, d1, d2, ...) -> (N, d1*d2*...)``.

    Like :class:`torch.nn.Flatten` with its defaults (C-order, so an NCHW
    image flattens channel by channel).
    """

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self.backend.check(x, f"input of {self!r}")
        if x.ndim < 2:
            raise ValueError(
                f"{self!r} expects a batch with at least 2 axes (batch, ...), got shape {tuple(x.shape)}. "
                "A 1-D array has nothing to flatten; reshape it to (batch, 1) "
                "if it holds one feature per sample."
            )
        self._shape = tuple(x.shape)
        return self.xp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))

    def backward(self, grad_y: Array) -> Array:
        if self._shape is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        return self.xp.reshape(grad_y, self._shape)

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if not shape:
            raise ValueError(f"{self!r} needs per-sample inputs with at least one axis, got {shape}")
        return (None,) if None in shape else (math.prod(shape),)

    def config(self) -> dict[str, Any]:
        return {}
