"""The kernel layer: every backend override computes what the portable kernel computes.

Layers, losses and optimizers call kernels of their backend (``linear``,
``relu``, ``softmax_cross_entropy``, ``sgd_update``, ...). ``backends/base.py``
holds the portable versions; NumPy (``out=`` into reused buffers) and torch
(its own functions, in-place updates) override some. ``Backend.portable()``
gives the same backend with every kernel portable, so each test here runs the
same thing on both and compares: kernel by kernel, layer by layer, and whole
training runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES, works
from helpers import assert_on

import nnxp
from nnxp import layers, losses, optim
from nnxp.backends import Backend, resolve_backend
from nnxp.backends.base import Workspace

#: backends whose modules override kernels (the others run the portable ones by construction)
FAST = [pytest.param(name, id=name) for name in ("numpy", "torch")
        if works(name) and type(resolve_backend(name)) is not Backend]

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "nesterov_wd": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: optim.Adam(lr=1e-3),
    "adam_l2": lambda: optim.Adam(lr=1e-3, weight_decay=1e-2),
    "adamw": lambda: optim.AdamW(lr=1e-3),
    "rmsprop": lambda: optim.RMSprop(lr=1e-3),
    "rmsprop_all": lambda: optim.RMSprop(lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-2),
    "adagrad": lambda: optim.Adagrad(lr=0.01, lr_decay=1e-3, weight_decay=1e-3, initial_accumulator_value=0.1),
    "momentum_clipnorm": lambda: optim.SGD(lr=0.05, momentum=0.9, clip_norm=0.5),
    "adam_clipvalue": lambda: optim.Adam(lr=1e-3, clip_value=0.01),
}


def _kernels_overridden(b: Backend) -> list[str]:
    """Names of the kernels ``b``'s class overrides."""
    from nnxp.backends.base import _NOT_KERNELS

    return [name for name, fn in vars(Backend).items()
            if callable(fn) and not name.startswith("_") and name not in _NOT_KERNELS
            and name not in ("portable", "workspace", "kernel_scope", "check", "zero", "fuses_conv2d_maxpool")
            and getattr(type(b), name) is not fn]


def _data(n: int = 300, features: int = 20, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.standard_normal((n, features)) + y[:, None] * 0.3).astype(np.float32)
    return x, y


def _mlp(backend: str | Backend, dtype: str = "float32", seed: int = 3) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(20, 32), layers.ReLU(), layers.Dense(32, 16), layers.ReLU(),
                            layers.Dense(16, 5)], backend=backend, dtype=dtype, seed=seed)


def _train(backend: str | Backend, opt: str, dtype: str = "float32", epochs: int = 3, batch_size: int = 32,
           validation: bool = False) -> tuple[dict, dict[str, np.ndarray], nnxp.Sequential]:
    x, y = _data()
    net = _mlp(backend, dtype)
    kw = {"validation_data": _data(64, seed=1)} if validation else {}
    hist = net.fit(x.astype(dtype), y, loss=losses.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[opt](),
                   epochs=epochs, batch_size=batch_size, verbose=0, **kw)
    params = {f"{i}.{k}": np.array(nnxp.to_numpy(v), copy=True)  # a snapshot: fit may update in place
              for i, layer in enumerate(net.layers) for k, v in layer.params.items()}
    return dict(hist.history), params, net


def _assert_same_training(a: tuple, b: tuple, dtype: str) -> None:
    tol = TOLERANCES[dtype]
    (ha, pa, _), (hb, pb, _) = a, b
    assert ha.keys() == hb.keys()
    for k in ha:
        if k == "time":
            continue
        np.testing.assert_allclose(ha[k], hb[k], err_msg=k, **tol)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], err_msg=k, **tol)


def _strict(device: str | None = None) -> str:
    name = "array_api_strict" + (f":{device}" if device else "")
    if not works(name):
        pytest.skip(f"{name} unavailable")
    return name


