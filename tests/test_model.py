"""Sequential: fit/predict/evaluate/to, convergence, cross-backend agreement,
input validation, non-finite losses, verbosity, and a PyTorch twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch_twins
from conftest import TOLERANCES, works
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim


def _blobs(n: int = 40, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, features)) * 2
    return (centers[y] + rng.standard_normal((n, features))).astype(np.float32), y


def _mlp(backend, dtype: str = "float32", seed: int = 0) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(4, 8), layers.ReLU(), layers.Dense(8, 8), layers.Tanh(), layers.Dense(8, 3)],
                           backend=backend, dtype=dtype, seed=seed)


def _params(model: nnxp.Sequential) -> dict[str, np.ndarray]:
    return {key: nnxp.to_numpy(layer.params[name]).copy() for key, layer, name in model.slots()}


class _Record(layers.Layer):
    """Identity layer that records feature 0 of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def forward(self, x, training: bool = True):
        if self.backend is None:
            self._build_from(x)
        if training:
            self.seen.append(nnxp.to_numpy(x)[:, 0].copy())
        return x

    def backward(self, grad_y):
        return grad_y


# ----------------------------------------------------------------- fit
def test_fit_returns_history(backend: nnxp.Backend) -> None:
    x, y = _blobs()
    xv, yv = _blobs(13, seed=1)
    net = _mlp(backend)
    seen = []
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.01), epochs=3, batch_size=8,
                   validation_data=(xv, yv), verbose=0, callbacks=[lambda m, e, logs: seen.append((e, dict(logs)))])
    assert isinstance(hist, nnxp.History) and hist is net.history
    assert len(hist) == 3 and hist.epochs == [1, 2, 3] and net.epoch == 3
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert hist["lr"] == [0.01] * 3
    for k, v in hist.history.items():
        assert len(v) == 3 and all(isinstance(f, float) and np.isfinite(f) for f in v), k
    assert all(0 <= a <= 1 for a in hist["accuracy"] + hist["val_accuracy"])
    assert hist["loss"][-1] < hist["loss"][0]
    assert [e for e, _ in seen] == [1, 2, 3] and seen[-1][1]["loss"] == hist["loss"][-1]
    ev = net.evaluate(xv, yv)  # the loss of the last fit is the default
    assert ev.keys() == {"loss", "accuracy"}
    np.testing.assert_allclose(ev["loss"], hist["val_loss"][-1], rtol=1e-5)
    assert ev["accuracy"] == hist["val_accuracy"][-1]
    hist2 = net.fit(x, y, epochs=2, batch_size=8, verbose=0)  # loss and optimizer remembered
    assert hist2.epochs == [1, 2, 3, 4, 5] and net.epoch == 5 and "val_loss" in hist2
    assert "History(epochs=5" in repr(hist2)
    reg = nnxp.Sequential([layers.Dense(4, 1)], backend=backend)
    h = reg.fit(x, x[:, :1], loss="mse", optimizer="sgd", epochs=1, verbose=0)
    assert set(h.history) == {"loss", "lr", "time"}


def test_xor_converges(backend: nnxp.Backend) -> None:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    net = nnxp.Sequential([layers.Dense(2, 3), layers.Tanh(), layers.Dense(3, 1), layers.Tanh()], seed=0)
    assert net.backend is backend
    hist = net.fit(x, y, loss=losses.MSE(), optimizer=optim.SGD(lr=0.2, momentum=0.9), epochs=300, batch_size=4,
                   verbose=0)
    pred = net.predict(x)
    assert_on(pred, backend, "float32", (4, 1))
    np.testing.assert_allclose(nnxp.to_numpy(pred), y, atol=0.1)
    assert hist["loss"][-1] < 1e-3


def test_celsius_to_fahrenheit_converges(backend: nnxp.Backend) -> None:
    rng = np.random.default_rng(0)
    c = rng.uniform(-50, 50, size=(100, 1)).astype(np.float32)
    f = 1.8 * c + 32
    net = nnxp.Sequential([layers.Dense(1, 2), layers.Dense(2, 1)], seed=0)
    net.fit(c / 50, f / 100, loss=losses.MSE(), optimizer=optim.Adam(lr=0.05), epochs=30, batch_size=20, verbose=0)
    grid = np.linspace(-50, 50, 201, dtype=np.float32)[:, None]
    pred = net.predict(grid / 50)
    assert_on(pred, backend, "float32", (201, 1))
    worst = np.max(np.abs(nnxp.to_numpy(pred) * 100 - (1.8 * grid + 32)))
    assert worst < 0.5, f"worst error {worst:.3f} °F"


