"""Data-parallel ``fit`` with ranks as threads of this process (``distributed.run_threads``):
the same code as under MPI, on every backend, without mpiexec. tests/mpi/ runs the
same checks under ``mpiexec -n 2`` and ``-n 3`` (tests-mpi)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_on

import nnxp
from nnxp import distributed, layers, losses, optim
from nnxp.distributed import Communicator, DistributedError, run_threads

OPTIMIZERS = {
    "sgd-momentum": lambda: optim.SGD(lr=0.1, momentum=0.9),
    "adam": lambda: optim.Adam(lr=0.01),
}
TOL = {"float64": 1e-10, "float32": 2e-5}


def _data(n: int, features: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)), rng.integers(0, classes, n)


def _mlp(backend=None, dtype: str = "float64", width: int = 16, seed: int = 1, extra=()) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(6, width), layers.ReLU(), *extra, layers.Dense(width, 3)],
                           backend=backend, dtype=dtype, seed=seed)


def _results(outs: list) -> list:
    """Per-rank results; re-raise the first exception (with the others' for context)."""
    errors = [o for o in outs if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    return outs


def _params(net: nnxp.Sequential) -> list[np.ndarray]:
    return [nnxp.to_numpy(layer.params[k]) for _, layer, k in net.slots()]


def assert_same_params(actual: nnxp.Sequential, expected: nnxp.Sequential, rtol: float) -> None:
    """Parameters agree within ``rtol`` relative to each array's largest magnitude."""
    for a, e in zip(_params(actual), _params(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max())


# ------------------------------------------------------------ communicators
def test_init_without_launcher_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*distributed._LAUNCHER_VARS, "NNXP_MPI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", None)
    comm = distributed.init()
    assert type(comm) is Communicator and (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    assert distributed.init() is comm and distributed.init(comm) is comm
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_RANK", "0")
    assert distributed.launched_by_mpi()
    buf = np.arange(3.0)
    assert comm.allreduce_(buf) is buf and buf.tolist() == [0.0, 1.0, 2.0]
    assert comm.allgather("a") == ["a"] and comm.bcast(5) == 5


def test_launched_without_mpi4py_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    with pytest.raises(DistributedError, match=r"pip install 'nnxp\[mpi\]'"):
        distributed.init()


def test_thread_collectives_agree() -> None:
    def rank(comm):
        buf = np.full(4, comm.rank + 1.0)
        comm.allreduce_(buf)
        b2 = np.full(2, float(comm.rank))
        comm.bcast_(b2, root=1)
        return buf.tolist(), b2.tolist(), comm.allgather(comm.rank), comm.bcast(comm.rank * 10, root=2)

    outs = _results(run_threads(rank, 3))
    assert all(o == ([6.0] * 4, [1.0, 1.0], [0, 1, 2], 20) for o in outs)


def test_single_process_communicator_changes_nothing(backend: nnxp.Backend) -> None:
    x, y = _data(30)
    ref, net = _mlp(backend), _mlp(backend)
    kw = dict(loss=losses.SoftmaxCrossEntropy(), epochs=2, batch_size=7, verbose=0)
    h1 = ref.fit(x, y, optimizer=optim.Adam(lr=0.01), **kw)
    h2 = net.fit(x, y, optimizer=optim.Adam(lr=0.01), distributed=distributed.Communicator(), **kw)
    for a, e in zip(_params(net), _params(ref), strict=True):
        np.testing.assert_array_equal(a, e)
    assert h1.history == {k: v for k, v in h2.history.items()} | {"time": h1["time"]}


# ------------------------------------------------------------ equivalence
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize(("ranks", "batch", "n"), [
    (2, 5, 43),   # last global batch 3 rows: 2 + 1
    (3, 4, 37),   # last global batch 1 row: ranks 1 and 2 get none
    (3, 4, 46),   # last global batch 10 rows: 4 + 3 + 3
])
def test_ranks_train_like_one_process(backend: nnxp.Backend, dtype: str, opt: str, ranks: int, batch: int,
                                      n: int) -> None:
    """N ranks at batch b equal one process at batch N*b on the same samples, short last batch included."""
    x, y = _data(n)
    xv, yv = _data(11, seed=5)
    kw = dict(epochs=3, verbose=0, validation_data=(xv, yv))  # each rank its own loss: losses keep state
    ref = _mlp(backend, dtype)
    href = ref.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[opt](), batch_size=ranks * batch,
                   **kw)

    def rank(comm):
        net = _mlp(backend, dtype)
        hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[opt](), batch_size=batch,
                       distributed=comm, **kw)
        return net, hist, dict(comm.stats)

    outs = _results(run_threads(rank, ranks))
    tol = TOL[dtype]
    for net, hist, stats in outs:
        assert_same_params(net, ref, tol)
        for _, layer, k in net.slots():
            assert_on(layer.params[k], backend, dtype)
            assert_on(layer.grads[k], backend, dtype)
        assert net.optimizer.steps == ref.optimizer.steps == 3 * -(-n // (ranks * batch))
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(hist[key], href[key], rtol=10 * tol)
        # one allreduce per step (gradients, loss and hits together) plus one for validation per epoch
        steps = ref.optimizer.steps
        assert stats["allreduce_calls"] == steps + 3
        assert stats["allreduce_bytes"] == steps * (net.num_params() + ranks + 1) * np.dtype(dtype).itemsize \
            + 3 * 2 * 8
    first = outs[0][0]
    for net, _, _ in outs[1:]:  # every rank holds the very same numbers
        for a, e in zip(_params(net), _params(first), strict=True):
            np.testing.assert_array_equal(a, e)


def test_shuffle_off_and_regression_loss() -> None:
    x, _ = _data(20)
    t = x[:, :3] * 0.5
    ref = _mlp()
    ref.fit(x, t, loss=losses.MSE(), optimizer=optim.SGD(lr=0.05, momentum=0.5), epochs=2, batch_size=6,
            shuffle=False, verbose=0)

    def rank(comm):
        net = _mlp()
        net.fit(x, t, loss=losses.MSE(), optimizer=optim.SGD(lr=0.05, momentum=0.5), epochs=2, batch_size=3,
                shuffle=False, verbose=0, distributed=comm)
        return net

    for net in _results(run_threads(rank, 2)):
        assert_same_params(net, ref, 1e-10)


def test_fewer_samples_than_ranks() -> None:
    x, y = _data(2)
    ref = _mlp()
    ref.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.01), epochs=2, batch_size=6,
            verbose=0)

    def rank(comm):
        net = _mlp()
        net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.01), epochs=2, batch_size=2,
                verbose=0, distributed=comm)
        return net

    for net in _results(run_threads(rank, 3)):
        assert_same_params(net, ref, 1e-10)