def test_portable_twin_is_equal_but_runs_the_portable_kernels() -> None:
    b = resolve_backend("numpy")
    p = b.portable()
    assert p == b and p.name == b.name and p.xp is b.xp and p.device == b.device
    assert type(p) is Backend and p.portable() is p
    assert p.owns(np.ones(2)) and p.sync_free == b.sync_free
    assert p.workspace(object()) is None  # portable kernels never write into buffers
    assert {"linear", "linear_backward", "relu", "relu_backward", "softmax_cross_entropy", "sgd_update",
            "adam_update", "rmsprop_update", "adagrad_update", "clip_by_value",
            "clip_by_global_norm"} <= set(_kernels_overridden(b))


# ------------------------------------------------------------------ whole training runs
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_fast_equals_portable(name: str, opt: str, dtype: str) -> None:
    # 300 samples / batch 32: the last batch (12) is smaller, so buffers are also used as views
    b = resolve_backend(name)
    fast = _train(b, opt, dtype)
    slow = _train(b.portable(), opt, dtype)
    _assert_same_training(fast, slow, dtype)


@pytest.mark.parametrize("device", [None, "device1"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adamw"])
def test_fit_numpy_equals_strict(opt: str, device: str | None) -> None:
    strict = _strict(device)
    _assert_same_training(_train("numpy", opt), _train(strict, opt), "float32")


@pytest.mark.parametrize("name", FAST)
def test_fit_with_validation_and_resume(name: str) -> None:
    # evaluate() runs between epochs with the loss's buffers still switched on; a second fit resumes
    b = resolve_backend(name)
    fast = _train(b, "momentum", validation=True)
    fast[2].fit(*_data(), epochs=1, batch_size=50, verbose=0)
    slow = _train(b.portable(), "momentum", validation=True)
    slow[2].fit(*_data(), epochs=1, batch_size=50, verbose=0)
    _assert_same_training(fast, slow, "float32")
    for layer_f, layer_s in zip(fast[2].layers, slow[2].layers):
        for k in layer_f.params:
            np.testing.assert_allclose(nnxp.to_numpy(layer_f.params[k]), nnxp.to_numpy(layer_s.params[k]),
                                       **TOLERANCES["float32"])


def test_fit_restores_reuse_flags_and_outputs_stay_valid() -> None:
    _, _, net = _train("numpy", "sgd", epochs=1)
    for obj in (*net.layers, net.loss):
        assert obj.reuse_buffers is False
    # after fit, outputs are fresh arrays again: two forward passes do not share memory
    x, _ = _data(8)
    a, b = net.forward(x[:4], training=True), net.forward(x[4:], training=True)
    assert not np.shares_memory(a, b)
    np.testing.assert_allclose(a, net.predict(x[:4]), **TOLERANCES["float32"])


def test_fit_step_outputs_are_reused() -> None:
    # inside fit, a Dense layer writes every full batch into the same array
    seen = []

    class Spy(layers.ReLU):
        def forward(self, x, training=True):
            seen.append(x)
            return super().forward(x, training)

    net = nnxp.Sequential([layers.Dense(20, 8), Spy(), layers.Dense(8, 5)], backend="numpy", seed=0)
    x, y = _data(96)
    net.fit(x, y, loss="cross_entropy", optimizer="sgd", epochs=1, batch_size=32, verbose=0)
    assert len(seen) == 3 and all(np.shares_memory(seen[0], s) for s in seen[1:])


# ------------------------------------------------------------------ layer by layer
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_relu_loss_step_fast_equals_portable(name: str, reuse: bool, dtype: str) -> None:
    rng = np.random.default_rng(0)
    b = resolve_backend(name)
    x = b.asarray(rng.standard_normal((7, 6)), dtype=dtype)
    y = b.asarray(rng.integers(0, 4, 7))

    def run(backend: Backend) -> list[np.ndarray]:
        dense, relu, head = layers.Dense(6, 5), layers.ReLU(), layers.Dense(5, 4)
        loss = losses.SoftmaxCrossEntropy()
        loss.backend = backend
        for i, layer in enumerate((dense, relu, head)):
            layer.build(backend, dtype, i)
            layer.reuse_buffers = reuse
        loss.reuse_buffers = reuse
        h = relu.forward(dense.forward(x, True), True)
        z = head.forward(h, True)
        out = [z, loss.forward(z, y), loss.correct(z, y)]
        out.append(loss.backward())
        g = relu.backward(head.backward(out[-1]))
        out += [g, dense.backward(g)]
        out += [layer.grads[k] for layer in (dense, head) for k in ("weight", "bias")]
        return [np.array(nnxp.to_numpy(a), copy=True) for a in out]  # copies: buffers get reused

    fast = run(b)
    slow = run(b.portable())
    for i, (f, s) in enumerate(zip(fast, slow)):
        assert f.dtype == s.dtype and f.shape == s.shape, i
        np.testing.assert_allclose(f, s, err_msg=str(i), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", FAST)
def test_relu_kernels_keep_nan_and_mask_gradient(name: str) -> None:
    b = resolve_backend(name)
    x = b.asarray(np.array([[-1.0, 0.0, 2.0, np.nan]], dtype=np.float32))
    g = b.asarray(np.array([[5.0, 6.0, 7.0, 8.0]], dtype=np.float32))
    for backend in (b, b.portable()):
        for reuse in (False, True):
            relu = layers.ReLU().build(backend)
            relu.reuse_buffers = reuse
            np.testing.assert_array_equal(nnxp.to_numpy(relu.forward(x, True)), [[0.0, 0.0, 2.0, np.nan]])
            np.testing.assert_array_equal(nnxp.to_numpy(relu.backward(g)), [[0.0, 0.0, 7.0, 0.0]])


def test_loss_fast_path_keeps_its_checks() -> None:
    loss = losses.SoftmaxCrossEntropy()
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="Labels must lie in"):
        loss.forward(z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="one label per row"):
        loss.forward(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="Integer class labels"):
        loss.forward(z, np.array([0.0, 1.0, 2.0]))
    # without reuse, backward can be called twice and gives the same gradient
    loss.forward(z, np.array([0, 1, 2]))
    np.testing.assert_array_equal(loss.backward(), loss.backward())


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("masked", [False, True])
def test_optimizer_update_fast_equals_portable(name: str, opt: str, masked: bool) -> None:
    rng = np.random.default_rng(5)
    shapes = {"0.weight": (6, 5), "0.bias": (5,), "1.weight": (5, 3), "1.bias": (3,)}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)]
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    b = resolve_backend(name)

    def run(backend: Backend) -> dict[str, np.ndarray]:
        ls = [layers.Dense(6, 5).build(backend), layers.Dense(5, 3).build(backend)]
        slots = [(f"{i}.{k}", layer, k) for i, layer in enumerate(ls) for k in layer.params]
        for key, layer, k in slots:
            layer.params[k] = backend.asarray(start[key], copy=True)
        o = OPTIMIZERS[opt]()
        ok = backend.xp.asarray(True, device=backend.device) if masked else None  # fit's device guard
        for g in grads:
            for key, layer, k in slots:
                layer.grads[k] = backend.asarray(g[key], copy=True)
            o.step(slots, ok)
            for key, layer, k in slots:  # the gradients are left as they were
                np.testing.assert_array_equal(nnxp.to_numpy(layer.grads[k]), g[key])
        out = {key: layer.params[k] for key, layer, k in slots}
        out.update({f"{key}/{s}": v for key, st in o.state.items() for s, v in st.items()})
        return {k: np.array(nnxp.to_numpy(v), copy=True) for k, v in out.items()}

    fast = run(b)
    slow = run(b.portable())
    assert fast.keys() == slow.keys()
    for k in fast:
        np.testing.assert_allclose(fast[k], slow[k], err_msg=k, **TOLERANCES["float32"])


