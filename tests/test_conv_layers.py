"""Conv2D, MaxPool2D, AvgPool2D, Flatten, Dropout and BatchNorm: gradient checks on
every backend, PyTorch twins, placement, bad input, shapes
(the NumPy window kernels against the portable ones: tests/test_conv_kernels.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers
from nnxp.gradcheck import gradcheck
from nnxp.init import glorot_uniform, he_normal
from nnxp.layers.base import layer_class


def _arr(backend: nnxp.Backend, shape: tuple[int, ...], dtype: str = "float64", seed: int = 0) -> Any:
    host = np.random.default_rng(seed).standard_normal(shape)
    return backend.from_host(host, backend.dtype(dtype))


def _randomize(layer: layers.Layer, seed: int = 7) -> None:
    """Give every parameter (and BatchNorm's buffers) non-trivial values."""
    rng = np.random.default_rng(seed)
    b = layer.backend
    for store in (layer.params, layer.buffers):
        for k, v in store.items():
            host = rng.uniform(0.5, 1.5, v.shape) if k == "running_var" else rng.standard_normal(v.shape)
            store[k] = b.from_host(host, v.dtype)


# ------------------------------------------------------------ gradient checks
CONV_CASES = {
    "k3": dict(kernel_size=3),
    "k3-s2-p1": dict(kernel_size=3, stride=2, padding=1),
    "k2x3-s2x1-p1x0-d1x2": dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    "k2-s3-p1-untiled": dict(kernel_size=2, stride=3, padding=1),
    "k3-d2-same": dict(kernel_size=3, dilation=2, padding="same"),
    "k1-s2": dict(kernel_size=1, stride=2),
    "k1": dict(kernel_size=1, padding=1),
    "nobias": dict(kernel_size=2, bias=False),
}


@pytest.mark.parametrize("kwargs", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_gradcheck(backend: nnxp.Backend, kwargs: dict) -> None:
    conv = layers.Conv2D(2, 3, **kwargs).build(backend, "float64", 0)
    _randomize(conv)
    errs = gradcheck(conv, _arr(backend, (2, 2, 5, 6)))
    assert set(errs) == {"input", *conv.params}


def test_conv_gradcheck_chunked(backend: nnxp.Backend) -> None:
    """A tiny column budget forces one batch item per chunk (columns recomputed in backward)."""
    conv = layers.Conv2D(2, 2, 3, stride=2, padding=1).build(backend, "float64", 1)
    conv.col_budget = 1
    gradcheck(conv, _arr(backend, (2, 2, 5, 5)))


POOL_CASES = {
    "max-k2": (layers.MaxPool2D, dict(kernel_size=2)),
    "max-k3-s2-p1": (layers.MaxPool2D, dict(kernel_size=3, stride=2, padding=1)),
    "max-k2x3-s1x2-overlap": (layers.MaxPool2D, dict(kernel_size=(2, 3), stride=(1, 2), padding=(0, 1))),
    "max-k2-s3-untiled": (layers.MaxPool2D, dict(kernel_size=2, stride=3)),
    "avg-k2": (layers.AvgPool2D, dict(kernel_size=2)),
    "avg-k3-s2-p1": (layers.AvgPool2D, dict(kernel_size=3, stride=2, padding=1)),
    "avg-k3-s1-p1-nopadcount": (layers.AvgPool2D, dict(kernel_size=3, stride=1, padding=1,
                                                       count_include_pad=False)),
    "avg-k2x3-s3x1-untiled": (layers.AvgPool2D, dict(kernel_size=(2, 3), stride=(3, 1))),
}


@pytest.mark.parametrize("cls,kwargs", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pool_gradcheck(backend: nnxp.Backend, cls: type, kwargs: dict) -> None:
    # distinct random values: no ties, so max pooling is differentiable at x
    assert gradcheck(cls(**kwargs), _arr(backend, (2, 2, 5, 7))).keys() == {"input"}


def test_flatten_gradcheck(backend: nnxp.Backend) -> None:
    gradcheck(layers.Flatten(), _arr(backend, (2, 3, 2, 3)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dropout_gradcheck(backend: nnxp.Backend, training: bool) -> None:
    drop = layers.Dropout(0.4).build(backend, "float64", 0)
    forward = drop.forward

    def same_mask_forward(x: Any, training: bool = True) -> Any:
        drop.init_state(np.random.default_rng(5))  # same seed -> same mask at every call
        return forward(x, training)

    drop.forward = same_mask_forward
    gradcheck(drop, _arr(backend, (3, 4, 5)), training=training)


@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 4), (2, 3, 3, 4)], ids=["NC", "NCL", "NCHW"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_gradcheck(backend: nnxp.Backend, shape: tuple, training: bool) -> None:
    bn = layers.BatchNorm(3).build(backend, "float64", 0)
    _randomize(bn)
    assert gradcheck(bn, _arr(backend, shape), training=training).keys() == {"input", "weight", "bias"}


# ------------------------------------------------------------ placement and dtype
def _all_layers() -> dict[str, tuple[Any, tuple[int, ...]]]:
    return {
        "conv": (lambda: layers.Conv2D(2, 3, 3, stride=2, padding=1), (2, 2, 7, 6)),
        "maxpool": (lambda: layers.MaxPool2D(3, 2, 1), (2, 2, 7, 6)),
        "avgpool": (lambda: layers.AvgPool2D(2), (2, 2, 7, 6)),
        "flatten": (lambda: layers.Flatten(), (2, 2, 3, 3)),
        "dropout": (lambda: layers.Dropout(0.5), (4, 5)),
        "batchnorm2d": (lambda: layers.BatchNorm(2), (3, 2, 4, 4)),
        "batchnorm1d": (lambda: layers.BatchNorm1d(5), (4, 5)),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(_all_layers()))
def test_outputs_on_backend(backend: nnxp.Backend, dtype: str, name: str) -> None:
    make, shape = _all_layers()[name]
    layer = make()
    layer.build(backend, dtype, 0)
    x = _arr(backend, shape, dtype)
    y = layer.forward(x, training=True)
    assert_on(y, backend, dtype, (shape[0], *layer.output_shape(shape[1:])))
    gx = layer.backward(backend.from_host(np.ones(tuple(y.shape)), backend.dtype(dtype)))
    assert_on(gx, backend, dtype, shape)
    for k, g in layer.grads.items():
        assert_on(g, backend, dtype, tuple(layer.params[k].shape))
    for v in layer.buffers.values():
        assert_on(v, backend, dtype)
    assert_on(layer.forward(x, training=False), backend, dtype, tuple(y.shape))


@pytest.mark.parametrize("name", ["conv", "maxpool", "avgpool", "batchnorm2d"])
def test_float32_matches_float64(backend: nnxp.Backend, name: str) -> None:
    make, shape = _all_layers()[name]
    l32, l64 = make().build(backend, "float32", 3), make().build(backend, "float64", 3)
    y32 = l32.forward(_arr(backend, shape, "float32"))
    y64 = l64.forward(_arr(backend, shape, "float64"))
    g = np.random.default_rng(1).standard_normal(tuple(y64.shape))
    g32 = l32.backward(backend.from_host(g, backend.dtype("float32")))
    g64 = l64.backward(backend.from_host(g))
    assert_close(y32, y64, backend, "float32", rtol=1e-4, atol=1e-5)
    assert_close(g32, g64, backend, "float32", rtol=1e-4, atol=1e-5)


def test_lazy_build_from_first_input(backend: nnxp.Backend) -> None:
    conv = layers.Conv2D(2, 4, 3)
    y = conv.forward(_arr(backend, (1, 2, 5, 5), "float32"))
    assert conv.built and conv.backend == backend
    assert_on(y, backend, "float32", (1, 4, 3, 3))
    assert_on(conv.params["weight"], backend, "float32", (4, 2, 3, 3))


def test_same_seed_same_conv_on_every_backend(backend: nnxp.Backend) -> None:
    ref = layers.Conv2D(3, 4, (2, 3), stride=(1, 2), padding=1).build("numpy", "float64", 11)
    conv = layers.Conv2D(3, 4, (2, 3), stride=(1, 2), padding=1).build(backend, "float64", 11)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7))
    y = conv.forward(backend.from_host(x))
    assert_close(y, ref.forward(x), backend, "float64", rtol=1e-12, atol=1e-12)


def test_layer_to_moves_arrays(backend: nnxp.Backend) -> None:
    seq = [layers.Conv2D(2, 2, 3, padding=1), layers.BatchNorm(2), layers.Dropout(0.3),
           layers.AvgPool2D(2, padding=1, count_include_pad=False)]
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    for layer in seq:
        layer.build("numpy", "float64", 0)
        x = layer.forward(x)  # caches (e.g. pooling divisors) made on numpy
    xb = backend.from_host(np.random.default_rng(1).standard_normal((2, 2, 4, 4)))
    for layer in seq:
        layer.to(backend)
        for store in (layer.params, layer.buffers):
            for v in store.values():
                assert_on(v, backend, "float64")
        xb = layer.forward(xb)
        assert_on(xb, backend, "float64")


def test_mixed_backends_raise(backend: nnxp.Backend) -> None:
    if backend.name == "numpy":
        pytest.skip("needs a second backend")
    for layer in (layers.Conv2D(2, 2, 3), layers.MaxPool2D(2), layers.BatchNorm(2), layers.Flatten()):
        layer.build("numpy", "float64", 0)
        with pytest.raises(nnxp.BackendMismatchError, match="to_device"):
            layer.forward(_arr(backend, (2, 2, 4, 4)))


# ------------------------------------------------------------ conv specifics
def test_dropout_numpy_kernel_matches_portable() -> None:
    x = np.random.default_rng(0).standard_normal((6, 50)).astype(np.float32)
    numpy_backend = nnxp.backends.resolve_backend("numpy")
    out = {}
    for fast in (True, False):
        drop = layers.Dropout(0.3).build(numpy_backend if fast else numpy_backend.portable(), "float32", 0)
        drop.init_state(np.random.default_rng(4))
        y = drop.forward(x)
        out[fast] = (y, drop.backward(np.ones_like(y)))
    for a, b in zip(out[True], out[False], strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_conv_chunking_matches_single_chunk(backend: nnxp.Backend) -> None:
    conv = layers.Conv2D(2, 3, 3, stride=2, padding=1).build(backend, "float64", 4)
    x = _arr(backend, (5, 2, 7, 6))
    g = _arr(backend, (5, 3, 4, 3), seed=1)
    results = []
    for budget in (2**30, 2 * 3 * 4 * 18 * 8):  # one chunk / two batch items per chunk
        conv.col_budget = budget
        y = conv.forward(x)
        results.append((y, conv.backward(g), conv.grads["weight"], conv.grads["bias"]))
    for a, b in zip(*results, strict=True):
        assert_close(a, b, backend, "float64", rtol=1e-12, atol=1e-12)


def test_conv_chunk_size_bounded() -> None:
    conv = layers.Conv2D(64, 64, 3, padding=1).build("numpy", "float32", 0)
    per_sample = 9 * 64 * 28 * 28 * 4
    nb = conv._chunk(256, 9 * 64 * 28 * 28)
    assert nb < 256 and nb * per_sample <= conv.col_budget <= 256 * 2**20


def test_conv_skips_input_grad_when_not_needed(backend: nnxp.Backend) -> None:
    conv = layers.Conv2D(2, 3, 3).build(backend, "float64", 0)
    x, g = _arr(backend, (2, 2, 5, 5)), _arr(backend, (2, 3, 3, 3), seed=1)
    conv.forward(x)
    conv.backward(g)
    expected = {k: nnxp.to_numpy(v).copy() for k, v in conv.grads.items()}
    conv.need_input_grad = False
    conv.forward(x)
    assert conv.backward(g) is None
    for k, v in expected.items():
        assert_close(conv.grads[k], v, backend, "float64", rtol=1e-12, atol=1e-12)


def test_conv_default_init_is_he_with_conv_fan_in() -> None:
    conv = layers.Conv2D(3, 5, (2, 4)).build("numpy", "float64", 9)
    expected = he_normal(np.random.default_rng(9), (5, 3, 2, 4), 3 * 2 * 4, 5 * 2 * 4)
    np.testing.assert_array_equal(conv.params["weight"], expected)
    np.testing.assert_array_equal(conv.params["bias"], np.zeros(5))
    conv = layers.Conv2D(3, 5, (2, 4))
    conv.default_init = "glorot"  # what Sequential sets before tanh/sigmoid
    conv.build("numpy", "float64", 9)
    expected = glorot_uniform(np.random.default_rng(9), (5, 3, 2, 4), 3 * 2 * 4, 5 * 2 * 4)
    np.testing.assert_array_equal(conv.params["weight"], expected)
    explicit = layers.Conv2D(3, 5, 2, init="glorot_normal", bias=False)
    explicit.default_init = "he"
    explicit.build("numpy", "float64", 0)
    assert set(explicit.params) == {"weight"}
    assert explicit.params["weight"].std() < 0.5


# ------------------------------------------------------------ pooling specifics
def test_maxpool_ties_go_to_first_max(backend: nnxp.Backend) -> None:
    x = backend.from_host(np.ones((1, 1, 4, 4)))
    pool = layers.MaxPool2D(2, stride=1)
    pool.forward(x)
    gx = nnxp.to_numpy(pool.backward(backend.from_host(np.ones((1, 1, 3, 3)))))
    expected = np.zeros((4, 4))
    expected[:3, :3] = 1.0  # every window's first element (its top-left)
    np.testing.assert_array_equal(gx[0, 0], expected)


def test_maxpool_propagates_nan(backend: nnxp.Backend) -> None:
    host = np.arange(16.0).reshape(1, 1, 4, 4)
    host[0, 0, 0, 1] = np.nan
    y = nnxp.to_numpy(layers.MaxPool2D(2).forward(backend.from_host(host)))
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1:, :]).any() and not np.isnan(y[0, 0, 0, 1])


def test_avgpool_values(backend: nnxp.Backend) -> None:
    x = backend.from_host(np.arange(16.0).reshape(1, 1, 4, 4))
    y = layers.AvgPool2D(2).forward(x)
    assert_close(y, np.array([[[[2.5, 4.5], [10.5, 12.5]]]]), backend, "float64")
    y = layers.AvgPool2D(3, stride=3, padding=1).forward(x)  # padding counts as zeros
    assert_close(y, np.array([[[[10.0 / 9, 18.0 / 9], [42.0 / 9, 50.0 / 9]]]]), backend, "float64")


# ------------------------------------------------------------ dropout specifics
def test_dropout_statistics_and_scaling(backend: nnxp.Backend) -> None:
    p = 0.3
    drop = layers.Dropout(p).build(backend, "float64", 0)
    x = backend.from_host(np.full((200, 500), 2.0))
    y = nnxp.to_numpy(drop.forward(x, training=True))
    kept = y != 0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)  # 4 sigma
    np.testing.assert_allclose(y[kept], 2.0 / (1 - p))
    assert abs(y.mean() - 2.0) < 0.02  # inverted dropout keeps the expectation
    g = nnxp.to_numpy(drop.backward(backend.from_host(np.ones((200, 500)))))
    np.testing.assert_array_equal(g != 0, kept)
    np.testing.assert_allclose(g[kept], 1 / (1 - p))
    # a second call draws a fresh mask
    assert not np.array_equal(nnxp.to_numpy(drop.forward(x)) != 0, kept)