# ------------------------------------------------------------ checkpoints
def test_checkpoint_from_two_ranks_resumes_on_any_number(tmp_path: Path) -> None:
    x, y = _data(50)
    fit_kw = dict(loss="softmax_cross_entropy", verbose=0)  # a name: each call makes its own loss object
    path = tmp_path / "ckpt.npz"

    def first(comm):  # two ranks, one epoch, then every rank calls save: rank 0 alone writes
        net = _mlp()
        net.fit(x, y, optimizer=optim.Adam(lr=0.01), epochs=1, batch_size=4, distributed=comm, **fit_kw)
        net.save(path if comm.rank == 0 else tmp_path / "rank1.npz")
        return net

    _results(run_threads(first, 2))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]

    def straight(comm):
        net = _mlp()
        net.fit(x, y, optimizer=optim.Adam(lr=0.01), epochs=2, batch_size=4, distributed=comm, **fit_kw)
        return net

    ref = _results(run_threads(straight, 2))[0]

    one = nnxp.load(path, backend="numpy")  # one process at batch 2 * 4
    assert one.epoch == 1 and one.optimizer.steps == 7
    one.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert_same_params(one, ref, 1e-10)

    def resume_on_rank0_only(comm):  # Horovod's pattern: rank 0 loads, fit broadcasts its state
        net = nnxp.load(path, backend="numpy") if comm.rank == 0 else _mlp()
        opt = net.optimizer if comm.rank == 0 else optim.Adam(lr=0.01)
        hist = net.fit(x, y, optimizer=opt, epochs=1, batch_size=4, distributed=comm, **fit_kw)
        return net, hist

    for net, hist in _results(run_threads(resume_on_rank0_only, 2)):
        assert_same_params(net, ref, 1e-10)
        assert hist.epochs == [1, 2] and net.optimizer.steps == 14

    def three(comm):
        net = nnxp.load(path, backend="numpy")
        net.fit(x, y, epochs=1, batch_size=3, distributed=comm, **fit_kw)
        return net

    nets = _results(run_threads(three, 3))
    assert all(net.epoch == 2 and net.optimizer.steps == 7 + 6 for net in nets)
    for net in nets[1:]:
        assert_same_params(net, nets[0], 0.0)


# ------------------------------------------------------------ layers with state
def test_batchnorm_and_dropout_ranks_stay_identical(backend: nnxp.Backend) -> None:
    x, y = _data(40)

    def rank(comm):
        net = _mlp(backend, extra=(layers.BatchNorm(16), layers.Dropout(0.3)))
        net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=2, batch_size=5,
                verbose=0, distributed=comm)
        return net

    nets = _results(run_threads(rank, 2))
    bn = [net.layers[2] for net in nets]
    drop = [net.layers[3] for net in nets]
    for k in ("running_mean", "running_var"):  # per-rank statistics, averaged at each epoch's end
        np.testing.assert_array_equal(nnxp.to_numpy(bn[0].buffers[k]), nnxp.to_numpy(bn[1].buffers[k]))
    assert_same_params(nets[1], nets[0], 0.0)
    assert drop[0].seed != drop[1].seed  # each rank draws its own dropout masks


