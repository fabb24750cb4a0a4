"""Fully connected layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends.numpy import workspace_of
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

    Attributes:
        use_fast_path: on the NumPy backend, let training steps write the
            output, the input gradient and the parameter gradients with
            ``out=`` into arrays reused from step to step (only while
            ``reuse_buffers`` is on, which ``Sequential.fit`` does for its
            steps). ``False`` keeps the portable path everywhere.
        reuse_buffers: set by ``Sequential.fit`` during training: outputs of a
            training step may be overwritten by the next one.
    """

    use_fast_path = True
    reuse_buffers = False

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
        w = self.params["weight"]
        if (self.reuse_buffers and training and self.use_fast_path and type(x) is np.ndarray
                and type(w) is np.ndarray and x.ndim == 2):  # NumPy fast path: no allocation
            y = np.matmul(x, w, out=workspace_of(self).get("y", (x.shape[0], self.out_features), w.dtype))
        else:
            y = x @ w
        if self.use_bias:
            y += self.params["bias"]
        return y

    def backward(self, grad_y: Array) -> Array:
        x = self._x
        if (self.reuse_buffers and self.use_fast_path and type(grad_y) is np.ndarray and type(x) is np.ndarray
                and x.ndim == 2):
            return self._backward_numpy(x, grad_y)
        if x.ndim == 2:
            self.grads["weight"] = self.xp.matmul(x.mT, grad_y)
            if self.use_bias:
                self.grads["bias"] = self.xp.sum(grad_y, axis=0)
        else:  # leading batch axes: fold them into one
            x2 = self.xp.reshape(x, (-1, self.in_features))
            g2 = self.xp.reshape(grad_y, (-1, self.out_features))
            self.grads["weight"] = x2.mT @ g2
            if self.use_bias:
                self.grads["bias"] = self.xp.sum(g2, axis=0)
        if not self.need_input_grad:
            return None
        return grad_y @ self.params["weight"].mT

    def _backward_numpy(self, x: np.ndarray, grad_y: np.ndarray) -> np.ndarray | None:
        """NumPy fast path of :meth:`backward`: the same products, written into
        the existing gradient arrays and a reused input-gradient buffer."""
        w, grads = self.params["weight"], self.grads
        gw = grads.get("weight")
        if type(gw) is not np.ndarray or gw.shape != w.shape or gw.dtype != w.dtype:
            gw = grads["weight"] = np.empty_like(w)
        np.matmul(x.T, grad_y, out=gw)
        if self.use_bias:
            b = self.params["bias"]
            gb = grads.get("bias")
            if type(gb) is not np.ndarray or gb.shape != b.shape or gb.dtype != b.dtype:
                gb = grads["bias"] = np.empty_like(b)
            np.add.reduce(grad_y, axis=0, out=gb)  # np.sum without its Python wrapper
        if not self.need_input_grad:
            return None
        return np.matmul(grad_y, w.T, out=workspace_of(self).get("gx", x.shape, grad_y.dtype))

    def moved(self, backend: Any) -> None:
        super().moved(backend)
        workspace_of(self).clear()

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
