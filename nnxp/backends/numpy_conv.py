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
from .numpy_threads import parallel_rows

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
def _pad_transposed_into(buf: np.ndarray, x: np.ndarray, padding: Pair, a: int, b: int) -> None:
    """Rows ``a:b`` of ``pad2(x.transpose(1, 0, 2, 3), padding)`` into ``buf`` ``(C, N, Hp, Wp)``:
    the interior written once, only the border zeroed."""
    (ph, pw), (h, w) = padding, x.shape[2:]
    blk = buf[:, a:b]
    if ph:
        blk[:, :, :ph] = 0
        blk[:, :, ph + h:] = 0
    if pw:
        blk[:, :, ph:ph + h, :pw] = 0
        blk[:, :, ph:ph + h, pw + w:] = 0
    blk[:, :, ph:ph + h, pw:pw + w] = x[a:b].transpose(1, 0, 2, 3)


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


def _fold_part(d: np.ndarray, geo: dict[str, Any]) -> np.ndarray:
    """The padded input gradient ``(C, m, Hp, Wp)`` of column gradients ``d`` ``(kh, kw, C, m, OH, OW)``:
    ``+=`` into slices, for a 2-D kernel in two steps (the row shifts into one ``(C, m, Hp, OW)`` sum
    per kernel column, then that sum shifted by the column)."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"]
    (hp, wp), c, m = geo["pad_hw"], geo["c"], d.shape[3]
    rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
    gpad = np.zeros((c, m, hp, wp), dtype=d.dtype)
    for j, sj in enumerate(cols):
        if kh > 1 and kw > 1:
            acc = np.zeros((c, m, hp, ow), dtype=d.dtype)
            for i, si in enumerate(rows):
                acc[:, :, si, :] += d[i, j, ...]
            gpad[:, :, :, sj] += acc
        else:
            for i, si in enumerate(rows):
                gpad[:, :, si, sj] += d[i, j, ...]
    return gpad


def fold_into(gx: np.ndarray, dcols: np.ndarray, geo: dict[str, Any]) -> None:
    """:func:`nnxp.backends.windows.fold`, cropped and transposed back to ``(nb, C, H, W)`` into
    ``gx`` (:func:`_fold_part`). ``dcols`` is ``(kh*kw*C, nb*OH*OW)`` or a
    ``(kh, kw, C, nb, OH, OW)`` view."""
    (kh, kw), (oh, ow), c, nb = geo["kernel"], geo["out_hw"], geo["c"], gx.shape[0]
    d = dcols.reshape(kh, kw, c, nb, oh, ow)
    gpad = d[0, 0] if kh * kw == 1 and geo["pad_hw"] == (oh, ow) else _fold_part(d, geo)
    gx[...] = win.crop2(gpad, geo["padding"], geo["in_hw"]).transpose(1, 0, 2, 3)


#: bytes of unfolded columns one step of a part works on: the columns, the product's output and
#: the folded gradient then stay in a core's cache (1 MiB of L2 on the machines measured) between
#: the passes. A 64-image batch of the benchmark's 32->64 3x3 convolution in steps of 8 images
#: ran forward and backward in 0.77x the time of one 14.5 MB step (one thread, interleaved runs).
STEP_BYTES = 1 << 20


#: a convolution with at most this many products per output (``kh*kw*C``, the column count) runs
#: them image by image straight into the ``(N, O, OH, OW)`` layout: its products are too small to
#: hide the transposes of the output and its gradient (the benchmark's 1->32 3x3 convolution, 9
#: columns, ran forward and backward in 0.64x the time of the one-product layout on one thread;
#: the 32->64 one, 288 columns, in 1.08x, so it keeps one product per step).
PER_IMAGE_K = 32


def _steps(a: int, b: int, step: int) -> list[tuple[int, int]]:
    """Rows ``a:b`` in runs of ``step``."""
    return [(s, min(b, s + step)) for s in range(a, b, step)]


def _step_rows(geo: dict[str, Any], itemsize: int, nb: int) -> int:
    """Images per step: as many as keep a step's columns within :data:`STEP_BYTES`."""
    (kh, kw), (oh, ow) = geo["kernel"], geo["out_hw"]
    return max(1, min(nb, STEP_BYTES // max(1, kh * kw * geo["c"] * oh * ow * itemsize)))


def _image_step(x: np.ndarray) -> int:
    """Images of ``x`` (N, C, H, W) per step of a pooling pass: :data:`STEP_BYTES` of input."""
    return max(1, STEP_BYTES // max(1, x[0].nbytes))


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Pair, padding: Pair,
           dilation: Pair, chunk: int, keep_cols: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.conv2d` on NumPy.

    Each batch chunk is worked a few images at a time (:data:`STEP_BYTES` of columns),
    the steps shared out among the threads (:mod:`~.numpy_threads`); a step runs the
    whole pipeline on its own rows: the channels-first padded copy of the input, unfold,
    the BLAS product, and the ``(N, O, OH, OW)`` output written with the bias added in
    the same pass. The steps' columns are kept for ``backward`` when the whole batch fits
    in ``chunk``.
    """
    geo = win.conv_geometry(x, weight, stride, padding, dilation)
    n, o, (oh, ow), (kh, kw) = geo["n"], geo["o"], geo["out_hw"], geo["kernel"]
    nb = max(1, min(n, chunk))
    step = _step_rows(geo, x.dtype.itemsize, nb)
    xpt = np.empty((geo["c"], n, *geo["pad_hw"]), dtype=x.dtype)  # each step fills its own rows
    w2 = win.weight_matrix(np, weight)
    b4 = None if bias is None else bias.reshape(1, o, 1, 1)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    keep = keep_cols and nb >= n

    k = kh * kw * geo["c"]
    per_image = k <= PER_IMAGE_K

    def unit(s0: int, s1: int) -> np.ndarray | None:
        _pad_transposed_into(xpt, x, padding, s0, s1)
        cols = unfold(xpt, s0, s1, geo)
        if per_image:  # (m, O, P) = (O, K) @ (m, K, P): one product per image, in place
            y3 = y[s0:s1].reshape(s1 - s0, o, oh * ow)
            np.matmul(w2, cols.reshape(k, s1 - s0, oh * ow).transpose(1, 0, 2), out=y3)
            if bias is not None:
                y3 += bias.reshape(1, o, 1)
        else:
            src = (w2 @ cols).reshape(o, s1 - s0, oh, ow).transpose(1, 0, 2, 3)
            if b4 is None:
                y[s0:s1] = src
            else:
                np.add(src, b4, out=y[s0:s1])
        return cols if keep else None

    saved: dict[tuple[int, int], np.ndarray] = {}
    steps_of = []
    for n0, n1 in win.chunks(n, nb):
        steps = _steps(n0, n1, step)
        for s01, cols in zip(steps, parallel_rows(unit, n1 - n0, 0, parts=steps), strict=True):
            if cols is not None:
                saved[s01] = cols
        steps_of.append(steps)
    return y, {"xpt": xpt, "geo": geo, "steps": steps_of, "cols": saved or None, "per_image": per_image}


def conv2d_backward(ctx: dict[str, Any], grad_y: np.ndarray, weight: np.ndarray, bias: bool,
                    need_input_grad: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:meth:`~nnxp.backends.base.Backend.conv2d_backward` on NumPy.

    In the forward's steps, shared out among the threads: each step transposes its rows of
    the output gradient to ``(O, m*OH*OW)`` (or keeps them ``(m, O, OH*OW)``), takes its
    share of the weight and bias gradients from it and folds its column gradients straight
    into its rows of the ``(N, C, H, W)`` input gradient. The shares are summed in step
    order, whichever thread ran them: the result does not depend on the thread count.
    """
    xpt, geo, per_image = ctx["xpt"], ctx["geo"], ctx["per_image"]
    n, c, o, (oh, ow), (h, w), (kh, kw) = geo["n"], geo["c"], geo["o"], geo["out_hw"], geo["in_hw"], geo["kernel"]
    k = kh * kw * c
    w2t = win.weight_matrix(np, weight, transposed=True) if need_input_grad else None
    gx = np.empty((n, c, h, w), dtype=grad_y.dtype) if need_input_grad else None
    kept = ctx["cols"] or {}

    def unit(s0: int, s1: int) -> tuple[np.ndarray, np.ndarray | None]:
        cols = kept.get((s0, s1))
        if cols is None:
            cols = unfold(xpt, s0, s1, geo)
        m = s1 - s0
        if per_image:  # the output gradient stays (m, O, P); the products go image by image
            g3 = grad_y[s0:s1].reshape(m, o, oh * ow)
            share = np.add.reduce(np.matmul(cols.reshape(k, m, oh * ow).transpose(1, 0, 2),
                                            g3.transpose(0, 2, 1)), axis=0)
            sums = np.add.reduce(g3, axis=(0, 2)) if bias else None
            # (m, K, P) column gradients, viewed as (kh, kw, C, m, OH, OW) for the fold
            dcols = (np.matmul(w2t, g3).reshape(m, kh, kw, c, oh, ow).transpose(1, 2, 3, 0, 4, 5)
                     if need_input_grad else None)
        else:
            g2 = np.empty((o, m, oh, ow), dtype=grad_y.dtype)
            g2[...] = grad_y[s0:s1].transpose(1, 0, 2, 3)
            g2 = g2.reshape(o, m * oh * ow)
            share = cols @ g2.T
            sums = np.add.reduce(g2, axis=1) if bias else None
            dcols = w2t @ g2 if need_input_grad else None
        if dcols is not None:
            fold_into(gx[s0:s1], dcols, geo)
        return share, sums

    dw2t, gb = None, None
    for steps in ctx["steps"]:
        for dw, db in parallel_rows(unit, 0, 0, parts=steps):  # summed in step order, whoever ran them
            dw2t = dw if dw2t is None else np.add(dw2t, dw, out=dw2t)
            if bias:
                gb = db if gb is None else np.add(gb, db, out=gb)
    ctx["cols"] = None
    gw = dw2t.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    return gw, gb, gx


# ------------------------------------------------------------------ pooling
def max_pool2d(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.max_pool2d` on NumPy: a chain of ``maximum(..., out=)``,
    split over the batch."""
    out_hw = win.pool_out_hw(x, kernel, stride, padding)
    xpad = pad2(x, padding, fill=-np.inf)
    sl = win.offset_slices(kernel, stride, (1, 1), out_hw)
    best = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)

    def unit(s0: int, s1: int) -> None:
        xa, out = xpad[s0:s1], best[s0:s1]
        if len(sl) == 1:
            out[...] = xa[:, :, sl[0][0], sl[0][1]]
            return
        np.maximum(xa[:, :, sl[0][0], sl[0][1]], xa[:, :, sl[1][0], sl[1][1]], out=out)
        for si, sj in sl[2:]:
            np.maximum(out, xa[:, :, si, sj], out=out)

    parallel_rows(unit, x.shape[0], 0, parts=_steps(0, x.shape[0], _image_step(xpad)))
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
    (``inf * False`` is NaN). Split over the batch.
    """
    xpad, best, kernel, stride = ctx["xpad"], ctx["y"], ctx["kernel"], ctx["stride"]
    sl = win.offset_slices(kernel, stride, (1, 1), (best.shape[2], best.shape[3]))
    apart = win.disjoint(kernel, stride)
    (kh, kw), (hp, wp) = kernel, xpad.shape[2:]
    tiles = tuple(kernel) == tuple(stride) and hp % kh == 0 and wp % kw == 0  # every pixel written once
    gpad = np.empty_like(xpad, dtype=g.dtype) if tiles else np.zeros_like(xpad, dtype=g.dtype)
    parallel_rows(lambda s0, s1: _max_route(xpad[s0:s1], best[s0:s1], g[s0:s1], sl, apart, gpad[s0:s1]),
                  g.shape[0], 0, parts=_steps(0, g.shape[0], _image_step(xpad)))
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
    """:meth:`~nnxp.backends.base.Backend.avg_pool2d` on NumPy: sums with ``+=`` into one array,
    split over the batch and worked a few images at a time."""
    out_hw = win.pool_out_hw(x, kernel, stride, padding)
    xpad = pad2(x, padding)
    sl = win.offset_slices(kernel, stride, (1, 1), out_hw)
    total = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)

    def unit(s0: int, s1: int) -> None:
        xa, out = xpad[s0:s1], total[s0:s1]
        out[...] = xa[:, :, sl[0][0], sl[0][1]]
        for si, sj in sl[1:]:
            out += xa[:, :, si, sj]
        out /= divisor

    parallel_rows(unit, x.shape[0], 0, parts=_steps(0, x.shape[0], _image_step(xpad)))
    ctx = {"kernel": kernel, "stride": stride, "padding": padding, "in_hw": (x.shape[2], x.shape[3]),
           "pad_shape": xpad.shape, "div": divisor}
    return total, ctx


def avg_pool2d_backward(ctx: dict[str, Any], grad_y: np.ndarray) -> np.ndarray:
    """:meth:`~nnxp.backends.base.Backend.avg_pool2d_backward` on NumPy: slice assignment, split over
    the batch."""
    gpad = np.zeros(ctx["pad_shape"], dtype=grad_y.dtype)
    apart = win.disjoint(ctx["kernel"], ctx["stride"])
    sl = win.offset_slices(ctx["kernel"], ctx["stride"], (1, 1), (grad_y.shape[2], grad_y.shape[3]))

    def part(a: int, b: int) -> None:
        g, gp = grad_y[a:b] / ctx["div"], gpad[a:b]
        for si, sj in sl:
            if apart:
                gp[:, :, si, sj] = g
            else:
                gp[:, :, si, sj] += g

    parallel_rows(part, grad_y.shape[0], 0, parts=_steps(0, grad_y.shape[0], _image_step(gpad)))
    return win.crop2(gpad, ctx["padding"], ctx["in_hw"])
