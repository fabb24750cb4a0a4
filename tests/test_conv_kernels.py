"""The window kernels (``conv2d``, ``max_pool2d``, ``avg_pool2d`` and their backward passes):
every backend's version against the portable one (``Backend.portable()``), over shapes, strides,
paddings, dilations, batch chunks, float32 and float64; and the portable versions on immutable
arrays (JAX) and without writing into their inputs."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
from conftest import TOLERANCES, works
from helpers import assert_on, split_kernels

import nnxp
from nnxp.backends import Backend, numpy_conv, resolve_backend
from nnxp.backends.base import Workspace

WINDOW_KERNELS = ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
                  "avg_pool2d_backward")


def _overrides_windows(name: str) -> bool:
    """The backend's class replaces at least one window kernel (else fast and portable are one code)."""
    cls = type(resolve_backend(name))
    return any(getattr(cls, k) is not getattr(Backend, k) for k in WINDOW_KERNELS)


#: backends that override window kernels (today NumPy; torch and JAX run the portable ones, tested
#: on JAX below): a backend that gains an override is compared here without further changes
NAMES = [pytest.param(name, id=name) for name in ("numpy", "torch", "jax") if works(name) and _overrides_windows(name)]

#: (input shape, out channels, kernel, stride, padding, dilation)
CONV = {
    "k3-p1": ((3, 2, 7, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1)),
    "k3-s2-p1": ((2, 3, 9, 8), 2, (3, 3), (2, 2), (1, 1), (1, 1)),
    "k2x3-s1x2-p0x1": ((2, 2, 6, 7), 3, (2, 3), (1, 2), (0, 1), (1, 1)),
    "k3-d2-p2": ((2, 2, 8, 8), 3, (3, 3), (1, 1), (2, 2), (2, 2)),
    "k1": ((4, 3, 5, 5), 2, (1, 1), (1, 1), (0, 0), (1, 1)),
    "k1-s2-p1": ((2, 3, 5, 6), 2, (1, 1), (2, 2), (1, 1), (1, 1)),
    "k5-s3": ((2, 1, 11, 12), 3, (5, 5), (3, 3), (0, 0), (1, 1)),
    "k3x1": ((2, 2, 6, 5), 2, (3, 1), (1, 1), (1, 0), (1, 1)),
    "mnist-like": ((5, 8, 14, 14), 16, (3, 3), (1, 1), (1, 1), (1, 1)),
    "k5x3-same": ((2, 2, 7, 6), 3, (5, 3), (1, 1), (2, 1), (1, 1)),
}

#: (input shape, kernel, stride, padding)
POOL = {
    "k2": ((3, 2, 8, 8), (2, 2), (2, 2), (0, 0)),
    "k2-odd": ((2, 3, 9, 7), (2, 2), (2, 2), (0, 0)),
    "k3-s2-p1": ((2, 2, 9, 8), (3, 3), (2, 2), (1, 1)),
    "k2x3-s1x2-p0x1-overlap": ((2, 2, 7, 8), (2, 3), (1, 2), (0, 1)),
    "k2-s3-untiled": ((2, 2, 9, 8), (2, 2), (3, 3), (0, 0)),
    "k1": ((2, 2, 4, 5), (1, 1), (1, 1), (0, 0)),
    "k3-s1-p1": ((2, 3, 6, 6), (3, 3), (1, 1), (1, 1)),
}