# ----------------------------------------------------- cross-backend
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make_opt", [lambda: optim.Adam(lr=0.01),
                                      lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)],
                         ids=["adam", "nesterov"])
def test_same_results_as_numpy(backend: nnxp.Backend, dtype: str, make_opt) -> None:
    x, y = _blobs()
    xv, yv = _blobs(10, seed=2)
    tol = TOLERANCES[dtype]
    runs = {}
    for b in ("numpy", backend):
        net = _mlp(b, dtype, seed=3)
        hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=make_opt(), epochs=3, batch_size=7,
                       shuffle=True, validation_data=(xv, yv), verbose=0)
        runs[b if isinstance(b, str) else b.name] = (net, hist)
    ref, ref_hist = runs["numpy"]
    net, hist = runs[backend.name]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(hist[k], ref_hist[k], **tol, err_msg=k)
    for (key, la, k), (_, lb, _) in zip(ref.slots(), net.slots()):
        assert_close(lb.params[k], la.params[k], backend, dtype, **tol, err_msg=key)
    assert_close(net.predict(xv), ref.predict(xv), backend, dtype, **tol)


def test_shuffle_seeded_and_identical_across_backends(backend: nnxp.Backend) -> None:
    n = 23
    x = np.stack([np.arange(n), np.ones(n)], axis=1).astype(np.float32)  # feature 0 = sample id
    y = np.zeros((n, 1), dtype=np.float32)

    def order(b, seed: int = 5, shuffle: bool = True) -> list[list[int]]:
        rec = _Record()
        net = nnxp.Sequential([rec, layers.Dense(2, 1)], backend=b, seed=seed)
        net.fit(x, y, loss="mse", optimizer="sgd", epochs=3, batch_size=5, shuffle=shuffle, verbose=0)
        assert len(rec.seen) == 3 * 5  # ceil(23 / 5) batches per epoch
        epochs = [np.concatenate(rec.seen[i * 5:(i + 1) * 5]).astype(int) for i in range(3)]
        return [e.tolist() for e in epochs]

    mine = order(backend)
    assert mine == order("numpy")  # identical on every backend
    assert mine == order(backend)  # and on a rerun
    for e in mine:
        assert sorted(e) == list(range(n))
    assert mine[0] != mine[1] != mine[2]  # reshuffled each epoch
    assert mine != order(backend, seed=6)
    assert order(backend, shuffle=False) == [list(range(n))] * 3


def test_fit_moves_inputs_once(backend: nnxp.Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _blobs()
    xv, yv = _blobs(10, seed=2)
    moved = []
    original, original_dlpack = backend.from_host, backend.from_dlpack

    def name_of(host) -> str:
        return next((name for name, a in (("x", x), ("y", y), ("xv", xv), ("yv", yv)) if host is a), "other")

    def counting(host, dtype=None):
        moved.append(name_of(host))
        return original(host, dtype)

    def counting_dlpack(host):  # torch and CuPy import host arrays through DLPack where they can
        out = original_dlpack(host)
        if out is not None:
            moved.append(name_of(host))
        return out

    ref = _mlp(backend, seed=1)
    ref.fit(nnxp.to_device(x, backend), nnxp.to_device(y, backend), loss=losses.SoftmaxCrossEntropy(),
            optimizer=optim.SGD(lr=0.1), epochs=3, batch_size=8, validation_data=(nnxp.to_device(xv, backend),
                                                                                 nnxp.to_device(yv, backend)),
            verbose=0)
    net = _mlp(backend, seed=1)
    monkeypatch.setattr(backend, "from_host", counting)
    monkeypatch.setattr(backend, "from_dlpack", counting_dlpack)
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=3, batch_size=8,
            validation_data=(xv, yv), verbose=0)
    if backend.name != "numpy":
        assert sorted(m for m in moved if m != "other") == ["x", "xv", "y", "yv"]  # once each, not per batch/epoch
    else:
        assert moved.count("x") <= 1 and moved.count("y") <= 1
    for (_, la, k), (_, lb, _) in zip(ref.slots(), net.slots()):
        assert_close(lb.params[k], la.params[k], backend, "float32", rtol=0, atol=0)