def test_dropout_eval_is_identity(backend: nnxp.Backend) -> None:
    drop = layers.Dropout(0.9).build(backend, "float32", 0)
    x = _arr(backend, (4, 6), "float32")
    assert drop.forward(x, training=False) is x
    g = _arr(backend, (4, 6), "float32", seed=1)
    assert drop.backward(g) is g
    assert layers.Dropout(0.0).forward(x) is x


def test_dropout_p_one_drops_everything(backend: nnxp.Backend) -> None:
    y = layers.Dropout(1.0).forward(_arr(backend, (3, 4)))
    assert not nnxp.to_numpy(y).any()


def test_dropout_seeded_masks(backend: nnxp.Backend) -> None:
    def mask(b: nnxp.Backend) -> np.ndarray:
        d = layers.Dropout(0.5).build(b, "float64", np.random.default_rng(42))
        return nnxp.to_numpy(d.forward(b.from_host(np.ones((8, 16))))) != 0

    assert (mask(backend) == mask(backend)).all()  # same seed, same mask
    if backend.kind != "cupy":  # CPU backends share NumPy's stream; CuPy has its own generator
        np.testing.assert_array_equal(mask(backend), mask(nnxp.backends.resolve_backend("numpy")))


def test_dropout_moved_recreates_generator(backend: nnxp.Backend) -> None:
    d = layers.Dropout(0.5).build("numpy", "float64", 0)
    d.to(backend)
    y = d.forward(_arr(backend, (4, 4)))
    assert_on(y, backend, "float64", (4, 4))


