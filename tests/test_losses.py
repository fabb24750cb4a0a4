"""Losses: finite-difference gradients on every backend, PyTorch twins,
numerical stability and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch_twins
from helpers import assert_close, assert_on

import nnxp
from nnxp import losses


def _case(kind: str, n: int = 4, k: int = 3, seed: int = 0) -> tuple[losses.Loss, np.ndarray, np.ndarray]:
    """(loss, y_pred, y_true) on the host, float64 predictions."""
    rng = np.random.default_rng(seed)
    if kind == "mse":
        return losses.MSE(), rng.standard_normal((n, k)), rng.standard_normal((n, k))
    if kind == "bce":
        p = rng.uniform(0.1, 0.9, (n, k))
        return losses.BinaryCrossEntropy(), p, (rng.random((n, k)) > 0.5).astype(np.float64)
    if kind == "bce-soft":
        return losses.BinaryCrossEntropy(), rng.uniform(0.1, 0.9, (n, k)), rng.uniform(0, 1, (n, k))
    if kind == "bce-logits":
        return (losses.BinaryCrossEntropy(from_logits=True), 3 * rng.standard_normal((n, k)),
                (rng.random((n, k)) > 0.5).astype(np.float64))
    if kind == "sce-labels":
        return losses.SoftmaxCrossEntropy(), 2 * rng.standard_normal((n, k)), rng.integers(0, k, n)
    if kind == "sce-onehot":
        return losses.SoftmaxCrossEntropy(), 2 * rng.standard_normal((n, k)), np.eye(k)[rng.integers(0, k, n)]
    if kind == "sce-soft":
        t = rng.random((n, k))
        return losses.SoftmaxCrossEntropy(), 2 * rng.standard_normal((n, k)), t / t.sum(1, keepdims=True)
    if kind == "sce-seq-labels":  # a language model's (batch, time, vocab) logits and (batch, time) labels
        return losses.SoftmaxCrossEntropy(), 2 * rng.standard_normal((n, 5, k)), rng.integers(0, k, (n, 5))
    if kind == "sce-seq-onehot":
        return losses.SoftmaxCrossEntropy(), 2 * rng.standard_normal((n, 5, k)), np.eye(k)[rng.integers(0, k, (n, 5))]
    raise ValueError(kind)


KINDS = ["mse", "bce", "bce-soft", "bce-logits", "sce-labels", "sce-onehot", "sce-soft", "sce-seq-labels",
         "sce-seq-onehot"]


def assert_scalar_on(value, backend: nnxp.Backend, dtype: str) -> None:
    """A loss value: 0-d on ``backend`` with ``dtype``. NumPy's own reductions return
    NumPy scalars (``np.float32``) rather than 0-d arrays; accepted on the numpy backend."""
    if backend.name == "numpy" and isinstance(value, np.generic):
        assert value.dtype == np.dtype(dtype) and value.shape == ()
    else:
        assert_on(value, backend, dtype, ())


def _scalar_close(value, expected: float, backend: nnxp.Backend, dtype: str, **tol) -> None:
    assert_scalar_on(value, backend, dtype)
    np.testing.assert_allclose(float(nnxp.to_numpy(value)), expected, **tol)


def _on(backend: nnxp.Backend, y_pred: np.ndarray, y_true: np.ndarray, dtype: str = "float64"):
    t = nnxp.to_device(y_true, backend) if y_true.dtype.kind == "i" else nnxp.to_device(y_true, backend, dtype=dtype)
    return nnxp.to_device(y_pred, backend, dtype=dtype), t


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(backend: nnxp.Backend, kind: str) -> None:
    loss, p, t = _case(kind)
    yp, yt = _on(backend, p, t)
    errors = nnxp.gradcheck(loss, yp, yt)
    assert errors["input"] < 1e-7


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_on_backend(backend: nnxp.Backend, kind: str, dtype: str) -> None:
    loss, p, t = _case(kind)
    yp, yt = _on(backend, p, t, dtype)
    assert_scalar_on(loss(yp, yt), backend, dtype)
    assert_on(loss.backward(), backend, dtype, p.shape)


# ----------------------------------------------------------- torch twins
@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
def test_torch_twin(backend: nnxp.Backend, kind: str) -> None:
    torch_twins.torch()
    loss, p, t = _case(kind, n=5, k=4, seed=3)
    yp, yt = _on(backend, p, t)
    value = loss.forward(yp, yt)
    grad = loss.backward()
    ref = torch_twins.loss_twin(loss, p, t)
    _scalar_close(value, ref["loss"], backend, "float64", rtol=1e-12, atol=1e-14)
    assert_close(grad, ref["grad"], backend, "float64", rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- stability
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_huge_logits(backend: nnxp.Backend, dtype: str) -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]])
    labels = np.array([1, 1, 0])
    loss = losses.SoftmaxCrossEntropy()
    yp, yt = _on(backend, z, labels, dtype)
    # per row: logsumexp - picked = 2e4, 0, 1e4
    _scalar_close(loss(yp, yt), 1e4, backend, dtype, rtol=1e-6)
    g = loss.backward()
    expected = (np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]) - np.eye(3)[labels]) / 3
    assert_close(g, expected.astype(dtype), backend, dtype, atol=1e-7)
    # one-hot targets take the same path
    yp, yt = _on(backend, z, np.eye(3)[labels], dtype)
    _scalar_close(loss(yp, yt), 1e4, backend, dtype, rtol=1e-6)
    assert_close(loss.backward(), expected.astype(dtype), backend, dtype, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_logits_huge(backend: nnxp.Backend, dtype: str) -> None:
    z = np.array([[1e4], [-1e4], [1e4], [-1e4]])
    t = np.array([[0.0], [1.0], [1.0], [0.0]])
    loss = losses.BinaryCrossEntropy(from_logits=True)
    yp, yt = _on(backend, z, t, dtype)
    _scalar_close(loss(yp, yt), 5e3, backend, dtype, rtol=1e-6)
    assert_close(loss.backward(), (np.array([[1.0], [-1.0], [0.0], [0.0]]) / 4).astype(dtype), backend, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_probabilities_at_zero_and_one(backend: nnxp.Backend, dtype: str) -> None:
    p = np.array([[0.0], [1.0], [1.0], [0.0]])
    t = np.array([[1.0], [0.0], [1.0], [0.0]])
    loss = losses.BinaryCrossEntropy()
    yp, yt = _on(backend, p, t, dtype)
    value = float(nnxp.to_numpy(loss(yp, yt)))
    expected = 0.5 * -np.log(loss.eps)  # two rows clipped to eps (or 1 - eps) on the wrong side
    assert np.isfinite(value)
    assert abs(value - expected) < 1e-2 * expected  # float32 rounds 1 - eps
    g = nnxp.to_numpy(loss.backward())
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(g, 0)  # clipped: zero gradient, as the clip has none


def test_mse_large_values(backend: nnxp.Backend) -> None:
    yp, yt = _on(backend, np.array([[1e4], [-1e4]]), np.array([[-1e4], [1e4]]), "float32")
    loss = losses.MSE()
    _scalar_close(loss(yp, yt), 4e8, backend, "float32", rtol=1e-7)
    assert_close(loss.backward(), np.array([[2e4], [-2e4]], dtype=np.float32), backend, "float32")


# --------------------------------------------------------------- values
def test_mse_value(backend: nnxp.Backend) -> None:
    loss, p, t = _case("mse")
    _scalar_close(loss(*_on(backend, p, t)), np.mean((p - t) ** 2), backend, "float64", rtol=1e-13)


def test_mse_integer_targets(backend: nnxp.Backend) -> None:
    yp = nnxp.to_device(np.zeros((2, 1)), backend, dtype="float32")
    yt = nnxp.to_device(np.array([[1], [3]]), backend)
    _scalar_close(losses.MSE()(yp, yt), 5.0, backend, "float32", rtol=0)


def test_correct_counts(backend: nnxp.Backend) -> None:
    sce = losses.SoftmaxCrossEntropy()
    z = nnxp.to_device(np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]]), backend, dtype="float32")
    labels = nnxp.to_device(np.array([0, 0, 0]), backend)
    assert float(sce.correct(z, labels)) == 2.0
    assert float(sce.correct(z, nnxp.to_device(np.eye(2)[[0, 0, 0]], backend, dtype="float32"))) == 2.0
    bce = losses.BinaryCrossEntropy()
    p = nnxp.to_device(np.array([[0.9], [0.2], [0.6]]), backend, dtype="float32")
    t = nnxp.to_device(np.array([[1.0], [1.0], [1.0]]), backend, dtype="float32")
    assert float(bce.correct(p, t)) == 2.0
    logits = nnxp.to_device(np.array([[2.0], [-1.0], [0.5]]), backend, dtype="float32")
    assert float(losses.BinaryCrossEntropy(from_logits=True).correct(logits, t)) == 2.0
    # sequences: each sample adds the fraction of its positions predicted right (3 of 4, then 1 of 4)
    zs = nnxp.to_device(np.eye(3)[[[0, 1, 2, 0], [1, 1, 1, 1]]], backend, dtype="float32")
    seq_labels = nnxp.to_device(np.array([[0, 1, 2, 1], [1, 0, 0, 0]]), backend)
    assert float(sce.correct(zs, seq_labels)) == 1.0


def test_sequence_labels_fit_and_evaluate(backend: nnxp.Backend) -> None:
    """fit keeps (batch, time) integer labels and reports accuracy over positions."""
    from nnxp import layers, optim

    rng = np.random.default_rng(0)
    seq = rng.integers(0, 6, (40, 9))
    net = nnxp.Sequential([layers.Embedding(6, 8), layers.Dense(8, 6)], backend=backend, seed=0)
    hist = net.fit(seq[:, :-1], seq[:, 1:], loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.05),
                   epochs=2, batch_size=8, verbose=0)
    assert all(0.0 <= a <= 1.0 for a in hist["accuracy"])
    res = net.evaluate(seq[:, :-1], seq[:, 1:])
    out = nnxp.to_numpy(net.predict(seq[:, :-1]))
    assert abs(res["accuracy"] - float(np.mean(out.argmax(-1) == seq[:, 1:]))) < 1e-9
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 6\)"):
        net.fit(seq[:, :-1], seq[:, 1:] + 6, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(), verbose=0)


def test_get_loss() -> None:
    assert isinstance(losses.get_loss("mse"), losses.MSE)
    assert isinstance(losses.get_loss("cross_entropy"), losses.SoftmaxCrossEntropy)
    assert isinstance(losses.get_loss("bce"), losses.BinaryCrossEntropy)
    inst = losses.MSE()
    assert losses.get_loss(inst) is inst
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        losses.get_loss("hinge")
    assert repr(losses.BinaryCrossEntropy(from_logits=True)) == "BinaryCrossEntropy(from_logits=True)"


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("labels", [[0, 3, 1], [0, -1, 1], [7, 7, 7]])
def test_labels_out_of_range(backend: nnxp.Backend, labels) -> None:
    yp, yt = _on(backend, np.zeros((3, 3)), np.array(labels), "float32")
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)") as info:
        losses.SoftmaxCrossEntropy()(yp, yt)
    assert f"[{min(labels)}, {max(labels)}]" in str(info.value)
    losses.SoftmaxCrossEntropy(check_labels=False)  # the check can be turned off (fit validates once)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bool"])
def test_float_labels_type_error(backend: nnxp.Backend, dtype: str) -> None:
    yp = nnxp.to_device(np.zeros((3, 3)), backend, dtype="float32")
    yt = nnxp.to_device(np.array([0, 1, 1], dtype=dtype), backend)
    with pytest.raises(TypeError, match="Integer class labels expected"):
        losses.SoftmaxCrossEntropy()(yp, yt)


def test_integer_predictions_type_error(backend: nnxp.Backend) -> None:
    yp = nnxp.to_device(np.zeros((3, 1), dtype=np.int64), backend)
    for loss in (losses.MSE(), losses.BinaryCrossEntropy()):
        with pytest.raises(TypeError, match="floating point"):
            loss(yp, yp)


@pytest.mark.parametrize(
    ("loss", "pred_shape", "true_shape", "match"),
    [
        (losses.MSE(), (4, 1), (4,), r"MSE: y_pred has shape \(4, 1\) but y_true has shape \(4,\)"),
        (losses.MSE(), (4, 2), (3, 2), "MSE"),
        (losses.BinaryCrossEntropy(), (4, 1), (4, 2), "BinaryCrossEntropy"),
        (losses.BinaryCrossEntropy(from_logits=True), (4,), (5,), "BinaryCrossEntropy"),
        (losses.SoftmaxCrossEntropy(), (4, 3), (5,), "one label per row"),
        (losses.SoftmaxCrossEntropy(), (4, 3), (4, 2), "one-hot"),
        (losses.SoftmaxCrossEntropy(), (4,), (4,), r"\(batch, classes\)"),
    ],
)
def test_shape_mismatch(backend: nnxp.Backend, loss, pred_shape, true_shape, match) -> None:
    yp = nnxp.to_device(np.full(pred_shape, 0.5), backend, dtype="float32")
    if isinstance(loss, losses.SoftmaxCrossEntropy) and len(true_shape) == 1:
        yt = nnxp.to_device(np.zeros(true_shape, dtype=np.int64), backend)
    else:
        yt = nnxp.to_device(np.zeros(true_shape), backend, dtype="float32")
    with pytest.raises(ValueError, match=match):
        loss(yp, yt)
