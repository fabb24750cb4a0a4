"""Every update lands, on every backend, immutable ones (JAX) included.

On a library whose arrays are written in place (NumPy, torch) an update that
is computed but never stored still shows, because the kernel wrote into the
array the model holds. On JAX nothing is written in place: an optimizer step,
a BatchNorm running statistic, a restored checkpoint or a Dropout mask exists
only if the code keeps the array it got back. These tests fail if any of them
is silently dropped: each compares with the value worked out on the host.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim


def _host(a) -> np.ndarray:
    return np.array(nnxp.to_numpy(a), dtype=np.float64, copy=True)


def _data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.standard_normal((n, 6)) + y[:, None]).astype(np.float32), y


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_optimizer_step_lands_with_the_expected_value(backend: nnxp.Backend, opt: str) -> None:
    layer = layers.Dense(5, 4).build(backend, "float64", 0)
    rng = np.random.default_rng(1)
    g = {k: rng.standard_normal(tuple(v.shape)) for k, v in layer.params.items()}
    before = {k: _host(v) for k, v in layer.params.items()}
    o = {"sgd": optim.SGD(lr=0.1), "momentum": optim.SGD(lr=0.1, momentum=0.9), "adam": optim.Adam(lr=0.01)}[opt]
    slots = [(k, layer, k) for k in layer.params]
    for step in (1, 2):
        layer.grads = {k: backend.asarray(v, dtype="float64") for k, v in g.items()}
        o.step(slots)
        for k in layer.params:
            if opt == "sgd":
                want = before[k] - 0.1 * step * g[k]
            elif opt == "momentum":  # v1 = g, v2 = 0.9 g + g
                want = before[k] - 0.1 * (g[k] if step == 1 else g[k] + 1.9 * g[k])
            else:  # Adam with a constant gradient moves each entry by lr * g / (|g| + eps) per step
                want = before[k] - 0.01 * step * g[k] / (np.abs(g[k]) + 1e-8)
            assert_close(layer.params[k], want, backend, "float64", rtol=1e-6, atol=1e-9, err_msg=f"{k} step {step}")


def test_fit_changes_every_parameter_buffer_and_state(backend: nnxp.Backend) -> None:
    net = nnxp.Sequential([layers.Dense(6, 8), layers.BatchNorm(8), layers.ReLU(), layers.Dropout(0.25),
                           layers.Dense(8, 3)], backend=backend, seed=0)
    before = {key: _host(layer.params[name]) for key, layer, name in net.slots()}
    stats = {k: _host(v) for k, v in net.layers[1].buffers.items()}
    x, y = _data()
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.05), epochs=4,
                   batch_size=16, verbose=0)
    for key, layer, name in net.slots():
        assert_on(layer.params[name], backend, "float32")
        assert np.abs(_host(layer.params[name]) - before[key]).max() > 1e-4, f"{key} never changed"
    for k, v in net.layers[1].buffers.items():
        assert np.abs(_host(v) - stats[k]).max() > 1e-3, f"BatchNorm {k} never changed"
    for st in net.optimizer.state.values():
        assert all(np.abs(_host(v)).max() > 0 for v in st.values())
    assert net.optimizer.steps == 4 * 3
    assert hist["loss"][-1] < hist["loss"][0]


def test_same_training_as_numpy_with_batchnorm_and_dropout(backend: nnxp.Backend) -> None:
    """Dropout masks come from one host stream on every CPU backend, so the runs agree."""
    if "cuda" in backend.name or "gpu" in backend.name or backend.kind == "cupy":
        pytest.skip("GPU backends draw dropout masks from their own generator")

    def run(b) -> tuple[list[float], dict[str, np.ndarray]]:
        net = nnxp.Sequential([layers.Dense(6, 8), layers.BatchNorm(8), layers.ReLU(), layers.Dropout(0.25),
                               layers.Dense(8, 3)], backend=b, seed=0)
        x, y = _data()
        hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1, momentum=0.9),
                       epochs=2, batch_size=16, verbose=0)
        out = {key: _host(layer.params[name]) for key, layer, name in net.slots()}
        out.update({f"bn.{k}": _host(v) for k, v in net.layers[1].buffers.items()})
        return hist["loss"], out

    ref_loss, ref = run("numpy")
    loss, got = run(backend)
    np.testing.assert_allclose(loss, ref_loss, **TOLERANCES["float32"])
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_checkpoint_restore_lands(backend: nnxp.Backend, tmp_path) -> None:
    src = nnxp.Sequential([layers.Dense(6, 4), layers.BatchNorm(4), layers.Dense(4, 3)], backend="numpy", seed=1)
    x, y = _data()
    src.fit(x, y, loss="cross_entropy", optimizer=optim.SGD(lr=0.1, momentum=0.9), epochs=1, batch_size=16,
            verbose=0)
    path = tmp_path / "m.npz"
    src.save(path)
    dst = nnxp.Sequential([layers.Dense(6, 4), layers.BatchNorm(4), layers.Dense(4, 3)], backend=backend, seed=7)
    dst.load_weights(path)
    for (_, la, k), (_, lb, _) in zip(src.slots(), dst.slots()):
        assert_close(lb.params[k], la.params[k], backend, "float32", rtol=0, atol=0)
    for k, v in src.layers[1].buffers.items():
        assert_close(dst.layers[1].buffers[k], v, backend, "float32", rtol=0, atol=0)
    for key, st in src.optimizer.state.items():
        for k, v in st.items():
            assert_close(dst.optimizer.state[key][k], v, backend, "float32", rtol=0, atol=0)
