"""Optimizers. They update ``layer.params`` from ``layer.grads``; their state
(momentum, Adam moments) lives on the model's device and moves with it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .backends import Backend

Array = Any
#: (key, layer, name): the parameter ``layer.params[name]``, saved as ``key``
Slot = tuple[str, Any, str]

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "get_optimizer"]


class Optimizer:
    """Base class.

    Args:
        lr: learning rate.
        weight_decay: L2 penalty added to the gradient (``AdamW``: decoupled).

    Attributes:
        use_fast_path: on NumPy arrays, in-place updates run as ``out=``
            ufunc calls into reusable scratch arrays (no temporaries; the same
            operations in the same order, so the same numbers). ``False`` keeps
            the portable path everywhere.
    """

    use_fast_path = True

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"Learning rate must be positive, got lr={lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict[str, Array]] = {}
        self.steps = 0

    def step(self, slots: Iterable[Slot], ok: Array | None = None) -> None:
        """Apply one update to every parameter.

        Args:
            slots: ``(key, layer, name)`` triples, e.g. from ``Sequential.slots()``.
            ok: optional 0-d boolean device array; where False, parameters and
                state are left unchanged (``fit``'s on-device non-finite guard).
        """
        self.steps += 1
        for key, layer, name in slots:
            p, g = layer.params[name], layer.grads[name]
            st = self.state.get(key)
            if st is None:
                st = self.state[key] = self.init_state(p)
            if ok is None:
                layer.params[name] = self.update(p, g, st, layer.xp)
            else:
                xp = layer.xp
                old = dict(st)
                new_p = self.update(p, g, st, xp, inplace=False)
                layer.params[name] = xp.where(ok, new_p, p)
                for k in st:
                    st[k] = xp.where(ok, st[k], old[k])

    def init_state(self, p: Array) -> dict[str, Array]:
        """Fresh state for parameter ``p`` (on its device)."""
        return {}

    def _scratch(self, which: str, p: np.ndarray) -> np.ndarray:
        """A scratch array shaped like ``p`` for the NumPy fast paths.

        One flat buffer per ``which`` and dtype, as large as the largest
        parameter, serves every parameter (updates run one after the other).
        """
        views = self.__dict__.get("_scratch_views")
        if views is None:
            views = self._scratch_views = {}
        key = (which, p.shape, p.dtype)
        view = views.get(key)
        if view is None:
            flats = self.__dict__.setdefault("_scratch_flat", {})
            flat = flats.get((which, p.dtype))
            if flat is None or flat.size < p.size:
                flat = flats[which, p.dtype] = np.empty(p.size, p.dtype)
                for k in [k for k in views if k[0] == which and k[2] == p.dtype]:
                    del views[k]  # views of the old, smaller buffer
            view = views[key] = flat[:p.size].reshape(p.shape)
        return view

    def update(self, p: Array, g: Array, state: dict[str, Array], xp: Any, inplace: bool = True) -> Array:
        """Return the updated parameter (in place where allowed); update ``state``."""
        raise NotImplementedError

    def to(self, backend: Backend) -> Optimizer:
        """Move the optimizer state to ``backend``."""
        for st in self.state.values():
            for k, v in st.items():
                st[k] = backend.asarray(v)
        return self

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Follows PyTorch's formulation: ``v = momentum * v + g``; the step is
    ``g + momentum * v`` with Nesterov, else ``v``.

    Args:
        lr: learning rate.
        momentum: momentum factor (0 = plain SGD).
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def init_state(self, p: Array) -> dict[str, Array]:
        if self.momentum:
            from .backends import backend_of

            return {"velocity": backend_of(p).xp.zeros_like(p)}
        return {}

    def update(self, p: Array, g: Array, state: dict[str, Array], xp: Any, inplace: bool = True) -> Array:
        if inplace and self.use_fast_path and type(p) is np.ndarray and type(g) is np.ndarray:
            return self._update_numpy(p, g, state)
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = self.momentum * state["velocity"] + g
            state["velocity"] = v
            g = g + self.momentum * v if self.nesterov else v
        if inplace:
            p -= self.lr * g
            return p
        return p - self.lr * g

    def _update_numpy(self, p: np.ndarray, g: np.ndarray, state: dict[str, Array]) -> np.ndarray:
        """NumPy fast path of :meth:`update` (in place): the same operations, no temporaries."""
        if self.weight_decay:
            gw = self._scratch("a", p)
            np.multiply(p, self.weight_decay, out=gw)
            g = np.add(g, gw, out=gw)
        if self.momentum:
            v = state["velocity"]
            np.multiply(v, self.momentum, out=v)
            np.add(v, g, out=v)
            if self.nesterov:
                s = self._scratch("b", p)
                np.multiply(v, self.momentum, out=s)
                g = np.add(g, s, out=s)
            else:
                g = v
        step = self._scratch("b", p)
        np.multiply(g, self.lr, out=step)
        return np.subtract(p, step, out=p)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction.

    Args:
        lr: learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient (see :class:`AdamW`
            for the decoupled form).
    """

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)

    def init_state(self, p: Array) -> dict[str, Array]:
        from .backends import backend_of

        xp = backend_of(p).xp
        return {"m": xp.zeros_like(p), "v": xp.zeros_like(p)}

    def update(self, p: Array, g: Array, state: dict[str, Array], xp: Any, inplace: bool = True) -> Array:
        if inplace and self.use_fast_path and type(p) is np.ndarray and type(g) is np.ndarray:
            return self._update_numpy(p, g, state)
        b1, b2 = self.betas
        t = self.steps
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p
        m = state["m"] = b1 * state["m"] + (1 - b1) * g
        v = state["v"] = b2 * state["v"] + (1 - b2) * (g * g)
        # fold both bias corrections into the step size (host floats: no device work)
        step = self.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        eps = self.eps * math.sqrt(1 - b2**t)
        delta = step * m / (xp.sqrt(v) + eps)
        if self.weight_decay and self.decoupled:
            delta = delta + (self.lr * self.weight_decay) * p
        if inplace:
            p -= delta
            return p
        return p - delta

    def _update_numpy(self, p: np.ndarray, g: np.ndarray, state: dict[str, Array]) -> np.ndarray:
        """NumPy fast path of :meth:`update` (in place): the same operations, no temporaries."""
        b1, b2 = self.betas
        t = self.steps
        if self.weight_decay and not self.decoupled:
            gw = self._scratch("c", p)
            np.multiply(p, self.weight_decay, out=gw)
            g = np.add(g, gw, out=gw)
        a = self._scratch("a", p)
        m = state["m"]
        np.multiply(m, b1, out=m)
        np.add(m, np.multiply(g, 1 - b1, out=a), out=m)
        v = state["v"]
        np.multiply(v, b2, out=v)
        np.multiply(g, g, out=a)
        np.add(v, np.multiply(a, 1 - b2, out=a), out=v)
        step = self.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        eps = self.eps * math.sqrt(1 - b2**t)
        d = self._scratch("b", p)
        np.add(np.sqrt(v, out=d), eps, out=d)
        np.divide(np.multiply(m, step, out=a), d, out=d)
        if self.weight_decay and self.decoupled:
            np.add(d, np.multiply(p, self.lr * self.weight_decay, out=a), out=d)
        return np.subtract(p, d, out=p)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "betas": list(self.betas), "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): the
    parameter shrinks by ``lr * weight_decay`` each step, outside the moments.

    Args:
        lr: learning rate.
        betas: moment decay rates.
        eps: added to the denominator.
        weight_decay: decoupled decay factor (default 0.01, as in PyTorch).
    """

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr, betas, eps, weight_decay)


_OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get_optimizer(opt: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``) or an instance."""
    if isinstance(opt, Optimizer):
        return opt
    try:
        return _OPTIMIZERS[opt.lower()](**kwargs)
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown optimizer {opt!r}; pass an Optimizer or one of {sorted(_OPTIMIZERS)}.") from None
