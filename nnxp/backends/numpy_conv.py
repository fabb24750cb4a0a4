"""NumPy versions of the sliding-window kernels (convolution, max and average pooling).

They compute what the portable versions in :mod:`nnxp.backends.windows` compute, but keep the
NCHW layout throughout (each sample's unfolded columns are one contiguous matrix, so one BLAS call
per sample writes its output in place: no transposes), write into preallocated arrays (``out=``,
slice assignment) instead of stacking and concatenating, route the max-pooling gradient with
boolean masks and ``multiply`` (``where`` is several times slower in NumPy), and split the batch
over a small thread pool (:data:`workers`; NumPy releases the GIL). The sums run in another order
than the portable ones (channels, then chunks), so float32 results differ in the last bits.
``tests/test_conv_kernels.py`` compares each with its portable version.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


# ------------------------------------------------------------------ threads
class _Workers:
    """A small thread pool over batch chunks, with BLAS held to one thread while it runs.

    NumPy releases the GIL inside its loops and BLAS calls, so the copies, the
    elementwise work and the matrix products of different batch items run on
    different cores at once. Each worker's matrix products are single-threaded
    (``threadpoolctl``): nested BLAS threads would only oversubscribe the cores.

    The pool has as many workers as BLAS has threads when a kernel starts
    (``OPENBLAS_NUM_THREADS``, ``threadpoolctl.threadpool_limits``, or the core
    count), so a process limited to one BLAS thread runs the kernels serially
    on one core, as before; :attr:`threads` overrides that.
    """

    def __init__(self) -> None:
        self.threads: int | None = None
        self._pool: Any = None
        self._size = 0
        self._pid = 0
        self._blas: Any = None
        self._lock = threading.Lock()
        self._depth = 0  # parallel regions open (threads of a data-parallel fit may overlap them)
        self._saved: Any = None

    def _blas_controller(self) -> Any:
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController().select(user_api="blas")
        return self._blas

    def count(self) -> int:
        """Workers a kernel starting now uses."""
        if self.threads is not None:
            return max(1, int(self.threads))
        if self._depth:  # inside another region (BLAS already held at 1): the caller's share
            return 1
        libs = self._blas_controller().lib_controllers
        return max([1, *(lib.num_threads for lib in libs)])

    def map(self, fn: Callable[[int, int], Any], pieces: list[tuple[int, int]]) -> list[Any]:
        """``[fn(n0, n1) for (n0, n1) in pieces]``, the pieces shared between the calling thread and
        ``count() - 1`` pool threads. At most ``count()`` pieces are in flight at once, so a batch
        cut into more chunks than there are workers (a small ``col_budget``) never holds more
        than ``count()`` chunks' columns."""
        threads = min(self.count(), len(pieces))
        if threads <= 1:
            return [fn(n0, n1) for n0, n1 in pieces]
        with self._lock:
            if self._pool is None or self._size < threads - 1 or self._pid != os.getpid():
                # a forked child inherits the pool object but none of its threads: make a new one
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._size, self._pid = threads - 1, os.getpid()
                self._pool = ThreadPoolExecutor(self._size, thread_name_prefix="nnxp-conv")
            if self._depth == 0:
                self._saved = self._blas_controller().limit(limits=1)
            self._depth += 1
        results: list[Any] = [None] * len(pieces)
        todo = iter(enumerate(pieces))
        take = threading.Lock()

        def drain() -> None:
            while True:
                with take:
                    item = next(todo, None)
                if item is None:
                    return
                k, (n0, n1) = item
                results[k] = fn(n0, n1)

        try:
            futures = [self._pool.submit(drain) for _ in range(threads - 1)]
            try:
                drain()
            finally:
                for f in futures:  # wait for every piece, also when the caller's failed
                    f.exception()
            for f in futures:
                f.result()
            return results
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._saved.restore_original_limits()
                    self._saved = None


#: the process-wide pool of the NumPy window kernels
workers = _Workers()


