"""NumPy versions of the sliding-window kernels (convolution, max and average pooling).

They compute what the portable versions in :mod:`nnxp.backends.windows` compute, but write into
preallocated arrays (``out=``, slice assignment) instead of stacking and concatenating, and route
the max-pooling gradient with boolean masks and ``multiply`` (``where`` is several times slower in
NumPy). ``tests/test_conv_kernels.py`` compares each with its portable version.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
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


def unfold(xpt: np.ndarray, n0: int, n1: int, geo: dict[str, Any], out: np.ndarray | None = None,
           shifted: np.ndarray | None = None) -> np.ndarray:
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
    out = np.empty((kh * kw, c, nb, oh, ow), dtype=xpt.dtype) if out is None else out
    if kh > 1 and kw > 1:
        shifted = np.empty((c, nb, xpt.shape[2], ow), dtype=xpt.dtype) if shifted is None else shifted
        for j, sj in enumerate(cols):
            shifted[...] = part[:, :, :, sj]
            for i, si in enumerate(rows):
                out[i * kw + j, ...] = shifted[:, :, si, :]
    else:
        for k, (si, sj) in enumerate((si, sj) for si in rows for sj in cols):
            out[k, ...] = part[:, :, si, sj]
    return out.reshape(kh * kw * c, nb * oh * ow)


def _fold_part(d: np.ndarray, geo: dict[str, Any], gpad: np.ndarray | None = None,
               acc: np.ndarray | None = None) -> np.ndarray:
    """The padded input gradient ``(C, m, Hp, Wp)`` of column gradients ``d`` ``(kh, kw, C, m, OH, OW)``:
    ``+=`` into slices, for a 2-D kernel in two steps (the row shifts into one ``(C, m, Hp, OW)`` sum
    per kernel column, then that sum shifted by the column)."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"]
    (hp, wp), c, m = geo["pad_hw"], geo["c"], d.shape[3]
    rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
    if gpad is None:
        gpad = np.zeros((c, m, hp, wp), dtype=d.dtype)
    else:
        gpad[...] = 0
    for j, sj in enumerate(cols):
        if kh > 1 and kw > 1:
            if acc is None:
                acc = np.zeros((c, m, hp, ow), dtype=d.dtype)
            else:
                acc[...] = 0
            for i, si in enumerate(rows):
                acc[:, :, si, :] += d[i, j, ...]
            gpad[:, :, :, sj] += acc
        else:
            for i, si in enumerate(rows):
                gpad[:, :, si, sj] += d[i, j, ...]
    return gpad


def fold_into(gx: np.ndarray, dcols: np.ndarray, geo: dict[str, Any], gpad: np.ndarray | None = None,
              acc: np.ndarray | None = None) -> None:
    """:func:`nnxp.backends.windows.fold`, cropped and transposed back to ``(nb, C, H, W)`` into
    ``gx`` (:func:`_fold_part`). ``dcols`` is ``(kh*kw*C, nb*OH*OW)`` or a
    ``(kh, kw, C, nb, OH, OW)`` view; ``gpad``, ``acc``: scratch for :func:`_fold_part`. For a
    'same' convolution the sums run in ``dcols`` itself (:func:`_fold_same`), which is then lost."""
    (kh, kw), (oh, ow), c, nb = geo["kernel"], geo["out_hw"], geo["c"], gx.shape[0]
    d = dcols.reshape(kh, kw, c, nb, oh, ow)
    if (_same_size(geo) and dcols.flags.c_contiguous and dcols.flags.writeable
            and (kh, kw) != (1, 1)):
        gx[...] = _fold_same(d, geo["padding"]).transpose(1, 0, 2, 3)
        return
    gpad = d[0, 0] if kh * kw == 1 and geo["pad_hw"] == (oh, ow) else _fold_part(d, geo, gpad, acc)
    gx[...] = win.crop2(gpad, geo["padding"], geo["in_hw"]).transpose(1, 0, 2, 3)


def _same_size(geo: dict[str, Any]) -> bool:
    """Stride 1, no dilation and an output the size of the input ('same' padding)."""
    return geo["stride"] == (1, 1) and geo["dilation"] == (1, 1) and geo["out_hw"] == geo["in_hw"]


