"""Optimizers. They update ``layer.params`` from ``layer.grads``; their state
(momentum, Adam moments) lives on the model's device and moves with it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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

    The arithmetic of each update is a kernel of the parameter's backend
    (``sgd_update``, ``adam_update``; on NumPy in place with ``out=`` into
    scratch buffers, the same operations in the same order).
    """

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
                layer.params[name] = self.update(p, g, st, layer.backend)
            else:
                xp = layer.xp
                old = dict(st)
                new_p = self.update(p, g, st, layer.backend, inplace=False)
                layer.params[name] = xp.where(ok, new_p, p)
                for k in st:
                    st[k] = xp.where(ok, st[k], old[k])

    def init_state(self, p: Array) -> dict[str, Array]:
        """Fresh state for parameter ``p`` (on its device)."""
        return {}

    def update(self, p: Array, g: Array, state: dict[str, Array], backend: Backend,
               inplace: bool = True) -> Array:
        """The updated parameter; updates ``state``.

        Args:
            p: the parameter.
            g: its gradient.
            state: this parameter's optimizer state (updated).
            backend: the parameter's backend, whose kernel does the arithmetic.
            inplace: the parameter may be overwritten (``False`` while the old
                value is still needed, e.g. to mask the update).

        Returns:
            The new parameter (the same array where a kernel updated it in place).
        """
        raise NotImplementedError

    def _ws(self, backend: Backend, inplace: bool) -> Any:
        """Scratch buffers for in-place update kernels (``None`` where they allocate)."""
        return backend.workspace(self) if inplace else None

    def to(self, backend: Backend) -> Optimizer:
        """Move the optimizer state to ``backend``."""
        for st in self.state.values():
            for k, v in st.items():
                st[k] = backend.asarray(v, copy=True)
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

    def update(self, p: Array, g: Array, state: dict[str, Array], backend: Backend,
               inplace: bool = True) -> Array:
        return backend.sgd_update(p, g, state, self.lr, self.momentum, self.nesterov, self.weight_decay,
                                  inplace, self._ws(backend, inplace))

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

    def update(self, p: Array, g: Array, state: dict[str, Array], backend: Backend,
               inplace: bool = True) -> Array:
        return backend.adam_update(p, g, state, self.lr, self.betas, self.eps, self.steps, self.weight_decay,
                                   self.decoupled, inplace, self._ws(backend, inplace))

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