def test_fit_accepts_other_backend_inputs() -> None:
    x, y = _blobs()
    net = _mlp("array_api_strict:device1")
    for xin, yin in [(x, y), (nnxp.to_device(x, "array_api_strict"), nnxp.to_device(y, "array_api_strict")),
                     (x.astype(np.float64), y.astype(np.int32)), (x.tolist(), y.tolist())]:
        net.fit(xin, yin, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=1, verbose=0)
        assert_on(net.predict(xin), net.backend, "float32", (40, 3))
        for _, layer, k in net.slots():
            assert_on(layer.params[k], net.backend, "float32")


# ------------------------------------------------ predict / evaluate
def test_predict_and_evaluate_batched(backend: nnxp.Backend) -> None:
    x, y = _blobs(10)
    net = _mlp(backend, "float64", seed=2)
    full = net.predict(x, batch_size=100)
    assert_on(full, backend, "float64", (10, 3))
    for bs in (1, 3, 4, 9):
        assert_close(net.predict(x, batch_size=bs), full, backend, "float64", rtol=1e-12, atol=1e-12)
    loss = losses.SoftmaxCrossEntropy()
    ref = net.evaluate(x, y, loss=loss, batch_size=100)
    logits = nnxp.to_numpy(full)
    z = logits - logits.max(1, keepdims=True)
    expected = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(10), y])
    np.testing.assert_allclose(ref["loss"], expected, rtol=1e-12)
    assert ref["accuracy"] == np.mean(logits.argmax(1) == y)
    for bs in (3, 4, 7):
        got = net.evaluate(x, y, loss=loss, batch_size=bs)
        assert got.keys() == {"loss", "accuracy"}
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-12)
        assert got["accuracy"] == ref["accuracy"]
    mse = net.evaluate(x, np.zeros((10, 3)), loss="mse", batch_size=3)
    assert mse.keys() == {"loss"}
    np.testing.assert_allclose(mse["loss"], np.mean(logits**2), rtol=1e-12)


def test_forward_and_call(backend: nnxp.Backend) -> None:
    net = _mlp(backend)
    x = nnxp.to_device(_blobs(5)[0], backend)
    assert_close(net(x), net.predict(x), backend, "float32", rtol=0, atol=0)
    assert_on(net.forward(x), backend, "float32", (5, 3))


# ------------------------------------------------------------ bad input
def _fit(net, x, y, **kw):
    kw = {"loss": losses.SoftmaxCrossEntropy(), "optimizer": optim.SGD(lr=0.1), "epochs": 1, "verbose": 0, **kw}
    return net.fit(x, y, **kw)


