"""Layers: finite-difference gradients on every backend, output placement,
initialisers, input validation, and PyTorch twins."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch_twins
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers
from nnxp.init import INITIALIZERS, get_initializer

# (id, factory, per-call input shape); inputs are kept away from ReLU's kink
CASES: list[tuple[str, Callable[[], layers.Layer], tuple[int, ...]]] = [
    ("dense", lambda: layers.Dense(3, 2), (4, 3)),
    ("dense-nobias", lambda: layers.Dense(3, 2, bias=False), (4, 3)),
    ("dense-3d", lambda: layers.Dense(3, 2), (2, 2, 3)),
    ("relu", layers.ReLU, (3, 4)),
    ("leaky_relu", lambda: layers.LeakyReLU(0.1), (3, 4)),
    ("tanh", layers.Tanh, (3, 4)),
    ("sigmoid", layers.Sigmoid, (3, 4)),
    ("softmax", layers.Softmax, (3, 4)),
    ("gelu", layers.GELU, (3, 4)),
]
IDS = [c[0] for c in CASES]


def _input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Standard normal values, pushed at least 0.1 away from 0 (no kinks inside the FD step)."""
    r = np.random.default_rng(seed).standard_normal(shape)
    return np.sign(r) * (0.1 + np.abs(r))


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize(("name", "make", "shape"), CASES, ids=IDS)
def test_gradcheck(backend: nnxp.Backend, name: str, make, shape) -> None:
    layer = make().build(backend, "float64", rng=3)
    x = nnxp.to_device(_input(shape), backend, dtype="float64")
    errors = nnxp.gradcheck(layer, x)
    assert set(errors) == {"input", *layer.params}
    assert all(e < 1e-6 for e in errors.values()), errors


def test_gradcheck_builds_unbuilt_layer(backend: nnxp.Backend) -> None:
    dense = layers.Dense(3, 2)
    x = nnxp.to_device(_input((2, 3)), backend, dtype="float64")
    nnxp.gradcheck(dense, x)
    assert dense.backend is backend
    assert_on(dense.params["weight"], backend, "float64", (3, 2))


def test_gradcheck_catches_wrong_gradient(backend: nnxp.Backend) -> None:
    class BadTanh(layers.Tanh):
        def backward(self, grad_y):
            return grad_y * (1 - self._y)  # missing square

    x = nnxp.to_device(_input((2, 3)), backend, dtype="float64")
    with pytest.raises(nnxp.GradcheckError, match="gradient input is wrong"):
        nnxp.gradcheck(BadTanh(), x)

    class BadDense(layers.Dense):
        def backward(self, grad_y):
            g = super().backward(grad_y)
            self.grads["bias"] = self.grads["bias"] * 2
            return g

    with pytest.raises(nnxp.GradcheckError, match="gradient bias"):
        nnxp.gradcheck(BadDense(3, 2).build(backend, "float64"), x)


def test_gradcheck_needs_float64(backend: nnxp.Backend) -> None:
    x = nnxp.to_device(_input((2, 3)), backend, dtype="float32")
    with pytest.raises(TypeError, match="float64"):
        nnxp.gradcheck(layers.Tanh(), x)


# ------------------------------------------------------------ placement
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "make", "shape"), CASES, ids=IDS)
def test_outputs_on_backend(backend: nnxp.Backend, dtype: str, name: str, make, shape) -> None:
    layer = make().build(backend, dtype, rng=0)
    for p in layer.params.values():
        assert_on(p, backend, dtype)
    x = nnxp.to_device(_input(shape), backend, dtype=dtype)
    y = layer.forward(x)
    out_shape = (*shape[:-1], layer.out_features) if isinstance(layer, layers.Dense) else shape
    assert_on(y, backend, dtype, out_shape)
    gx = layer.backward(nnxp.to_device(np.ones(out_shape), backend, dtype=dtype))
    assert_on(gx, backend, dtype, shape)
    assert set(layer.grads) == set(layer.params)
    for k, g in layer.grads.items():
        assert_on(g, backend, dtype, tuple(layer.params[k].shape))
    assert layer.output_shape(tuple(shape[1:])) == tuple(out_shape[1:])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lazy_build_from_first_input(backend: nnxp.Backend, dtype: str) -> None:
    dense = layers.Dense(3, 2)
    assert not dense.built
    y = dense(nnxp.to_device(_input((5, 3)), backend, dtype=dtype))
    assert dense.built and dense.backend is backend
    assert_on(y, backend, dtype, (5, 2))
    assert_on(dense.params["weight"], backend, dtype, (3, 2))
    assert_on(dense.params["bias"], backend, dtype, (2,))


