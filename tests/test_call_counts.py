"""Array calls per training step, counted on array_api_strict (benchmarks/calls.py).

At small batches a GPU step costs what its array calls cost on the host, so
these counts are the CPU-checkable part of the GPU speed target: nnxp's
portable step issues the hand-written twin's calls plus a fixed, explained
extra. The twin itself is checked to train exactly like nnxp, so the count
compares equal work."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("array_api_strict")

import nnxp
from benchmarks.calls import CallCounter, count_nnxp, count_twin
from benchmarks.twins import ArrayMLPTwin
from nnxp import optim
from nnxp.layers import Dense, ReLU

STEPS = 30
#: the running training accuracy, which the twin does not keep: argmax, ==, astype, sum, +
ACCURACY_CALLS = 5
#: check_finite="device": isfinite, &, where per step, and one where per parameter (6 here)
DEVICE_GUARD_CALLS = 3 + 6


def test_counter_counts_launches_not_views() -> None:
    import array_api_strict as xps

    a = xps.ones((4, 3))
    b = xps.ones((3, 2))
    with CallCounter() as c:
        z = a @ b + 1.0           # 2 kernels
        v = z[1:3, ...]           # a view
        r = xps.reshape(v, (4,))  # a view
        _ = r.shape, r.dtype, r.device, z.T
        s = xps.sum(r)            # 1 kernel
        float(s)                  # 1 host read
    assert dict(c.calls) == {"__matmul__": 1, "__add__": 1, "sum": 1}
    assert dict(c.syncs) == {"__float__": 1}


def test_twin_step_count_is_what_a_hand_written_step_issues() -> None:
    twin, steps = count_twin(64, STEPS)
    per = twin.total / steps
    # forward 3 matmuls + 3 bias adds + 2 maximum; softmax CE 9; its gradient 4 (one-hot) + 1 (/m);
    # backward 3 dW + 3 db + 2 dX + 2 masks + 2 multiplies; SGD 2 per parameter;
    # per epoch: the gather and the loss read, spread over the steps
    assert per == pytest.approx(8 + 9 + 5 + 12 + 12, abs=0.5)


@pytest.mark.parametrize("batch_size", [64, 1024])
def test_nnxp_step_issues_the_twins_calls_plus_accuracy(batch_size: int) -> None:
    twin, steps = count_twin(batch_size, STEPS)
    off, _ = count_nnxp(batch_size, STEPS, "off")
    extra = off.total / steps - twin.total / steps
    assert extra <= ACCURACY_CALLS + 0.1, (dict(off.calls), dict(twin.calls))
    # host reads per epoch, not per step: the label range check (min, max) and the three sums
    assert sum(off.syncs.values()) <= 5, dict(off.syncs)


def test_nnxp_step_without_extras_issues_exactly_the_twins_calls() -> None:
    twin, steps = count_twin(64, STEPS)
    bare, _ = count_nnxp(64, STEPS, "off", metrics=())
    assert bare.total / steps <= twin.total / steps + 0.1, (dict(bare.calls), dict(twin.calls))


def test_device_guard_costs_three_calls_and_one_per_parameter() -> None:
    off, steps = count_nnxp(64, 2 * STEPS, "off")
    dev, _ = count_nnxp(64, 2 * STEPS, "device")
    assert (dev.total - off.total) / steps <= DEVICE_GUARD_CALLS + 0.1
    # it reads its flag at each progress refresh (every nb // 20 steps: 20 times), not per step
    assert sum(dev.syncs.values()) - sum(off.syncs.values()) == 20


@pytest.mark.parametrize("xp_name", ["numpy", "array_api_strict"])
def test_twin_trains_like_nnxp(xp_name: str) -> None:
    xp = pytest.importorskip(xp_name)
    rng = np.random.default_rng(3)
    n, bs = 200, 32  # a smaller last batch
    x = rng.random((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    net = nnxp.Sequential([Dense(784, 200), ReLU(), Dense(200, 200), ReLU(), Dense(200, 10)], seed=5)
    dense = [layer for layer in net.layers if "weight" in layer.params]
    twin = ArrayMLPTwin([nnxp.to_numpy(d.params["weight"]) for d in dense],
                        [nnxp.to_numpy(d.params["bias"]) for d in dense], xp, lr=0.1, seed=5)
    for _ in range(2):
        h = net.fit(x, y, loss="softmax_cross_entropy", optimizer=optim.SGD(lr=0.1) if not net.optimizer else None,
                    epochs=1, batch_size=bs, verbose=0)
        twin_loss = twin.fit_epoch(xp.asarray(x), xp.asarray(y), bs)
        assert twin_loss == pytest.approx(h["loss"][-1], rel=1e-5)
    for d, w in zip(dense, twin.W, strict=True):
        np.testing.assert_allclose(nnxp.to_numpy(d.params["weight"]), np.asarray(w), rtol=1e-4, atol=1e-6)