def test_bad_inputs(backend: nnxp.Backend) -> None:
    x, y = _blobs(10)
    net = _mlp(backend)
    before = _params(net)
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        _fit(net, x, y[:9])
    with pytest.raises(ValueError, match=r"Layer 0 \(Dense\(in_features=4, out_features=8\)\).*expects 4 input"):
        _fit(net, x[:, :3], y)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\).*found labels in \[\d, 5\]"):
        _fit(net, x, np.where(y == 0, 5, y))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        _fit(net, x, y, validation_data=(x, y - 1))
    with pytest.raises(TypeError, match="x has dtype int64"):
        _fit(net, x.astype(np.int64), y)
    with pytest.raises(TypeError, match=r"dtype .*int32"):
        net.predict(nnxp.to_device(np.ones((2, 4), dtype=np.int32), backend))
    with pytest.raises(ValueError, match="at least one sample"):
        net.predict(np.zeros((0, 4), dtype=np.float32))
    fresh = _mlp(backend)
    with pytest.raises(ValueError, match="needs a loss"):
        fresh.fit(x, y, optimizer="sgd", verbose=0)
    with pytest.raises(ValueError, match="needs an optimizer"):
        fresh.fit(x, y, loss="mse", verbose=0)
    with pytest.raises(ValueError, match="evaluate needs a loss"):
        fresh.evaluate(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        _fit(net, x, y, batch_size=0)
    with pytest.raises(ValueError, match="check_finite"):
        _fit(net, x, y, check_finite="sometimes")
    with pytest.raises(ValueError, match="x has 10 samples but y has 11"):
        net.evaluate(x, np.zeros(11, dtype=np.int64), loss=losses.SoftmaxCrossEntropy())
    assert net.epoch == 0 and len(net.history) == 0
    for k, v in _params(net).items():  # nothing trained
        np.testing.assert_array_equal(v, before[k])


def test_bad_construction() -> None:
    with pytest.raises(TypeError, match="item 1 is str"):
        nnxp.Sequential([layers.Dense(2, 2), "relu"])
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        nnxp.Sequential([layers.Dense(2, 2)], dtype="float16")
    with pytest.raises(ValueError, match=r"Layer 2 \(Dense\(in_features=4, out_features=1\)\)"):
        nnxp.Sequential([layers.Dense(2, 3), layers.ReLU(), layers.Dense(4, 1)])


def test_summary_and_repr() -> None:
    net = _mlp("numpy")
    assert net.num_params() == 4 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3
    s = net.summary()
    assert "Sequential on numpy, float32, seed 0" in s and f"{net.num_params():,}" in s
    assert repr(net).startswith("Sequential([") and "Dense(in_features=4, out_features=8)" in repr(net)


def test_summary_with_sample_shape_fills_cnn_shapes() -> None:
    net = nnxp.Sequential([layers.Conv2D(1, 2, 3, padding=1), layers.MaxPool2D(2), layers.Flatten(),
                           layers.Dense(2 * 4 * 4, 3)], backend="numpy")
    assert "(2, None, None)" in net.summary()  # the first layer only declares its channels
    s = net.summary((1, 8, 8))
    assert "(2, 8, 8)" in s and "(2, 4, 4)" in s and "(32,)" in s and "(3,)" in s


# ------------------------------------------------------ non-finite loss
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow / NaN inside numpy, on purpose
@pytest.mark.parametrize("mode", ["step", "device"])
@pytest.mark.parametrize("make_opt", [lambda: optim.SGD(lr=0.05, momentum=0.9), lambda: optim.Adam(lr=0.01)],
                         ids=["momentum", "adam"])
def test_non_finite_loss_stops_before_bad_step(mode: str, make_opt) -> None:
    # 400 samples / batch 4 = 100 batches: "device" mode reads its flag every 5 batches,
    # so batches 22..24 run masked before the error surfaces at batch 24
    x, y = _blobs(400)
    x[90, 1] = np.nan  # sample 90 -> batch 22 (0-based)
    net, ref = _mlp("numpy", seed=1), _mlp("numpy", seed=1)
    kw = dict(loss=losses.SoftmaxCrossEntropy(), batch_size=4, shuffle=False, verbose=0)
    clean = _blobs(8, seed=9)
    opt = make_opt()
    net.fit(*clean, optimizer=opt, epochs=1, **kw)  # a finished epoch first: the error is in epoch 2
    ref.fit(*clean, optimizer=make_opt(), epochs=1, **kw)
    ref.fit(x[:88], y[:88], epochs=1, **kw)  # exactly the 22 good steps
    ref.epoch, ref.history = 1, net.history
    with pytest.raises(nnxp.NonFiniteLossError) as info:
        net.fit(x, y, epochs=1, check_finite=mode, **kw)
    err = info.value
    assert (err.epoch, err.batch) == (2, 22)
    assert "epoch 2, batch 22" in str(err) and "learning rate" in str(err)
    assert isinstance(err, FloatingPointError)
    for k, v in _params(net).items():
        assert np.isfinite(v).all(), k
        np.testing.assert_array_equal(v, _params(ref)[k], err_msg=k)
    for key, st in ref.optimizer.state.items():
        for k, v in st.items():
            np.testing.assert_array_equal(nnxp.to_numpy(net.optimizer.state[key][k]), nnxp.to_numpy(v))
    assert net.optimizer.steps == ref.optimizer.steps == 2 + 22
    assert net.epoch == 1 and len(net.history) == 1  # the failed epoch is not recorded
    # flags that fit toggles are restored on the way out
    assert net.layers[0].need_input_grad is True
    assert net.loss.check_labels is True
    # training can go on from there (e.g. after fixing the data), and matches the reference
    x[90, 1] = 0.0
    net.fit(x[:8], y[:8], epochs=1, **kw)
    ref.fit(x[:8], y[:8], epochs=1, **kw)
    for k, v in _params(net).items():
        np.testing.assert_array_equal(v, _params(ref)[k], err_msg=k)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow / NaN inside numpy, on purpose
@pytest.mark.parametrize("mode", ["step", "device", "auto"])
def test_non_finite_loss_huge_lr(backend: nnxp.Backend, mode: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    net = nnxp.Sequential([layers.Dense(4, 16), layers.ReLU(), layers.Dense(16, 1)], seed=0)
    with pytest.raises(nnxp.NonFiniteLossError) as info:
        net.fit(x, x[:, :1] * 100, loss="mse", optimizer=optim.SGD(lr=1e6), epochs=20, batch_size=8,
                check_finite=mode, verbose=0)
    assert info.value.epoch >= 1 and 0 <= info.value.batch < 8
    for v in _params(net).values():
        assert np.isfinite(v).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow / NaN inside numpy, on purpose
def test_check_finite_off_does_not_raise() -> None:
    x, y = _blobs(8)
    x[0, 0] = np.nan
    net = _mlp("numpy")
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer="sgd", epochs=1, check_finite="off", verbose=0)
    assert np.isnan(hist["loss"][-1])


def test_check_finite_modes_log_the_same_epoch(backend: nnxp.Backend) -> None:
    # "device" sums the loss on the device (full batches' means times the batch size, plus the
    # partial last batch); "step" on the host: the epoch logs must agree
    x, y = _blobs(203)  # 12 batches of 16 and one of 11
    logs = {}
    for mode in ("step", "device", "off"):
        net = _mlp(backend, seed=2)
        hist = _fit(net, x, y, epochs=2, batch_size=16, check_finite=mode)
        logs[mode] = (hist["loss"], hist["accuracy"], _params(net))
    for mode in ("device", "off"):
        np.testing.assert_allclose(logs[mode][0], logs["step"][0], rtol=1e-5)
        assert logs[mode][1] == logs["step"][1]
        for k, v in logs["step"][2].items():
            np.testing.assert_array_equal(logs[mode][2][k], v, err_msg=k)


def test_fit_metrics(backend: nnxp.Backend) -> None:
    x, y = _blobs(60)
    with_acc, without = _mlp(backend, seed=4), _mlp(backend, seed=4)
    h1 = _fit(with_acc, x, y, epochs=2, batch_size=16, check_finite="device")
    h2 = _fit(without, x, y, epochs=2, batch_size=16, check_finite="device", metrics=(), validation_data=(x, y))
    assert len(h1["accuracy"]) == 2 and 0 <= h1["accuracy"][-1] <= 1
    assert "accuracy" not in h2 and len(h2["val_accuracy"]) == 2  # validation still reports it
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-6)
    for k, v in _params(with_acc).items():
        np.testing.assert_array_equal(_params(without)[k], v, err_msg=k)
    with pytest.raises(ValueError, match=r"Unknown metric.*'f1'"):
        _fit(without, x, y, metrics=("f1",))
    with pytest.raises(ValueError, match="needs a classification loss"):
        _fit(without, x, np.ones((60, 3), np.float32), loss=losses.MSE(), metrics="accuracy")
    assert without.epoch == 2  # the refused calls trained nothing