def test_backward_does_not_update_params(backend: nnxp.Backend) -> None:
    dense = layers.Dense(3, 2).build(backend, "float64", rng=0)
    before = {k: nnxp.to_numpy(v).copy() for k, v in dense.params.items()}
    x = nnxp.to_device(_input((4, 3)), backend, dtype="float64")
    dense.forward(x)
    dense.backward(nnxp.to_device(np.ones((4, 2)), backend, dtype="float64"))
    for k, v in dense.params.items():
        np.testing.assert_array_equal(nnxp.to_numpy(v), before[k])
    # grads overwrite, not accumulate
    g1 = nnxp.to_numpy(dense.grads["weight"]).copy()
    dense.forward(x)
    dense.backward(nnxp.to_device(np.ones((4, 2)), backend, dtype="float64"))
    np.testing.assert_array_equal(nnxp.to_numpy(dense.grads["weight"]), g1)


def test_dense_skips_input_grad_when_not_needed(backend: nnxp.Backend) -> None:
    dense = layers.Dense(3, 2).build(backend, "float64", rng=0)
    x = nnxp.to_device(_input((4, 3)), backend, dtype="float64")
    dense.forward(x)
    g = nnxp.to_device(np.ones((4, 2)), backend, dtype="float64")
    full = dense.backward(g)
    gw = nnxp.to_numpy(dense.grads["weight"]).copy()
    dense.need_input_grad = False
    assert dense.backward(g) is None
    assert_close(dense.grads["weight"], gw, backend, "float64", rtol=0, atol=0)
    assert_on(full, backend, "float64", (4, 3))


def test_dense_math(backend: nnxp.Backend) -> None:
    dense = layers.Dense(3, 2).build(backend, "float64", rng=0)
    w, b = nnxp.to_numpy(dense.params["weight"]), nnxp.to_numpy(dense.params["bias"])
    b = b + np.array([0.5, -1.0])
    dense.params["bias"] = nnxp.to_device(b, backend)
    x = _input((4, 3))
    assert_close(dense(nnxp.to_device(x, backend)), x @ w + b, backend, "float64", rtol=1e-13, atol=1e-13)


def test_activation_values_and_stability(backend: nnxp.Backend) -> None:
    x_host = np.array([[-1000.0, -2.0, 0.0, 2.0, 1000.0]])
    x = nnxp.to_device(x_host, backend, dtype="float64")
    assert_close(layers.ReLU()(x), np.maximum(x_host, 0), backend, "float64")
    assert_close(layers.LeakyReLU(0.2)(x), np.where(x_host > 0, x_host, 0.2 * x_host), backend, "float64")
    assert_close(layers.Tanh()(x), np.tanh(x_host), backend, "float64")
    with np.errstate(over="raise"):  # no overflow inside exp
        sig = layers.Sigmoid()(x)
        soft = layers.Softmax()(x)
    assert_close(sig, 0.5 * (1 + np.tanh(x_host / 2)), backend, "float64", rtol=1e-12, atol=1e-300)
    e = np.exp(x_host - x_host.max())
    assert_close(soft, e / e.sum(), backend, "float64", rtol=1e-12, atol=1e-300)
    assert np.isfinite(nnxp.to_numpy(layers.GELU()(x))).all()
    assert layers.GELU().approximate == "tanh"
    assert layers.LeakyReLU().negative_slope == 0.01


@pytest.mark.parametrize("make", [layers.ReLU, layers.LeakyReLU, layers.Tanh, layers.Sigmoid, layers.GELU],
                         ids=["relu", "leaky_relu", "tanh", "sigmoid", "gelu"])
def test_nan_propagates(backend: nnxp.Backend, make) -> None:
    """NaN in, NaN out (as in PyTorch): an activation must not hide a NaN from fit's finite check."""
    x = nnxp.to_device(np.array([[np.nan, 1.0, -1.0]]), backend, dtype="float32")
    y = nnxp.to_numpy(make()(x))
    assert np.isnan(y[0, 0]) and np.isfinite(y[0, 1:]).all()