# ------------------------------------------------------------ progress and saving
def test_only_rank0_prints(capsys: pytest.CaptureFixture) -> None:
    x, y = _data(24)

    def rank(comm):
        _mlp().fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=2, batch_size=4,
                   verbose=2, distributed=comm)

    _results(run_threads(rank, 3))
    out = capsys.readouterr().out
    assert out.count("data-parallel over 3 ranks") == 1 and "global batch 12 = 3 x 4" in out
    assert out.count("epoch 1:") == 1 and out.count("epoch 2:") == 1


def test_only_rank0_writes_callback_files(tmp_path: Path) -> None:
    from nnxp import callbacks

    x, y = _data(24)

    def rank(comm):
        cbs = [callbacks.CSVLogger(tmp_path / f"log{comm.rank}.csv"),
               callbacks.ModelCheckpoint(tmp_path / f"ckpt{comm.rank}.npz", monitor="loss")]
        _mlp().fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=2, batch_size=4,
                   verbose=0, distributed=comm, callbacks=cbs)

    _results(run_threads(rank, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt0.npz", "log0.csv"]
    rows = (tmp_path / "log0.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 3


# ------------------------------------------------------------ faults
@pytest.mark.parametrize(("what", "pattern"), [
    ("batch_size", r"batch_size: rank 0 has 4; rank 1 has 5"),
    ("data", r"x rows: rank 0 has '[0-9a-f]+'; rank 1 has"),
    ("model", r"layers: rank 0 has .*out_features': 16.*rank 1 has .*out_features': 17"),
    ("seed", r"seed: rank 0 has 1; rank 1 has 2"),
    ("optimizer", r"optimizer: rank 0 has \('SGD'.*rank 1 has \('Adam'"),
])
def test_ranks_that_disagree_fail_together(what: str, pattern: str) -> None:
    x, y = _data(30)

    def rank(comm):
        odd = comm.rank == 1
        xr = x + 1.0 if odd and what == "data" else x
        net = _mlp(width=17 if odd and what == "model" else 16, seed=2 if odd and what == "seed" else 1)
        opt = optim.Adam() if odd and what == "optimizer" else optim.SGD(lr=0.1)
        net.fit(xr, y, loss=losses.SoftmaxCrossEntropy(), optimizer=opt, epochs=1,
                batch_size=5 if odd and what == "batch_size" else 4, verbose=0, distributed=comm)

    outs = run_threads(rank, 3)
    for err in outs:
        assert isinstance(err, DistributedError) and err.all_ranks
        assert "same model, data and arguments on every rank" in str(err)
        assert len(__import__("re").findall(pattern, str(err))) == 1, str(err)


def test_error_on_one_rank_stops_the_others() -> None:
    x, y = _data(40)

    class Trap(layers.ReLU):
        def __init__(self, rank: int) -> None:
            super().__init__()
            self.rank, self.calls = rank, 0

        def forward(self, x, training=True):
            if training and self.rank == 1:
                self.calls += 1
                if self.calls == 3:
                    raise RuntimeError("injected failure")
            return super().forward(x, training)

    def rank(comm):
        net = nnxp.Sequential([layers.Dense(6, 8), Trap(comm.rank), layers.Dense(8, 3)], dtype="float64")
        net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=1, batch_size=4,
                verbose=0, distributed=comm)

    outs = run_threads(rank, 3)
    assert isinstance(outs[1], RuntimeError) and str(outs[1]) == "injected failure"
    for r in (0, 2):
        assert isinstance(outs[r], DistributedError) and not outs[r].all_ranks
        msg = str(outs[r])
        assert f"rank {r} of 3" in msg and "rank 1 of 3 (thread) failed in fit at epoch 1, batch 2" in msg
        assert "RuntimeError: injected failure" in msg


def test_nonfinite_loss_stops_every_rank_at_the_same_step() -> None:
    x, y = _data(40)
    x[22, 1] = np.nan  # with batch 4 on 2 ranks, row 22 of the epoch's order falls to rank 1 (no shuffle)

    def rank(comm):
        net = _mlp()
        before = None
        try:
            net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=1, batch_size=4,
                    shuffle=False, verbose=0, distributed=comm)
        except nnxp.NonFiniteLossError as exc:
            before = exc
        return net, before

    outs = _results(run_threads(rank, 2))
    for net, exc in outs:
        assert exc is not None and exc.epoch == 1 and exc.batch == 2 and exc.ranks == [1]
        assert "non-finite on rank(s) [1]" in str(exc)
        assert net.optimizer.steps == 2 and all(np.isfinite(p).all() for p in _params(net))
    assert_same_params(outs[1][0], outs[0][0], 0.0)


def test_rank_that_never_calls_fit_times_out() -> None:
    x, y = _data(12)

    def rank(comm):
        if comm.rank == 0:
            _mlp().fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), batch_size=4,
                       verbose=0, distributed=comm)

    outs = run_threads(rank, 2, timeout=0.5)
    assert isinstance(outs[0], DistributedError)
    assert "waited longer than 0.5 s in the start check" in str(outs[0]) and outs[1] is None
