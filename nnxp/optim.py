"""Optimizers. They update ``layer.params`` from ``layer.grads``; their state
(momentum, Adam moments) lives on the model's device and moves with it.

Every optimizer takes a learning-rate schedule as its ``lr``
(:mod:`nnxp.schedules`) and clips gradients with ``clip_norm=`` (global
norm) or ``clip_value=`` before its update.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from . import schedules
from .backends import Backend
from .schedules import Schedule

Array = Any
#: (key, layer, name): the parameter ``layer.params[name]``, saved as ``key``
Slot = tuple[str, Any, str]

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "from_config", "get_optimizer"]


class Optimizer:
    """Base class.

    Args:
        lr: learning rate, or a :class:`~nnxp.schedules.Schedule` that gives
            the rate of each update (``optim.SGD(lr=schedules.StepDecay(0.1, 1000))``).
        weight_decay: L2 penalty added to the gradient (``AdamW``: decoupled).
        clip_norm: clip the gradients of each step so that their global
            2-norm (all parameters together, as ``torch.nn.utils.clip_grad_norm_``
            and Keras's ``global_clipnorm``) is at most this; ``None``: off.
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``
            (``clip_grad_value_``, Keras's ``clipvalue``); ``None``: off.

    Attributes:
        lr: the current learning rate: the one the last update used (after
            :meth:`end_epoch`, with a schedule: the one the next update will use).
        schedule: the schedule, or ``None`` for a constant rate.
        steps: updates made so far (the counter of ``per="step"`` schedules).
        epochs: epochs finished (:meth:`end_epoch`; the counter of ``per="epoch"`` schedules).
        grad_norm: with ``clip_norm``, the last step's global gradient norm
            before clipping (a 0-d device array; reading it waits for the device).

    The arithmetic of each update is a kernel of the parameter's backend
    (``sgd_update``, ``adam_update``, ...; on NumPy in place with ``out=`` into
    scratch buffers, the same operations in the same order), and so is
    clipping (``clip_by_global_norm``, ``clip_by_value``): the gradients are
    clipped on the device, the clipped copies feed the update and
    ``layer.grads`` is left as it is. The learning rate is a host float
    computed before each update: schedules never read the device.
    """

    def __init__(self, lr: float | Schedule = 0.01, weight_decay: float = 0.0, clip_norm: float | None = None,
                 clip_value: float | None = None) -> None:
        self.schedule: Schedule | None = None
        if isinstance(lr, Schedule):
            self.schedule = lr
            lr = lr.at(0, 0)
        elif not isinstance(lr, numbers.Real) or isinstance(lr, bool):
            raise TypeError(f"lr must be a number or an nnxp.schedules.Schedule, got {type(lr).__name__}")
        elif not lr > 0:
            raise ValueError(f"Learning rate must be positive, got lr={lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive (or None for no clipping), got {v!r}")
        if clip_norm is not None and clip_value is not None:
            raise ValueError("Pass clip_norm or clip_value, not both (as in Keras); clip_norm bounds the "
                             "global norm, clip_value each element.")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.state: dict[str, dict[str, Array]] = {}
        self.steps = 0
        self.epochs = 0
        self.grad_norm: Array | None = None

    def step(self, slots: Iterable[Slot], ok: Array | None = None) -> None:
        """Apply one update to every parameter.

        Args:
            slots: ``(key, layer, name)`` triples, e.g. from ``Sequential.slots()``.
            ok: optional 0-d boolean device array; where False, parameters and
                state are left unchanged (``fit``'s on-device non-finite guard).
        """
        if self.schedule is not None:
            self.lr = float(self.schedule.at(self.steps, self.epochs))
        self.steps += 1
        slots = list(slots)
        grads = self._clipped(slots)
        for i, (key, layer, name) in enumerate(slots):
            p = layer.params[name]
            g = layer.grads[name] if grads is None else grads[i]
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

    def _clipped(self, slots: list[Slot]) -> list[Array] | None:
        """The step's gradients after ``clip_norm`` / ``clip_value`` (``None`` when neither is set)."""
        if (self.clip_norm is None and self.clip_value is None) or not slots:
            return None
        backend = slots[0][1].backend
        grads = [layer.grads[name] for _, layer, name in slots]
        ws = backend.workspace(self)  # the clipped copies only live through this step
        if self.clip_value is not None:
            return backend.clip_by_value(grads, self.clip_value, ws)
        grads, self.grad_norm = backend.clip_by_global_norm(grads, self.clip_norm, ws=ws)
        return grads

    def end_epoch(self, logs: Mapping[str, float]) -> None:
        """Count a finished epoch and let the schedule see its logs (``fit`` calls this).

        :class:`~nnxp.schedules.ReduceOnPlateau` reads its metric here;
        ``per="epoch"`` schedules move on to the next epoch's rate. Call it
        yourself after each epoch when you step the optimizer by hand.

        Args:
            logs: the epoch's host floats (``loss``, ``val_loss``, ...).
        """
        self.epochs += 1
        if self.schedule is not None:
            self.schedule.end_epoch(logs)
            self.lr = float(self.schedule.at(self.steps, self.epochs))

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
        if self.grad_norm is not None:
            self.grad_norm = backend.asarray(self.grad_norm, copy=True)
        return self

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable; a schedule as its ``to_config()``), for checkpoints."""
        out: dict[str, Any] = {"lr": self.lr if self.schedule is None else self.schedule.to_config(),
                               "weight_decay": self.weight_decay}
        if self.clip_norm is not None:
            out["clip_norm"] = self.clip_norm
        if self.clip_value is not None:
            out["clip_value"] = self.clip_value
        return out

    def counters(self) -> dict[str, Any]:
        """What a resumed run needs besides :meth:`config` and the arrays: step and epoch counts,
        the current rate and the schedule's state (JSON-serialisable)."""
        out: dict[str, Any] = {"steps": self.steps, "epochs": self.epochs, "lr": self.lr}
        if self.schedule is not None:
            out["schedule_state"] = self.schedule.state()
        return out

    def load_counters(self, counters: Mapping[str, Any]) -> None:
        """Restore what :meth:`counters` returned (missing entries, from older checkpoints, stay fresh)."""
        self.steps = int(counters.get("steps", 0))
        self.epochs = int(counters.get("epochs", 0))
        if self.schedule is not None:
            self.schedule.load_state(counters.get("schedule_state") or {})
            self.lr = float(self.schedule.at(self.steps, self.epochs))
        elif "lr" in counters:
            self.lr = float(counters["lr"])

    def __repr__(self) -> str:
        cfg = {**self.config(), "lr": self.lr if self.schedule is None else self.schedule}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Follows PyTorch's formulation: ``v = momentum * v + g``; the step is
    ``g + momentum * v`` with Nesterov, else ``v``.

    Args:
        lr: learning rate.
        momentum: momentum factor (0 = plain SGD).
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient.
        clip_norm: clip the global gradient norm to this (see :class:`Optimizer`).
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
    """

    def __init__(self, lr: float | Schedule = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
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
        clip_norm: clip the global gradient norm to this (see :class:`Optimizer`).
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
    """

    decoupled = False

    def __init__(self, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
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
        clip_norm: clip the global gradient norm to this (see :class:`Optimizer`).
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
    """

    decoupled = True

    def __init__(self, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr, betas, eps, weight_decay, clip_norm, clip_value)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e), in PyTorch's formulation.

    ``s = alpha * s + (1 - alpha) * g**2`` and the step is ``lr * g / (sqrt(s) + eps)``;
    ``centered`` subtracts the squared running mean of the gradient from ``s``
    (an estimate of the variance); ``momentum`` feeds the steps through a
    velocity buffer. The defaults are PyTorch's (Keras uses ``lr=1e-3``,
    ``rho=0.9``, ``epsilon=1e-7`` and puts ``epsilon`` inside the square root).

    Args:
        lr: learning rate or schedule.
        alpha: decay rate of the running averages (Keras's ``rho``).
        eps: added to the denominator.
        momentum: momentum factor (0: none).
        centered: normalise by the estimated variance of the gradient.
        weight_decay: L2 penalty added to the gradient.
        clip_norm: clip the global gradient norm to this (see :class:`Optimizer`).
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
    """

    def __init__(self, lr: float | Schedule = 0.01, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 centered: bool = False, weight_decay: float = 0.0, clip_norm: float | None = None,
                 clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.alpha, self.eps, self.momentum, self.centered = float(alpha), float(eps), float(momentum), bool(centered)

    def init_state(self, p: Array) -> dict[str, Array]:
        from .backends import backend_of

        xp = backend_of(p).xp
        st = {"square_avg": xp.zeros_like(p)}
        if self.centered:
            st["grad_avg"] = xp.zeros_like(p)
        if self.momentum:
            st["velocity"] = xp.zeros_like(p)
        return st

    def update(self, p: Array, g: Array, state: dict[str, Array], backend: Backend,
               inplace: bool = True) -> Array:
        return backend.rmsprop_update(p, g, state, self.lr, self.alpha, self.eps, self.momentum, self.centered,
                                      self.weight_decay, inplace, self._ws(backend, inplace))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011), in PyTorch's formulation.

    ``s = s + g**2`` and the step is ``lr_t * g / (sqrt(s) + eps)`` with
    ``lr_t = lr / (1 + (t - 1) * lr_decay)`` at update ``t`` (1-based).

    Args:
        lr: learning rate or schedule.
        lr_decay: Adagrad's own decay of the rate per update.
        eps: added to the denominator.
        initial_accumulator_value: start value of the sum of squares.
        weight_decay: L2 penalty added to the gradient.
        clip_norm: clip the global gradient norm to this (see :class:`Optimizer`).
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
    """

    def __init__(self, lr: float | Schedule = 0.01, lr_decay: float = 0.0, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0, weight_decay: float = 0.0, clip_norm: float | None = None,
                 clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        for name, v in (("lr_decay", lr_decay), ("eps", eps), ("initial_accumulator_value", initial_accumulator_value)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        self.lr_decay, self.eps = float(lr_decay), float(eps)
        self.initial_accumulator_value = float(initial_accumulator_value)

    def init_state(self, p: Array) -> dict[str, Array]:
        from .backends import backend_of

        return {"sum": backend_of(p).xp.full_like(p, self.initial_accumulator_value)}

    def update(self, p: Array, g: Array, state: dict[str, Array], backend: Backend,
               inplace: bool = True) -> Array:
        lr = self.lr / (1 + (self.steps - 1) * self.lr_decay)  # a host float: self.steps counts this update
        return backend.adagrad_update(p, g, state, lr, self.eps, self.weight_decay, inplace,
                                      self._ws(backend, inplace))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lr_decay": self.lr_decay, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}


_OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get_optimizer(opt: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"adagrad"``) or an instance."""
    if isinstance(opt, Optimizer):
        return opt
    try:
        return _OPTIMIZERS[opt.lower()](**kwargs)
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown optimizer {opt!r}; pass an Optimizer or one of {sorted(_OPTIMIZERS)}.") from None


def from_config(name: str, config: Mapping[str, Any], counters: Mapping[str, Any] | None = None) -> Optimizer:
    """Rebuild an optimizer from its class name and :meth:`Optimizer.config` (as checkpoints store them).

    Args:
        name: the class name, e.g. ``"AdamW"`` (one of this module's optimizers).
        config: the constructor arguments; lists become tuples (``betas``) and a
            schedule's ``{"type", "config"}`` becomes the schedule.
        counters: :meth:`Optimizer.counters` output to restore (steps, epochs, schedule state).

    Returns:
        The optimizer, without array state (the checkpoint's arrays go into ``state`` afterwards).

    Raises:
        ValueError: an unknown optimizer or schedule.
    """
    cls = next((c for c in _OPTIMIZERS.values() if c.__name__ == name), None)
    if cls is None:
        raise ValueError(f"Unknown optimizer type {name!r}; known: {sorted(c.__name__ for c in _OPTIMIZERS.values())}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    if isinstance(kwargs.get("lr"), Mapping):
        kwargs["lr"] = schedules.from_config(kwargs["lr"])
    opt = cls(**kwargs)
    if counters is not None:
        opt.load_counters(counters)
    return opt