# -------------------------------------------------------------- verbose
def test_verbose_0_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    x, y = _blobs()
    _mlp("numpy").fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer="sgd", epochs=2, verbose=0,
                      validation_data=(x, y))
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_verbose_2_prints_one_line_per_epoch(capsys: pytest.CaptureFixture) -> None:
    x, y = _blobs()
    _mlp("numpy").fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer="sgd", epochs=3, verbose=2,
                      validation_data=(x, y))
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {i}:")
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr 0.01,"):
            assert key in line
    assert err == ""


# ----------------------------------------------------------------- to()
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_keeps_predictions(backend: nnxp.Backend, dtype: str) -> None:
    x, y = _blobs()
    net = _mlp("numpy", dtype, seed=7)
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.01), epochs=1, verbose=0)
    ref = nnxp.to_numpy(net.predict(x)).copy()
    assert net.to(backend) is net
    assert net.backend is backend
    for _, layer, k in net.slots():
        assert_on(layer.params[k], backend, dtype)
        assert_on(layer.grads[k], backend, dtype)
    assert_close(net.predict(x), ref, backend, dtype, **TOLERANCES[dtype])
    with pytest.raises(nnxp.BackendMismatchError):
        net.forward(nnxp.to_device(x, "numpy" if backend.name != "numpy" else "array_api_strict"))
    # then through every other CPU backend (DLPack or host copies, always copies to and from JAX)
    for other in [b for b in ("torch", "jax", "array_api_strict:device1", "array_api_strict", "numpy") if works(b)]:
        net.to(other)
        assert_close(net.predict(x), ref, net.backend, dtype, **TOLERANCES[dtype])
        for st in net.optimizer.state.values():
            for v in st.values():
                assert_on(v, net.backend, dtype)
    net.fit(x, y, epochs=1, verbose=0)  # still trains after the round trip


