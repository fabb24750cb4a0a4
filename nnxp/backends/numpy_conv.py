"""NumPy versions of the sliding-window kernels (convolution, max and average pooling).

They compute what the portable versions in :mod:`nnxp.backends.windows` compute, but write into
preallocated arrays (``out=``, slice assignment) instead of stacking and concatenating, and route
the max-pooling gradient with boolean masks and ``multiply`` (``where`` is several times slower in
NumPy). ``tests/test_conv_kernels.py`` compares each with its portable version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import windows as win

Pair = tuple[int, int]


def pad2(x: np.ndarray, padding: Pair, fill: float = 0.0) -> np.ndarray:
    """:func:`nnxp.backends.windows.pad2` by assignment into a filled array."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    *lead, h, w = x.shape
    buf = np.full((*lead, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    buf[..., ph:ph + h, pw:pw + w] = x
    return buf


# ------------------------------------------------------------------ convolution
def unfold(xpt: np.ndarray, n0: int, n1: int, geo: dict[str, Any]) -> np.ndarray:
    """:func:`nnxp.backends.windows.unfold` into one preallocated array.

    A 2-D kernel is unfolded in two steps: first each of the ``kw`` column shifts is copied
    into a ``(C, nb, Hp, OW)`` array, then the ``kh`` row shifts of that array select whole
    blocks of rows. Copying the ``kh*kw`` windows directly moves the same data in ``OW``-long
    rows, and the short rows cost most of the time (about 1.4x slower for 3x3 kernels on
    14x14 images).
    """
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"]
    c, nb = geo["c"], n1 - n0
    part = xpt if (n0, n1) == (0, xpt.shape[1]) else xpt[:, n0:n1, :, :]
    if kh * kw == 1 and (sh, sw) == (1, 1):
        return part.reshape(c, nb * oh * ow)  # the (padded) input is its own column matrix
    rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
    out = np.empty((kh * kw, c, nb, oh, ow), dtype=xpt.dtype)
    if kh > 1 and kw > 1:
        shifted = np.empty((c, nb, xpt.shape[2], ow), dtype=xpt.dtype)
        for j, sj in enumerate(cols):
            shifted[...] = part[:, :, :, sj]
            for i, si in enumerate(rows):
                out[i * kw + j, ...] = shifted[:, :, si, :]
    else:
        for k, (si, sj) in enumerate((si, sj) for si in rows for sj in cols):
            out[k, ...] = part[:, :, si, sj]
    return out.reshape(kh * kw * c, nb * oh * ow)


def fold(dcols: np.ndarray, nb: int, geo: dict[str, Any]) -> np.ndarray:
    """:func:`nnxp.backends.windows.fold` with ``+=`` into slices (for a 2-D kernel in two steps:
    the row shifts into one ``(C, nb, Hp, OW)`` sum per kernel column, then that sum shifted by
    the column)."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"]
    (hp, wp), c = geo["pad_hw"], geo["c"]
    d = dcols.reshape(kh, kw, c, nb, oh, ow)
    if kh * kw == 1 and (hp, wp) == (oh, ow):
        return d[0, 0, ...]
    rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
    gpad = np.zeros((c, nb, hp, wp), dtype=dcols.dtype)
    for j, sj in enumerate(cols):
        if kh > 1 and kw > 1:
            acc = np.zeros((c, nb, hp, ow), dtype=dcols.dtype)
            for i, si in enumerate(rows):
                acc[:, :, si, :] += d[i, j, ...]
            gpad[:, :, :, sj] += acc
        else:
            for i, si in enumerate(rows):
                gpad[:, :, si, sj] += d[i, j, ...]
    return gpad


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Pair, padding: Pair,
           dilation: Pair, chunk: int, keep_cols: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.conv2d` on NumPy."""
    geo = win.conv_geometry(x, weight, stride, padding, dilation)
    n, o, (oh, ow) = geo["n"], geo["o"], geo["out_hw"]
    nb = max(1, min(n, chunk))
    xpt = pad2(x.transpose(1, 0, 2, 3), padding)
    w2 = win.weight_matrix(np, weight)
    b2 = None if bias is None else bias.reshape(o, 1)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    cols = None
    for n0, n1 in win.chunks(n, nb):
        cols = unfold(xpt, n0, n1, geo)
        y2 = w2 @ cols
        if b2 is not None:
            y2 += b2
        y[n0:n1, ...] = y2.reshape(o, n1 - n0, oh, ow).transpose(1, 0, 2, 3)
    return y, {"xpt": xpt, "geo": geo, "nb": nb, "cols": cols if keep_cols and nb >= n else None}


def conv2d_backward(ctx: dict[str, Any], grad_y: np.ndarray, weight: np.ndarray, bias: bool,
                    need_input_grad: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:meth:`~nnxp.backends.base.Backend.conv2d_backward` on NumPy."""
    xpt, geo, nb = ctx["xpt"], ctx["geo"], ctx["nb"]
    n, c, o, (oh, ow), (h, w), (ph, pw) = geo["n"], geo["c"], geo["o"], geo["out_hw"], geo["in_hw"], geo["padding"]
    gt = grad_y.transpose(1, 0, 2, 3)
    w2t = win.weight_matrix(np, weight, transposed=True) if need_input_grad else None
    gx = np.empty((n, c, h, w), dtype=grad_y.dtype) if need_input_grad else None
    dw2t = None
    for n0, n1 in win.chunks(n, nb):
        cols = ctx["cols"] if ctx["cols"] is not None else unfold(xpt, n0, n1, geo)
        g2 = gt[:, n0:n1, :, :].reshape(o, (n1 - n0) * oh * ow)
        part = cols @ g2.T
        dw2t = part if dw2t is None else dw2t + part
        if need_input_grad:
            gpad = fold(w2t @ g2, n1 - n0, geo)
            gx[n0:n1, ...] = gpad[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)
    ctx["cols"] = None
    kh, kw = geo["kernel"]
    gw = dw2t.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    gb = np.add.reduce(grad_y, axis=(0, 2, 3)) if bias else None
    return gw, gb, gx


# ------------------------------------------------------------------ pooling
def max_pool2d(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.max_pool2d` on NumPy: a chain of ``maximum(..., out=)``."""
    out_hw = win.pool_out_hw(x, kernel, stride, padding)
    xpad = pad2(x, padding, fill=-np.inf)
    sl = win.offset_slices(kernel, stride, (1, 1), out_hw)
    if len(sl) == 1:
        best = xpad[:, :, sl[0][0], sl[0][1]].copy()
    else:
        best = np.maximum(xpad[:, :, sl[0][0], sl[0][1]], xpad[:, :, sl[1][0], sl[1][1]])
        for si, sj in sl[2:]:
            np.maximum(best, xpad[:, :, si, sj], out=best)
    ctx = {"xpad": xpad, "y": best, "kernel": kernel, "stride": stride, "padding": padding,
           "in_hw": (x.shape[2], x.shape[3])}
    return best, ctx


def max_pool2d_backward(ctx: dict[str, Any], g: np.ndarray) -> np.ndarray:
    """:meth:`~nnxp.backends.base.Backend.max_pool2d_backward` on NumPy: ``g`` to each window's first maximum.

    Two boolean masks updated in place (``hit``: this offset holds the first
    maximum; ``taken``: an earlier offset did), and the gradient written with
    ``multiply(..., out=)`` straight into the strided slices of the input
    gradient. The last offset needs no comparison: it gets what is not taken.
    Differs from the portable version only where ``g`` is already inf/NaN
    (``inf * False`` is NaN).
    """
    xpad, best, kernel, stride = ctx["xpad"], ctx["y"], ctx["kernel"], ctx["stride"]
    sl = win.offset_slices(kernel, stride, (1, 1), (best.shape[2], best.shape[3]))
    apart = win.disjoint(kernel, stride)
    (kh, kw), (hp, wp) = kernel, xpad.shape[2:]
    tiles = tuple(kernel) == tuple(stride) and hp % kh == 0 and wp % kw == 0  # every pixel written once
    gpad = np.empty_like(xpad, dtype=g.dtype) if tiles else np.zeros_like(xpad, dtype=g.dtype)
    _max_route(xpad, best, g, sl, apart, gpad)
    return win.crop2(gpad, ctx["padding"], ctx["in_hw"])


def _max_route(xpad: np.ndarray, best: np.ndarray, g: np.ndarray, sl: Sequence[tuple[slice, slice]],
               apart: bool, gpad: np.ndarray) -> None:
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
        if apart:
            np.multiply(g, hit, out=gpad[:, :, si, sj])
        else:
            gpad[:, :, si, sj] += g * hit


def avg_pool2d(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair,
               divisor: np.ndarray | float) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.avg_pool2d` on NumPy: sums with ``+=`` into one array."""
    out_hw = win.pool_out_hw(x, kernel, stride, padding)
    xpad = pad2(x, padding)
    sl = win.offset_slices(kernel, stride, (1, 1), out_hw)
    total = xpad[:, :, sl[0][0], sl[0][1]].copy()
    for si, sj in sl[1:]:
        total += xpad[:, :, si, sj]
    total /= divisor
    ctx = {"kernel": kernel, "stride": stride, "padding": padding, "in_hw": (x.shape[2], x.shape[3]),
           "pad_shape": xpad.shape, "div": divisor}
    return total, ctx


def avg_pool2d_backward(ctx: dict[str, Any], grad_y: np.ndarray) -> np.ndarray:
    """:meth:`~nnxp.backends.base.Backend.avg_pool2d_backward` on NumPy: slice assignment."""
    g = grad_y / ctx["div"]
    gpad = np.zeros(ctx["pad_shape"], dtype=grad_y.dtype)
    apart = win.disjoint(ctx["kernel"], ctx["stride"])
    for si, sj in win.offset_slices(ctx["kernel"], ctx["stride"], (1, 1), (g.shape[2], g.shape[3])):
        if apart:
            gpad[:, :, si, sj] = g
        else:
            gpad[:, :, si, sj] += g
    return win.crop2(gpad, ctx["padding"], ctx["in_hw"])