def _fold_same(d: np.ndarray, padding: Pair) -> np.ndarray:
    """The input gradient ``(C, m, H, W)`` of column gradients ``d`` ``(kh, kw, C, m, H, W)`` of a
    'same' convolution (:func:`_same_size`), summed in place in ``d`` (which it overwrites).

    Offset ``(i, j)`` moves its block by ``(i - ph, j - pw)``: a row move is a shift of the
    flattened ``(m*H*W)`` images by whole rows, a column move a shift by elements. So every
    sum is one ``+=`` of two long contiguous runs per channel; the rows (or columns) that
    would wrap into the next image (or row) are the ones that fall into the padding, and
    are zeroed first. (Slices of the ``(H, W)`` grid instead move rows ``W`` long, and the
    per-row cost made the fold about 1.4x slower.)
    """
    kh, kw, c, m, h, w = d.shape
    (ph, pw), n = padding, m * h * w
    flat = d.reshape(kh, kw, c, n)
    for j in range(kw):  # rows first: block (ph, j) collects its column's blocks
        acc = flat[ph, j]
        for i in range(kh):
            s = i - ph
            if s > 0:  # gradient row t + s gets block row t; the last s rows fall off
                d[i, j][:, :, h - s:, :] = 0
                acc[:, s * w:] += flat[i, j][:, :n - s * w]
            elif s < 0:
                d[i, j][:, :, :-s, :] = 0
                acc[:, :n + s * w] += flat[i, j][:, -s * w:]
    acc = flat[ph, pw]
    for j in range(kw):  # then the columns into block (ph, pw)
        s = j - pw
        if s > 0:
            d[ph, j][..., w - s:] = 0
            acc[:, s:] += flat[ph, j][:, :n - s]
        elif s < 0:
            d[ph, j][..., :-s] = 0
            acc[:, :n + s] += flat[ph, j][:, -s:]
    return d[ph, pw]


#: bytes of unfolded columns one step of a part works on: the columns, the product's output and
#: the folded gradient then stay in the cache between the passes, and a thread that finishes
#: early takes the next step. With every array reused from the workspace (no page faults), the
#: benchmark's model ran in B/A 0.853 with 2 MiB steps against 1 MiB, 0.969 with 4 MiB against
#: 2 MiB and 0.984 with 8 MiB against 4 MiB (fewer, larger NumPy calls); 4 MiB still gives a
#: 64-image batch of its 32->64 convolution four steps to share.
STEP_BYTES = 1 << 22


#: a convolution with at most this many products per output (``kh*kw*C``, the column count) runs
#: them image by image straight into the ``(N, O, OH, OW)`` layout: its products are too small to
#: hide the transposes of the output and its gradient (the benchmark's 1->32 3x3 convolution, 9
#: columns, ran forward and backward in 0.64x the time of the one-product layout on one thread;
#: the 32->64 one, 288 columns, in 1.08x, so it keeps one product per step).
PER_IMAGE_K = 32


#: ``Sequential`` runs a stride-1 convolution and the non-overlapping max pooling (and ReLU)
#: after it as one kernel (:func:`conv2d_maxpool`); ``False`` turns that off.
FUSE = True

#: :func:`conv2d_maxpool` puts the columns of a convolution with at most this many products per
#: output (``kh*kw*C``) in window-offset blocks (:func:`_phase_cols`). In the benchmark's model,
#: the 1->32 3x3 convolution with 2x2 pooling ran B/A 1.101 without them (all else equal); the
#: 32->64 one (288 products) ran B/A 1.273 with them: its 16 strided phase copies and 36 block
#: copies cost more than the contiguous pooling saves.
PHASE_MAX_K = 32

#: fuse larger convolutions too (their columns as for :func:`conv2d`, the pooling over strided
#: views of the product while it is in the cache): B/A 0.925 in the benchmark's model with
#: 4 MiB steps (0.985 with 1 MiB steps), and the convolution's full-size output is never written.
FUSE_COLS = True

#: bytes of columns and product per step of :func:`conv2d_maxpool` (the product is ``O/(kh*kw*C)``
#: times the columns there, so a step holds more images than :data:`STEP_BYTES` would give).
FUSED_STEP_BYTES = 1 << 22


