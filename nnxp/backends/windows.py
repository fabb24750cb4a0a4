"""Portable sliding-window kernels: 2-D convolution (im2col), max and average pooling.

Array API standard calls (plus ``array_api_extra``) only, and no writes into
an array anyone else holds, so these run on immutable JAX arrays too: padding
is ``xpx.pad``, unfolded columns are a ``stack`` of strided slices, and a
gradient is folded back with ``xpx.at(g)[slice].add(part)`` on a fresh
zero array (in place where the library allows it, functional on JAX).

A window offset ``(i, j)`` of the kernel is one strided slice of the padded
input, ``xpad[..., i*dh : i*dh + sh*(OH-1) + 1 : sh, j*dw : j*dw + sw*(OW-1) + 1 : sw]``,
which has the output's spatial shape. Within one offset the slice never
repeats an index, so adding into it is safe.

The :class:`~nnxp.backends.base.Backend` kernels ``conv2d``, ``max_pool2d``,
``avg_pool2d`` and their ``_backward`` call the functions here; library
modules override them (``numpy_conv.py``) and ``tests/test_conv_kernels.py``
compares the overrides with these.
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_extra as xpx

Array = Any
Pair = tuple[int, int]


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length along one axis (PyTorch's formula, floor mode)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@functools.lru_cache(maxsize=256)
def axis_slices(k: int, s: int, d: int, out: int) -> tuple[slice, ...]:
    """One slice per kernel tap along one axis: tap ``i`` sees ``i*d, i*d + s, ...`` (``out`` positions)."""
    return tuple(slice(i * d, i * d + s * (out - 1) + 1, s) for i in range(k))


@functools.lru_cache(maxsize=256)
def offset_slices(kernel: Pair, stride: Pair, dilation: Pair,
                  out_hw: Pair) -> tuple[tuple[slice, slice], ...]:
    """One ``(rows, cols)`` slice pair per kernel offset, row-major over the kernel.

    Each selects, from the padded input, the input pixel that kernel offset
    ``(i, j)`` sees at every output position.
    """
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    rows, cols = axis_slices(kh, sh, dh, oh), axis_slices(kw, sw, dw, ow)
    return tuple((si, sj) for si in rows for sj in cols)


def pad2(x: Array, padding: Pair, fill: float = 0.0) -> Array:
    """``x`` padded on its last two axes by ``padding`` on both sides with ``fill``; ``x`` itself when
    there is no padding."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    lead = [(0, 0)] * (x.ndim - 2)
    return xpx.pad(x, [*lead, (ph, ph), (pw, pw)], constant_values=fill)


def crop2(x: Array, padding: Pair, hw: Pair) -> Array:
    """The inverse of :func:`pad2`: the ``hw`` interior of the last two axes."""
    (ph, pw), (h, w) = padding, hw
    return x if (ph, pw) == (0, 0) else x[..., ph:ph + h, pw:pw + w]


def disjoint(kernel: Pair, stride: Pair) -> bool:
    """The windows do not overlap (each input pixel is in at most one window)."""
    return all(s >= k for s, k in zip(stride, kernel, strict=True))


# ------------------------------------------------------------------ convolution
def conv_geometry(x: Array, weight: Array, stride: Pair, padding: Pair, dilation: Pair) -> dict[str, Any]:
    """Shapes of one convolution: input, kernel, padded input and output sizes."""
    n, c, h, w = (int(v) for v in x.shape)
    o, _, kh, kw = (int(v) for v in weight.shape)
    return {"n": n, "c": c, "o": o, "kernel": (kh, kw), "stride": tuple(stride), "padding": tuple(padding),
            "dilation": tuple(dilation), "in_hw": (h, w), "pad_hw": (h + 2 * padding[0], w + 2 * padding[1]),
            "out_hw": (out_size(h, kh, stride[0], padding[0], dilation[0]),
                       out_size(w, kw, stride[1], padding[1], dilation[1]))}