# ---------------------------------------------------------- initialisers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_identical_params_on_every_backend(backend: nnxp.Backend, dtype: str) -> None:
    def make(b):
        return nnxp.Sequential([layers.Dense(5, 4), layers.Tanh(), layers.Dense(4, 4), layers.ReLU(),
                                layers.Dense(4, 3)], backend=b, dtype=dtype, seed=11)

    ref, net = make("numpy"), make(backend)
    for la, lb in zip(ref.layers, net.layers):
        for k in la.params:
            a, b = nnxp.to_numpy(la.params[k]), nnxp.to_numpy(lb.params[k])
            assert_on(lb.params[k], backend, dtype)
            assert a.dtype == b.dtype == np.dtype(dtype)
            assert a.tobytes() == b.tobytes(), f"{k} differs"
    other = nnxp.Sequential([layers.Dense(5, 4)], backend=backend, dtype=dtype, seed=12)
    assert nnxp.to_numpy(other.layers[0].params["weight"]).tobytes() != \
        nnxp.to_numpy(net.layers[0].params["weight"]).tobytes()


def test_he_std() -> None:
    fan_in, fan_out = 400, 300
    w = nnxp.to_numpy(layers.Dense(fan_in, fan_out).build("numpy", "float64", rng=0).params["weight"])
    assert abs(w.std() / np.sqrt(2.0 / fan_in) - 1) < 0.02
    assert abs(w.mean()) < 0.005
    bias = nnxp.to_numpy(layers.Dense(fan_in, fan_out).build("numpy", "float64", rng=0).params["bias"])
    np.testing.assert_array_equal(bias, 0)
    wu = nnxp.to_numpy(layers.Dense(fan_in, fan_out, init="he_uniform").build("numpy", "float64", 0).params["weight"])
    assert abs(wu.std() / np.sqrt(2.0 / fan_in) - 1) < 0.02
    assert np.abs(wu).max() <= np.sqrt(6.0 / fan_in)


def test_sequential_picks_glorot_before_tanh_and_sigmoid() -> None:
    net = nnxp.Sequential([
        layers.Dense(200, 100), layers.Tanh(),
        layers.Dense(100, 100), layers.Sigmoid(),
        layers.Dense(100, 300), layers.ReLU(),
        layers.Dense(300, 100), layers.GELU(),
        layers.Dense(100, 50),
    ], dtype="float64", seed=0)
    w = [nnxp.to_numpy(layer.params["weight"]) for layer in net.layers if isinstance(layer, layers.Dense)]
    for wi, (fi, fo) in zip(w[:2], [(200, 100), (100, 100)]):  # Glorot uniform
        limit = np.sqrt(6.0 / (fi + fo))
        assert np.abs(wi).max() <= limit
        assert abs(wi.std() / np.sqrt(2.0 / (fi + fo)) - 1) < 0.05
    for wi, fi in zip(w[2:], [100, 300, 100]):  # He normal (ReLU family, and the last layer)
        assert abs(wi.std() / np.sqrt(2.0 / fi) - 1) < 0.05
        assert np.abs(wi).max() > np.sqrt(6.0 / fi) * 0.9  # normal tails beyond a uniform's edge
    assert [getattr(layer, "default_init", None) for layer in net.layers[::2]] == \
        ["glorot", "glorot", "he", "he", "he"]


def test_explicit_initialiser_wins() -> None:
    calls = []

    def ones(rng, shape, fan_in, fan_out):
        calls.append((shape, fan_in, fan_out))
        return np.ones(shape)

    net = nnxp.Sequential([layers.Dense(3, 2, init=ones), layers.Tanh(), layers.Dense(2, 2, init="he_normal"),
                           layers.Tanh()], seed=0)
    assert calls == [((3, 2), 3, 2)]
    np.testing.assert_array_equal(nnxp.to_numpy(net.layers[0].params["weight"]), 1)
    assert net.layers[2].config()["init"] == "he_normal"


def test_initialiser_lookup() -> None:
    for name in INITIALIZERS:
        w = get_initializer(name)(np.random.default_rng(0), (3, 4), 3, 4)
        assert w.shape == (3, 4) and w.dtype == np.float64
    with pytest.raises(ValueError, match="Unknown initialiser 'orthogonal'"):
        get_initializer("orthogonal")
    with pytest.raises(ValueError, match="Unknown initialiser"):
        layers.Dense(2, 2, init="nope").build("numpy")