def _steps(a: int, b: int, step: int) -> list[tuple[int, int]]:
    """Rows ``a:b`` in the fewest runs of at most ``step`` rows, of even sizes.

    The pool's threads take the runs in order as they come free, so a pass ends when the
    thread that took the last run finishes it: even runs keep that wait short (64 images
    in steps of 37 made one thread wait for a run of 37 after its run of 27). The runs
    depend on the rows and ``step`` only, not on the thread count, so per-run partial sums
    added up in run order give the same result on any number of threads.
    """
    n = b - a
    k = -(-n // max(1, step))
    bounds = [a + (i * n) // k for i in range(k + 1)] if n else [a]
    return list(itertools.pairwise(bounds))


def _step_rows(geo: dict[str, Any], itemsize: int, nb: int) -> int:
    """Images per step: as many as keep a step's columns within :data:`STEP_BYTES`."""
    (kh, kw), (oh, ow) = geo["kernel"], geo["out_hw"]
    return max(1, min(nb, STEP_BYTES // max(1, kh * kw * geo["c"] * oh * ow * itemsize)))


def _image_step(x: np.ndarray) -> int:
    """Images of ``x`` (N, C, H, W) per step of a pooling pass: :data:`STEP_BYTES` of input."""
    return max(1, STEP_BYTES // max(1, x[0].nbytes))


def _new(ws: Any, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The workspace's ``name`` array when ``ws`` is given, else a new one."""
    return ws.get(name, shape, dtype) if ws is not None else np.empty(shape, dtype=dtype)


def _unfold_views(ws: Any, steps: Sequence[tuple[int, int]], geo: dict[str, Any], dtype: Any
                  ) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Per-step ``out`` and ``shifted`` arrays for :func:`unfold` (:func:`_step_views`)."""
    (kh, kw), (oh, ow), c, hp = geo["kernel"], geo["out_hw"], geo["c"], geo["pad_hw"][0]
    cols = _step_views(ws, "cols", dtype, steps, lambda m: (kh * kw, c, m, oh, ow))
    shifted = _step_views(ws, "shifted", dtype, steps, lambda m: (c, m, hp, ow) if kh > 1 and kw > 1 else (0,))
    return cols, shifted


def _fold_views(ws: Any, steps: Sequence[tuple[int, int]], geo: dict[str, Any], dtype: Any, acc: bool = True
                ) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Per-step ``gpad`` and ``acc`` arrays for :func:`fold_into` (``acc`` only for a 2-D kernel,
    and when asked for)."""
    (kh, kw), ow, c, (hp, wp) = geo["kernel"], geo["out_hw"][1], geo["c"], geo["pad_hw"]
    gpad = _step_views(ws, "gpad", dtype, steps, lambda m: (c, m, hp, wp))
    accs = _step_views(ws, "acc", dtype, steps, lambda m: (c, m, hp, ow) if acc and kh > 1 and kw > 1 else (0,))
    return gpad, accs


def _sum_shares(shares: Sequence[tuple[np.ndarray, np.ndarray | None]], bias: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The steps' weight and bias gradient shares summed in step order (whichever thread ran
    them), so the result does not depend on the thread count."""
    dw2t, gb = None, None
    for dw, db in shares:
        dw2t = dw if dw2t is None else np.add(dw2t, dw, out=dw2t)
        if bias:
            gb = db if gb is None else np.add(gb, db, out=gb)
    return dw2t, gb


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Pair, padding: Pair,
           dilation: Pair, chunk: int, keep_cols: bool, ws: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.conv2d` on NumPy.

    Each batch chunk is worked a few images at a time (:data:`STEP_BYTES` of columns),
    the steps shared out among the threads (:mod:`~.numpy_threads`); a step runs the
    whole pipeline on its own rows: the channels-first padded copy of the input, unfold,
    the BLAS product, and the ``(N, O, OH, OW)`` output written with the bias added in
    the same pass. The steps' columns are kept for ``backward`` when the whole batch fits
    in ``chunk``. With ``ws`` every array comes from the workspace (:func:`_step_views`).
    """
    geo = win.conv_geometry(x, weight, stride, padding, dilation)
    n, c, o, (oh, ow), (kh, kw) = geo["n"], geo["c"], geo["o"], geo["out_hw"], geo["kernel"]
    dt = x.dtype
    nb = max(1, min(n, chunk))
    step = _step_rows(geo, dt.itemsize, nb)
    xpt = _new(ws, "xpt", (c, n, *geo["pad_hw"]), dt)  # each step fills its own rows
    w2 = win.weight_matrix(np, weight)
    b4 = None if bias is None else bias.reshape(1, o, 1, 1)
    y = _new(ws, "y", (n, o, oh, ow), dt)
    keep = keep_cols and nb >= n

    k = kh * kw * c
    per_image = k <= PER_IMAGE_K
    bufs: dict[str, dict[tuple[int, int], np.ndarray]] = {}

    def unit(s0: int, s1: int) -> np.ndarray | None:
        _pad_transposed_into(xpt, x, padding, s0, s1)
        cols = unfold(xpt, s0, s1, geo, bufs["cols"][s0, s1], bufs["shifted"][s0, s1])
        if per_image:  # (m, O, P) = (O, K) @ (m, K, P): one product per image, in place
            y3 = y[s0:s1].reshape(s1 - s0, o, oh * ow)
            np.matmul(w2, cols.reshape(k, s1 - s0, oh * ow).transpose(1, 0, 2), out=y3)
            if bias is not None:
                y3 += bias.reshape(1, o, 1)
        else:
            src = np.matmul(w2, cols, out=bufs["prod"][s0, s1]).reshape(o, s1 - s0, oh, ow).transpose(1, 0, 2, 3)
            if b4 is None:
                y[s0:s1] = src
            else:
                np.add(src, b4, out=y[s0:s1])
        return cols if keep else None

    saved: dict[tuple[int, int], np.ndarray] = {}
    steps_of = []
    for n0, n1 in win.chunks(n, nb):  # one chunk after the other: they share the step buffers
        steps = _steps(n0, n1, step)
        bufs["cols"], bufs["shifted"] = _unfold_views(ws, steps, geo, dt)
        bufs["prod"] = _step_views(ws, "prod", dt, steps, lambda m: (0,) if per_image else (o, m * oh * ow))
        for s01, cols in zip(steps, parallel_rows(unit, n1 - n0, 0, parts=steps), strict=True):
            if cols is not None:
                saved[s01] = cols
        steps_of.append(steps)
    return y, {"xpt": xpt, "geo": geo, "steps": steps_of, "cols": saved or None, "per_image": per_image}


def conv2d_backward(ctx: dict[str, Any], grad_y: np.ndarray, weight: np.ndarray, bias: bool,
                    need_input_grad: bool, ws: Any = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:meth:`~nnxp.backends.base.Backend.conv2d_backward` on NumPy.

    In the forward's steps, shared out among the threads: each step transposes its rows of
    the output gradient to ``(O, m*OH*OW)`` (or keeps them ``(m, O, OH*OW)``), takes its
    share of the weight and bias gradients from it and folds its column gradients straight
    into its rows of the ``(N, C, H, W)`` input gradient. The shares are summed in step
    order, whichever thread ran them: the result does not depend on the thread count.
    With ``ws`` the arrays come from the workspace, like the forward's.
    """
    xpt, geo, per_image = ctx["xpt"], ctx["geo"], ctx["per_image"]
    n, c, o, (oh, ow), (h, w), (kh, kw) = geo["n"], geo["c"], geo["o"], geo["out_hw"], geo["in_hw"], geo["kernel"]
    dt = grad_y.dtype
    k = kh * kw * c
    w2t = win.weight_matrix(np, weight, transposed=True) if need_input_grad else None
    gx = _new(ws, "gx", (n, c, h, w), dt) if need_input_grad else None
    kept = ctx["cols"] or {}
    bufs: dict[str, dict[tuple[int, int], np.ndarray]] = {}

    def unit(s0: int, s1: int) -> tuple[np.ndarray, np.ndarray | None]:
        cols = kept.get((s0, s1))
        if cols is None:
            cols = unfold(xpt, s0, s1, geo, bufs["cols"][s0, s1], bufs["shifted"][s0, s1])
        m = s1 - s0
        if per_image:  # the output gradient stays (m, O, P); the products go image by image
            g3 = grad_y[s0:s1].reshape(m, o, oh * ow)
            share = np.add.reduce(np.matmul(cols.reshape(k, m, oh * ow).transpose(1, 0, 2),
                                            g3.transpose(0, 2, 1)), axis=0)
            sums = np.add.reduce(g3, axis=(0, 2)) if bias else None
            # (m, K, P) column gradients, viewed as (kh, kw, C, m, OH, OW) for the fold
            dcols = (np.matmul(w2t, g3, out=bufs["dcols"][s0, s1].reshape(m, k, oh * ow))
                     .reshape(m, kh, kw, c, oh, ow).transpose(1, 2, 3, 0, 4, 5) if need_input_grad else None)
        else:
            g2 = bufs["g2"][s0, s1]
            g2[...] = grad_y[s0:s1].transpose(1, 0, 2, 3)
            g2 = g2.reshape(o, m * oh * ow)
            share = cols @ g2.T
            sums = np.add.reduce(g2, axis=1) if bias else None
            dcols = np.matmul(w2t, g2, out=bufs["dcols"][s0, s1].reshape(k, -1)) if need_input_grad else None
        if dcols is not None:
            fold_into(gx[s0:s1], dcols, geo, bufs["gpad"][s0, s1], bufs["acc"][s0, s1])
        return share, sums

    shares = []
    for steps in ctx["steps"]:
        if not ctx["cols"]:
            bufs["cols"], bufs["shifted"] = _unfold_views(ws, steps, geo, dt)
        bufs["g2"] = _step_views(ws, "g2", dt, steps, lambda m: (0,) if per_image else (o, m, oh, ow))
        bufs["dcols"] = _step_views(ws, "dcols", dt, steps, lambda m: (k * m * oh * ow * need_input_grad,))
        if need_input_grad:
            bufs["gpad"], bufs["acc"] = _fold_views(ws, steps, geo, dt)
        shares += parallel_rows(unit, 0, 0, parts=steps)
    dw2t, gb = _sum_shares(shares, bias)
    ctx["cols"] = None
    gw = dw2t.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    return gw, gb, gx


# ------------------------------------------------------------------ convolution + max pooling
def zeros(n: int, dtype: Any) -> np.ndarray:
    """``n`` zeros of ``dtype``: a read-only view of one buffer per dtype, grown as needed.

    An operand for ``maximum(x, 0)``: NumPy (2.x) runs ``maximum`` in SIMD only when both
    operands are contiguous arrays; against the scalar 0 it took about 4x as long (0.33 vs
    0.08 ms on 401,408 float32 values).
    """
    dtype = np.dtype(dtype)
    buf = _ZEROS.get(dtype)
    if buf is None or buf.size < n:
        buf = np.zeros(n, dtype=dtype)
        buf.flags.writeable = False
        _ZEROS[dtype] = buf
    return buf[:n]


_ZEROS: dict[np.dtype, np.ndarray] = {}


def _step_views(ws: Any, name: str, dtype: Any, steps: Sequence[tuple[int, int]],
                shape: Callable[[int], tuple[int, ...]]) -> dict[tuple[int, int], np.ndarray]:
    """One array of ``shape(rows)`` per step, all views of one flat buffer (the workspace's
    ``name`` scratch when ``ws`` is given, reused from one training step to the next).

    Each step allocating its own arrays cost more than the work: blocks of a few MB come
    from fresh ``mmap`` pages, and the page faults (5,300 per batch of the benchmark's
    first convolution) took longer than the kernel itself.
    """
    sizes = [math.prod(shape(s1 - s0)) for s0, s1 in steps]
    total = sum(sizes)
    flat = ws.scratch(name, (total,), dtype) if ws is not None else np.empty(total, dtype=dtype)
    out, pos = {}, 0
    for (s0, s1), size in zip(steps, sizes, strict=True):
        out[s0, s1] = flat[pos:pos + size].reshape(shape(s1 - s0))
        pos += size
    return out


def _phase_cols(part: np.ndarray, kernel: Pair, pool: Pair, q_hw: Pair, phases: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
    """Unfolded columns of ``part``, images of the padded ``(C, m, Hp, Wp)`` input, for a
    stride-1 convolution whose outputs feed non-overlapping ``pool`` windows, into ``cols``
    ``(kh, kw, C, pa, pb, m*QH*QW)`` (``phases``: scratch of ``(pa+kh-1, pb+kw-1, C, m, QH, QW)``).

    Rows are ordered like :func:`unfold`'s (kernel row, kernel column, channel); columns
    (window row offset, window column offset, image, pooled row, pooled column), so the
    product gives the outputs at each window offset as one contiguous block and pooling
    needs no strided access. Output ``(pa*i + di, pb*j + dj)`` reads input
    ``(pa*i + di + ki, pb*j + dj + kj)``, so only the ``(pa+kh-1) x (pb+kw-1)`` strided
    *phases* ``part[..., a::pa, b::pb]`` are copied with strides; each column block is then
    one contiguous copy of a phase.
    """
    (kh, kw), (pa, pb), (qh, qw) = kernel, pool, q_hw
    for a in range(pa + kh - 1):
        for b in range(pb + kw - 1):
            phases[a, b] = part[:, :, a:a + pa * qh:pa, b:b + pb * qw:pb]
    ph = phases.reshape(*phases.shape[:3], -1)
    for ki in range(kh):
        for kj in range(kw):
            for di in range(pa):
                for dj in range(pb):
                    cols[ki, kj, :, di, dj] = ph[di + ki, dj + kj]
    return cols.reshape(kh * kw * part.shape[0], -1)


def _phase_fold_into(gx: np.ndarray, dcols: np.ndarray, kernel: Pair, pool: Pair, q_hw: Pair,
                     padding: Pair, gph: np.ndarray, gpad: np.ndarray) -> None:
    """The input gradient ``(m, C, H, W)`` of :func:`_phase_cols`'s column gradients ``dcols`` into
    ``gx``: the blocks summed per phase into ``gph`` (contiguous), each phase added into its
    strided slice of ``gpad`` (the padded gradient, ``(C, m, Hp, Wp)``), which is cropped and
    transposed into ``gx``."""
    (kh, kw), (pa, pb), (qh, qw) = kernel, pool, q_hw
    m, c, h, w = gx.shape
    d = dcols.reshape(kh, kw, c, pa, pb, m * qh * qw)
    first = np.ones(gph.shape[:2], dtype=np.bool_)
    for ki in range(kh):
        for kj in range(kw):
            for di in range(pa):
                for dj in range(pb):
                    a, b = di + ki, dj + kj
                    if first[a, b]:
                        gph[a, b] = d[ki, kj, :, di, dj]
                        first[a, b] = False
                    else:
                        gph[a, b] += d[ki, kj, :, di, dj]
    gpad[...] = 0
    for a in range(pa + kh - 1):
        for b in range(pb + kw - 1):
            gpad[:, :, a:a + pa * qh:pa, b:b + pb * qw:pb] += gph[a, b].reshape(c, m, qh, qw)
    gx[...] = win.crop2(gpad, padding, (h, w)).transpose(1, 0, 2, 3)


def _pool_views(a: np.ndarray, pool: Pair, q_hw: Pair) -> list[np.ndarray]:
    """The ``(.., QH, QW)`` strided views of ``a`` ``(.., OH, OW)`` at each offset of non-overlapping
    ``pool`` windows, row-major (the order the first maximum is looked for in)."""
    return [a[..., si, sj] for si, sj in win.offset_slices(pool, pool, (1, 1), q_hw)]


def conv2d_maxpool(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: Pair, pool: Pair,
                   relu: bool, keep: bool, ws: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """:meth:`~nnxp.backends.base.Backend.conv2d_maxpool` on NumPy.

    Worked in cache-sized steps shared out among the threads, like :func:`conv2d`; a step
    pools its product while it is in the cache and writes only the pooled output (the
    ``(N, O, OH, OW)`` convolution output is never made). Two layouts of the product:

    * at most :data:`PHASE_MAX_K` products per output: columns in window-offset blocks
      (:func:`_phase_cols`), so the product holds one ``(O, L)`` block per window offset
      and the bias, the maximum and (backward) the routing are contiguous passes; outputs
      no window covers (odd sizes) are not computed;
    * else the columns of :func:`unfold` and the maximum over strided views of the
      ``(O, m, OH, OW)`` product.

    The arrays come from ``ws`` when given.
    """
    geo = win.conv_geometry(x, weight, (1, 1), padding, (1, 1))
    n, c, o, (oh, ow), kernel = geo["n"], geo["c"], geo["o"], geo["out_hw"], geo["kernel"]
    (pa, pb), (kh, kw) = pool, kernel
    qh, qw = q_hw = (oh // pa, ow // pb)
    slots, dt, k = pa * pb, x.dtype, kh * kw * c
    phase = k <= PHASE_MAX_K

    y = _new(ws, "y", (n, o, qh, qw), dt)
    mask = _new(ws, "mask", y.shape, np.bool_) if relu and keep else None
    xpt = _new(ws, "xpt", (c, n, *geo["pad_hw"]), dt)
    w2 = win.weight_matrix(np, weight)
    if phase:
        per_image = (k + o) * slots * qh * qw * dt.itemsize
        steps = _steps(0, n, max(1, FUSED_STEP_BYTES // max(1, per_image)))
        phases = _step_views(ws, "phases", dt, steps, lambda m: (pa + kh - 1, pb + kw - 1, c, m, qh, qw))
        colss = _step_views(ws, "cols", dt, steps, lambda m: (kh, kw, c, pa, pb, m * qh * qw))
        prods = _step_views(ws, "prod", dt, steps, lambda m: (o, slots, m * qh * qw))
    else:
        steps = _steps(0, n, _step_rows(geo, dt.itemsize, n))
        colss, shifted = _unfold_views(ws, steps, geo, dt)
        prods = _step_views(ws, "prod", dt, steps, lambda m: (o, m, oh, ow))
    bests = _step_views(ws, "best", dt, steps, lambda m: (o, m, qh, qw))

    def unit(s0: int, s1: int) -> np.ndarray:
        m = s1 - s0
        _pad_transposed_into(xpt, x, padding, s0, s1)
        prod, best = prods[s0, s1], bests[s0, s1]
        if phase:
            cols = _phase_cols(xpt[:, s0:s1], kernel, pool, q_hw, phases[s0, s1], colss[s0, s1])
            cands = [prod[:, i].reshape(o, m, qh, qw) for i in range(slots)]
        else:
            cols = unfold(xpt, s0, s1, geo, colss[s0, s1], shifted[s0, s1])
            cands = _pool_views(prod, pool, q_hw)
        np.matmul(w2, cols, out=prod.reshape(o, -1))
        if bias is not None:
            np.add(prod, bias.reshape(o, *[1] * (prod.ndim - 1)), out=prod)
        if slots == 1:
            best[...] = cands[0]
        else:
            np.maximum(cands[0], cands[1], out=best)
        for cand in cands[2:]:
            np.maximum(best, cand, out=best)
        ys = y[s0:s1]
        ys[...] = best.transpose(1, 0, 2, 3)
        if relu:
            yf = ys.reshape(-1)
            if mask is not None:
                np.greater(yf, 0, out=mask[s0:s1].reshape(-1))
            np.maximum(yf, zeros(yf.size, dt), out=yf)
        return cols  # a view of xpt for a 1x1 kernel, else the step's buffer

    colsk = parallel_rows(unit, n, 0, parts=steps)
    ctx = {"geo": geo, "pool": pool, "q_hw": q_hw, "steps": steps, "mask": mask, "phase": phase,
           "kept": {s: (cols, prods[s], bests[s]) for s, cols in zip(steps, colsk, strict=True)} if keep else None}
    return y, ctx


def conv2d_maxpool_backward(ctx: dict[str, Any], grad_y: np.ndarray, weight: np.ndarray, bias: bool,
                            need_input_grad: bool, ws: Any = None
                            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:meth:`~nnxp.backends.base.Backend.conv2d_maxpool_backward` on NumPy: in the forward's
    steps, the pooled gradient (masked by the ReLU) is routed to each window's first maximum
    in the product's layout (:func:`_route`), then goes through the products and the fold
    (:func:`_phase_fold_into` or :func:`fold_into`). The weight and bias shares are summed in
    step order."""
    if ctx["kept"] is None:
        raise RuntimeError("conv2d_maxpool_backward needs the context of a forward pass run with keep=True")
    geo, pool, q_hw, mask, steps, phase = (ctx[key] for key in ("geo", "pool", "q_hw", "mask", "steps", "phase"))
    n, c, o, (kh, kw), (h, w), (oh, ow) = geo["n"], geo["c"], geo["o"], geo["kernel"], geo["in_hw"], geo["out_hw"]
    (pa, pb), (qh, qw), dt = pool, q_hw, grad_y.dtype
    slots, k = pa * pb, kh * kw * c
    tiled = phase or (oh % pa == 0 and ow % pb == 0)  # every position of the product gets a gradient
    w2t = win.weight_matrix(np, weight, transposed=True) if need_input_grad else None
    gx = _new(ws, "gx", (n, c, h, w), dt) if need_input_grad else None
    gts = _step_views(ws, "gt", dt, steps, lambda m: (o, m, qh, qw))
    gprods = _step_views(ws, "gprod", dt, steps, lambda m: (o, slots, m * qh * qw) if phase else (o, m, oh, ow))
    flags = _step_views(ws, "flags", np.bool_, steps, lambda m: (2, o, m, qh, qw))
    if need_input_grad:
        dcolss = _step_views(ws, "dcols", dt, steps, lambda m: (k, m * (slots * qh * qw if phase else oh * ow)))
        if phase:
            gphs = _step_views(ws, "gph", dt, steps, lambda m: (pa + kh - 1, pb + kw - 1, c, m * qh * qw))
        gpads, accs = _fold_views(ws, steps, geo, dt, acc=not phase)

    def unit(s0: int, s1: int) -> tuple[np.ndarray, np.ndarray | None]:
        cols, prod, best = ctx["kept"][s0, s1]
        m = s1 - s0
        gt = gts[s0, s1]
        src = grad_y[s0:s1].transpose(1, 0, 2, 3)
        if mask is None:
            gt[...] = src
        else:
            np.multiply(src, mask[s0:s1].transpose(1, 0, 2, 3), out=gt)
        gprod = gprods[s0, s1]
        if phase:
            cands = [prod[:, i].reshape(o, m, qh, qw) for i in range(slots)]
            outs = [gprod[:, i].reshape(o, m, qh, qw) for i in range(slots)]
        else:
            cands, outs = _pool_views(prod, pool, q_hw), _pool_views(gprod, pool, q_hw)
            if not tiled:
                gprod[...] = 0
        hit, taken = flags[s0, s1]
        _route(cands, best, gt, outs, False, hit, taken)
        g2 = gprod.reshape(o, -1)
        share = cols.reshape(k, -1) @ g2.T
        sums = np.add.reduce(gt.reshape(o, -1), axis=1) if bias else None
        if need_input_grad:
            dcols = np.matmul(w2t, g2, out=dcolss[s0, s1])
            if phase:
                _phase_fold_into(gx[s0:s1], dcols, (kh, kw), pool, q_hw, geo["padding"], gphs[s0, s1],
                                 gpads[s0, s1])
            else:
                fold_into(gx[s0:s1], dcols, geo, gpads[s0, s1], accs[s0, s1])
        return share, sums

    dw2t, gb = _sum_shares(parallel_rows(unit, 0, 0, parts=steps), bias)
    ctx["kept"] = None
    return dw2t.reshape(kh, kw, c, o).transpose(3, 2, 0, 1), gb, gx


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
    _route([xpad[:, :, si, sj] for si, sj in sl], best, g, [gpad[:, :, si, sj] for si, sj in sl], not apart)


def _route(cands: Sequence[np.ndarray], best: np.ndarray, g: np.ndarray, outs: Sequence[np.ndarray],
           add: bool, hit: np.ndarray | None = None, taken: np.ndarray | None = None) -> None:
    """``g`` into ``outs[k]`` where ``cands[k]`` holds its window's first maximum ``best``, zero
    elsewhere (``add``: ``+=`` into ``outs``, for windows that overlap). A NaN counts as the
    maximum (``best`` is NaN there). ``hit``, ``taken``: boolean scratch shaped like ``best``."""
    hit = np.empty_like(best, dtype=np.bool_) if hit is None else hit
    taken = np.empty_like(best, dtype=np.bool_) if taken is None else taken
    has_nan = bool(np.isnan(best).any())
    last = len(cands) - 1
    for k, (v, out) in enumerate(zip(cands, outs, strict=True)):
        if k == last == 0:  # a 1x1 window: its only pixel is the maximum
            hit[...] = True
        elif k == last:
            np.logical_not(taken, out=hit)
        else:
            np.equal(v, best, out=hit)
            if has_nan:
                hit |= np.isnan(v)
            if k == 0:
                np.copyto(taken, hit)
            else:
                np.greater(hit, taken, out=hit)  # hit and not taken
                taken |= hit
        if add:
            out += g * hit
        else:
            np.multiply(g, hit, out=out)


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
