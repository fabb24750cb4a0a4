"""Learning-rate schedules: values against ``torch.optim.lr_scheduler``, training
with a schedule against a PyTorch twin on every backend, the rate in ``History``,
no host reads in a step, and resumed runs that continue the schedule exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch_twins
from helpers import assert_close

import nnxp
from nnxp import layers, losses, optim, schedules

VALUE_CASES = [
    ("step", lambda: schedules.StepDecay(0.1, step_size=3, gamma=0.5)),
    ("exp", lambda: schedules.ExponentialDecay(0.1, 0.9)),
    ("exp-steps", lambda: schedules.ExponentialDecay(0.1, 0.5, decay_steps=4)),
    ("exp-staircase", lambda: schedules.ExponentialDecay(0.1, 0.5, decay_steps=4, staircase=True)),
    ("cosine", lambda: schedules.CosineWarmup(0.1, total_steps=20)),
    ("cosine-warmup", lambda: schedules.CosineWarmup(0.1, total_steps=20, warmup_steps=5)),
    ("cosine-warmup-min", lambda: schedules.CosineWarmup(0.1, 20, warmup_steps=5, min_lr=0.01, warmup_start=0.1)),
]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "make"), VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_values_match_torch_schedulers(name: str, make) -> None:
    torch = torch_twins.torch()
    s = make()
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=s.lr)
    sched = torch_twins.torch_scheduler(s, topt)
    for t in range(21):  # torch's cosine turns up again after T_max; nnxp's stays at min_lr (not compared)
        assert s(t) == pytest.approx(topt.param_groups[0]["lr"], rel=1e-13, abs=1e-18), t
        topt.step()
        sched.step()


def test_cosine_warmup_shape() -> None:
    s = schedules.CosineWarmup(1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    assert [s(t) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert s(7) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert s(10) == s(11) == s(1000) == pytest.approx(0.1)  # stays at min_lr after total_steps
    assert all(s(t) >= s(t + 1) for t in range(4, 12))


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
@pytest.mark.parametrize("cooldown", [0, 2])
def test_reduce_on_plateau_matches_torch(mode: str, threshold_mode: str, cooldown: int) -> None:
    torch = torch_twins.torch()
    rng = np.random.default_rng(0)
    metric = np.cumsum(rng.normal(0, 1, 40)) * (1 if mode == "min" else -1) + rng.normal(0, 0.1, 40)
    s = schedules.ReduceOnPlateau(1.0, monitor="val_loss", mode=mode, factor=0.5, patience=2, min_delta=0.01,
                                  threshold_mode=threshold_mode, cooldown=cooldown, min_lr=0.01)
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=1.0)
    sched = torch_twins.torch_scheduler(s, topt)
    rates = []
    for v in metric:
        s.end_epoch({"val_loss": float(v)})
        sched.step(float(v))
        assert s(0) == topt.param_groups[0]["lr"]
        rates.append(s(0))
    assert rates[-1] < 1.0  # the metric is a random walk: it plateaus, the rate is cut


def test_reduce_on_plateau_nan_and_missing_monitor() -> None:
    s = schedules.ReduceOnPlateau(0.1, patience=0)
    s.end_epoch({"val_loss": float("nan")})  # NaN is never an improvement
    assert s(0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"watches 'val_loss'.*\['loss', 'lr'\].*validation_data"):
        s.end_epoch({"loss": 1.0, "lr": 0.1})
    assert schedules.ReduceOnPlateau(0.1, monitor="val_accuracy").mode == "max"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: schedules.StepDecay(0.0, 3), "lr must be positive"),
        (lambda: schedules.StepDecay(0.1, 0), "step_size"),
        (lambda: schedules.StepDecay(0.1, 2.5), "step_size"),
        (lambda: schedules.ExponentialDecay(0.1, -0.5), "decay_rate"),
        (lambda: schedules.CosineWarmup(0.1, 10, warmup_steps=10), "warmup_steps"),
        (lambda: schedules.CosineWarmup(0.1, 10, min_lr=0.2), "min_lr"),
        (lambda: schedules.CosineWarmup(0.1, 10, warmup_start=2), "warmup_start"),
        (lambda: schedules.StepDecay(0.1, 3, per="batch"), "per must be"),
        (lambda: schedules.ReduceOnPlateau(0.1, factor=1.0), "factor"),
        (lambda: schedules.ReduceOnPlateau(0.1, mode="up"), "mode"),
        (lambda: schedules.ReduceOnPlateau(0.1, threshold_mode="pct"), "threshold_mode"),
        (lambda: schedules.ReduceOnPlateau(0.1, patience=-1), "patience"),
    ],
)
def test_invalid_schedules(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_config_round_trip_and_custom_schedules() -> None:
    for _, make in VALUE_CASES:
        s = make()
        again = schedules.from_config(s.to_config())
        assert type(again) is type(s) and again.config() == s.config()
        assert [again(t) for t in range(30)] == [s(t) for t in range(30)]

    class Halving(schedules.Schedule):  # a user's own schedule is found by name when a checkpoint loads
        def __init__(self, lr: float, per: str = "step") -> None:
            super().__init__(per)
            self.lr = lr

        def __call__(self, count: int) -> float:
            return self.lr / 2**count

        def config(self) -> dict:
            return {"lr": self.lr, **super().config()}

    opt = optim.from_config("SGD", optim.SGD(lr=Halving(0.4)).config())
    assert isinstance(opt.schedule, Halving) and opt.lr == 0.4
    with pytest.raises(ValueError, match="Unknown schedule type 'Nope'"):
        schedules.from_config({"type": "Nope", "config": {}})


# ------------------------------------------------------------ in optimizers
def _dense(backend, dtype: str = "float64") -> list:
    return [layers.Dense(3, 2).build(backend, dtype, rng=0)]


def _step(ls: list, opt: optim.Optimizer, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in ls:
        for k, v in layer.params.items():
            layer.grads[k] = nnxp.to_device(rng.standard_normal(tuple(v.shape)), layer.backend, dtype=layer.dtype)
    opt.step([(f"0.{k}", ls[0], k) for k in ls[0].params])


def test_optimizer_follows_step_and_epoch_counters() -> None:
    ls = _dense("numpy")
    per_step = optim.SGD(lr=schedules.StepDecay(1.0, step_size=2, gamma=0.1))
    rates = []
    for i in range(5):
        _step(ls, per_step, i)
        rates.append(per_step.lr)
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    per_epoch = optim.Adam(lr=schedules.ExponentialDecay(1.0, 0.5, per="epoch"))
    seen = []
    for _ in range(3):  # three epochs of two updates: the rate changes between epochs only
        for i in range(2):
            _step(ls, per_epoch, i)
            seen.append(per_epoch.lr)
        per_epoch.end_epoch({"loss": 0.0})
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert per_epoch.lr == 0.125 and per_epoch.epochs == 3 and per_epoch.steps == 6


def test_schedule_step_reads_nothing_on_the_host() -> None:
    pytest.importorskip("array_api_strict")
    from benchmarks.calls import CallCounter

    ls = _dense("array_api_strict", "float32")
    opt = optim.AdamW(lr=schedules.CosineWarmup(1e-3, 100, 10), clip_norm=0.5)
    with CallCounter() as c:
        for i in range(3):
            _step(ls, opt, i)
    assert dict(c.syncs) == {}
    assert c.total > 0


# ------------------------------------------------------------- with fit
def _blobs(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return rng.standard_normal((n, 4)) + y[:, None], y


def _mlp(backend, dtype: str = "float64", seed: int = 3) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(4, 6), layers.Tanh(), layers.Dense(6, 3)], backend=backend, dtype=dtype,
                           seed=seed)


FIT_CASES = [
    ("cosine-momentum-clipnorm", lambda: optim.SGD(lr=schedules.CosineWarmup(0.5, total_steps=20, warmup_steps=3),
                                                   momentum=0.9, clip_norm=0.5)),
    ("step-epoch-adam", lambda: optim.Adam(lr=schedules.StepDecay(0.05, step_size=2, gamma=0.3, per="epoch"))),
    ("exp-adagrad-clipvalue", lambda: optim.Adagrad(lr=schedules.ExponentialDecay(0.3, 0.9), clip_value=0.05)),
    ("plateau-rmsprop", lambda: optim.RMSprop(lr=schedules.ReduceOnPlateau(0.05, factor=0.5, patience=0,
                                                                           min_delta=0.2, cooldown=1))),
]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "make"), FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_with_schedule_matches_torch(backend: nnxp.Backend, name: str, make) -> None:
    x, y = _blobs()
    val = _blobs(12, seed=1)
    net = _mlp(backend)
    loss = losses.SoftmaxCrossEntropy()
    twin, twin_hist = torch_twins.torch_fit(net, loss, make(), x, y, epochs=5, batch_size=8, validation_data=val)
    hist = net.fit(x, y, loss=loss, optimizer=make(), epochs=5, batch_size=8, shuffle=False, validation_data=val,
                   verbose=0)
    np.testing.assert_allclose(hist["lr"], twin_hist["lr"], rtol=1e-13)
    assert len(set(hist["lr"])) > 1  # the rate did change
    for k in ("loss", "val_loss"):
        np.testing.assert_allclose(hist[k], twin_hist[k], rtol=1e-10, err_msg=k)
    expected = torch_twins.torch_model_params(net, twin)
    for key, layer, k in net.slots():
        assert_close(layer.params[k], expected[key], backend, "float64", rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize(("name", "make"), FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_resume_continues_schedule_exactly(backend: nnxp.Backend, name: str, make, tmp_path: Path) -> None:
    x, y = _blobs(37)
    val = _blobs(12, seed=1)
    kw = dict(batch_size=8, validation_data=val, verbose=0)
    straight = _mlp(backend, "float32")
    straight.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=make(), epochs=5, **kw)

    first = _mlp(backend, "float32")
    first.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=make(), epochs=2, **kw)
    first.save(tmp_path / "ckpt.npz")
    resumed = nnxp.load(tmp_path / "ckpt.npz", backend=backend)
    assert type(resumed.optimizer.schedule) is type(straight.optimizer.schedule)
    assert resumed.optimizer.epochs == 2 and resumed.optimizer.steps == first.optimizer.steps
    resumed.fit(x, y, epochs=3, **kw)  # optimizer, schedule and its state come from the checkpoint
    assert resumed.history.epochs == [1, 2, 3, 4, 5]
    for k in ("loss", "val_loss", "lr"):
        assert resumed.history[k] == straight.history[k], k
    assert resumed.optimizer.counters() == straight.optimizer.counters()
    for (key, la, k), (_, lb, _) in zip(straight.slots(), resumed.slots()):
        np.testing.assert_array_equal(nnxp.to_numpy(lb.params[k]), nnxp.to_numpy(la.params[k]), err_msg=key)


def test_plateau_needs_its_metric() -> None:
    x, y = _blobs()
    net = _mlp("numpy")
    with pytest.raises(ValueError, match="validation_data"):
        net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=schedules.ReduceOnPlateau(0.1)),
                epochs=2, verbose=0)
    assert net.epoch == 1 and len(net.history) == 1  # the epoch that ran is recorded
    hist = net.fit(x, y, optimizer=optim.SGD(lr=schedules.ReduceOnPlateau(0.1, monitor="loss")), epochs=2,
                   verbose=0)
    assert hist["lr"][-2:] == [0.1, 0.1]