# ------------------------------------------------------------ bad input
def test_wrong_feature_count(backend: nnxp.Backend) -> None:
    dense = layers.Dense(3, 2).build(backend)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 3\), got \(4, 5\)"):
        dense(nnxp.to_device(np.ones((4, 5)), backend, dtype="float32"))
    with pytest.raises(ValueError, match="Flatten"):
        dense(nnxp.to_device(np.ones((4, 2, 5)), backend, dtype="float32"))
    with pytest.raises(ValueError, match="expects inputs"):
        dense(nnxp.to_device(np.ones(3), backend, dtype="float32"))
    with pytest.raises(ValueError, match="expects 3 input features"):
        dense.output_shape((5,))


@pytest.mark.parametrize("dtype", ["int64", "int32", "float64"])
def test_wrong_input_dtype(backend: nnxp.Backend, dtype: str) -> None:
    dense = layers.Dense(3, 2).build(backend, "float32")
    with pytest.raises(TypeError, match="Cast it first") as info:
        dense(nnxp.to_device(np.ones((4, 3), dtype=dtype), backend))
    assert "xp.astype(x, xp.float32)" in str(info.value)
    with pytest.raises(TypeError, match="Cast it first"):  # unbuilt: builds float32, then refuses ints
        layers.Dense(3, 2)(nnxp.to_device(np.ones((4, 3), dtype="int64"), backend))


def test_gelu_exact_not_available() -> None:
    with pytest.raises(ValueError, match="erf"):
        layers.GELU(approximate="none")


@pytest.mark.parametrize(("i", "o"), [(0, 3), (3, 0), (-1, 2), (2.5, 3), ("3", 2)])
def test_dense_sizes_must_be_positive_ints(i, o) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        layers.Dense(i, o)


def test_layer_registry_and_config() -> None:
    for layer in [layers.Dense(3, 2, bias=False, init="glorot"), layers.LeakyReLU(0.3), layers.GELU(),
                  layers.Softmax(), layers.Tanh()]:
        clone = layers.layer_class(type(layer).__name__)(**layer.config())
        assert clone.config() == layer.config()
        assert repr(clone) == repr(layer)
    with pytest.raises(ValueError, match="Unknown layer type 'Conv9D'"):
        layers.layer_class("Conv9D")


def test_layer_to_moves_params(backend: nnxp.Backend) -> None:
    dense = layers.Dense(3, 2).build("numpy", "float64", rng=0)
    ref = nnxp.to_numpy(dense.params["weight"]).copy()
    dense.to(backend)
    assert dense.backend is backend
    assert_close(dense.params["weight"], ref, backend, "float64", rtol=0, atol=0)
    assert_on(dense.grads["bias"], backend, "float64", (2,))
    assert dense.dtype == backend.dtype("float64")


# ---------------------------------------------------------- torch twins
@pytest.mark.torch
@pytest.mark.parametrize(("name", "make", "shape"), CASES, ids=IDS)
def test_torch_twin(backend: nnxp.Backend, name: str, make, shape) -> None:
    torch_twins.torch()
    layer = make().build(backend, "float64", rng=5)
    x_host = _input(shape, seed=1)
    y = layer.forward(nnxp.to_device(x_host, backend))
    gy_host = np.random.default_rng(2).standard_normal(tuple(y.shape))
    gx = layer.backward(nnxp.to_device(gy_host, backend))
    ref = torch_twins.layer_twin(layer, x_host, gy_host)
    assert_close(y, ref["y"], backend, "float64", rtol=1e-12, atol=1e-12)
    assert_close(gx, ref["grad_x"], backend, "float64", rtol=1e-12, atol=1e-12)
    assert set(ref["grads"]) == set(layer.grads)
    for k, g in ref["grads"].items():
        assert_close(layer.grads[k], g, backend, "float64", rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.torch
def test_torch_twin_dense_layout() -> None:
    """nnxp's Dense weight is (in, out): torch.nn.Linear's weight transposed."""
    torch_twins.torch()
    dense = layers.Dense(4, 3).build("numpy", "float64", rng=0)
    lin = torch_twins.torch_layer(dense)
    assert tuple(lin.weight.shape) == (3, 4)
    np.testing.assert_array_equal(lin.weight.detach().numpy().T, nnxp.to_numpy(dense.params["weight"]))