# ---------------------------------------------------------- torch twin
@pytest.mark.torch
@pytest.mark.parametrize(
    "make_opt",
    [lambda: optim.SGD(lr=0.1, momentum=0.9), lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda: optim.Adam(lr=0.01), lambda: optim.Adam(lr=0.01, weight_decay=0.05),
     lambda: optim.AdamW(lr=0.01, weight_decay=0.1)],
    ids=["momentum", "nesterov-wd", "adam", "adam-l2", "adamw"],
)
@pytest.mark.parametrize("head", ["softmax_ce", "bce_logits", "sigmoid_bce", "mse"])
def test_mlp_training_matches_torch(backend: nnxp.Backend, make_opt, head: str) -> None:
    torch_twins.torch()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4))
    tail = {"sigmoid_bce": [layers.Sigmoid], "mse": [layers.GELU]}.get(head, [])

    def make() -> nnxp.Sequential:
        body = [layers.Dense(4, 6), layers.Tanh(), layers.Dense(6, 5), layers.LeakyReLU(0.1), layers.Dense(5, 3)]
        return nnxp.Sequential(body + [t() for t in tail], backend=backend, dtype="float64", seed=3)

    if head == "softmax_ce":
        loss, y = losses.SoftmaxCrossEntropy(), rng.integers(0, 3, 20)
    elif head == "bce_logits":
        loss, y = losses.BinaryCrossEntropy(from_logits=True), (rng.random((20, 3)) > 0.5).astype(np.float64)
    elif head == "sigmoid_bce":
        loss, y = losses.BinaryCrossEntropy(), (rng.random((20, 3)) > 0.5).astype(np.float64)
    else:
        loss, y = losses.MSE(), rng.standard_normal((20, 3))
    net = make()
    opt = make_opt()
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)]  # 5 steps
    twin, twin_losses = torch_twins.torch_train_steps(net, loss, make_opt(), batches)
    hist = net.fit(x, y, loss=loss, optimizer=opt, epochs=1, batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(hist["loss"][0], np.mean(twin_losses), rtol=1e-12)
    expected = torch_twins.torch_model_params(net, twin)
    for key, layer, k in net.slots():
        assert_close(layer.params[k], expected[key], backend, "float64", rtol=1e-10, atol=1e-12, err_msg=key)
    assert opt.steps == 5
    # the hand-written loop in torch_twins (forward/backward/step) agrees as well
    again = make()
    steps = torch_twins.nnxp_train_steps(again, loss, make_opt(), batches)
    np.testing.assert_allclose(steps, twin_losses, rtol=1e-12)
    for key, layer, k in again.slots():
        assert_close(layer.params[k], expected[key], backend, "float64", rtol=1e-10, atol=1e-12, err_msg=key)
