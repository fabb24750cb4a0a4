"""The NumPy backend's kernel threads (``nnxp.backends.numpy_threads``): how passes are split,
when, what BLAS does meanwhile, and that split kernels and models compute what unsplit ones do.
The window kernels' split versions are compared with the portable ones in test_conv_kernels.py."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from conftest import works
from helpers import assert_run_plan_matches_layers, split_kernels
from threadpoolctl import threadpool_info, threadpool_limits

import nnxp
from nnxp import layers as L
from nnxp.backends import numpy as numpy_backend
from nnxp.backends import numpy_conv, numpy_threads, resolve_backend
from nnxp.backends.base import Workspace

pytestmark = pytest.mark.skipif(not works("numpy"), reason="numpy backend unavailable")


@pytest.fixture(autouse=True)
def _default_threads():
    yield
    nnxp.set_num_threads(None)


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_parts_cover_the_rows_once_in_order_on_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, str]] = []
    both = threading.Barrier(2, timeout=10)  # a part waits for the other: two threads must run them

    def fn(a: int, b: int) -> tuple[int, int]:
        seen.append((a, b, threading.current_thread().name))
        both.wait()
        return a, b

    with split_kernels(monkeypatch):
        out = numpy_threads.parallel_rows(fn, 7, 7)
    assert out == [(0, 3), (3, 7)]
    assert sorted((a, b) for a, b, _ in seen) == [(0, 3), (3, 7)]
    assert len({name for *_, name in seen}) == 2  # the caller and one pool thread


def test_threads_take_the_next_free_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given more parts than threads, each runs once and the results come back in part order."""
    parts = [(i, i + 1) for i in range(9)]
    with split_kernels(monkeypatch):
        out = numpy_threads.parallel_rows(lambda a, b: a * 10, 9, 0, parts=parts)
    assert out == [a * 10 for a, _ in parts]
    assert numpy_threads.parallel_rows(lambda a, b: a, 9, 0, parts=parts) == list(range(9))  # in order, here


def test_no_split_outside_owned_threads_or_inside_a_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numpy_threads, "MIN_PART", 1)
    nnxp.set_num_threads(2)
    assert not numpy_threads.splitting()
    assert numpy_threads.parallel_rows(lambda a, b: (a, b), 10, 10) == [(0, 10)]
    with numpy_threads.owned_threads():
        inner = numpy_threads.parallel_rows(lambda a, b: numpy_threads.parallel_rows(lambda c, d: (c, d), 4, 4),
                                            10, 10)
    assert inner == [[(0, 4)], [(0, 4)]]


def test_small_work_stays_in_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    nnxp.set_num_threads(2)
    with numpy_threads.owned_threads():
        assert numpy_threads.part_bounds(64, numpy_threads.MIN_PART - 1) == [(0, 64)]
        assert numpy_threads.part_bounds(64, 4 * numpy_threads.MIN_PART) == [(0, 32), (32, 64)]
        assert numpy_threads.part_bounds(1, 4 * numpy_threads.MIN_PART) == [(0, 1)]