# ------------------------------------------------------------ batchnorm specifics
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5)], ids=["NC", "NCHW"])
def test_batchnorm_running_stats_and_eval(backend: nnxp.Backend, shape: tuple) -> None:
    bn = layers.BatchNorm(3, momentum=0.2).build(backend, "float64", 0)
    axes = (0, *range(2, len(shape)))
    rm, rv = np.zeros(3), np.ones(3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        host = rng.standard_normal(shape) * 3 + 1
        y = nnxp.to_numpy(bn.forward(backend.from_host(host), training=True))
        np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-12)
        np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-4)
        rm = 0.8 * rm + 0.2 * host.mean(axis=axes)
        rv = 0.8 * rv + 0.2 * host.var(axis=axes, ddof=1)  # unbiased, as PyTorch
    assert_close(bn.buffers["running_mean"], rm, backend, "float64", rtol=1e-12, atol=1e-12)
    assert_close(bn.buffers["running_var"], rv, backend, "float64", rtol=1e-12, atol=1e-12)
    host = rng.standard_normal(shape)
    bshape = (1, 3) + (1,) * (len(shape) - 2)
    expected = (host - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + 1e-5)
    assert_close(bn.forward(backend.from_host(host), training=False), expected, backend, "float64",
                 rtol=1e-12, atol=1e-12)


