"""Sequential's fused convolution + max pooling (+ ReLU) step (``nnxp.layers.fused``): when the run
plan uses it, and that it computes what the layers compute one by one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import assert_run_plan_matches_layers

import nnxp
from nnxp import layers as L
from nnxp.backends import numpy_conv, resolve_backend
from nnxp.layers.fused import ConvPool


def _kinds(net: nnxp.Sequential) -> list[str]:
    return [type(step).__name__ for step in net._plan()]


def _net(*layers: L.Layer, backend: Any = "numpy", dtype: str = "float64", seed: int = 0) -> nnxp.Sequential:
    return nnxp.Sequential(list(layers), backend=backend, dtype=dtype, seed=seed)


def test_plan_fuses_convolutions_with_their_pooling() -> None:
    net = _net(L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Conv2D(4, 8, 3, padding=1), L.ReLU(),
               L.MaxPool2D(2), L.Flatten(), L.Dense(8 * 2 * 2, 3))
    assert _kinds(net) == ["ConvPool", "ConvPool", "Flatten", "Dense"]
    step = net._plan()[0]
    assert (step.conv, step.pool, step.relu) == tuple(net.layers[:3][i] for i in (0, 2, 1))
    assert _kinds(_net(L.Conv2D(3, 4, 3), L.MaxPool2D(2))) == ["ConvPool"]  # RGB, no ReLU
    assert _net(L.Conv2D(3, 4, 3), L.MaxPool2D(2))._plan()[0].relu is None


@pytest.mark.parametrize("layers", [
    lambda: [L.Conv2D(1, 4, 3, stride=2), L.MaxPool2D(2)],
    lambda: [L.Conv2D(1, 4, 3, dilation=2), L.MaxPool2D(2)],
    lambda: [L.Conv2D(1, 4, 3), L.MaxPool2D(3, stride=2)],
    lambda: [L.Conv2D(1, 4, 3), L.MaxPool2D(2, padding=1)],
    lambda: [L.Conv2D(1, 4, 3), L.AvgPool2D(2)],
    lambda: [L.Conv2D(1, 4, 3), L.Tanh(), L.MaxPool2D(2)],
], ids=["conv-stride", "dilation", "overlapping-pool", "pool-padding", "avg-pool", "tanh-between"])
def test_plan_leaves_other_runs_alone(layers: Any) -> None:
    assert "ConvPool" not in _kinds(_net(*layers()))


def test_plan_fuses_only_where_the_backend_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    layers = [L.Conv2D(1, 4, 3), L.ReLU(), L.MaxPool2D(2)]
    assert "ConvPool" not in _kinds(_net(*layers, backend=resolve_backend("numpy").portable()))
    monkeypatch.setattr(numpy_conv, "FUSE", False)
    assert "ConvPool" not in _kinds(_net(*layers))


def _exact_model(dtype: str, relu: bool, bias: bool = True) -> nnxp.Sequential:
    """Small integer weights: with integer inputs every sum is exact whatever the order of the
    products, so the fused and the layer-by-layer passes pick the same first maxima."""
    mid = [L.ReLU()] if relu else []
    net = _net(L.Conv2D(2, 3, 3, padding=1, bias=bias), *mid, L.MaxPool2D(2), L.Flatten(), L.Dense(3 * 3 * 3, 2),
               dtype=dtype, seed=1)
    rng = np.random.default_rng(4)
    for layer in net.layers:
        for k, v in layer.params.items():
            layer.params[k] = np.round(2 * rng.standard_normal(v.shape)).astype(v.dtype)
    return net


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_fused_step_equals_the_layers_one_by_one(dtype: str, relu: bool, bias: bool) -> None:
    net = _exact_model(dtype, relu, bias)
    assert _kinds(net)[0] == "ConvPool"
    x = np.round(np.random.default_rng(5).standard_normal((4, 2, 7, 6)) * 2).astype(dtype)  # ties, odd sizes
    g = np.round(np.random.default_rng(6).standard_normal((4, 2))).astype(dtype)
    out, gx = assert_run_plan_matches_layers(net, x, g)
    assert out.dtype == np.dtype(dtype) and gx.dtype == np.dtype(dtype)


class _Probe(L.Layer):
    """A ConvPool step seen as a layer with the convolution's parameters, for gradcheck."""

    def __init__(self, step: ConvPool) -> None:
        super().__init__()
        self.step = step
        self.backend, self.xp, self.dtype = step.conv.backend, step.conv.xp, step.conv.dtype
        self.params, self.grads = step.conv.params, step.conv.grads

    def forward(self, x: Any, training: bool = True) -> Any:
        return self.step.forward(x, training)

    def backward(self, grad_y: Any) -> Any:
        return self.step.backward(grad_y)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
def test_fused_step_gradcheck(relu: bool) -> None:
    mid = [L.ReLU()] if relu else []
    net = _net(L.Conv2D(3, 2, 3, padding=1), *mid, L.MaxPool2D(2), seed=2)
    step = net._plan()[0]
    assert isinstance(step, ConvPool)
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 5))
    errors = nnxp.gradcheck(_Probe(step), x)
    assert set(errors) == {"input", "weight", "bias"}


def test_fit_with_the_fused_step_trains_like_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    x, y = rng.random((48, 1, 8, 8)), rng.integers(0, 4, 48)

    def train() -> tuple[list[float], list[np.ndarray]]:
        net = _net(L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(64, 4), seed=3)
        hist = net.fit(x, y, loss="softmax_cross_entropy", optimizer="adam", batch_size=16, epochs=2, verbose=0)
        return hist["loss"], [np.array(v) for layer in net.layers for v in layer.params.values()]

    fused = train()
    monkeypatch.setattr(numpy_conv, "FUSE", False)
    plain = train()
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-12)
    for a, b in zip(fused[1], plain[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_fused_step_errors() -> None:
    net = _net(L.Conv2D(1, 2, 3, padding=1), L.MaxPool2D(2))
    step = net._plan()[0]
    with pytest.raises(RuntimeError, match="before forward"):
        step.backward(np.ones((1, 2, 2, 2)))
    net.forward(np.ones((1, 1, 4, 4)), training=True)
    with pytest.raises(ValueError, match=r"gradient of shape \(1, 2, 2, 2\)"):
        net.backward(np.ones((1, 2, 3, 3)))
    with pytest.raises(RuntimeError, match="call the Sequential's backward"):
        net.layers[0].backward(np.ones((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="channels"):
        net.forward(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError):  # too small for the pooling after the convolution
        net.forward(np.ones((1, 1, 1, 1)))