def weight_matrix(xp: Any, weight: Array, transposed: bool = False) -> Array:
    """The ``(O, C, kh, kw)`` weight as ``(O, kh*kw*C)`` with columns ordered like the unfolded rows
    (kernel row, kernel column, channel), or its transpose ``(kh*kw*C, O)``. Built by reshaping a
    permuted view, so it is a fresh C-ordered matrix either way: BLAS (OpenBLAS in particular) can be
    far slower on a transposed view of a small operand."""
    o, c, kh, kw = weight.shape
    if transposed:
        return xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (kh * kw * c, o))
    return xp.reshape(xp.permute_dims(weight, (0, 2, 3, 1)), (o, kh * kw * c))


def unfold(xp: Any, xpt: Array, n0: int, n1: int, geo: dict[str, Any]) -> Array:
    """Columns ``(kh*kw*C, nb*OH*OW)`` of batch items ``n0:n1`` of the padded ``(C, N, Hp, Wp)`` input,
    rows ordered (kernel row, kernel column, channel): a ``stack`` of one strided slice per offset."""
    (kh, kw), (sh, sw), (oh, ow) = geo["kernel"], geo["stride"], geo["out_hw"]
    c, nb = geo["c"], n1 - n0
    part = xpt if (n0, n1) == (0, xpt.shape[1]) else xpt[:, n0:n1, :, :]
    if kh * kw == 1 and (sh, sw) == (1, 1):
        return xp.reshape(part, (c, nb * oh * ow))  # the (padded) input is its own column matrix
    sl = offset_slices(geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"])
    out = xp.stack([part[:, :, si, sj] for si, sj in sl], axis=0)
    return xp.reshape(out, (kh * kw * c, nb * oh * ow))


def fold(xp: Any, dcols: Array, nb: int, geo: dict[str, Any]) -> Array:
    """Adjoint of :func:`unfold`: columns added back into a padded ``(C, nb, Hp, Wp)`` gradient."""
    (kh, kw), (hp, wp), (oh, ow), c = geo["kernel"], geo["pad_hw"], geo["out_hw"], geo["c"]
    d = xp.reshape(dcols, (kh, kw, c, nb, oh, ow))
    if kh * kw == 1 and (hp, wp) == (oh, ow):
        return d[0, 0, ...]
    gpad = xp.zeros((c, nb, hp, wp), dtype=dcols.dtype, device=dcols.device)
    sl = offset_slices(geo["kernel"], geo["stride"], geo["dilation"], geo["out_hw"])
    for k, (si, sj) in enumerate(sl):
        gpad = xpx.at(gpad)[:, :, si, sj].add(d[k // kw, k % kw, ...])
    return gpad


def chunks(n: int, nb: int) -> list[tuple[int, int]]:
    """``[(0, nb), (nb, 2*nb), ...]`` covering ``0..n``."""
    return [(n0, min(n, n0 + nb)) for n0 in range(0, n, nb)]


def conv2d(xp: Any, x: Array, weight: Array, bias: Array | None, stride: Pair, padding: Pair, dilation: Pair,
           chunk: int, keep_cols: bool) -> tuple[Array, dict[str, Any]]:
    """Portable forward of :meth:`~nnxp.backends.base.Backend.conv2d` (see there)."""
    geo = conv_geometry(x, weight, stride, padding, dilation)
    n, o, (oh, ow) = geo["n"], geo["o"], geo["out_hw"]
    nb = max(1, min(n, chunk))
    # channels first: the columns of a batch chunk form one contiguous matrix
    xpt = pad2(xp.permute_dims(x, (1, 0, 2, 3)), padding)
    w2 = weight_matrix(xp, weight)
    b2 = None if bias is None else xp.reshape(bias, (o, 1))
    ys, cols = [], None
    for n0, n1 in chunks(n, nb):
        cols = unfold(xp, xpt, n0, n1, geo)
        y2 = w2 @ cols
        if b2 is not None:
            y2 = y2 + b2
        ys.append(xp.permute_dims(xp.reshape(y2, (o, n1 - n0, oh, ow)), (1, 0, 2, 3)))
    y = ys[0] if len(ys) == 1 else xp.concat(ys, axis=0)
    ctx = {"xpt": xpt, "geo": geo, "nb": nb, "cols": cols if keep_cols and nb >= n else None}
    return y, ctx


def conv2d_backward(xp: Any, ctx: dict[str, Any], grad_y: Array, weight: Array, bias: bool,
                    need_input_grad: bool) -> tuple[Array, Array | None, Array | None]:
    """Portable backward of :meth:`~nnxp.backends.base.Backend.conv2d_backward` (see there)."""
    xpt, geo, nb = ctx["xpt"], ctx["geo"], ctx["nb"]
    n, o, (oh, ow) = geo["n"], geo["o"], geo["out_hw"]
    gt = xp.permute_dims(grad_y, (1, 0, 2, 3))
    w2t = weight_matrix(xp, weight, transposed=True) if need_input_grad else None
    dw2t, gxs = None, []
    for n0, n1 in chunks(n, nb):
        cols = ctx["cols"] if ctx["cols"] is not None else unfold(xp, xpt, n0, n1, geo)
        g2 = xp.reshape(gt[:, n0:n1, :, :], (o, (n1 - n0) * oh * ow))
        # (K, O) = cols @ g2.T: BLAS is much faster this way round than g2 @ cols.T on
        # OpenBLAS when the inner (batch*pixels) dimension is long
        part = cols @ xp.matrix_transpose(g2)
        dw2t = part if dw2t is None else dw2t + part
        if need_input_grad:
            gpad = fold(xp, w2t @ g2, n1 - n0, geo)
            gxs.append(xp.permute_dims(crop2(gpad, geo["padding"], geo["in_hw"]), (1, 0, 2, 3)))
    ctx["cols"] = None  # free the columns; a second backward recomputes them
    kh, kw = geo["kernel"]
    gw = xp.permute_dims(xp.reshape(dw2t, (kh, kw, geo["c"], o)), (3, 2, 0, 1))
    gb = xp.sum(grad_y, axis=(0, 2, 3)) if bias else None
    gx = None
    if need_input_grad:
        gx = gxs[0] if len(gxs) == 1 else xp.concat(gxs, axis=0)
    return gw, gb, gx


# ------------------------------------------------------------------ pooling
def pool_out_hw(x: Array, kernel: Pair, stride: Pair, padding: Pair) -> Pair:
    """``(OH, OW)`` of a pooling window over ``x``'s last two axes."""
    return (out_size(int(x.shape[2]), kernel[0], stride[0], padding[0], 1),
            out_size(int(x.shape[3]), kernel[1], stride[1], padding[1], 1))


def max_pool2d(xp: Any, x: Array, kernel: Pair, stride: Pair, padding: Pair) -> tuple[Array, dict[str, Any]]:
    """Portable forward of :meth:`~nnxp.backends.base.Backend.max_pool2d` (see there)."""
    out_hw = pool_out_hw(x, kernel, stride, padding)
    xpad = pad2(x, padding, fill=-float("inf"))
    sl = offset_slices(kernel, stride, (1, 1), out_hw)
    if len(sl) == 1:
        best = xp.asarray(xpad[:, :, sl[0][0], sl[0][1]], copy=True)
    else:
        best = xp.maximum(xpad[:, :, sl[0][0], sl[0][1]], xpad[:, :, sl[1][0], sl[1][1]])
        for si, sj in sl[2:]:  # maximum propagates NaN (the standard says so)
            best = xp.maximum(best, xpad[:, :, si, sj])
    ctx = {"xpad": xpad, "y": best, "kernel": kernel, "stride": stride, "padding": padding,
           "in_hw": (int(x.shape[2]), int(x.shape[3]))}
    return best, ctx


def max_pool2d_backward(xp: Any, ctx: dict[str, Any], grad_y: Array) -> Array:
    """Portable backward of :meth:`~nnxp.backends.base.Backend.max_pool2d_backward` (see there)."""
    xpad, best = ctx["xpad"], ctx["y"]
    sl = offset_slices(ctx["kernel"], ctx["stride"], (1, 1), (int(best.shape[2]), int(best.shape[3])))
    apart = disjoint(ctx["kernel"], ctx["stride"])
    zero = xp.zeros((), dtype=grad_y.dtype, device=grad_y.device)
    gpad = xp.zeros(xpad.shape, dtype=grad_y.dtype, device=grad_y.device)
    rest = grad_y  # the gradient not yet routed: zero where an earlier offset held the maximum
    for k, (si, sj) in enumerate(sl):
        if k == len(sl) - 1:  # nothing earlier was the maximum: this offset is
            part = rest
        else:
            v = xpad[:, :, si, sj]
            hit = (v == best) | (v != v)  # v != v: a NaN is the maximum
            part = xp.where(hit, rest, zero)
            rest = xp.where(hit, zero, rest)
        at = xpx.at(gpad)[:, :, si, sj]
        # windows apart: each input pixel is written once
        gpad = at.set(part) if apart else at.add(part)
    return crop2(gpad, ctx["padding"], ctx["in_hw"])


def avg_divisor(xp: Any, x: Array, kernel: Pair, stride: Pair, padding: Pair,
                count_include_pad: bool) -> Array | float:
    """The window size, or (``count_include_pad=False`` with padding) the number of real pixels in
    each window as an ``(OH, OW)`` array of ``x``'s dtype."""
    if count_include_pad or tuple(padding) == (0, 0):
        return float(kernel[0] * kernel[1])
    out_hw = pool_out_hw(x, kernel, stride, padding)
    ones = pad2(xp.ones((int(x.shape[2]), int(x.shape[3])), dtype=x.dtype, device=x.device), padding)
    sl = offset_slices(kernel, stride, (1, 1), out_hw)
    counts = ones[sl[0][0], sl[0][1]]
    for si, sj in sl[1:]:
        counts = counts + ones[si, sj]
    return counts


def avg_pool2d(xp: Any, x: Array, kernel: Pair, stride: Pair, padding: Pair,
               divisor: Array | float) -> tuple[Array, dict[str, Any]]:
    """Portable forward of :meth:`~nnxp.backends.base.Backend.avg_pool2d` (see there)."""
    out_hw = pool_out_hw(x, kernel, stride, padding)
    xpad = pad2(x, padding)
    sl = offset_slices(kernel, stride, (1, 1), out_hw)
    total = xpad[:, :, sl[0][0], sl[0][1]]
    for si, sj in sl[1:]:
        total = total + xpad[:, :, si, sj]
    ctx = {"kernel": kernel, "stride": stride, "padding": padding, "in_hw": (int(x.shape[2]), int(x.shape[3])),
           "pad_shape": tuple(int(v) for v in xpad.shape), "div": divisor}
    return total / divisor, ctx


def avg_pool2d_backward(xp: Any, ctx: dict[str, Any], grad_y: Array) -> Array:
    """Portable backward of :meth:`~nnxp.backends.base.Backend.avg_pool2d_backward` (see there)."""
    g = grad_y / ctx["div"]
    gpad = xp.zeros(ctx["pad_shape"], dtype=grad_y.dtype, device=grad_y.device)
    apart = disjoint(ctx["kernel"], ctx["stride"])
    for si, sj in offset_slices(ctx["kernel"], ctx["stride"], (1, 1), (int(g.shape[2]), int(g.shape[3]))):
        at = xpx.at(gpad)[:, :, si, sj]
        gpad = at.set(g) if apart else at.add(g)
    return crop2(gpad, ctx["padding"], ctx["in_hw"])
