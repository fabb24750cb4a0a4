"""Fully connected layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..init import Initializer, get_initializer
from .base import Array, Layer


class Dense(Layer):
    """``y = x @ W + b`` with ``W`` of shape ``(in_features, out_features)``.

    Args:
        in_features: size of the last input axis.
        out_features: size of the last output axis.
        bias: learn an additive bias.
        init: weight initialiser name (``"he"``, ``"glorot"``, ...) or callable;
            ``None`` lets :class:`~nnxp.Sequential` pick He before ReLU-family
            activations and Glorot before tanh/sigmoid (He when standalone).

    The products are the backend's ``linear`` / ``linear_backward`` kernels
    (on NumPy, during ``fit``, written into buffers reused from step to step).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str | Initializer | None = None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int | np.integer) or v <= 0:
                raise ValueError(f"Dense {name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.use_bias = bias
        self.init = init
        self._x: Array = None

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        init = get_initializer(self.init or getattr(self, "default_init", "he"))
        p = {"weight": init(rng, (self.in_features, self.out_features), self.in_features, self.out_features)}
        if self.use_bias:
            p["bias"] = np.zeros(self.out_features)
        return p

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r} expects inputs of shape (batch, {self.in_features}), got {tuple(x.shape)}. "
                + ("Flatten images first (layers.Flatten()) or fix in_features."
                   if x.ndim > 2 else "Check in_features or the previous layer's output size.")
            )
        if x.dtype != self.dtype:
            self.backend.check(x, "input")  # an array of another backend: say so, not "wrong dtype"
            raise TypeError(
                f"{self!r} has {self.dtype} parameters but got a {x.dtype} input. Cast it first, e.g. "
                f"nnxp.datasets.scale(x) for uint8 images or xp.astype(x, xp.{str(self.dtype).rsplit('.', 1)[-1]})."
            )
        self._x = x
        return self.backend.linear(x, self.params["weight"], self.params.get("bias"), self.workspace(training))

    def backward(self, grad_y: Array) -> Array:
        gw, gb, gx = self.backend.linear_backward(self._x, self.params["weight"], grad_y, self.use_bias,
                                                  self.need_input_grad, self.grads, self.workspace())
        self.grads["weight"] = gw
        if gb is not None:
            self.grads["bias"] = gb
        return gx

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if not input_shape or input_shape[-1] not in (None, self.in_features):
            raise ValueError(
                f"{self!r} expects {self.in_features} input features but the previous layer "
                f"produces per-sample shape {tuple(input_shape)}"
                + (f" (= {int(np.prod(input_shape))} after Flatten)" if None not in input_shape else "")
                + ". Fix in_features or the layer before it."
            )
        return (*input_shape[:-1], self.out_features)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"in_features": self.in_features, "out_features": self.out_features}
        if not self.use_bias:
            cfg["bias"] = False
        if isinstance(self.init, str):
            cfg["init"] = self.init
        return cfg
