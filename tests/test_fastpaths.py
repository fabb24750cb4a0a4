"""The NumPy fast paths (``use_fast_path``, ``reuse_buffers``) give the numbers
the portable path gives.

Dense, ReLU, SoftmaxCrossEntropy, SGD and Adam have NumPy-specific code
selected by the array type (Thinc-style: the generic array-API code stays and
is what every other backend runs). These tests train and step the same models
with the fast paths on, with them switched off (``use_fast_path = False``) and
on the strict backend (generic code by construction), and compare.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES

import nnxp
from nnxp import layers, losses, optim
from nnxp.backends import BackendUnavailableError, resolve_backend
from nnxp.backends.numpy import Workspace

FAST_CLASSES = (layers.Dense, layers.ReLU, losses.SoftmaxCrossEntropy, optim.Optimizer)

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "nesterov_wd": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: optim.Adam(lr=1e-3),
    "adam_l2": lambda: optim.Adam(lr=1e-3, weight_decay=1e-2),
    "adamw": lambda: optim.AdamW(lr=1e-3),
}


@pytest.fixture
def generic(monkeypatch: pytest.MonkeyPatch):
    """Call ``generic()`` to switch every NumPy fast path off for the rest of the test."""

    def switch_off() -> None:
        for cls in FAST_CLASSES:
            monkeypatch.setattr(cls, "use_fast_path", False)

    return switch_off


def _data(n: int = 300, features: int = 20, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.standard_normal((n, features)) + y[:, None] * 0.3).astype(np.float32)
    return x, y


def _mlp(backend: str, dtype: str = "float32", seed: int = 3) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(20, 32), layers.ReLU(), layers.Dense(32, 16), layers.ReLU(),
                            layers.Dense(16, 5)], backend=backend, dtype=dtype, seed=seed)


def _train(backend: str, opt: str, dtype: str = "float32", epochs: int = 3, batch_size: int = 32,
           validation: bool = False) -> tuple[dict, dict[str, np.ndarray], nnxp.Sequential]:
    x, y = _data()
    net = _mlp(backend, dtype)
    kw = {"validation_data": _data(64, seed=1)} if validation else {}
    hist = net.fit(x.astype(dtype), y, loss=losses.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[opt](),
                   epochs=epochs, batch_size=batch_size, verbose=0, **kw)
    params = {f"{i}.{k}": nnxp.to_numpy(v) for i, layer in enumerate(net.layers) for k, v in layer.params.items()}
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
    try:
        resolve_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} unavailable: {exc}")
    return name


# ------------------------------------------------------------------ whole training runs
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_fast_equals_generic(opt: str, dtype: str, generic) -> None:
    # 300 samples / batch 32: the last batch (12) is smaller, so buffers are also used as views
    fast = _train("numpy", opt, dtype)
    generic()
    slow = _train("numpy", opt, dtype)
    _assert_same_training(fast, slow, dtype)


@pytest.mark.parametrize("device", [None, "device1"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adamw"])
def test_fit_fast_equals_strict(opt: str, device: str | None) -> None:
    strict = _strict(device)
    _assert_same_training(_train("numpy", opt), _train(strict, opt), "float32")


def test_fit_with_validation_and_resume(generic) -> None:
    # evaluate() runs between epochs with the loss's buffers still switched on; a second fit resumes
    fast = _train("numpy", "momentum", validation=True)
    fast[2].fit(*_data(), epochs=1, batch_size=50, verbose=0)
    generic()
    slow = _train("numpy", "momentum", validation=True)
    slow[2].fit(*_data(), epochs=1, batch_size=50, verbose=0)
    _assert_same_training(fast, slow, "float32")
    for layer_f, layer_s in zip(fast[2].layers, slow[2].layers):
        for k in layer_f.params:
            np.testing.assert_allclose(layer_f.params[k], layer_s.params[k], **TOLERANCES["float32"])


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
@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_relu_loss_step_fast_equals_generic(reuse: bool, dtype: str, generic) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 6)).astype(dtype)
    y = rng.integers(0, 4, 7)

    def run() -> list[np.ndarray]:
        dense, relu, head = layers.Dense(6, 5), layers.ReLU(), layers.Dense(5, 4)
        loss = losses.SoftmaxCrossEntropy()
        for i, layer in enumerate((dense, relu, head)):
            layer.build("numpy", dtype, i)
            layer.reuse_buffers = reuse
        loss.reuse_buffers = reuse
        h = relu.forward(dense.forward(x, True), True)
        z = head.forward(h, True)
        out = [z.copy(), np.asarray(loss.forward(z, y)), np.asarray(loss.correct(z, y))]
        g = loss.backward()
        out.append(g.copy())
        g = relu.backward(head.backward(g))
        out += [g.copy(), dense.backward(g).copy()]
        out += [layer.grads[k].copy() for layer in (dense, head) for k in ("weight", "bias")]
        return out

    fast = run()
    generic()
    slow = run()
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        np.testing.assert_allclose(a, b, err_msg=str(i), **TOLERANCES[dtype])


def test_relu_fast_path_keeps_nan_and_masks_gradient(generic) -> None:
    x = np.array([[-1.0, 0.0, 2.0, np.nan]], dtype=np.float32)
    g = np.array([[5.0, 6.0, 7.0, 8.0]], dtype=np.float32)
    for reuse in (False, True):
        relu = layers.ReLU()
        relu.reuse_buffers = reuse
        y = relu.forward(x, True)
        np.testing.assert_array_equal(y, [[0.0, 0.0, 2.0, np.nan]])
        np.testing.assert_array_equal(relu.backward(g), [[0.0, 0.0, 7.0, 0.0]])
    generic()
    relu = layers.ReLU()
    np.testing.assert_array_equal(relu.forward(x, True), [[0.0, 0.0, 2.0, np.nan]])
    np.testing.assert_array_equal(relu.backward(g), [[0.0, 0.0, 7.0, 0.0]])


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


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_optimizer_update_fast_equals_generic(opt: str, generic) -> None:
    rng = np.random.default_rng(5)
    shapes = {"0.weight": (6, 5), "0.bias": (5,), "1.weight": (5, 3), "1.bias": (3,)}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)]
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}

    def run() -> dict[str, np.ndarray]:
        ls = [layers.Dense(6, 5).build("numpy"), layers.Dense(5, 3).build("numpy")]
        slots = [(f"{i}.{k}", layer, k) for i, layer in enumerate(ls) for k in layer.params]
        for key, layer, k in slots:
            layer.params[k] = start[key].copy()
        o = OPTIMIZERS[opt]()
        for g in grads:
            for key, layer, k in slots:
                layer.grads[k] = g[key].copy()
            o.step(slots)
            for key, layer, k in slots:  # the gradients are left as they were
                np.testing.assert_array_equal(layer.grads[k], g[key])
        out = {key: layer.params[k] for key, layer, k in slots}
        out.update({f"{key}/{s}": v for key, st in o.state.items() for s, v in st.items()})
        return out

    fast = run()
    generic()
    slow = run()
    assert fast.keys() == slow.keys()
    for k in fast:
        np.testing.assert_allclose(fast[k], slow[k], err_msg=k, **TOLERANCES["float32"])


# ------------------------------------------------------------------ Workspace
def test_workspace_reuses_and_views() -> None:
    ws = Workspace()
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
    ws.clear()
    assert ws.nbytes() == 0
