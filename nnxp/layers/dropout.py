"""Inverted dropout."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._windows import dtype_name
from .base import Array, Layer


class Dropout(Layer):
    """Zero each input element with probability ``p`` in training and scale the
    survivors by ``1 / (1 - p)`` (inverted dropout), so evaluation is the identity.

    Masks come from the backend's generator (``backend.random_generator``),
    seeded from the host ``Generator`` given to :meth:`init_state` (by
    :meth:`build`, and by :class:`~nnxp.Sequential` at every epoch). The CPU
    backends (NumPy, array_api_strict) draw the same masks for the same seed;
    CuPy uses its own GPU generator, whose stream differs.

    Args:
        p: probability of dropping an element, ``0 <= p <= 1`` (``p = 1`` drops all).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        number = isinstance(p, int | float | np.floating | np.integer) and not isinstance(p, bool)
        if not number or not 0 <= p <= 1:
            raise ValueError(f"Dropout probability p must be a number in [0, 1], got {p!r}")
        self.p = float(p)
        self.seed: int | None = None
        self._gen: Any = None
        self._mask: Array = None

    def init_state(self, rng: np.random.Generator) -> None:
        self.seed = int(rng.integers(2**63))
        self._gen = self.backend.random_generator(self.seed) if self.backend is not None else None

    def moved(self, backend: Any) -> None:
        self._gen = backend.random_generator(self.seed)
        self._mask = None

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self.backend.check(x, f"input of {self!r}")
        if not training or self.p == 0.0:
            self._mask = None
            return x
        xp = self.xp
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{self!r} needs a floating-point input, got {dtype_name(x.dtype)}. "
                            "Cast it first, e.g. xp.astype(x, xp.float32).")
        if self._gen is None:
            self._gen = self.backend.random_generator(self.seed)
        keep = self._gen.uniform(tuple(x.shape), x.dtype) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._mask = self.backend.dropout_mask(keep, scale, x.dtype)
        return x * self._mask

    def backward(self, grad_y: Array) -> Array:
        if not self.need_input_grad:
            return None
        return grad_y if self._mask is None else grad_y * self._mask

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
