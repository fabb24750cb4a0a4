"""2-D max and average pooling (NCHW), one strided slice per kernel offset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _windows as win
from .base import Array, Layer


class _Pool2D(Layer):
    """Shared argument handling, checks and shapes of the pooling layers."""

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

    def _slices(self, out_hw: tuple[int, int]) -> tuple[tuple[slice, slice], ...]:
        return win.offset_slices(self.kernel_size, self.stride, (1, 1), out_hw)

    def _unpad(self, gpad: Array, h: int, w: int) -> Array:
        ph, pw = self.padding
        return gpad if (ph, pw) == (0, 0) else gpad[:, :, ph:ph + h, pw:pw + w]

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
    so NaNs propagate.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: ``s`` or ``(sh, sw)``; defaults to ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half the kernel.
    """

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        oh, ow = self._out_hw(x)
        xp = self.xp
        xpad = win.pad_last2(xp, x, self.padding, fill=-float("inf"), device=self.backend.device)
        sl = self._slices((oh, ow))
        kk = len(sl)
        best = xpad[:, :, sl[0][0], sl[0][1]]
        idx = xp.zeros(tuple(best.shape), dtype=xp.int16 if kk < 2**15 else xp.int32,
                       device=self.backend.device)
        for k in range(1, kk):
            v = xpad[:, :, sl[k][0], sl[k][1]]
            better = (v > best) | xp.isnan(v)  # strict ">" keeps the first maximum
            best = xp.where(better, v, best)
            idx = xp.where(better, k, idx)
        if kk == 1:
            best = xp.asarray(best, copy=True)
        self._cache = {"idx": idx, "shape": tuple(x.shape), "pad_shape": tuple(xpad.shape)}
        return best

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        if not self.need_input_grad:
            return None
        xp = self.xp
        idx, (h, w) = self._cache["idx"], self._cache["shape"][2:]
        oh, ow = idx.shape[2], idx.shape[3]
        gpad = xp.zeros(self._cache["pad_shape"], dtype=grad_y.dtype, device=self.backend.device)
        disjoint = all(s >= k for s, k in zip(self.stride, self.kernel_size, strict=True))
        for k, (si, sj) in enumerate(self._slices((oh, ow))):
            routed = xp.where(idx == k, grad_y, 0.0)
            if disjoint:  # windows do not overlap: each input pixel is written once
                gpad[:, :, si, sj] = routed
            else:
                gpad[:, :, si, sj] += routed
        return self._unpad(gpad, h, w)


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
        self._divisors: dict[tuple[int, int, Any], Array] = {}

    def _divisor(self, h: int, w: int, oh: int, ow: int, dtype: Any) -> Array | float:
        """Window size, or (count_include_pad=False with padding) per-position counts ``(OH, OW)``."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        if self.count_include_pad or self.padding == (0, 0):
            return float(kk)
        key = (h, w, dtype)
        if key not in self._divisors:
            ph, pw = self.padding
            ones = np.zeros((h + 2 * ph, w + 2 * pw))
            ones[ph:ph + h, pw:pw + w] = 1.0
            counts = sum(ones[si, sj] for si, sj in self._slices((oh, ow)))
            self._divisors[key] = self.backend.from_host(np.asarray(counts), dtype)
        return self._divisors[key]

    def moved(self, backend: Any) -> None:
        self._divisors = {}

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        oh, ow = self._out_hw(x)
        xp = self.xp
        xpad = win.pad_last2(xp, x, self.padding, device=self.backend.device)
        sl = self._slices((oh, ow))
        total = xpad[:, :, sl[0][0], sl[0][1]]
        total = total + xpad[:, :, sl[1][0], sl[1][1]] if len(sl) > 1 else xp.asarray(total, copy=True)
        for si, sj in sl[2:]:
            total += xpad[:, :, si, sj]
        div = self._divisor(x.shape[2], x.shape[3], oh, ow, x.dtype)
        total /= div
        self._cache = {"shape": tuple(x.shape), "pad_shape": tuple(xpad.shape), "out_hw": (oh, ow),
                       "div": div}
        return total

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        if not self.need_input_grad:
            return None
        xp = self.xp
        (h, w), (oh, ow) = self._cache["shape"][2:], self._cache["out_hw"]
        g = grad_y / self._cache["div"]
        gpad = xp.zeros(self._cache["pad_shape"], dtype=grad_y.dtype, device=self.backend.device)
        disjoint = all(s >= k for s, k in zip(self.stride, self.kernel_size, strict=True))
        for si, sj in self._slices((oh, ow)):
            if disjoint:
                gpad[:, :, si, sj] = g
            else:
                gpad[:, :, si, sj] += g
        return self._unpad(gpad, h, w)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if not self.count_include_pad:
            cfg["count_include_pad"] = False
        return cfg