def test_an_error_in_a_part_is_raised_after_all_parts_end(monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[int] = []

    def fn(a: int, b: int) -> None:
        if a > 0:
            raise ValueError("part two failed")
        done.append(a)

    with split_kernels(monkeypatch):
        with pytest.raises(ValueError, match="part two failed"):
            numpy_threads.parallel_rows(fn, 4, 4)
        assert done == [0]
        assert numpy_threads.parallel_rows(lambda a, b: b - a, 4, 4) == [2, 2]  # the pool still works


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_non_positive_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        nnxp.set_num_threads(bad)  # type: ignore[arg-type]


def test_thread_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNXP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    nnxp.set_num_threads(None)
    assert nnxp.get_num_threads() == 3
    monkeypatch.delenv("NNXP_NUM_THREADS")
    nnxp.set_num_threads(None)
    assert nnxp.get_num_threads() == 5  # OMP_NUM_THREADS=1 keeps a process on one core
    nnxp.set_num_threads(4)
    assert nnxp.get_num_threads() == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    nnxp.set_num_threads(None)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = min(cpus, numpy_threads.MAX_DEFAULT)
    assert nnxp.get_num_threads() == cpus
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # ranks on one machine share its cores
    nnxp.set_num_threads(None)
    assert nnxp.get_num_threads() == max(1, cpus // 2)
    monkeypatch.setenv("NNXP_NUM_THREADS", "many")
    nnxp.set_num_threads(None)
    with pytest.raises(ValueError, match="NNXP_NUM_THREADS='many' is not a thread count"):
        nnxp.get_num_threads()


def test_owned_threads_puts_blas_on_one_thread_and_gives_it_back() -> None:
    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS loaded
    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library")
    nnxp.set_num_threads(2)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        with numpy_threads.owned_threads():
            assert _blas_threads() == [1] * len(before)
            with numpy_threads.owned_threads():  # nested: nothing more to do
                assert _blas_threads() == [1] * len(before)
            # another thread (a rank of run_threads) enters and leaves while this one is inside
            done = threading.Event()

            def rank() -> None:
                with numpy_threads.owned_threads():
                    assert numpy_threads.splitting()
                done.set()

            other = threading.Thread(target=rank)
            other.start()
            other.join(timeout=30)
            assert done.is_set()
            assert _blas_threads() == [1] * len(before)  # still limited: this thread is inside
        assert _blas_threads() == before
    nnxp.set_num_threads(1)
    with numpy_threads.owned_threads():  # one thread: nothing to split, BLAS keeps its threads
        assert not numpy_threads.splitting()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_relu_adam_and_linear_compute_what_whole_ones_do(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    b = resolve_backend("numpy")
    monkeypatch.setattr(numpy_backend, "LINEAR_TASKS_MIN", 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4, 4)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    p0, gp = rng.standard_normal((7, 9)).astype(dtype), rng.standard_normal((7, 9)).astype(dtype)
    xl, wl, bl = (rng.standard_normal(s).astype(dtype) for s in ((7, 5), (5, 3), (3,)))
    gl = rng.standard_normal((7, 3)).astype(dtype)

    def run() -> list[np.ndarray]:
        ws = Workspace(np.empty)
        y, mask = b.relu(x, ws)
        gx = b.relu_backward(g, mask, ws)
        p, state = p0.copy(), {"m": np.zeros_like(p0), "v": np.zeros_like(p0)}
        for step in (1, 2):
            b.adam_update(p, gp, state, 1e-2, (0.9, 0.999), 1e-8, step, 0.01, False, ws=Workspace(np.empty))
        lin = b.linear(xl, wl, bl, Workspace(np.empty))
        lgw, lgb, lgx = b.linear_backward(xl, wl, gl, True, True, {}, Workspace(np.empty))
        return [y.copy(), mask.copy(), gx.copy(), p, state["m"], state["v"], lin, lgw, lgb, lgx]

    whole = run()
    with split_kernels(monkeypatch):
        split = run()
    for w, s in zip(whole, split, strict=True):
        np.testing.assert_allclose(w, s, rtol=1e-6 if dtype == "float32" else 1e-13, atol=0)


def _cnn(seed: int = 0, first_relu: bool = False) -> nnxp.Sequential:
    head = [L.ReLU(), L.MaxPool2D(2)] if first_relu else []
    return nnxp.Sequential([*head, L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
                            L.Conv2D(4, 6, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                            L.Dense(6 * 2 * 2, 5)], backend="numpy", dtype="float64", seed=seed)


def test_relu_runs_after_the_max_pool_it_precedes_with_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """pool(relu(x)) == relu(pool(x)) and both route the gradient to the same pixel: the model's
    outputs and gradients equal those of the layers run in the order given (the fused
    convolution-pooling step is tested in tests/test_fused.py)."""
    monkeypatch.setattr(numpy_conv, "FUSE", False)
    net = _cnn()
    kinds = [type(layer).__name__ for layer in net._plan()]
    assert kinds == ["Conv2D", "MaxPool2D", "ReLU", "Conv2D", "MaxPool2D", "ReLU", "Flatten", "Dense"]
    assert [type(layer).__name__ for layer in _cnn(first_relu=True)._plan()][:2] == ["ReLU", "MaxPool2D"]
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal((3, 1, 8, 8)), 1)  # rounded: ties, and zeros after ReLU
    assert_run_plan_matches_layers(net, x, rng.standard_normal((3, 5)))


def test_fit_splits_conv_models_only_and_trains_like_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numpy_threads, "MIN_PART", 1)
    rng = np.random.default_rng(2)
    x = rng.random((40, 1, 8, 8))
    y = rng.integers(0, 5, 40)

    class Probe(nnxp.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(numpy_threads.splitting())

    results = {}
    for threads in (1, 2):
        nnxp.set_num_threads(threads)
        seen: list[bool] = []
        net = _cnn(seed=3)
        hist = net.fit(x, y, loss="softmax_cross_entropy", optimizer="adam", batch_size=16, epochs=2,
                       verbose=0, callbacks=[Probe()])
        assert seen == [threads > 1] * 2
        assert not numpy_threads.splitting()  # the scope ends with fit
        results[threads] = (hist["loss"], [np.array(v) for layer in net.layers for v in layer.params.values()])
    np.testing.assert_allclose(results[2][0], results[1][0], rtol=1e-10)
    for a, b in zip(results[2][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    seen = []
    mlp = nnxp.Sequential([L.Dense(64, 5)], backend="numpy", dtype="float64", seed=0)
    mlp.fit(x.reshape(40, 64), y, loss="softmax_cross_entropy", optimizer="sgd", batch_size=16, epochs=1,
            verbose=0, callbacks=[Probe()])
    assert seen == [False]  # MLPs keep BLAS's own threads


def test_ab_script_switches_a_constant_and_puts_it_back(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/ab.py, the tool behind the README's per-step ratios, on a tiny run."""
    pytest.importorskip("torch")
    from benchmarks import ab
    from nnxp.backends import numpy_conv

    before = numpy_conv.STEP_BYTES
    assert ab.main(["nnxp.backends.numpy_conv", "STEP_BYTES", "1 << 40", "1 << 20", "--samples", "64",
                    "--repeats", "1"]) == 0
    assert numpy_conv.STEP_BYTES == before
    out = capsys.readouterr().out
    assert "A = 1 << 40" in out and "B/A " in out and "x torch" in out