def split(n: int, chunk: int, parts: int) -> list[tuple[int, int]]:
    """Batch pieces of at most ``chunk`` items, and at least ``parts`` of them when ``n`` allows."""
    size = max(1, min(chunk, -(-n // max(1, parts))))
    return win.chunks(n, size)


# ------------------------------------------------------------------ convolution
def _is_own_columns(geo: dict[str, Any]) -> bool:
    """A 1x1 kernel at stride 1 without padding: the input is its own column matrix."""
    return geo["kernel"] == (1, 1) and geo["stride"] == (1, 1) and geo["padding"] == (0, 0)


def unfold(xpad: np.ndarray, geo: dict[str, Any], ones_row: bool = False) -> np.ndarray:
    """Columns ``(nb, C*kh*kw, OH*OW)`` of a padded ``(nb, C, Hp, Wp)`` chunk, rows ordered
    (channel, kernel row, kernel column) like ``weight.reshape(O, -1)``: one copy out of a
    sliding-window view, so each sample's columns are one contiguous matrix.

    With ``ones_row`` each matrix gets a last row of ones, so the bias rides along in the
    matrix products (forward: a last weight column; backward: its gradient, the sum of the
    output gradient, comes out of the weight-gradient product) instead of taking a pass of its
    own over the output.
    """
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"]
    nb, c, k = xpad.shape[0], geo["c"], geo["c"] * kh * kw
    if _is_own_columns(geo) and not ones_row:
        return xpad.reshape(nb, c, oh * ow)
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    view = sliding_window_view(xpad, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    cols = np.empty((nb, k + ones_row, oh * ow), dtype=xpad.dtype)
    # splitting axes of a slice is always a view: the copy lands in ``cols``
    np.copyto(cols[:, :k, :].reshape(nb, c, kh, kw, oh, ow), view[:, :, :oh, :ow].transpose(0, 1, 4, 5, 2, 3))
    if ones_row:
        cols[:, k, :] = 1
    return cols


def fold(dcols: np.ndarray, geo: dict[str, Any], out: np.ndarray) -> None:
    """Adjoint of :func:`unfold`: ``(nb, C*kh*kw, OH*OW)`` columns added into the zeroed padded
    ``(nb, C, Hp, Wp)`` gradient ``out``. A 2-D kernel goes in two steps: the ``kh`` row shifts
    into one ``(nb, C, Hp, OW)`` sum per kernel column (whole ``OH*OW`` blocks at stride 1), then
    that sum shifted by the column, so only ``kw`` additions move ``OW``-long rows."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"]
    nb, c, hp = out.shape[0], geo["c"], out.shape[2]
    d = dcols.reshape(nb, c, kh, kw, oh, ow)
    rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
    if kh > 1 and kw > 1:
        acc = np.empty((nb, c, hp, ow), dtype=out.dtype)
        for j, sj in enumerate(cols):
            acc[...] = 0
            for i, si in enumerate(rows):
                acc[:, :, si, :] += d[:, :, i, j]
            out[:, :, :, sj] += acc
    else:
        for i, si in enumerate(rows):
            for j, sj in enumerate(cols):
                out[:, :, si, sj] += d[:, :, i, j]


def _pad_chunk(x: np.ndarray, padding: Pair, fill: float = 0.0) -> np.ndarray:
    """``x`` padded on its last two axes; only the border is filled (no pass over the interior)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    buf = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    buf[:, :, :ph, :] = fill
    buf[:, :, ph + h:, :] = fill
    buf[:, :, ph:ph + h, :pw] = fill
    buf[:, :, ph:ph + h, pw + w:] = fill
    buf[:, :, ph:ph + h, pw:pw + w] = x
    return buf


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Pair, padding: Pair,
           dilation: Pair, chunk: int, keep_cols: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.conv2d` on NumPy, NCHW throughout.

    Each sample's columns are a contiguous ``(C*kh*kw, OH*OW)`` matrix, so
    ``weight.reshape(O, -1) @ cols`` (one BLAS call per sample, stacked by
    ``matmul``) writes the ``(O, OH*OW)`` output in place in the NCHW result: no
    transposes of the input, the weight or the output. The batch is split into
    chunks that run on :data:`workers`.
    """
    geo = win.conv_geometry(x, weight, stride, padding, dilation)
    n, c, o, (oh, ow) = geo["n"], geo["c"], geo["o"], geo["out_hw"]
    w2 = weight.reshape(o, c * geo["kernel"][0] * geo["kernel"][1])
    ones = bias is not None and not _is_own_columns(geo)
    if ones:
        w2 = np.concatenate([w2, bias.reshape(o, 1)], axis=1)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    y3 = y.reshape(n, o, oh * ow)
    keep = keep_cols and chunk >= n

    def run(n0: int, n1: int) -> np.ndarray | None:
        cols = unfold(_pad_chunk(x[n0:n1], padding), geo, ones)
        out = np.matmul(w2, cols, out=y3[n0:n1])
        if bias is not None and not ones:
            np.add(out, bias.reshape(1, o, 1), out=out)
        return cols if keep else None

    pieces = split(n, chunk, workers.count())
    cols = workers.map(run, pieces)
    return y, {"x": x, "geo": geo, "pieces": pieces, "cols": cols if keep else None, "ones": ones}


def conv2d_backward(ctx: dict[str, Any], grad_y: np.ndarray, weight: np.ndarray, bias: bool,
                    need_input_grad: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:meth:`~nnxp.backends.base.Backend.conv2d_backward` on NumPy, per chunk on :data:`workers`:
    the weight gradient as one stacked ``g @ cols.T`` summed over the chunk's samples, the
    columns' gradient as ``weight.T @ g`` per sample, folded back into the chunk's rows of the
    input gradient."""
    x, geo, pieces, kept, ones = ctx["x"], ctx["geo"], ctx["pieces"], ctx["cols"], ctx["ones"]
    n, c, o, (oh, ow), (h, w), (ph, pw) = geo["n"], geo["c"], geo["o"], geo["out_hw"], geo["in_hw"], geo["padding"]
    (kh, kw), (hp, wp) = geo["kernel"], geo["pad_hw"]
    g3 = np.ascontiguousarray(grad_y).reshape(n, o, oh * ow)
    w2t = np.ascontiguousarray(weight.reshape(o, c * kh * kw).T) if need_input_grad else None
    gx = np.empty((n, c, h, w), dtype=grad_y.dtype) if need_input_grad else None
    index = {piece: k for k, piece in enumerate(pieces)}

    def run(n0: int, n1: int) -> np.ndarray:
        cols = kept[index[n0, n1]] if kept is not None else unfold(_pad_chunk(x[n0:n1], (ph, pw)), geo, ones)
        g = g3[n0:n1]
        gw = np.add.reduce(np.matmul(g, cols.transpose(0, 2, 1)), axis=0)
        if need_input_grad:
            dcols = np.matmul(w2t, g)
            if (ph, pw) == (0, 0):
                part = gx[n0:n1]
                part[...] = 0
                fold(dcols, geo, part)
            else:
                gpad = np.zeros((n1 - n0, c, hp, wp), dtype=grad_y.dtype)
                fold(dcols, geo, gpad)
                gx[n0:n1] = gpad[:, :, ph:ph + h, pw:pw + w]
        return gw

    parts = workers.map(run, pieces)
    ctx["cols"] = None  # free the columns; a second backward recomputes them
    gw = parts[0]
    for part in parts[1:]:
        gw += part
    k = c * kh * kw
    if ones:  # the last column is the bias gradient (the columns' last row is ones)
        gb = np.ascontiguousarray(gw[:, k]) if bias else None
        gw = gw[:, :k]
    else:
        gb = np.add.reduce(g3, axis=(0, 2)) if bias else None
    return np.ascontiguousarray(gw).reshape(o, c, kh, kw), gb, gx


# ------------------------------------------------------------------ pooling
def max_pool2d(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.max_pool2d` on NumPy: a chain of ``maximum(..., out=)``,
    batch chunks on :data:`workers`."""
    out_hw = win.pool_out_hw(x, kernel, stride, padding)
    oh, ow = out_hw
    xpad = _pad_chunk(x, padding, fill=-np.inf)
    sl = win.offset_slices(kernel, stride, (1, 1), out_hw)
    best = _max_chain(xpad, sl, (x.shape[0], x.shape[1], oh, ow))
    ctx = {"xpad": xpad, "y": best, "kernel": kernel, "stride": stride, "padding": padding,
           "in_hw": (x.shape[2], x.shape[3])}
    return best, ctx


def _max_chain(x: np.ndarray, sl: Sequence[tuple[slice, slice]], shape: tuple[int, ...]) -> np.ndarray:
    """The elementwise maximum of the slices ``x[:, :, si, sj]`` (NaN wins), batch chunks on :data:`workers`."""
    best = np.empty(shape, dtype=x.dtype)

    def run(n0: int, n1: int) -> None:
        xp, b = x[n0:n1], best[n0:n1]
        if len(sl) == 1:
            np.copyto(b, xp[:, :, sl[0][0], sl[0][1]])
            return
        np.maximum(xp[:, :, sl[0][0], sl[0][1]], xp[:, :, sl[1][0], sl[1][1]], out=b)
        for si, sj in sl[2:]:
            np.maximum(b, xp[:, :, si, sj], out=b)

    workers.map(run, _pieces(x))
    return best


def _pieces(x: np.ndarray) -> list[tuple[int, int]]:
    """Batch chunks for elementwise window work: one per worker, or one for small arrays (where
    handing work to threads costs more than it saves)."""
    n = x.shape[0]
    return split(n, n, workers.count() if x.size >= _MIN_PARALLEL else 1)


#: elements below which the pooling kernels stay on the calling thread
_MIN_PARALLEL = 1 << 16


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
    workers.map(lambda n0, n1: _max_route(xpad[n0:n1], best[n0:n1], g[n0:n1], sl, apart, gpad[n0:n1]),
                _pieces(xpad))
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
