"""Data-parallel training on the MPI world: run under ``mpiexec -n 2`` and ``-n 3``
(tests/test_distributed_mpi.py does, within timeouts; so does ``nox -s tests-mpi``).

Every rank runs every test; each compares its own result with a single-process
reference it computes itself, so an assertion fails on the rank where it fails.
Without mpiexec the tests run on one process (size 1) and still pass.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import nnxp
from nnxp import distributed, layers, losses, optim
from nnxp.distributed import DistributedError

OPTIMIZERS = {"sgd-momentum": lambda: optim.SGD(lr=0.1, momentum=0.9), "adam": lambda: optim.Adam(lr=0.01)}
TOL = {"float64": 1e-10, "float32": 2e-5}


@pytest.fixture(scope="module")
def comm() -> distributed.Communicator:
    return distributed.init(timeout=120)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, n)


def _mlp(dtype: str = "float64", width: int = 16) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(6, width), layers.ReLU(), layers.Dense(width, 3)], backend="numpy",
                           dtype=dtype, seed=1)


def _assert_same(actual: nnxp.Sequential, expected: nnxp.Sequential, rtol: float) -> None:
    for (_, la, k), (_, le, _) in zip(actual.slots(), expected.slots(), strict=True):
        e = nnxp.to_numpy(le.params[k])
        np.testing.assert_allclose(nnxp.to_numpy(la.params[k]), e, rtol=rtol, atol=rtol * np.abs(e).max())


def _identical_across_ranks(comm: distributed.Communicator, net: nnxp.Sequential) -> None:
    flat = np.concatenate([nnxp.to_numpy(layer.params[k]).ravel() for _, layer, k in net.slots()])
    every = comm.allgather(flat.tobytes())
    assert all(b == every[0] for b in every)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("n", [43, 37])  # short last global batches: -n 2: 3 and 5 rows; -n 3: 7 and 1 row(s)
def test_ranks_train_like_one_process(comm: distributed.Communicator, dtype: str, opt: str, n: int) -> None:
    x, y = _data(n)
    xv, yv = _data(13, seed=3)
    b = 4
    ref = _mlp(dtype)
    href = ref.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[opt](), epochs=3,
                   batch_size=comm.size * b, validation_data=(xv, yv), verbose=0)
    net = _mlp(dtype)
    hist = net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[opt](), epochs=3, batch_size=b,
                   validation_data=(xv, yv), verbose=0, distributed=comm)
    _assert_same(net, ref, TOL[dtype])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(hist[key], href[key], rtol=10 * TOL[dtype])
    assert net.optimizer.steps == ref.optimizer.steps
    _identical_across_ranks(comm, net)


def test_checkpoint_resumes_on_one_process(comm: distributed.Communicator) -> None:
    x, y = _data(50)
    folder = comm.bcast(tempfile.mkdtemp(prefix="nnxp-mpi-") if comm.rank == 0 else None)
    path = os.path.join(folder, "ckpt.npz")
    net = _mlp()
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.Adam(lr=0.01), epochs=1, batch_size=4,
            verbose=0, distributed=comm)
    net.save(path)  # every rank calls it; rank 0 alone writes
    comm.barrier()
    assert os.listdir(folder) == ["ckpt.npz"]
    net.fit(x, y, epochs=1, batch_size=4, verbose=0, distributed=comm)  # the uninterrupted run
    one = nnxp.load(path, backend="numpy")  # every rank resumes alone, at the global batch
    one.fit(x, y, epochs=1, batch_size=4 * comm.size, verbose=0)
    _assert_same(one, net, 1e-10)
    comm.barrier()
    if comm.rank == 0:
        os.remove(path)
        os.rmdir(folder)


def test_disagreement_raised_on_every_rank(comm: distributed.Communicator) -> None:
    if comm.size == 1:
        pytest.skip("needs several ranks")
    x, y = _data(30)
    with pytest.raises(DistributedError, match=r"batch_size: rank 0 has 4; rank 1 has 5") as info:
        _mlp().fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1),
                   batch_size=5 if comm.rank == 1 else 4, verbose=0, distributed=comm)
    assert info.value.all_ranks


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nonfinite_loss_raised_on_every_rank(comm: distributed.Communicator) -> None:
    x, y = _data(40)
    x[3, 0] = np.inf
    net = _mlp()
    with pytest.raises(nnxp.NonFiniteLossError) as info:
        net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=1, batch_size=2,
                shuffle=False, verbose=0, distributed=comm)
    assert info.value.batch == 3 // (2 * comm.size)
    _identical_across_ranks(comm, net)
