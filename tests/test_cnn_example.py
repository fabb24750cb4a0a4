"""examples/mnist_cnn.py end to end on a small Fashion-MNIST subset (skipped when the
system copy is absent), and the same CNN, shrunk, trained on every backend of the
``backend`` fixture against a NumPy reference."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import TOLERANCES
from helpers import EXAMPLES, FASHION_DIR, PNG_MAGIC, assert_close, needs_fashion

import nnxp
from nnxp import datasets, losses, optim


@pytest.fixture
def cnn_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``examples/mnist_cnn.py`` imported the way the script runs (examples/ on ``sys.path``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("mnist_cnn")


@needs_fashion
def test_cnn_example_trains_saves_and_reloads(cnn_example: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # only the system copy: no user data dir, no cache, no downloads
    monkeypatch.setenv("NNXP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", [str(FASHION_DIR)])
    out = tmp_path / "out"
    test = cnn_example.main(["--dataset", "fashion-mnist", "--subset", "512", "--epochs", "1", "--val", "64",
                             "--verbose", "0", "--no-download", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "Fashion-MNIST test accuracy after 1 epochs" in printed
    assert test["accuracy"] > 0.25, f"test accuracy {test['accuracy']:.3f} is barely above chance (0.1)"

    for name in ("mnist_cnn_curves.png", "mnist_cnn_misclassified.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    net = nnxp.load(str(out / "mnist_cnn.npz"), backend="numpy")
    assert [type(layer).__name__ for layer in net.layers][:3] == ["Conv2D", "ReLU", "MaxPool2D"]
    assert net.epoch == 1

    # the reloaded model reproduces the example's test metrics on the same test images
    _, _, (xt, yt), _ = cnn_example._data.load("fashion-mnist", 512, download=False)
    x, y = cnn_example.nchw(xt, yt, net.backend)
    assert tuple(x.shape) == (len(yt), 1, 28, 28) and x.dtype == np.float32
    again = net.evaluate(x, y, loss=losses.SoftmaxCrossEntropy())
    assert again["accuracy"] == test["accuracy"]
    assert again["loss"] == pytest.approx(test["loss"], rel=1e-6)
    pred = nnxp.to_numpy(net.predict(x))
    # and a second load gives the same predictions
    pred2 = nnxp.to_numpy(nnxp.load(str(out / "mnist_cnn.npz"), backend="numpy").predict(x))
    np.testing.assert_array_equal(pred, pred2)


def _tiny_run(cnn_example: ModuleType, backend: str) -> tuple[list[float], dict[str, np.ndarray]]:
    """The example's CNN at 4/8 channels, 16 hidden units, on 8x8 images: 2 epochs of 4 Adam steps."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 32)
    x = (rng.random((32, 1, 8, 8)) + 0.1 * y[:, None, None, None]).astype(np.float32)
    net = cnn_example.build(backend, seed=3, channels=(4, 8), hidden=16, image_size=8)
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=1e-2),
                   epochs=2, batch_size=8, verbose=0)
    params = {f"{i}.{k}": nnxp.to_numpy(v) for i, layer in enumerate(net.layers) for k, v in layer.params.items()}
    return hist["loss"], params


def test_tiny_cnn_same_losses_on_every_backend(cnn_example: ModuleType, backend: nnxp.Backend) -> None:
    """Same seed, data and shuffling: the losses and the trained parameters match NumPy's
    (dropout masks come from the same host stream on CPU backends; CuPy draws its own)."""
    ref_loss, ref_params = _tiny_run(cnn_example, "numpy")
    loss, params = _tiny_run(cnn_example, backend.name)
    assert np.all(np.isfinite(ref_loss)) and ref_loss[1] < ref_loss[0]
    if backend.kind == "cupy":
        pytest.skip("CuPy draws its own dropout masks: the losses differ from NumPy's by design")
    tol = TOLERANCES["float32"]
    np.testing.assert_allclose(loss, ref_loss, **tol)
    # torch and JAX multiply with their own BLAS (oneDNN/MKL, Eigen): other float32 rounding, which
    # Adam's normalised steps carry into the parameters of near-zero gradients
    same_blas = backend.kind in ("numpy", "array_api_strict")
    ptol = {"rtol": 1e-4, "atol": 1e-5} if same_blas else {"rtol": 1e-3, "atol": 1e-4}
    for k, v in ref_params.items():
        assert_close(params[k], v, err_msg=k, **ptol)
