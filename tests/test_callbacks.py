"""Callbacks: early stopping (and restoring the best weights), best/last
checkpoints, the CSV logger, stopping from a callback, hook order, and the
plain ``cb(model, epoch, logs)`` callables next to callback objects."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_on

import nnxp
from nnxp import callbacks, layers, losses, optim


def _blobs(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.standard_normal((n, 4)) + y[:, None]).astype(np.float32), y


def _net(backend, seed: int = 0) -> nnxp.Sequential:
    # BatchNorm: its running statistics (buffers) must travel with the weights too
    return nnxp.Sequential([layers.Dense(4, 8), layers.BatchNorm(8), layers.ReLU(), layers.Dense(8, 3)],
                           backend=backend, seed=seed)


def _weights(model: nnxp.Sequential) -> dict[str, np.ndarray]:
    out = {f"{i}.{k}": np.array(nnxp.to_numpy(v), copy=True)
           for i, layer in enumerate(model.layers) for store in (layer.params, layer.buffers) for k, v in store.items()}
    assert any(".running" in k for k in out)
    return out


class _Scores(callbacks.Callback):
    """Puts a scripted ``score`` into each epoch's logs and records the weights after each epoch."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.weights = scores, {}

    def on_epoch_end(self, epoch: int, logs) -> None:
        logs["score"] = self.scores[epoch - 1]
        self.weights[epoch] = _weights(self.model)


def _fit(net: nnxp.Sequential, cbs: list, epochs: int, **kw) -> nnxp.History:
    x, y = _blobs()
    kw = {"loss": losses.SoftmaxCrossEntropy(), "optimizer": optim.Adam(lr=0.01), "batch_size": 8, "verbose": 0, **kw}
    return net.fit(x, y, epochs=epochs, callbacks=cbs, **kw)


# ------------------------------------------------------------ early stopping
def test_early_stopping_restores_best_weights(backend: nnxp.Backend) -> None:
    scores = _Scores([3.0, 1.0, 2.0, 1.5, 0.5, 9.0])
    stop = callbacks.EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    hist = _fit(_net(backend), [scores, stop], epochs=6)
    net = stop.model
    # best at epoch 2; epochs 3 and 4 do not beat it: stop after epoch 4
    assert hist.epochs == [1, 2, 3, 4] and net.epoch == 4
    assert (stop.best, stop.best_epoch, stop.stopped_epoch) == (1.0, 2, 4)
    after = _weights(net)
    for k, v in scores.weights[2].items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    assert not np.array_equal(after["0.weight"], scores.weights[4]["0.weight"])
    for layer in net.layers:  # the restored arrays are the model's own, on its device
        for v in (*layer.params.values(), *layer.buffers.values()):
            assert_on(v, backend, "float32")
    # the restored weights are copies: training on does not change the kept snapshot
    kept = [np.array(nnxp.to_numpy(a), copy=True) for a in stop.best_weights]
    _fit(net, [], epochs=1)
    for a, b in zip(stop.best_weights, kept):
        np.testing.assert_array_equal(nnxp.to_numpy(a), b)


def test_early_stopping_without_restore_and_runs_to_the_end() -> None:
    scores = _Scores([3.0, 2.0, 1.0])
    stop = callbacks.EarlyStopping(monitor="score", patience=1)
    hist = _fit(_net("numpy"), [scores, stop], epochs=3)
    assert hist.epochs == [1, 2, 3] and stop.stopped_epoch == 0 and stop.best_epoch == 3
    # restore_best_weights also applies when training ran out of epochs
    scores = _Scores([1.0, 2.0, 3.0])
    stop = callbacks.EarlyStopping(monitor="score", patience=5, restore_best_weights=True)
    _fit(_net("numpy"), [scores, stop], epochs=3)
    for k, v in scores.weights[1].items():
        np.testing.assert_array_equal(_weights(stop.model)[k], v, err_msg=k)


def test_early_stopping_options() -> None:
    # min_delta: 1.95 is not better than 2.0 by more than 0.1
    stop = callbacks.EarlyStopping(monitor="score", patience=1, min_delta=0.1)
    hist = _fit(_net("numpy"), [_Scores([2.0, 1.95, 1.0]), stop], epochs=3)
    assert hist.epochs == [1, 2] and stop.best == 2.0
    # mode "auto" maximises accuracies
    assert callbacks.EarlyStopping(monitor="val_accuracy").mode == "max"
    stop = callbacks.EarlyStopping(monitor="score", mode="max", patience=0)
    assert _fit(_net("numpy"), [_Scores([0.5, 0.7, 0.6, 0.9]), stop], epochs=4).epochs == [1, 2, 3]
    # baseline: improvements that do not beat it still count as waiting
    stop = callbacks.EarlyStopping(monitor="score", patience=2, baseline=0.5)
    assert _fit(_net("numpy"), [_Scores([3.0, 2.0, 1.0, 0.1]), stop], epochs=4).epochs == [1, 2]
    # start_from_epoch: the first epochs are not watched
    stop = callbacks.EarlyStopping(monitor="score", patience=0, start_from_epoch=2)
    assert _fit(_net("numpy"), [_Scores([1.0, 2.0, 3.0, 4.0, 5.0]), stop], epochs=5).epochs == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="patience"):
        callbacks.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        callbacks.EarlyStopping(mode="lowest")