def test_batchnorm_needs_two_values_per_channel(backend: nnxp.Backend) -> None:
    bn = layers.BatchNorm(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn.forward(_arr(backend, (1, 3)))
    bn.forward(_arr(backend, (1, 3)), training=False)  # evaluation is fine
    bn.forward(_arr(backend, (1, 3, 2, 2)))  # 4 values per channel


def test_batchnorm_rank_aliases(backend: nnxp.Backend) -> None:
    layers.BatchNorm1d(3).forward(_arr(backend, (2, 3, 4)))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        layers.BatchNorm2d(3).forward(_arr(backend, (2, 3)))
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        layers.BatchNorm1d(3).forward(_arr(backend, (2, 3, 4, 4)))


# ------------------------------------------------------------ bad input
def test_image_layers_reject_flat_input(backend: nnxp.Backend) -> None:
    x = _arr(backend, (4, 784), "float32")
    for layer in (layers.Conv2D(1, 2, 3), layers.MaxPool2D(2), layers.AvgPool2D(2)):
        with pytest.raises(ValueError, match=r"NCHW.*\(4, 784\).*reshape\(x, \(-1, 1, 28, 28\)\)"):
            layer.forward(x)


def test_conv_channel_mismatch(backend: nnxp.Backend) -> None:
    conv = layers.Conv2D(3, 2, 3)
    with pytest.raises(ValueError, match=r"expects 3 input channels.*\(2, 1, 8, 8\).*in_channels"):
        conv.forward(_arr(backend, (2, 1, 8, 8), "float32"))
    with pytest.raises(ValueError, match="channels-last"):
        conv.forward(_arr(backend, (2, 8, 8, 3), "float32"))


@pytest.mark.parametrize("make", [lambda: layers.Conv2D(1, 1, 6, padding=1), lambda: layers.MaxPool2D(5),
                                  lambda: layers.AvgPool2D((2, 6), padding=(0, 1)),
                                  lambda: layers.Conv2D(1, 1, 3, dilation=3)],
                         ids=["conv", "maxpool", "avgpool", "dilated"])
def test_kernel_larger_than_input(backend: nnxp.Backend, make) -> None:
    with pytest.raises(ValueError, match=r"kernel spans \d+ pixels in (height|width).*\(1, 1, 3, 3\)"
                                         r".*smaller kernel_size"):
        make().forward(_arr(backend, (1, 1, 3, 3), "float32"))


def test_batchnorm_feature_mismatch(backend: nnxp.Backend) -> None:
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 4\).*\(2, 3\).*num_features=3"):
        layers.BatchNorm(4).forward(_arr(backend, (2, 3)))
    with pytest.raises(ValueError, match="channels-last"):
        layers.BatchNorm(4).forward(_arr(backend, (2, 5, 5, 4)))