# ------------------------------------------------------------------ Workspace
def test_workspace_reuses_and_views() -> None:
    ws = Workspace(np.empty)
    a = ws.get("y", (8, 3), np.float32)
    assert ws.get("y", (8, 3), np.float32) is a
    b = ws.get("y", (5, 3), np.float32)  # a smaller last batch: a view of the same memory
    assert b.shape == (5, 3) and np.shares_memory(a, b) and b.flags.c_contiguous
    assert ws.get("y", (8, 3), np.float32) is a
    c = ws.get("y", (8, 3), np.float64)
    assert c.dtype == np.float64 and not np.shares_memory(a, c)
    d = ws.get("y", (16, 3), np.float64)
    assert d.shape == (16, 3)
    assert ws.nbytes() == d.nbytes
    e = ws.scratch("a", (4, 5), np.float32)
    f = ws.scratch("a", (3,), np.float32)  # one flat buffer serves arrays used one after the other
    assert e.shape == (4, 5) and f.shape == (3,) and np.shares_memory(e, f)
    assert ws.nbytes() == d.nbytes + e.nbytes
    ws.clear()
    assert ws.nbytes() == 0


# ------------------------------------------------------------------ every override is compared
#: kernel -> the test module that compares its overrides with the portable version
COMPARED_IN = {
    "linear": "test_kernels", "linear_backward": "test_kernels", "relu": "test_kernels",
    "relu_backward": "test_kernels", "softmax_cross_entropy": "test_kernels",
    "softmax_cross_entropy_backward": "test_kernels", "count_correct": "test_kernels",
    "dropout_mask": "test_kernels", "sgd_update": "test_kernels", "adam_update": "test_kernels",
    "rmsprop_update": "test_kernels", "adagrad_update": "test_kernels", "clip_by_value": "test_clipping",
    "clip_by_global_norm": "test_clipping", "scatter_add_rows": "test_sequence_layers",
}