def test_early_stopping_on_val_loss_and_missing_monitor() -> None:
    x, y = _blobs(60)
    xv, yv = _blobs(30, seed=5)
    net = _net("numpy")
    stop = callbacks.EarlyStopping(patience=1, restore_best_weights=True)
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.3), epochs=30, batch_size=4,
                   validation_data=(xv, yv), callbacks=[stop], verbose=0)
    assert len(hist) < 30 and stop.stopped_epoch == len(hist)
    assert stop.best == min(hist["val_loss"]) and hist["val_loss"][stop.best_epoch - 1] == stop.best
    np.testing.assert_allclose(net.evaluate(xv, yv)["loss"], stop.best, rtol=1e-5)
    with pytest.warns(RuntimeWarning, match=r"watches 'val_loss'.*validation_data"):
        hist = _fit(_net("numpy"), [callbacks.EarlyStopping()], epochs=2)
    assert len(hist) == 2


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_best_only_writes_on_improvement(backend: nnxp.Backend, tmp_path: Path) -> None:
    scores = _Scores([3.0, 1.0, 2.0, 0.5, 4.0])
    every = callbacks.ModelCheckpoint(tmp_path / "best-{epoch}-{score:.1f}.npz", monitor="score",
                                      save_best_only=True)
    best = callbacks.ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
    last = callbacks.ModelCheckpoint(tmp_path / "last.npz")
    _fit(_net(backend), [scores, every, best, last], epochs=5)
    assert sorted(os.listdir(tmp_path)) == ["best-1-3.0.npz", "best-2-1.0.npz", "best-4-0.5.npz", "best.npz",
                                            "last.npz"]  # and no temporary files left behind
    assert best.best == 0.5 and best.last_path == os.fspath(tmp_path / "best.npz")
    loaded = nnxp.load(tmp_path / "best.npz", backend=backend)
    assert loaded.epoch == 4 and loaded.history.epochs == [1, 2, 3, 4]
    for k, v in _weights(loaded).items():
        np.testing.assert_array_equal(v, scores.weights[4][k], err_msg=k)
    assert nnxp.load(tmp_path / "last.npz", backend=backend).epoch == 5
    # a best checkpoint resumes training: optimizer and loss come with it
    loaded.fit(*_blobs(), epochs=1, batch_size=8, verbose=0)
    assert loaded.epoch == 5


def test_checkpoint_every_n_epochs_and_bad_path(tmp_path: Path) -> None:
    ck = callbacks.ModelCheckpoint(tmp_path / "e{epoch:02d}.npz", save_freq=2)
    _fit(_net("numpy"), [ck], epochs=5)
    assert sorted(os.listdir(tmp_path)) == ["e02.npz", "e04.npz"]
    with pytest.raises(ValueError, match=r"cannot be filled.*'nope'"):
        _fit(_net("numpy"), [callbacks.ModelCheckpoint(tmp_path / "{nope}.npz")], epochs=1)
    with pytest.warns(RuntimeWarning, match="ModelCheckpoint watches 'val_loss'"):
        _fit(_net("numpy"), [callbacks.ModelCheckpoint(tmp_path / "x.npz", save_best_only=True)], epochs=1)
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------- CSV logger
def test_csv_logger(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    x, y = _blobs()
    net = _net("numpy")
    logger = callbacks.CSVLogger(path)
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer="sgd", epochs=3, batch_size=8,
                   validation_data=_blobs(10, seed=2), callbacks=[logger], verbose=0)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"):
        assert [float(r[k]) for r in rows] == hist[k], k  # full precision: the floats read back exactly
    # a second fit with the same logger continues the file (epochs continue too)
    net.fit(x, y, epochs=1, batch_size=8, callbacks=[logger], verbose=0)
    with open(path, newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]
    # a new logger starts a new file unless append=True; a missing column stays empty
    net.fit(x, y, epochs=1, batch_size=8, callbacks=[callbacks.CSVLogger(path, append=True)], verbose=0)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"] and rows[-1]["val_loss"] == ""
    net.fit(x, y, epochs=1, batch_size=8, callbacks=[callbacks.CSVLogger(path, separator=";")], verbose=0)
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch;loss;accuracy;lr;time" and lines[1].startswith("6;") and len(lines) == 2


# ------------------------------------------------- dispatch, order, stopping
def test_hooks_order_plain_callables_and_stop_training(backend: nnxp.Backend) -> None:
    events = []

    class Spy(callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("begin")

        def on_epoch_begin(self, epoch, logs=None):
            events.append(f"epoch_begin {epoch}")

        def on_epoch_end(self, epoch, logs):
            events.append(f"epoch_end {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            events.append(f"end {sorted(logs)}")

    def plain(model, epoch, logs):
        events.append(f"plain {epoch}")
        if epoch == 2:
            model.stop_training = True

    net = _net(backend)
    spy = Spy()
    hist = _fit(net, [spy, plain], epochs=5)
    keys = ["accuracy", "loss", "lr", "time"]
    assert events == ["begin", "epoch_begin 1", f"epoch_end 1 {keys}", "plain 1", "epoch_begin 2",
                      f"epoch_end 2 {keys}", "plain 2", f"end {keys}"]
    assert hist.epochs == [1, 2] and spy.model is net
    # stop_training is reset by the next fit
    events.clear()
    assert _fit(net, [], epochs=2).epochs == [1, 2, 3, 4]
    with pytest.raises(TypeError, match=r"callbacks\[1\] is a str"):
        _fit(net, [plain, "early_stopping"], epochs=1)
    assert net.epoch == 4  # refused before training


def test_fit_zero_epochs_calls_begin_and_end() -> None:
    events = []

    class Spy(callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("begin")

        def on_train_end(self, logs=None):
            events.append(("end", logs))

    _fit(_net("numpy"), [Spy()], epochs=0)
    assert events == ["begin", ("end", {})]
