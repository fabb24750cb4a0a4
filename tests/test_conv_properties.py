"""Property tests (hypothesis): Conv2D and the pooling layers against their
PyTorch twins over drawn shapes, kernel sizes, strides, paddings and
dilations, including sizes where the windows do not tile the input.

NumPy only: the backend matrix is covered by the fixed cases in
``test_conv_layers.py``; here the point is the breadth of geometries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
th = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nnxp import layers  # noqa: E402

pytestmark = pytest.mark.torch
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)  # same draws every run
pair = st.tuples(st.integers(1, 4), st.integers(1, 4))


@st.composite
def conv_geometry(draw: Any) -> dict:
    k = draw(pair)
    d = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    p = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    span = [d[i] * (k[i] - 1) + 1 for i in (0, 1)]
    hw = tuple(draw(st.integers(max(1, span[i] - 2 * p[i]), span[i] + 6)) for i in (0, 1))
    return dict(in_channels=draw(st.integers(1, 3)), out_channels=draw(st.integers(1, 4)), kernel_size=k,
                stride=draw(pair), padding=p, dilation=d, bias=draw(st.booleans()), n=draw(st.integers(1, 3)),
                hw=hw, seed=draw(st.integers(0, 2**16)))


def _t(a: np.ndarray, grad: bool = False) -> Any:
    return th.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


@SETTINGS
@given(conv_geometry())
def test_conv_matches_torch(case: dict) -> None:
    case = dict(case)
    n, hw, seed = case.pop("n"), case.pop("hw"), case.pop("seed")
    rng = np.random.default_rng(seed)
    conv = layers.Conv2D(**case).build("numpy", "float64", seed)
    conv.params["weight"] = rng.standard_normal(conv.params["weight"].shape)
    tconv = th.nn.Conv2d(**case, dtype=th.float64)
    with th.no_grad():
        tconv.weight.copy_(_t(conv.params["weight"]))
        if case["bias"]:
            conv.params["bias"] = rng.standard_normal(conv.params["bias"].shape)
            tconv.bias.copy_(_t(conv.params["bias"]))
    x = rng.standard_normal((n, case["in_channels"], *hw))
    xt = _t(x, grad=True)
    yt = tconv(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(g))
    y = conv.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    gx = conv.backward(g)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(conv.grads["weight"], tconv.weight.grad.numpy(), rtol=1e-10, atol=1e-11)
    if case["bias"]:
        np.testing.assert_allclose(conv.grads["bias"], tconv.bias.grad.numpy(), rtol=1e-10, atol=1e-11)


@st.composite
def pool_geometry(draw: Any) -> dict:
    k = draw(pair)
    p = tuple(draw(st.integers(0, k[i] // 2)) for i in (0, 1))  # PyTorch allows at most half the kernel
    hw = tuple(draw(st.integers(max(1, k[i] - 2 * p[i]), k[i] + 7)) for i in (0, 1))
    return dict(kernel_size=k, stride=draw(pair), padding=p, hw=hw, n=draw(st.integers(1, 2)),
                c=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)), avg=draw(st.booleans()))


@SETTINGS
@given(pool_geometry())
def test_pool_matches_torch(case: dict) -> None:
    case = dict(case)
    n, c, hw, seed, avg = (case.pop(k) for k in ("n", "c", "hw", "seed", "avg"))
    pool, tpool = ((layers.AvgPool2D(**case), th.nn.AvgPool2d(**case)) if avg
                   else (layers.MaxPool2D(**case), th.nn.MaxPool2d(**case)))
    pool.build("numpy", "float64", 0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *hw))
    xt = _t(x, grad=True)
    yt = tpool(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(g))
    np.testing.assert_allclose(pool.forward(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pool.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
