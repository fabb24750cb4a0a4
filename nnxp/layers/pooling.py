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
    so NaNs propagate (and the NaN gets the gradient).

    The forward pass is a chain of ``maximum`` over the kernel offsets and
    keeps the (padded) input and the output; ``backward`` finds each window's
    first maximum from them, so evaluation does no index bookkeeping. The
    input must not be modified in place between ``forward`` and ``backward``.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: ``s`` or ``(sh, sw)``; defaults to ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half the kernel.

    Attributes:
        use_fast_path: on the NumPy backend, route the gradient with boolean
            masks, ``multiply`` and ``out=`` (``where`` is several times slower
            in NumPy); the result differs from the portable path only where the
            incoming gradient is already inf/NaN. ``False`` keeps the portable
            path everywhere.
    """

    use_fast_path = True

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        oh, ow = self._out_hw(x)
        xp = self.xp
        xpad = win.pad_last2(xp, x, self.padding, fill=-float("inf"), device=self.backend.device)
        sl = self._slices((oh, ow))
        if len(sl) == 1:
            best = xp.asarray(xpad[:, :, sl[0][0], sl[0][1]], copy=True)
        elif self.use_fast_path and type(xpad) is np.ndarray and self.backend.kind == "numpy":
            best = np.maximum(xpad[:, :, sl[0][0], sl[0][1]], xpad[:, :, sl[1][0], sl[1][1]])
            for si, sj in sl[2:]:
                np.maximum(best, xpad[:, :, si, sj], out=best)
        else:
            best = xp.maximum(xpad[:, :, sl[0][0], sl[0][1]], xpad[:, :, sl[1][0], sl[1][1]])
            for si, sj in sl[2:]:  # maximum propagates NaN (the standard says so)
                best = xp.maximum(best, xpad[:, :, si, sj])
        self._cache = {"xpad": xpad, "y": best, "shape": tuple(x.shape)}
        return best

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        if not self.need_input_grad:
            return None
        c = self._cache
        xpad, best, (h, w) = c["xpad"], c["y"], c["shape"][2:]
        if tuple(grad_y.shape) != tuple(best.shape):
            raise ValueError(f"{self!r}.backward expects a gradient of shape {tuple(best.shape)} "
                             f"(the output's), got {tuple(grad_y.shape)}")
        sl = self._slices((best.shape[2], best.shape[3]))
        disjoint = all(s >= k for s, k in zip(self.stride, self.kernel_size, strict=True))
        if self.use_fast_path and type(xpad) is np.ndarray and type(grad_y) is np.ndarray:
            return self._unpad(_max_route_numpy(xpad, best, grad_y, sl, disjoint, self._tiles(xpad)), h, w)
        xp = self.xp
        gpad = xp.zeros_like(xpad, dtype=grad_y.dtype)
        rest = grad_y  # the gradient not yet routed: zero where an earlier offset held the maximum
        for k, (si, sj) in enumerate(sl):
            if k == len(sl) - 1:  # nothing earlier was the maximum: this offset is
                part = rest
            else:
                v = xpad[:, :, si, sj]
                hit = (v == best) | (v != v)  # v != v: a NaN is the maximum
                part = xp.where(hit, rest, 0.0)
                rest = xp.where(hit, 0.0, rest)
            if disjoint:  # windows do not overlap: each input pixel is written once
                gpad[:, :, si, sj] = part
            else:
                gpad[:, :, si, sj] += part
        return self._unpad(gpad, h, w)

    def _tiles(self, xpad: Array) -> bool:
        """The windows cover the padded input exactly once (so no pixel needs a zero gradient)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        hp, wp = xpad.shape[2], xpad.shape[3]
        return (kh, kw) == (sh, sw) and hp % kh == 0 and wp % kw == 0


def _max_route_numpy(xpad: np.ndarray, best: np.ndarray, g: np.ndarray, sl: Sequence[tuple[slice, slice]],
                     disjoint: bool, tiles: bool) -> np.ndarray:
    """NumPy fast path of :meth:`MaxPool2D.backward`: ``g`` to each window's first maximum.

    Two boolean masks updated in place (``hit``: this offset holds the first
    maximum; ``taken``: an earlier offset did), and the gradient written with
    ``multiply(..., out=)`` straight into the strided slices of the input
    gradient. The last offset needs no comparison: it gets what is not taken.
    """
    gpad = np.empty_like(xpad, dtype=g.dtype) if tiles else np.zeros_like(xpad, dtype=g.dtype)
    hit = np.empty_like(best, dtype=np.bool_)
    taken = np.empty_like(best, dtype=np.bool_)
    has_nan = bool(np.isnan(best).any())
    last = len(sl) - 1
    for k, (si, sj) in enumerate(sl):
        if k == last == 0:  # a 1x1 window: its only pixel is the maximum
            hit[...] = True
        elif k == last:
            np.logical_not(taken, out=hit)
        else:
            v = xpad[:, :, si, sj]
            np.equal(v, best, out=hit)
            if has_nan:
                hit |= np.isnan(v)
            if k == 0:
                np.copyto(taken, hit)
            else:
                np.greater(hit, taken, out=hit)  # hit and not taken
                taken |= hit
        if disjoint:
            np.multiply(g, hit, out=gpad[:, :, si, sj])
        else:
            gpad[:, :, si, sj] += g * hit
    return gpad


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