@pytest.mark.parametrize("name", [*FAST, "jax"])
def test_every_override_has_a_comparison(name: str) -> None:
    """A backend that overrides a kernel must have a test comparing it with the portable one."""
    if not works(name):
        pytest.skip(f"{name} unavailable")
    missing = [k for k in _kernels_overridden(resolve_backend(name)) if k not in COMPARED_IN
               and not k.startswith(("conv", "max_pool", "avg_pool"))]  # conv/pool: tests/test_conv_kernels.py
    assert not missing, f"{name} overrides {missing} without a comparison test: add one and list it in COMPARED_IN"


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_mask_and_count_correct_match_portable(name: str, dtype: str) -> None:
    b = resolve_backend(name)
    rng = np.random.default_rng(3)
    keep = b.asarray(rng.random((5, 7)) > 0.3)
    logits = b.asarray(np.round(rng.standard_normal((9, 4)), 1), dtype=dtype)  # rounded: ties happen
    labels = b.asarray(rng.integers(0, 4, 9))
    seq_logits = b.asarray(rng.standard_normal((3, 5, 4)), dtype=dtype)
    seq_labels = b.asarray(rng.integers(0, 4, (3, 5)))
    fast, slow = (k.dropout_mask(keep, 1 / 0.7, b.dtype(dtype)) for k in (b, b.portable()))
    assert_on(fast, b, dtype, (5, 7))
    np.testing.assert_array_equal(nnxp.to_numpy(fast), nnxp.to_numpy(slow))
    for z, t in ((logits, labels), (seq_logits, seq_labels)):
        fast, slow = b.count_correct(z, t), b.portable().count_correct(z, t)
        assert float(nnxp.to_numpy(fast)) == float(nnxp.to_numpy(slow))
