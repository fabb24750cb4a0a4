"""Runs of layers that a :class:`~nnxp.Sequential` executes as one backend kernel.

A step here is not a layer: it is not saved, has no parameters of its own and does not
appear in ``model.layers``. It calls the layers' arrays and writes their gradients, so
optimizers, checkpoints and summaries see the layers as always. The model builds its
run plan (``Sequential._plan``) with :func:`fuse`.
"""

from __future__ import annotations

from typing import Any

from . import _windows as win
from .activations import ReLU
from .base import Array, Layer
from .conv import Conv2D
from .pooling import MaxPool2D


class ConvPool:
    """A ``Conv2D`` (stride 1, no dilation), the ``MaxPool2D`` after it (stride equal to its
    kernel, no padding) and an optional ``ReLU`` after that, run as the backend's
    ``conv2d_maxpool`` kernel: the same values and gradients as the three layers.

    Args:
        conv: the convolution (built).
        pool: the max pooling layer.
        relu: the ReLU after the pooling, or ``None``.
    """

    def __init__(self, conv: Conv2D, pool: MaxPool2D, relu: ReLU | None) -> None:
        self.conv, self.pool, self.relu = conv, pool, relu

    def __repr__(self) -> str:
        parts = [self.conv, self.pool] + ([self.relu] if self.relu is not None else [])
        return "ConvPool(" + ", ".join(map(repr, parts)) + ")"

    def forward(self, x: Array, training: bool = True) -> Array:
        conv = self.conv
        oh, ow = conv._check(x)
        self.pool.output_shape((conv.out_channels, oh, ow))  # the pooling's size checks and errors
        kh, kw = conv.kernel_size
        chunk = conv._chunk(x.shape[0], kh * kw * conv.in_channels * oh * ow)
        y, ctx = conv.backend.conv2d_maxpool(
            x, conv.params["weight"], conv.params["bias"] if conv.use_bias else None, conv.padding,
            self.pool.kernel_size, self.relu is not None, chunk, keep=training, ws=conv.workspace(training))
        conv._cache = {"fused": ctx, "out_shape": tuple(y.shape)}
        return y

    def backward(self, grad_y: Array) -> Array:
        conv = self.conv
        if "fused" not in conv._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        win.check_grad(self, grad_y, conv._cache["out_shape"])
        gw, gb, gx = conv.backend.conv2d_maxpool_backward(conv._cache["fused"], grad_y, conv.params["weight"],
                                                          conv.use_bias, conv.need_input_grad,
                                                          ws=conv.workspace(True))
        conv.grads["weight"] = gw
        if conv.use_bias:
            conv.grads["bias"] = gb
        return gx


def _fusible(conv: Any, pool: Any) -> bool:
    return (type(conv) is Conv2D and type(pool) is MaxPool2D and conv.built
            and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and pool.stride == pool.kernel_size and pool.padding == (0, 0)
            and conv.backend.fuses_conv2d_maxpool(conv.in_channels, conv.kernel_size))


def fuse(layers: list[Layer]) -> list[Any]:
    """``layers`` with each ``Conv2D, MaxPool2D[, ReLU]`` run that the backend fuses
    (:meth:`~nnxp.backends.base.Backend.fuses_conv2d_maxpool`) replaced by a :class:`ConvPool`.

    Args:
        layers: the layers in the order they run.

    Returns:
        The steps to run, in order.
    """
    out: list[Any] = []
    i = 0
    while i < len(layers):
        if i + 1 < len(layers) and _fusible(layers[i], layers[i + 1]):
            relu = layers[i + 2] if i + 2 < len(layers) and type(layers[i + 2]) is ReLU else None
            out.append(ConvPool(layers[i], layers[i + 1], relu))
            i += 3 if relu is not None else 2
        else:
            out.append(layers[i])
            i += 1
    return out