def test_integer_and_mismatched_dtype_inputs(backend: nnxp.Backend) -> None:
    xi = backend.from_host(np.ones((2, 1, 4, 4), dtype=np.int32))
    for layer in (layers.Conv2D(1, 1, 2), layers.MaxPool2D(2), layers.AvgPool2D(2), layers.BatchNorm(1),
                  layers.Dropout(0.5)):
        with pytest.raises(TypeError, match="int32"):
            layer.forward(xi)
    conv = layers.Conv2D(1, 1, 2).build(backend, "float64", 0)
    with pytest.raises(TypeError, match="float64 parameters but got a float32 input"):
        conv.forward(_arr(backend, (2, 1, 4, 4), "float32"))
    bn = layers.BatchNorm(1).build(backend, "float32", 0)
    with pytest.raises(TypeError, match="astype"):
        bn.forward(_arr(backend, (2, 1, 4, 4), "float64"))


@pytest.mark.parametrize("make,match", [
    (lambda: layers.Conv2D(0, 1, 3), "in_channels"),
    (lambda: layers.Conv2D(1, 1, 0), "kernel_size"),
    (lambda: layers.Conv2D(1, 1, (3, 3, 3)), "pair"),
    (lambda: layers.Conv2D(1, 1, 3, stride=0), "stride"),
    (lambda: layers.Conv2D(1, 1, 3, padding=-1), "padding"),
    (lambda: layers.Conv2D(1, 1, 2, padding="same"), "odd"),
    (lambda: layers.Conv2D(1, 1, 3, stride=2, padding="same"), "stride 1"),
    (lambda: layers.Conv2D(1, 1, 3, padding="full"), "same"),
    (lambda: layers.MaxPool2D(2, padding=2), "at most half"),
    (lambda: layers.Dropout(1.5), r"\[0, 1\]"),
    (lambda: layers.BatchNorm(0), "num_features"),
    (lambda: layers.BatchNorm(3, momentum=2), "momentum"),
])
def test_bad_constructor_arguments(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------ shapes and config
def test_output_shape() -> None:
    conv = layers.Conv2D(3, 8, 3, stride=2, padding=1)
    assert conv.output_shape((3, 28, 28)) == (8, 14, 14)
    assert conv.output_shape((None, None, 28)) == (8, None, 14)
    assert layers.Conv2D(1, 4, 5, dilation=2, padding="same").output_shape((1, 9, 9)) == (4, 9, 9)
    assert layers.MaxPool2D(2).output_shape((8, 14, 13)) == (8, 7, 6)
    assert layers.AvgPool2D(3, 1, 1).output_shape((8, None, 5)) == (8, None, 5)
    assert layers.Flatten().output_shape((8, 7, 7)) == (392,)
    assert layers.Flatten().output_shape((8, None, 7)) == (None,)
    assert layers.Dropout(0.5).output_shape((None, 4)) == (None, 4)
    assert layers.BatchNorm(8).output_shape((8, 7, 7)) == (8, 7, 7)
    assert layers.BatchNorm(8).output_shape((None,)) == (None,)
    with pytest.raises(ValueError, match="channels"):
        conv.output_shape((4, 28, 28))
    with pytest.raises(ValueError, match=r"reshape\(x, \(-1, 1, 28, 28\)\)"):
        conv.output_shape((784,))
    with pytest.raises(ValueError, match="kernel spans 3 pixels"):
        layers.Conv2D(3, 8, 3).output_shape((3, 2, 10))
    with pytest.raises(ValueError, match="kernel spans 2 pixels"):
        layers.MaxPool2D(2).output_shape((3, 10, 1))
    with pytest.raises(ValueError, match="num_features"):
        layers.BatchNorm(8).output_shape((4, 7, 7))
    with pytest.raises(ValueError, match="per-sample"):
        layers.BatchNorm2d(8).output_shape((8,))


CONFIGS = [
    layers.Conv2D(3, 8, 3),
    layers.Conv2D(3, 8, (3, 1), stride=(2, 1), padding=(1, 0), dilation=2, bias=False, init="glorot"),
    layers.Conv2D(3, 8, 5, padding="same"),
    layers.MaxPool2D(2),
    layers.MaxPool2D((3, 2), stride=1, padding=1),
    layers.AvgPool2D(3, stride=2, padding=1, count_include_pad=False),
    layers.Flatten(),
    layers.Dropout(0.25),
    layers.BatchNorm(16, momentum=0.05, eps=1e-3),
    layers.BatchNorm1d(4),
    layers.BatchNorm2d(4),
]


@pytest.mark.parametrize("layer", CONFIGS, ids=repr)
def test_config_round_trip(layer: layers.Layer) -> None:
    import json

    cfg = json.loads(json.dumps(layer.config()))  # checkpoints may store configs as JSON
    clone = layer_class(type(layer).__name__)(**cfg)
    assert type(clone) is type(layer) and clone.config() == layer.config() and repr(clone) == repr(layer)


# ------------------------------------------------------------ PyTorch twins
def _torch():
    return pytest.importorskip("torch")


def _t(a: Any, grad: bool = False) -> Any:
    th = _torch()
    return th.tensor(np.array(nnxp.to_numpy(a), dtype=np.float64), dtype=th.float64, requires_grad=grad)


def _compare_with_torch(backend: nnxp.Backend, layer: layers.Layer, module: Any, shape: tuple,
                        seed: int, training: bool = True) -> Any:
    """Forward and input gradient of ``layer`` vs ``module``; returns the torch input tensor."""
    rng = np.random.default_rng(seed)
    xh = rng.standard_normal(shape)
    xt = _t(xh, grad=True)
    module.train(training)
    yt = module(xt)
    gh = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(gh))
    y = layer.forward(backend.from_host(xh), training=training)
    assert_close(y, yt.detach().numpy(), backend, "float64", rtol=1e-10, atol=1e-12)
    gx = layer.backward(backend.from_host(gh))
    assert_close(gx, xt.grad.numpy(), backend, "float64", rtol=1e-10, atol=1e-12)


