"""Optimizers: agreement with torch.optim on the same gradients, the ``ok``
mask, where the state lives, moving it, and hyperparameter validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch_twins
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim

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
    # momentum buffers / Adam moments agree with torch's state too
    for key, t in tparams.items():
        tst = topt.state[t]
        if "velocity" in opt.state[key]:
            assert_close(opt.state[key]["velocity"], tst["momentum_buffer"].numpy(), backend, "float64", rtol=1e-12)
        if "m" in opt.state[key]:
            assert_close(opt.state[key]["m"], tst["exp_avg"].numpy(), backend, "float64", rtol=1e-12, atol=1e-15)
            assert_close(opt.state[key]["v"], tst["exp_avg_sq"].numpy(), backend, "float64", rtol=1e-12, atol=1e-15)


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
    expected = {"velocity"} if getattr(opt, "momentum", 0) else ({"m", "v"} if isinstance(opt, optim.Adam) else set())
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
    ],
    ids=["lr0", "lr-neg", "lr-nan", "adam-lr0", "wd-neg", "adamw-wd-neg", "momentum1", "momentum-neg",
         "nesterov-no-momentum", "beta1", "beta2-neg", "beta2-big", "eps-neg"],
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
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'"):
        optim.get_optimizer("rmsprop")
    sgd = optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    assert sgd.config() == {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "nesterov": True}
    assert optim.AdamW().weight_decay == 0.01 and optim.AdamW.decoupled and not optim.Adam.decoupled
    clone = optim.AdamW(**{k: tuple(v) if isinstance(v, list) else v for k, v in optim.AdamW(lr=0.3).config().items()})
    assert clone.config() == optim.AdamW(lr=0.3).config()
    assert repr(sgd).startswith("SGD(lr=0.1")
