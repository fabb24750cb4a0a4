"""Gradient clipping: the backend kernels against ``torch.nn.utils.clip_grad_norm_``
/ ``clip_grad_value_`` on every backend, the NumPy override against the portable
kernel, no host reads, and training with clipping against a PyTorch twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch_twins
from conftest import TOLERANCES
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim
from nnxp.backends import resolve_backend
from nnxp.backends.base import Workspace

SHAPES = [(5, 4), (4,), (4, 3, 2), (3,)]


class _Owner:
    """Something to keep a workspace on (an optimizer, in real use)."""


def _grads(scale: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * scale for s in SHAPES]


def _torch_clipped(host: list[np.ndarray], max_norm: float | None = None, value: float | None = None):
    torch = torch_twins.torch()
    ps = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in host]
    for p, g in zip(ps, host):
        p.grad = torch.tensor(g)
    norm = None
    if max_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(ps, max_norm))
    else:
        torch.nn.utils.clip_grad_value_(ps, value)
    return [p.grad.numpy() for p in ps], norm


@pytest.mark.torch
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0], ids=["below", "near", "above"])
@pytest.mark.parametrize("portable", [False, True], ids=["backend", "portable"])
def test_global_norm_matches_torch(backend: nnxp.Backend, scale: float, portable: bool) -> None:
    b = backend.portable() if portable else backend
    host = _grads(scale)
    grads = [b.asarray(g, dtype="float64") for g in host]
    expected, tnorm = _torch_clipped(host, max_norm=1.0)
    out, norm = b.clip_by_global_norm(grads, 1.0, ws=b.workspace(_Owner()))
    assert len(out) == len(grads)
    for o, e in zip(out, expected):
        assert_close(o, e, backend, "float64", rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(norm), tnorm, rtol=1e-12)
    np.testing.assert_allclose(float(norm), np.sqrt(sum((g**2).sum() for g in host)), rtol=1e-12)
    for g, h in zip(grads, host):  # the inputs are left as they were
        np.testing.assert_array_equal(nnxp.to_numpy(g), h)
    total = np.sqrt(sum((nnxp.to_numpy(o) ** 2).sum() for o in out))
    assert total <= 1.0 + 1e-9
    if scale < 0.1:
        for o, h in zip(out, host):  # under the bound nothing changes
            np.testing.assert_array_equal(nnxp.to_numpy(o), h)


@pytest.mark.torch
@pytest.mark.parametrize("portable", [False, True], ids=["backend", "portable"])
def test_by_value_matches_torch(backend: nnxp.Backend, portable: bool) -> None:
    b = backend.portable() if portable else backend
    host = _grads(1.0)
    expected, _ = _torch_clipped(host, value=0.5)
    grads = [b.asarray(g, dtype="float64") for g in host]
    out = b.clip_by_value(grads, 0.5, ws=b.workspace(_Owner()))
    for o, e in zip(out, expected):
        assert_close(o, e, backend, "float64", rtol=0, atol=0)
    for g, h in zip(grads, host):
        np.testing.assert_array_equal(nnxp.to_numpy(g), h)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_device_and_zero_gradients(backend: nnxp.Backend, dtype: str) -> None:
    zeros = [backend.xp.zeros(s, dtype=backend.dtype(dtype), device=backend.device) for s in SHAPES]
    out, norm = backend.clip_by_global_norm(zeros, 1.0, ws=backend.workspace(_Owner()))
    for o, s in zip(out, SHAPES):  # eps keeps 0 / 0 away: zeros stay zeros
        assert_on(o, backend, dtype, s)
        np.testing.assert_array_equal(nnxp.to_numpy(o), 0)
    assert float(norm) == 0
    big = [backend.asarray(g, dtype=dtype) for g in _grads(10.0)]
    out = backend.clip_by_value(big, 1.0, ws=backend.workspace(_Owner()))
    for o, s in zip(out, SHAPES):
        assert_on(o, backend, dtype, s)
        assert np.abs(nnxp.to_numpy(o)).max() == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_override_equals_portable(dtype: str) -> None:
    b = resolve_backend("numpy")
    ws = Workspace(np.empty)
    for scale in (0.01, 3.0):
        grads = [g.astype(dtype) for g in _grads(scale, seed=4)]
        fast, fnorm = b.clip_by_global_norm(grads, 1.5, ws=ws)
        slow, snorm = b.portable().clip_by_global_norm(grads, 1.5)
        np.testing.assert_allclose(fnorm, snorm, **TOLERANCES[dtype])
        for f, s in zip(fast, slow):
            assert f.dtype == s.dtype == np.dtype(dtype)
            np.testing.assert_allclose(f, s, **TOLERANCES[dtype])
        fast = b.clip_by_value(grads, 0.7, ws=ws)
        for f, s in zip(fast, b.portable().clip_by_value(grads, 0.7)):
            np.testing.assert_array_equal(f, s)


def test_clipping_reads_nothing_on_the_host() -> None:
    pytest.importorskip("array_api_strict")
    from benchmarks.calls import CallCounter

    b = resolve_backend("array_api_strict")
    grads = [b.asarray(g, dtype="float32") for g in _grads(5.0)]
    with CallCounter() as c:
        out, _ = b.clip_by_global_norm(grads, 1.0)
        out = b.clip_by_value(out, 0.1)
    assert dict(c.syncs) == {}
    # one product and one sum per gradient, stack, sum, sqrt, +eps, divide, clip; one multiply per gradient
    assert c.total == 3 * len(SHAPES) + 6 + len(SHAPES)


def test_optimizer_exposes_norm_and_keeps_layer_grads(backend: nnxp.Backend) -> None:
    layer = layers.Dense(5, 4).build(backend, "float64", rng=0)
    host = {"weight": _grads(10.0)[0], "bias": _grads(10.0)[1]}
    for k, v in host.items():
        layer.grads[k] = backend.asarray(v, dtype="float64")
    opt = optim.SGD(lr=1.0, clip_norm=2.0)
    before = {k: nnxp.to_numpy(v).copy() for k, v in layer.params.items()}
    opt.step([(f"0.{k}", layer, k) for k in layer.params])
    assert_on(opt.grad_norm, backend, "float64", ())
    np.testing.assert_allclose(float(opt.grad_norm), np.sqrt(sum((g**2).sum() for g in host.values())), rtol=1e-12)
    step = np.sqrt(sum(((before[k] - nnxp.to_numpy(layer.params[k])) ** 2).sum() for k in host))
    np.testing.assert_allclose(step, 2.0, rtol=1e-6)  # lr 1: the update is the clipped gradient
    for k, v in host.items():
        np.testing.assert_array_equal(nnxp.to_numpy(layer.grads[k]), v)


@pytest.mark.torch
@pytest.mark.parametrize("clip", [{"clip_norm": 0.3}, {"clip_value": 0.02}], ids=["norm", "value"])
def test_fit_with_clipping_matches_torch(backend: nnxp.Backend, clip: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 4)) * 3
    y = rng.standard_normal((24, 2))
    net = nnxp.Sequential([layers.Dense(4, 8), layers.Tanh(), layers.Dense(8, 2)], backend=backend, dtype="float64",
                          seed=1)

    def make() -> optim.Optimizer:
        return optim.SGD(lr=0.2, momentum=0.9, **clip)

    twin, twin_hist = torch_twins.torch_fit(net, losses.MSE(), make(), x, y, epochs=3, batch_size=6)
    hist = net.fit(x, y, loss=losses.MSE(), optimizer=make(), epochs=3, batch_size=6, shuffle=False, verbose=0)
    np.testing.assert_allclose(hist["loss"], twin_hist["loss"], rtol=1e-10)
    expected = torch_twins.torch_model_params(net, twin)
    for key, layer, k in net.slots():
        assert_close(layer.params[k], expected[key], backend, "float64", rtol=1e-9, atol=1e-12, err_msg=key)
    # and clipping did something: without it the run ends elsewhere
    free = nnxp.Sequential([layers.Dense(4, 8), layers.Tanh(), layers.Dense(8, 2)], backend=backend,
                           dtype="float64", seed=1)
    free.fit(x, y, loss=losses.MSE(), optimizer=optim.SGD(lr=0.2, momentum=0.9), epochs=3, batch_size=6,
             shuffle=False, verbose=0)
    assert not np.allclose(nnxp.to_numpy(free.layers[0].params["weight"]), expected["0.weight"])