def _random_conv_cases(n: int) -> list[dict]:
    rng = np.random.default_rng(2024)

    def pair(lo: int, hi: int) -> tuple[int, int]:
        a, b = rng.integers(lo, hi, 2)
        return int(a), int(b)

    cases = []
    while len(cases) < n:
        k, d, p, hw = pair(1, 5), pair(1, 3), pair(0, 3), pair(4, 12)
        c = dict(in_channels=int(rng.integers(1, 4)), out_channels=int(rng.integers(1, 5)), kernel_size=k,
                 stride=pair(1, 4), padding=p, dilation=d, bias=bool(rng.integers(0, 2)), hw=hw,
                 n=int(rng.integers(1, 4)))
        if all(hw[i] + 2 * p[i] >= d[i] * (k[i] - 1) + 1 for i in (0, 1)):
            cases.append(c)
    return cases


@pytest.mark.torch
@pytest.mark.parametrize("case", _random_conv_cases(6), ids=lambda c: f"k{c['kernel_size']}s{c['stride']}"
                         f"p{c['padding']}d{c['dilation']}")
def test_conv_torch_twin(backend: nnxp.Backend, case: dict) -> None:
    th = _torch()
    case = dict(case)
    n, hw = case.pop("n"), case.pop("hw")
    conv = layers.Conv2D(**case).build(backend, "float64", 0)
    _randomize(conv)
    tconv = th.nn.Conv2d(**case, dtype=th.float64)
    with th.no_grad():
        tconv.weight.copy_(_t(conv.params["weight"]))
        if case["bias"]:
            tconv.bias.copy_(_t(conv.params["bias"]))
    _compare_with_torch(backend, conv, tconv, (n, case["in_channels"], *hw), seed=1)
    assert_close(conv.grads["weight"], tconv.weight.grad.numpy(), backend, "float64", rtol=1e-10, atol=1e-11)
    if case["bias"]:
        assert_close(conv.grads["bias"], tconv.bias.grad.numpy(), backend, "float64", rtol=1e-10, atol=1e-11)


