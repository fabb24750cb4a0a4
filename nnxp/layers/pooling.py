"""2-D max and average pooling (NCHW): argument handling and checks; the work is the backend's
``max_pool2d`` / ``avg_pool2d`` kernels (one strided slice per kernel offset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _windows as win
from .base import Array, Layer


class _Pool2D(Layer):
    """Shared argument handling, checks and shapes of the pooling layers."""

    splits_kernels = True

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = win.as_pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else win.as_pair(stride, "stride", name)
        self._stride_given = stride is not None
        self.padding = win.as_pair(padding, "padding", name, minimum=0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"{name} padding {self.padding} must be at most half the kernel size {self.kernel_size} "
                "(otherwise a window could lie entirely in the padding). Use a larger kernel or less padding."
            )
        self._cache: dict[str, Any] = {}

    def _out_hw(self, x: Array) -> tuple[int, int]:
        win.check_images(self, x)
        return win.spatial_out(self, tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding,
                               (1, 1), f"input of shape {tuple(x.shape)}")

    def _check_grad(self, grad_y: Array) -> None:
        win.check_grad(self, grad_y, self._cache["out_shape"])

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects per-sample inputs (channels, height, width), got {shape}. "
                             "Images are NCHW; reshape flat inputs to images first.")
        oh, ow = win.spatial_out(self, shape[1:], self.kernel_size, self.stride, self.padding, (1, 1),
                                 f"per-sample input {shape}")
        return (shape[0], oh, ow)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kernel_size": win.compact(self.kernel_size)}
        if self._stride_given:
            cfg["stride"] = win.compact(self.stride)
        if self.padding != (0, 0):
            cfg["padding"] = win.compact(self.padding)
        return cfg


class MaxPool2D(_Pool2D):
    """Maximum over each window, like :class:`torch.nn.MaxPool2d`.

    Padding counts as ``-inf``. The gradient goes to the first maximum of
    each window (row-major order, as in PyTorch); a NaN in a window wins,
    so NaNs propagate (and the NaN gets the gradient).

    The forward pass is a chain of ``maximum`` over the kernel offsets and
    keeps the (padded) input and the output; ``backward`` finds each window's
    first maximum from them, so evaluation does no index bookkeeping. The
    input must not be modified in place between ``forward`` and ``backward``.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: ``s`` or ``(sh, sw)``; defaults to ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half the kernel.
    """

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._out_hw(x)
        y, ctx = self.backend.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                         ws=self.workspace(training))
        self._cache = {"ctx": ctx, "out_shape": tuple(y.shape)}
        return y

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        if not self.need_input_grad:
            return None
        self._check_grad(grad_y)
        return self.backend.max_pool2d_backward(self._cache["ctx"], grad_y, ws=self.workspace(True))


class AvgPool2D(_Pool2D):
    """Mean over each window, like :class:`torch.nn.AvgPool2d`.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: ``s`` or ``(sh, sw)``; defaults to ``kernel_size``.
        padding: implicit zero padding on each side, at most half the kernel.
        count_include_pad: divide by the full window size, padding included
            (PyTorch's default); ``False`` divides by the number of real pixels.
    """

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, count_include_pad: bool = True) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._out_hw(x)
        y, ctx = self.backend.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad,
                                         ws=self.workspace(training))
        self._cache = {"ctx": ctx, "out_shape": tuple(y.shape)}
        return y

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        if not self.need_input_grad:
            return None
        self._check_grad(grad_y)
        return self.backend.avg_pool2d_backward(self._cache["ctx"], grad_y, ws=self.workspace(True))

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if not self.count_include_pad:
            cfg["count_include_pad"] = False
        return cfg