def _host(shape: tuple[int, ...], seed: int, rounded: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.round(x) if rounded else x  # rounded: ties in the pooling windows


def _np(x: Any) -> np.ndarray:
    return np.array(nnxp.to_numpy(x), copy=True)  # a copy: an override may reuse its buffers


def _compare(fast: list[Any], slow: list[Any], b: Backend, dtype: str, shapes: list[tuple[int, ...]],
             split: bool = False) -> None:
    """``split``: products over batch parts round differently from one product over the batch (BLAS
    picks its blocking by shape), so float32 sums with cancellation get an absolute tolerance scaled
    by the largest value."""
    assert len(fast) == len(slow) == len(shapes)
    for i, (f, s, shape) in enumerate(zip(fast, slow, shapes, strict=True)):
        if s is None:
            assert f is None, i
            continue
        assert_on(f, b, dtype, shape)
        tol = dict(TOLERANCES[dtype])
        if split:
            tol["atol"] = max(tol["atol"], 10 * float(np.finfo(dtype).eps) * float(np.abs(_np(s)).max()))
        np.testing.assert_allclose(_np(f), _np(s), err_msg=str(i), **tol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", CONV.values(), ids=CONV.keys())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "workspace"])
def test_conv2d_matches_portable(name: str, case: tuple, dtype: str, bias: bool, split: bool, reuse: bool,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``split``: NumPy's kernels split over two threads (each batch part's pipeline on its own);
    ``reuse``: the arrays come from one workspace, used by every run in turn (as in ``fit``)."""
    shape, o, kernel, stride, padding, dilation = case
    b = resolve_backend(name)
    if (split or reuse) and b.kind != "numpy":
        pytest.skip("only the NumPy kernels split over threads and take a workspace")
    x = b.asarray(_host(shape, 0), dtype=dtype)
    w = b.asarray(_host((o, shape[1], *kernel), 1), dtype=dtype)
    bb = b.asarray(_host((o,), 2), dtype=dtype) if bias else None
    n = shape[0]
    ws = Workspace(np.empty) if reuse else None

    def run(k: Backend, chunk: int, keep: bool, need_gx: bool) -> tuple[list[Any], tuple[int, ...]]:
        kw = {"ws": ws} if k is b else {}
        y, ctx = k.conv2d(x, w, bb, stride, padding, dilation, chunk=chunk, keep_cols=keep, **kw)
        g = b.asarray(_host(tuple(y.shape), 3), dtype=dtype)
        gw, gb, gx = k.conv2d_backward(ctx, g, w, bias, need_gx, **kw)
        return [y, gw, gb, gx], tuple(y.shape)

    for chunk, keep, need_gx in ((n, True, True), (n, False, True), (2, True, True), (1, False, False)):
        with split_kernels(monkeypatch) if split else contextlib.nullcontext():
            fast, out_shape = run(b, chunk, keep, need_gx)
        fast = [None if a is None else _np(a) for a in fast]  # before the next call reuses buffers
        slow, _ = run(b.portable(), chunk, keep, need_gx)
        shapes = [out_shape, (o, shape[1], *kernel), (o,), shape]
        _compare([None if a is None else b.asarray(a) for a in fast], slow, b, dtype, shapes, split)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", POOL.values(), ids=POOL.keys())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_max_pool2d_matches_portable(name: str, case: tuple, dtype: str, nan: bool, split: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ties (rounded values) and, with ``nan``, a NaN that must win its windows and take the gradient;
    ``split``: NumPy's kernels split over two threads."""
    shape, kernel, stride, padding = case
    b = resolve_backend(name)
    if split and b.kind != "numpy":
        pytest.skip("only the NumPy kernels split over threads")
    host = _host(shape, 0, rounded=True)
    if nan:
        host[1, 1, shape[2] // 2, shape[3] // 2] = np.nan
    x = b.asarray(host, dtype=dtype)

    def run(k: Backend) -> list[Any]:
        y, ctx = k.max_pool2d(x, kernel, stride, padding)
        g = b.asarray(_host(tuple(y.shape), 1), dtype=dtype)
        return [_np(y), _np(k.max_pool2d_backward(ctx, g)), tuple(y.shape)]

    with split_kernels(monkeypatch) if split else contextlib.nullcontext():
        fast = run(b)
    slow = run(b.portable())
    assert fast[2] == slow[2]
    for f, s in zip(fast[:2], slow[:2], strict=True):
        np.testing.assert_array_equal(f, s)  # selection and routing: exact
    assert np.isnan(fast[0]).any() == nan


#: (input shape, out channels, kernel, padding, pool)
CONV_POOL = {
    "k3-p1-pool2": ((3, 1, 8, 8), 4, (3, 3), (1, 1), (2, 2)),
    "rgb-odd": ((2, 3, 9, 7), 5, (3, 3), (1, 1), (2, 2)),
    "k2x3-p0x1-pool3x2": ((2, 2, 11, 10), 3, (2, 3), (0, 1), (3, 2)),
    "k1-pool2": ((4, 1, 6, 6), 2, (1, 1), (0, 0), (2, 2)),
    "k5-p2-pool1": ((2, 1, 6, 5), 3, (5, 5), (2, 2), (1, 1)),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", CONV_POOL.values(), ids=CONV_POOL.keys())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
@pytest.mark.parametrize("mode", ["whole", "split", "workspace", "nan"])
@pytest.mark.parametrize("layout", ["phase", "cols"])
def test_conv2d_maxpool_matches_portable(name: str, case: tuple, dtype: str, relu: bool, mode: str, layout: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused convolution + max pooling (+ ReLU) against the portable kernels one after the
    other: exactly equal, ties included (integer inputs and weights: every sum is exact, so
    both pick the same first maximum); ``nan``: a NaN input wins its windows and takes the
    gradient; ``workspace``: two runs through one workspace, the second checked; ``layout``:
    NumPy's columns in window-offset blocks or as for ``conv2d``."""
    shape, o, kernel, padding, pool = case
    b = resolve_backend(name)
    monkeypatch.setattr(numpy_conv, "PHASE_MAX_K", 10**9 if layout == "phase" else 0)
    host = np.round(2 * _host(shape, 0))
    if mode == "nan":
        host[1, 0, shape[2] // 2, shape[3] // 2] = np.nan
    x = b.asarray(host, dtype=dtype)
    w = b.asarray(np.round(2 * _host((o, shape[1], *kernel), 1)), dtype=dtype)
    bb = b.asarray(np.round(_host((o,), 2)), dtype=dtype)
    ws = Workspace(np.empty) if mode == "workspace" else None

    def run(k: Backend, need_gx: bool, seed: int) -> list[Any]:
        kw = {"ws": ws} if k is b else {}
        y, ctx = k.conv2d_maxpool(x, w, bb, padding, pool, relu, chunk=shape[0], **kw)
        g = b.asarray(np.round(_host(tuple(y.shape), seed)), dtype=dtype)
        gw, gb, gx = k.conv2d_maxpool_backward(ctx, g, w, True, need_gx, **kw)
        return [_np(y), _np(gw), _np(gb), None if gx is None else _np(gx)]

    for need_gx in (True, False):
        with split_kernels(monkeypatch) if mode == "split" else contextlib.nullcontext():
            if ws is not None:
                run(b, need_gx, 5)  # fills the workspace with another step's arrays
            fast = run(b, need_gx, 3)
        slow = run(b.portable(), need_gx, 3)
        for i, (f, s) in enumerate(zip(fast, slow, strict=True)):
            if s is None:
                assert f is None
                continue
            np.testing.assert_array_equal(f, s, err_msg=str(i))
            assert f.dtype == np.dtype(dtype)
    assert fast[0].shape == (shape[0], o, (shape[2] + 2 * padding[0] - kernel[0] + 1) // pool[0],
                             (shape[3] + 2 * padding[1] - kernel[1] + 1) // pool[1])
    assert np.isnan(fast[0]).any() == (mode == "nan")  # a NaN wins its windows, through the ReLU too


def test_conv2d_maxpool_backward_needs_a_training_forward() -> None:
    b = resolve_backend("numpy")
    x, w = np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3))
    _, ctx = b.conv2d_maxpool(x, w, None, (1, 1), (2, 2), True, chunk=1, keep=False)
    with pytest.raises(RuntimeError, match="keep=True"):
        b.conv2d_maxpool_backward(ctx, np.ones((1, 2, 2, 2)), w, False, True)


def test_numpy_fuses_and_the_portable_twin_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    b = resolve_backend("numpy")
    assert b.fuses_conv2d_maxpool(1, (3, 3)) and b.fuses_conv2d_maxpool(32, (3, 3))
    assert not b.portable().fuses_conv2d_maxpool(1, (3, 3))
    assert numpy_conv.PHASE_MAX_K >= 27  # RGB 3x3 first layers take the window-offset layout
    monkeypatch.setattr(numpy_conv, "FUSE", False)
    assert not b.fuses_conv2d_maxpool(1, (3, 3))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", POOL.values(), ids=POOL.keys())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_avg_pool2d_matches_portable(name: str, case: tuple, dtype: str, count_include_pad: bool, split: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    shape, kernel, stride, padding = case
    b = resolve_backend(name)
    if split and b.kind != "numpy":
        pytest.skip("only the NumPy kernels split over threads")
    x = b.asarray(_host(shape, 0), dtype=dtype)

    def run(k: Backend) -> tuple[list[Any], tuple[int, ...]]:
        y, ctx = k.avg_pool2d(x, kernel, stride, padding, count_include_pad)
        g = b.asarray(_host(tuple(y.shape), 1), dtype=dtype)
        return [y, k.avg_pool2d_backward(ctx, g)], tuple(y.shape)

    with split_kernels(monkeypatch) if split else contextlib.nullcontext():
        fast, out_shape = run(b)
        fast = [_np(a) for a in fast]
    slow, _ = run(b.portable())
    _compare([b.asarray(a) for a in fast], slow, b, dtype, [out_shape, shape])


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_window_kernels_leave_their_inputs_alone(name: str) -> None:
    """Neither version writes into the arrays it is given (the portable ones must also run on JAX)."""
    if not works(name):
        pytest.skip(f"{name} unavailable")
    b = resolve_backend(name)
    xh, wh, gh = _host((2, 3, 6, 6), 0), _host((4, 3, 3, 3), 1), _host((2, 4, 6, 6), 2)
    for k in (b, b.portable()):
        x, w, g = b.asarray(xh), b.asarray(wh), b.asarray(gh)
        _, ctx = k.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), chunk=2)
        k.conv2d_backward(ctx, g, w, False, True)
        _, ctx = k.max_pool2d(x, (3, 3), (1, 1), (1, 1))
        k.max_pool2d_backward(ctx, g[:, :3, ...])
        _, ctx = k.avg_pool2d(x, (3, 3), (1, 1), (1, 1), False)
        k.avg_pool2d_backward(ctx, g[:, :3, ...])
        for a, h in ((x, xh), (w, wh), (g, gh)):
            np.testing.assert_array_equal(nnxp.to_numpy(a), h)


def test_portable_window_kernels_on_jax() -> None:
    """JAX arrays are immutable: the portable kernels (the JAX backend's) run and match NumPy's."""
    if not works("jax"):
        pytest.skip("jax unavailable")
    j, n = resolve_backend("jax"), resolve_backend("numpy")
    xh, wh = _host((2, 3, 7, 7), 0), _host((4, 3, 3, 3), 1)
    outs = {}
    for b in (j, n):
        x, w = b.asarray(xh), b.asarray(wh)
        y, ctx = b.conv2d(x, w, None, (2, 2), (1, 1), (1, 1), chunk=1)
        gw, _, gx = b.conv2d_backward(ctx, b.asarray(np.ones(tuple(y.shape))), w, False, True)
        p, pctx = b.max_pool2d(x, (3, 3), (2, 2), (1, 1))
        gp = b.max_pool2d_backward(pctx, b.asarray(np.ones(tuple(p.shape))))
        a, actx = b.avg_pool2d(x, (2, 2), (1, 1), (1, 1), False)
        ga = b.avg_pool2d_backward(actx, b.asarray(np.ones(tuple(a.shape))))
        outs[b.name] = [_np(v) for v in (y, gw, gx, p, gp, a, ga)]
    for f, s in zip(outs["jax"], outs["numpy"], strict=True):
        np.testing.assert_allclose(f, s, **TOLERANCES["float64"])