POOL_TWINS = [
    ("MaxPool2d", dict(kernel_size=2), (2, 3, 8, 8)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1), (2, 2, 9, 7)),
    ("MaxPool2d", dict(kernel_size=(2, 3), stride=(3, 1), padding=(1, 0)), (1, 2, 7, 6)),
    ("AvgPool2d", dict(kernel_size=2), (2, 3, 8, 8)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1), (2, 2, 9, 7)),
    ("AvgPool2d", dict(kernel_size=(3, 2), stride=1, padding=1, count_include_pad=False), (1, 2, 5, 6)),
]


@pytest.mark.torch
@pytest.mark.parametrize("tname,kwargs,shape", POOL_TWINS,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(POOL_TWINS)])
def test_pool_torch_twin(backend: nnxp.Backend, tname: str, kwargs: dict, shape: tuple) -> None:
    th = _torch()
    layer = getattr(layers, tname.replace("2d", "2D"))(**kwargs)
    _compare_with_torch(backend, layer, getattr(th.nn, tname)(**kwargs), shape, seed=3)


@pytest.mark.torch
def test_maxpool_ties_torch_twin(backend: nnxp.Backend) -> None:
    th = _torch()
    xh = np.round(np.random.default_rng(0).standard_normal((2, 2, 7, 7)))  # many ties
    xt = _t(xh, grad=True)
    th.nn.MaxPool2d(3, 2, 1)(xt).sum().backward()
    pool = layers.MaxPool2D(3, 2, 1)
    y = pool.forward(backend.from_host(xh))
    gx = pool.backward(backend.from_host(np.ones(tuple(y.shape))))
    assert_close(gx, xt.grad.numpy(), backend, "float64", rtol=0, atol=0)


