"""Finite-difference gradient checks for layers and losses."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import backend_of, to_numpy
from .layers.containers import first_leaf

__all__ = ["GradcheckError", "gradcheck"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def _numeric(f, host: np.ndarray, set_value, eps: float) -> np.ndarray:
    """Central differences of scalar ``f()`` over every element of ``host``."""
    grad = np.empty_like(host)
    flat, gflat = host.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        set_value(host)
        fp = f()
        flat[i] = old - eps
        set_value(host)
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    set_value(host)
    return grad


def _compare(name: str, analytic: Any, numeric: np.ndarray, atol: float, rtol: float) -> float:
    a = to_numpy(analytic).astype(np.float64)
    if a.shape != numeric.shape:
        raise GradcheckError(f"gradient {name}: analytic shape {a.shape} != expected {numeric.shape}")
    err = np.abs(a - numeric)
    bad = err > atol + rtol * np.abs(numeric)
    if bad.any():
        i = np.unravel_index(np.argmax(err - atol - rtol * np.abs(numeric)), a.shape)
        raise GradcheckError(
            f"gradient {name} is wrong at {bad.sum()} of {a.size} entries; worst at index {tuple(int(j) for j in i)}: "
            f"analytic {a[i]:.8g} vs finite difference {numeric[i]:.8g} (atol={atol}, rtol={rtol})"
        )
    return float(err.max(initial=0.0))


def gradcheck(obj: Any, x: Any, y_true: Any = None, *, eps: float = 1e-6, atol: float = 1e-6,
              rtol: float = 1e-4, training: bool = True, seed: int = 0) -> dict[str, float]:
    """Compare a layer's or a loss's backward pass with central finite differences.

    For a layer, the scalar checked is ``sum(forward(x) * r)`` for a fixed
    random ``r``, so ``backward(r)`` must equal its gradient with respect to
    ``x`` and to every parameter. For a loss, the scalar is
    ``forward(x, y_true)`` and ``backward()`` must be its gradient in ``x``.

    Args:
        obj: a :class:`~nnxp.layers.Layer` or a loss (has ``forward`` and
            ``backward()`` taking no argument).
        x: input (layer) or predictions (loss), float64, on any backend; integer
            indices for a layer that takes them (``Embedding``), whose parameter
            gradients alone are then checked.
        y_true: targets, for a loss.
        eps: finite-difference step.
        atol: absolute tolerance.
        rtol: relative tolerance.
        training: passed to the layer's ``forward``. Per-step randomness is
            reseeded (``layer.init_state``) before every forward, so dropout
            masks are fixed, and buffers (running statistics) are restored.
        seed: seed of the random projection ``r``.

    Returns:
        The largest absolute error per checked gradient, e.g.
        ``{"input": 3e-10, "weight": 1e-9, "bias": 2e-10}``.

    Raises:
        TypeError: ``x`` is not float64 (finite differences need it) nor indices for an index layer.
        GradcheckError: a gradient is wrong; the message says where.
    """
    backend = backend_of(x)
    xp = backend.xp
    indices = getattr(first_leaf(obj), "takes_indices", False) and xp.isdtype(x.dtype, "integral")
    if x.dtype != xp.float64 and not indices:
        raise TypeError(f"gradcheck needs float64 inputs for accurate finite differences, got {x.dtype}; "
                        "cast with xp.astype(x, xp.float64) and build the layer in float64")
    x_host = to_numpy(x).astype(np.float64).copy()
    errors: dict[str, float] = {}
    state = {"x": x}

    def set_x(h: np.ndarray) -> None:
        state["x"] = backend.from_host(h)

    if y_true is not None or not hasattr(obj, "params"):  # a loss
        def f() -> float:
            return float(to_numpy(obj.forward(state["x"], y_true)))

        f()
        grad = obj.backward()
        errors["input"] = _compare("input", grad, _numeric(f, x_host, set_x, eps), atol, rtol)
        return errors

    layer = obj
    if not layer.built:
        layer.build(backend, "float64", seed)
    buffers = dict(layer.buffers)  # training-mode forwards update running statistics: restore them after

    def run(xv: Any) -> Any:
        # reseed per-step randomness (dropout masks) so every forward sees the same function
        layer.init_state(np.random.default_rng(seed))
        return layer.forward(xv, training=training)

    y = run(x)
    r_host = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    r = backend.from_host(r_host)

    def f() -> float:
        return float(np.sum(to_numpy(run(state["x"])) * r_host))

    grad_x = layer.backward(r)
    analytic = {k: to_numpy(v).copy() for k, v in layer.grads.items()}
    if indices:  # integer input (Embedding): no input gradient exists, only the parameters' are checked
        if grad_x is not None:
            raise GradcheckError(f"{layer!r} takes integer indices but its backward returned an input gradient")
    else:
        errors["input"] = _compare("input", grad_x, _numeric(f, x_host, set_x, eps), atol, rtol)
        set_x(x_host)
    for name, p in list(layer.params.items()):
        host = to_numpy(p).astype(np.float64).copy()

        def set_p(h: np.ndarray, name: str = name) -> None:
            layer.params[name] = backend.from_host(h)

        errors[name] = _compare(name, analytic[name], _numeric(f, host, set_p, eps), atol, rtol)
        layer.params[name] = p
    layer.buffers.update(buffers)
    return errors
