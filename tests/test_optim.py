"""Optimizers: agreement with torch.optim on the same gradients, the ``ok``
mask, where the state lives, moving it, and hyperparameter validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch_twins
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim, schedules

CONFIGS = [
    ("sgd", lambda: optim.SGD(lr=0.1)),
    ("sgd-wd", lambda: optim.SGD(lr=0.1, weight_decay=0.1)),
    ("momentum", lambda: optim.SGD(lr=0.1, momentum=0.9)),
    ("momentum-wd", lambda: optim.SGD(lr=0.05, momentum=0.5, weight_decay=0.01)),
    ("nesterov", lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True)),
    ("nesterov-wd", lambda: optim.SGD(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("adam", lambda: optim.Adam(lr=0.01)),
    ("adam-betas", lambda: optim.Adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6)),
    ("adam-l2", lambda: optim.Adam(lr=0.01, weight_decay=0.1)),
    ("adamw", lambda: optim.AdamW(lr=0.01, weight_decay=0.1)),
    ("adamw-default", lambda: optim.AdamW(lr=0.01)),
    ("rmsprop", lambda: optim.RMSprop(lr=0.01)),
    ("rmsprop-momentum", lambda: optim.RMSprop(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.9)),
    ("rmsprop-centered-wd", lambda: optim.RMSprop(lr=0.01, centered=True, weight_decay=0.1)),
    ("rmsprop-all", lambda: optim.RMSprop(lr=0.005, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.01)),
    ("adagrad", lambda: optim.Adagrad(lr=0.1)),
    ("adagrad-all", lambda: optim.Adagrad(lr=0.1, lr_decay=0.05, eps=1e-8, initial_accumulator_value=0.1,
                                          weight_decay=0.1)),
    # clipping (the random gradients have a global norm near 5 and elements beyond 0.5) and schedules
    ("sgd-clipnorm", lambda: optim.SGD(lr=0.1, momentum=0.9, clip_norm=1.0)),
    ("adam-clipnorm-big", lambda: optim.Adam(lr=0.01, clip_norm=100.0)),  # not reached: no change
    ("adamw-clipvalue", lambda: optim.AdamW(lr=0.01, clip_value=0.5)),
    ("rmsprop-clipnorm", lambda: optim.RMSprop(lr=0.01, momentum=0.5, clip_norm=0.5)),
    ("adagrad-clipvalue", lambda: optim.Adagrad(lr=0.1, clip_value=0.3)),
    ("momentum-cosine", lambda: optim.SGD(lr=schedules.CosineWarmup(0.1, total_steps=4, warmup_steps=2),
                                          momentum=0.9)),
    ("adam-step-clip", lambda: optim.Adam(lr=schedules.StepDecay(0.02, step_size=2, gamma=0.5), clip_norm=2.0)),
    ("rmsprop-exp", lambda: optim.RMSprop(lr=schedules.ExponentialDecay(0.01, 0.8))),
    ("adagrad-cosine", lambda: optim.Adagrad(lr=schedules.CosineWarmup(0.1, 5, 1, min_lr=0.01, warmup_start=0.5),
                                             lr_decay=0.1)),
]
IDS = [c[0] for c in CONFIGS]
STEPS = 5


def _layers(backend: nnxp.Backend, dtype: str = "float64") -> list[layers.Dense]:
    return [layers.Dense(3, 4).build(backend, dtype, rng=0), layers.Dense(4, 2, bias=False).build(backend, dtype, 1)]


def _slots(ls: list[layers.Dense]) -> list[tuple[str, layers.Layer, str]]:
    return [(f"{i}.{k}", layer, k) for i, layer in enumerate(ls) for k in layer.params]


def _grads(ls: list[layers.Dense], step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return {f"{i}.{k}": rng.standard_normal(tuple(v.shape))
            for i, layer in enumerate(ls) for k, v in layer.params.items()}


def _set_grads(ls: list[layers.Dense], grads: dict[str, np.ndarray]) -> None:
    for i, layer in enumerate(ls):
        for k in layer.params:
            layer.grads[k] = nnxp.to_device(grads[f"{i}.{k}"], layer.backend, dtype=layer.dtype)


def _host(ls: list[layers.Dense]) -> dict[str, np.ndarray]:
    return {f"{i}.{k}": nnxp.to_numpy(v).copy() for i, layer in enumerate(ls) for k, v in layer.params.items()}


def _state(opt: optim.Optimizer) -> dict[str, np.ndarray]:
    return {f"{key}/{k}": nnxp.to_numpy(v).copy() for key, st in opt.state.items() for k, v in st.items()}


# ------------------------------------------------------------ vs torch
@pytest.mark.torch
@pytest.mark.parametrize(("name", "make"), CONFIGS, ids=IDS)
def test_matches_torch_optim(backend: nnxp.Backend, name: str, make) -> None:
    torch = torch_twins.torch()
    ls = _layers(backend)
    opt = make()
    start = _host(ls)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in start.items()}
    topt = torch_twins.torch_optimizer(opt, tparams.values())
    slots = _slots(ls)
    for step in range(STEPS):
        grads = _grads(ls, step)
        _set_grads(ls, grads)
        opt.step(slots)
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        for i, layer in enumerate(ls):
            for k, v in layer.params.items():
                assert_close(v, tparams[f"{i}.{k}"].detach().numpy(), backend, "float64", rtol=1e-12, atol=1e-14,
                             err_msg=f"step {step + 1}, {i}.{k}")
    assert opt.steps == STEPS
    if opt.schedule is not None:
        assert opt.lr == opt.schedule(STEPS - 1)  # the rate of the last update
    # momentum buffers, moments and sums agree with torch's state too
    names = {"velocity": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq", "square_avg": "square_avg",
             "grad_avg": "grad_avg", "sum": "sum"}
    for key, t in tparams.items():
        tst = topt.state[t]
        assert opt.state[key].keys() <= names.keys()
        for k, v in opt.state[key].items():
            assert_close(v, tst[names[k]].numpy(), backend, "float64", rtol=1e-12, atol=1e-15, err_msg=f"{key}/{k}")


def test_sgd_by_hand(backend: nnxp.Backend) -> None:
    ls = _layers(backend)
    p0 = _host(ls)
    g = _grads(ls, 0)
    _set_grads(ls, g)
    optim.SGD(lr=0.5, weight_decay=0.1).step(_slots(ls))
    for k, v in _host(ls).items():
        np.testing.assert_allclose(v, p0[k] - 0.5 * (g[k] + 0.1 * p0[k]), rtol=1e-14)


# ----------------------------------------------------------- ok masking
@pytest.mark.parametrize(("name", "make"), CONFIGS, ids=IDS)
def test_ok_false_leaves_params_and_state(backend: nnxp.Backend, name: str, make) -> None:
    ls = _layers(backend)
    opt = make()
    slots = _slots(ls)
    yes = backend.xp.asarray(True, device=backend.device)
    no = backend.xp.asarray(False, device=backend.device)
    for step in range(2):
        _set_grads(ls, _grads(ls, step))
        opt.step(slots, yes)
    params, state = _host(ls), _state(opt)
    _set_grads(ls, _grads(ls, 7))
    opt.step(slots, no)
    for k, v in _host(ls).items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    after = _state(opt)
    assert after.keys() == state.keys()
    for k, v in after.items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    for layer in ls:
        for v in layer.params.values():
            assert_on(v, backend, "float64")


@pytest.mark.parametrize(("name", "make"), CONFIGS, ids=IDS)
def test_ok_true_equals_unmasked(backend: nnxp.Backend, name: str, make) -> None:
    la, lb = _layers(backend), _layers(backend)
    oa, ob = make(), make()
    yes = backend.xp.asarray(True, device=backend.device)
    for step in range(3):
        g = _grads(la, step)
        _set_grads(la, g)
        _set_grads(lb, g)
        oa.step(_slots(la))
        ob.step(_slots(lb), yes)
    for k, v in _host(lb).items():
        np.testing.assert_array_equal(v, _host(la)[k], err_msg=k)


# ---------------------------------------------------------------- state
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "make"), CONFIGS, ids=IDS)
def test_state_lives_on_param_backend(backend: nnxp.Backend, dtype: str, name: str, make) -> None:
    ls = _layers(backend, dtype)
    opt = make()
    _set_grads(ls, _grads(ls, 0))
    opt.step(_slots(ls))
    for i, layer in enumerate(ls):
        for k, p in layer.params.items():
            assert_on(p, backend, dtype, tuple(p.shape))
            for v in opt.state[f"{i}.{k}"].values():
                assert_on(v, backend, dtype, tuple(p.shape))
    if isinstance(opt, optim.Adam):
        expected = {"m", "v"}
    elif isinstance(opt, optim.RMSprop):
        expected = {"square_avg", *(["grad_avg"] if opt.centered else []), *(["velocity"] if opt.momentum else [])}
    elif isinstance(opt, optim.Adagrad):
        expected = {"sum"}
    else:
        expected = {"velocity"} if opt.momentum else set()
    assert all(set(st) == expected for st in opt.state.values())


@pytest.mark.parametrize("make", [lambda: optim.SGD(lr=0.05, momentum=0.9), lambda: optim.Adam(lr=0.01)],
                         ids=["momentum", "adam"])
def test_model_to_moves_optimizer_state(backend: nnxp.Backend, make) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3))
    y = rng.integers(0, 2, 24)

    def fresh():
        return nnxp.Sequential([layers.Dense(3, 5), layers.Tanh(), layers.Dense(5, 2)], backend="numpy",
                               dtype="float64", seed=4)

    ref, net = fresh(), fresh()
    kw = dict(loss=losses.SoftmaxCrossEntropy(), epochs=1, batch_size=8, verbose=0)
    ref.fit(x, y, optimizer=make(), **kw)
    net.fit(x, y, optimizer=make(), **kw)
    net.to(backend)
    assert net.backend is backend
    for st in net.optimizer.state.values():
        for v in st.values():
            assert_on(v, backend, "float64")
    ref.fit(x, y, epochs=1, batch_size=8, verbose=0)
    net.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for (_, la, k), (_, lb, _) in zip(ref.slots(), net.slots()):
        assert_close(lb.params[k], la.params[k], backend, "float64", rtol=1e-12, atol=1e-12)
    for key, st in ref.optimizer.state.items():
        for k, v in st.items():
            assert_close(net.optimizer.state[key][k], v, backend, "float64", rtol=1e-12, atol=1e-14)
    net.to("numpy")
    for st in net.optimizer.state.values():
        for v in st.values():
            assert type(v) is np.ndarray


# ------------------------------------------------------- hyperparameters
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: optim.SGD(lr=0), "Learning rate"),
        (lambda: optim.SGD(lr=-0.1), "Learning rate"),
        (lambda: optim.SGD(lr=float("nan")), "Learning rate"),
        (lambda: optim.Adam(lr=0), "Learning rate"),
        (lambda: optim.SGD(weight_decay=-1), "weight_decay"),
        (lambda: optim.AdamW(weight_decay=-0.01), "weight_decay"),
        (lambda: optim.SGD(momentum=1.0), "momentum"),
        (lambda: optim.SGD(momentum=-0.5), "momentum"),
        (lambda: optim.SGD(nesterov=True), "nesterov"),
        (lambda: optim.Adam(betas=(1.0, 0.999)), "betas"),
        (lambda: optim.Adam(betas=(0.9, -0.1)), "betas"),
        (lambda: optim.AdamW(betas=(0.9, 1.5)), "betas"),
        (lambda: optim.Adam(eps=-1e-8), "eps"),
        (lambda: optim.RMSprop(alpha=1.0), "alpha"),
        (lambda: optim.RMSprop(momentum=-0.1), "momentum"),
        (lambda: optim.RMSprop(eps=-1.0), "eps"),
        (lambda: optim.RMSprop(lr=0), "Learning rate"),
        (lambda: optim.Adagrad(lr_decay=-0.1), "lr_decay"),
        (lambda: optim.Adagrad(initial_accumulator_value=-1), "initial_accumulator_value"),
        (lambda: optim.SGD(clip_norm=0), "clip_norm"),
        (lambda: optim.Adam(clip_value=-1.0), "clip_value"),
        (lambda: optim.SGD(clip_norm=1.0, clip_value=1.0), "not both"),
    ],
    ids=["lr0", "lr-neg", "lr-nan", "adam-lr0", "wd-neg", "adamw-wd-neg", "momentum1", "momentum-neg",
         "nesterov-no-momentum", "beta1", "beta2-neg", "beta2-big", "eps-neg", "rms-alpha", "rms-momentum",
         "rms-eps", "rms-lr0", "adagrad-decay", "adagrad-init", "clip-norm-0", "clip-value-neg", "clip-both"],
)
def test_invalid_hyperparameters(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_get_optimizer_and_config() -> None:
    assert isinstance(optim.get_optimizer("sgd"), optim.SGD)
    adam = optim.get_optimizer("Adam", lr=0.5)
    assert type(adam) is optim.Adam and adam.lr == 0.5
    assert isinstance(optim.get_optimizer("adamw"), optim.AdamW)
    inst = optim.SGD()
    assert optim.get_optimizer(inst) is inst
    assert isinstance(optim.get_optimizer("RMSprop", momentum=0.5), optim.RMSprop)
    assert isinstance(optim.get_optimizer("adagrad"), optim.Adagrad)
    with pytest.raises(ValueError, match="Unknown optimizer 'lion'"):
        optim.get_optimizer("lion")
    with pytest.raises(TypeError, match=r"lr must be a number or an nnxp\.schedules\.Schedule"):
        optim.SGD(lr="0.1")
    sgd = optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    assert sgd.config() == {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "nesterov": True}
    assert optim.AdamW().weight_decay == 0.01 and optim.AdamW.decoupled and not optim.Adam.decoupled
    clone = optim.AdamW(**{k: tuple(v) if isinstance(v, list) else v for k, v in optim.AdamW(lr=0.3).config().items()})
    assert clone.config() == optim.AdamW(lr=0.3).config()
    assert repr(sgd).startswith("SGD(lr=0.1")
    # every optimizer rebuilds from its config, schedules and clipping included (as checkpoints do)
    for _, make in CONFIGS:
        opt = make()
        again = optim.from_config(type(opt).__name__, opt.config())
        assert type(again) is type(opt) and again.config() == opt.config() and repr(again) == repr(opt)
    with pytest.raises(ValueError, match="Unknown optimizer type 'Lion'"):
        optim.from_config("Lion", {})