@pytest.mark.torch
def test_flatten_torch_twin(backend: nnxp.Backend) -> None:
    th = _torch()
    _compare_with_torch(backend, layers.Flatten(), th.nn.Flatten(), (3, 2, 4, 5), seed=0)


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (3, 4, 5, 6)], ids=["NC", "NCL", "NCHW"])
def test_batchnorm_torch_twin(backend: nnxp.Backend, shape: tuple) -> None:
    th = _torch()
    tcls = th.nn.BatchNorm2d if len(shape) == 4 else th.nn.BatchNorm1d
    cls = layers.BatchNorm2d if len(shape) == 4 else layers.BatchNorm1d
    bn = cls(4, momentum=0.3).build(backend, "float64", 0)
    _randomize(bn)
    tbn = tcls(4, momentum=0.3, dtype=th.float64)
    with th.no_grad():
        for k in ("weight", "bias"):
            getattr(tbn, k).copy_(_t(bn.params[k]))
        tbn.running_mean.copy_(_t(bn.buffers["running_mean"]))
        tbn.running_var.copy_(_t(bn.buffers["running_var"]))
    def same_param_grads() -> None:
        for k in ("weight", "bias"):
            expected = getattr(tbn, k).grad.numpy()
            assert_close(bn.grads[k], expected, backend, "float64", rtol=1e-10, atol=1e-11)

    for step in range(3):
        tbn.zero_grad()
        _compare_with_torch(backend, bn, tbn, shape, seed=step, training=True)
        same_param_grads()
        for k in ("running_mean", "running_var"):
            assert_close(bn.buffers[k], getattr(tbn, k).numpy(), backend, "float64", rtol=1e-12, atol=1e-12)
    tbn.zero_grad()
    _compare_with_torch(backend, bn, tbn, shape, seed=9, training=False)
    same_param_grads()
