"""Learning-rate schedules: pass one as an optimizer's ``lr``.

```python
opt = optim.AdamW(lr=schedules.CosineWarmup(3e-4, total_steps=5000, warmup_steps=200))
opt = optim.SGD(lr=schedules.StepDecay(0.1, step_size=30, gamma=0.1, per="epoch"), momentum=0.9)
opt = optim.Adam(lr=schedules.ReduceOnPlateau(1e-3, monitor="val_loss", patience=2))
```

As in Keras, a schedule carries the initial learning rate and the optimizer
asks it for the rate of each update. A schedule is a function of a counter
kept on the host: the optimizer's step count (``per="step"``, the default: the
first update uses ``schedule(0)``) or its count of finished epochs
(``per="epoch"``, like a PyTorch scheduler stepped once per epoch). The rate
is a Python float computed before each update, so a schedule never reads the
device. :class:`ReduceOnPlateau` changes the rate after an epoch from a metric
of that epoch (``val_loss`` by default), which ``fit`` already holds on the
host. The optimizer saves the schedule's configuration and state in
checkpoints, so a resumed run continues the schedule exactly.

The values follow ``torch.optim.lr_scheduler``: :class:`StepDecay` is
``StepLR``, :class:`ExponentialDecay` with ``decay_steps=1`` is
``ExponentialLR``, :class:`CosineWarmup` is ``LinearLR`` then
``CosineAnnealingLR`` (``SequentialLR``), :class:`ReduceOnPlateau` is
``ReduceLROnPlateau``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CosineWarmup", "ExponentialDecay", "ReduceOnPlateau", "Schedule", "StepDecay",
           "from_config"]


def _positive(name: str, value: float) -> float:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, got {name}={value!r}")
    return float(value)


def _count(name: str, value: int, least: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {name}={value!r}")
    return int(value)


#: schedule classes by name, your own subclasses included (for checkpoints)
_SCHEDULES: dict[str, type[Schedule]] = {}


class Schedule:
    """Base class: the learning rate as a function of a step or epoch count.

    Subclasses implement :meth:`__call__` (and :meth:`config`, whose keys are
    constructor arguments). Stateful ones (:class:`ReduceOnPlateau`) also
    implement :meth:`end_epoch`, :meth:`state` and :meth:`load_state`.

    Args:
        per: ``"step"``: the counter is the optimizer's number of updates so
            far; ``"epoch"``: its number of finished epochs.

    Attributes:
        lr: the initial (peak, for a warmup) learning rate.
    """

    lr: float

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SCHEDULES[cls.__name__] = cls  # checkpoints name the class; from_config finds it here

    def __init__(self, per: str = "step") -> None:
        if per not in ("step", "epoch"):
            raise ValueError(f"per must be 'step' or 'epoch', got {per!r}")
        self.per = per

    def __call__(self, count: int) -> float:
        """The learning rate for counter value ``count`` (0 for the first update or epoch).

        Args:
            count: number of updates (or finished epochs) before the one being made.

        Returns:
            The learning rate, a Python float.
        """
        raise NotImplementedError

    def at(self, steps: int, epochs: int) -> float:
        """The rate for an optimizer that has made ``steps`` updates in ``epochs`` finished epochs."""
        return self(epochs if self.per == "epoch" else steps)

    def end_epoch(self, logs: Mapping[str, float]) -> None:
        """Called by the optimizer after each epoch with that epoch's logs (``fit``'s, incl. validation)."""

    def state(self) -> dict[str, Any]:
        """What changes during training besides the counters (JSON-serialisable), for checkpoints."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this schedule."""
        return {"per": self.per}

    def to_config(self) -> dict[str, Any]:
        """``{"type": class name, "config": ...}``, as checkpoints store it (see :func:`from_config`)."""
        return {"type": type(self).__name__, "config": self.config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


class StepDecay(Schedule):
    """``lr * gamma ** (count // step_size)`` (PyTorch's ``StepLR``).

    Args:
        lr: initial learning rate.
        step_size: counts between decays.
        gamma: multiplicative factor of each decay.
        per: count updates (``"step"``) or epochs (``"epoch"``).
    """

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1, per: str = "step") -> None:
        super().__init__(per)
        self.lr = _positive("lr", lr)
        self.step_size = _count("step_size", step_size)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, count: int) -> float:
        return self.lr * self.gamma ** (count // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma, **super().config()}


class ExponentialDecay(Schedule):
    """``lr * decay_rate ** (count / decay_steps)`` (Keras's ``ExponentialDecay``;
    with ``decay_steps=1`` PyTorch's ``ExponentialLR`` with ``gamma=decay_rate``).

    Args:
        lr: initial learning rate.
        decay_rate: factor per ``decay_steps`` counts.
        decay_steps: counts over which the rate falls by ``decay_rate``.
        staircase: decay in whole ``decay_steps`` (the exponent is floored).
        per: count updates (``"step"``) or epochs (``"epoch"``).
    """

    def __init__(self, lr: float, decay_rate: float, decay_steps: int = 1, staircase: bool = False,
                 per: str = "step") -> None:
        super().__init__(per)
        self.lr = _positive("lr", lr)
        self.decay_rate = _positive("decay_rate", decay_rate)
        self.decay_steps = _count("decay_steps", decay_steps)
        self.staircase = bool(staircase)

    def __call__(self, count: int) -> float:
        if self.staircase:
            return self.lr * self.decay_rate ** (count // self.decay_steps)
        return self.lr * self.decay_rate ** (count / self.decay_steps)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "decay_rate": self.decay_rate, "decay_steps": self.decay_steps,
                "staircase": self.staircase, **super().config()}


class CosineWarmup(Schedule):
    """Linear warmup, then cosine decay: the usual transformer schedule.

    For ``count < warmup_steps`` the rate rises linearly from
    ``lr * warmup_start`` to ``lr``; then it follows half a cosine from ``lr``
    down to ``min_lr``, reached at ``total_steps``, and stays there.
    With ``warmup_start=0`` the first update has rate 0 (as in Hugging Face's
    ``get_cosine_schedule_with_warmup``); PyTorch's ``LinearLR`` needs
    ``warmup_start > 0``.

    Args:
        lr: peak learning rate.
        total_steps: count at which the rate reaches ``min_lr``.
        warmup_steps: length of the linear warmup (0: start the cosine at once).
        min_lr: final learning rate.
        warmup_start: first rate as a fraction of ``lr``.
        per: count updates (``"step"``) or epochs (``"epoch"``).
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
                 warmup_start: float = 0.0, per: str = "step") -> None:
        super().__init__(per)
        self.lr = _positive("lr", lr)
        self.total_steps = _count("total_steps", total_steps)
        self.warmup_steps = _count("warmup_steps", warmup_steps, least=0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps})")
        if not 0 <= min_lr <= lr:
            raise ValueError(f"min_lr must lie in [0, lr], got min_lr={min_lr!r} with lr={lr!r}")
        if not 0 <= warmup_start <= 1:
            raise ValueError(f"warmup_start is a fraction of lr in [0, 1], got {warmup_start!r}")
        self.min_lr, self.warmup_start = float(min_lr), float(warmup_start)

    def __call__(self, count: int) -> float:
        w = self.warmup_steps
        if count < w:
            return self.lr * (self.warmup_start + (1 - self.warmup_start) * count / w)
        t = min(count, self.total_steps) - w
        return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / (self.total_steps - w))) / 2

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr": self.min_lr, "warmup_start": self.warmup_start, **super().config()}


class ReduceOnPlateau(Schedule):
    """Cut the rate by ``factor`` when a metric stopped improving for ``patience`` epochs.

    PyTorch's ``ReduceLROnPlateau`` (Keras's ``ReduceLROnPlateau`` callback is
    the same with ``threshold_mode="abs"``). After each epoch the optimizer
    passes ``fit``'s logs; the schedule reads ``logs[monitor]`` (a host float,
    so nothing waits on the device) and keeps its rate until the next epoch.

    Args:
        lr: initial learning rate.
        monitor: the log entry to watch, e.g. ``"val_loss"`` (needs
            ``validation_data``), ``"loss"``, ``"val_accuracy"``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (``"max"`` for accuracies, else ``"min"``).
        factor: multiplies the rate at each cut (< 1).
        patience: epochs without improvement before a cut.
        min_delta: least change that counts as an improvement: relative to
            the best value (``threshold_mode="rel"``: better than
            ``best * (1 - min_delta)`` in min mode) or absolute (``"abs"``).
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: epochs after a cut during which no new cut is counted.
        min_lr: lower bound of the rate.
        eps: a cut smaller than this is skipped.
    """

    def __init__(self, lr: float, monitor: str = "val_loss", mode: str = "auto", factor: float = 0.1,
                 patience: int = 10, min_delta: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__("epoch")
        self.lr = _positive("lr", lr)
        self.monitor = str(monitor)
        self.mode = _mode(mode, self.monitor)
        if not 0 < factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {factor!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        if not min_delta >= 0 or not min_lr >= 0 or not eps >= 0:
            raise ValueError(f"min_delta, min_lr and eps must be >= 0, got {min_delta!r}, {min_lr!r}, {eps!r}")
        self.factor = float(factor)
        self.patience = _count("patience", patience, least=0)
        self.cooldown = _count("cooldown", cooldown, least=0)
        self.min_delta, self.threshold_mode = float(min_delta), threshold_mode
        self.min_lr, self.eps = float(min_lr), float(eps)
        self.current = self.lr
        self.best: float | None = None
        self.bad_epochs = 0
        self.cooldown_left = 0

    def __call__(self, count: int) -> float:
        return self.current

    def improved(self, value: float) -> bool:
        """``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if self.best is None:
            return not math.isnan(value)
        best, d = self.best, self.min_delta
        if self.mode == "min":
            return value < (best * (1 - d) if self.threshold_mode == "rel" else best - d)
        return value > (best * (1 + d) if self.threshold_mode == "rel" else best + d)

    def end_epoch(self, logs: Mapping[str, float]) -> None:
        """Read ``logs[monitor]``; cut the rate after ``patience`` epochs without improvement.

        Raises:
            ValueError: the logs hold no ``monitor`` entry (e.g. ``val_loss`` without validation data).
        """
        if self.monitor not in logs:
            raise ValueError(f"ReduceOnPlateau watches {self.monitor!r} but the epoch's logs hold only "
                             f"{sorted(logs)}: pass validation_data to fit, or monitor one of those.")
        value = float(logs[self.monitor])
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            new = max(self.current * self.factor, self.min_lr)
            if self.current - new > self.eps:
                self.current = new
            self.cooldown_left, self.bad_epochs = self.cooldown, 0

    def state(self) -> dict[str, Any]:
        return {"current": self.current, "best": self.best, "bad_epochs": self.bad_epochs,
                "cooldown_left": self.cooldown_left}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.current = float(state.get("current", self.lr))
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.cooldown_left = int(state.get("cooldown_left", 0))

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "monitor": self.monitor, "mode": self.mode, "factor": self.factor,
                "patience": self.patience, "min_delta": self.min_delta, "threshold_mode": self.threshold_mode,
                "cooldown": self.cooldown, "min_lr": self.min_lr, "eps": self.eps}


def _mode(mode: str, monitor: str) -> str:
    """``"min"`` or ``"max"`` for a monitored log entry (``"auto"``: max for accuracies)."""
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


def from_config(spec: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_config` output (as stored in checkpoints).

    Args:
        spec: ``{"type": "CosineWarmup", "config": {...}}``.

    Returns:
        The schedule (its state, if any, is restored separately with :meth:`Schedule.load_state`).

    Raises:
        ValueError: an unknown schedule type.
    """
    cls = _SCHEDULES.get(spec.get("type", ""))
    if cls is None:
        raise ValueError(f"Unknown schedule type {spec.get('type')!r}; known: {sorted(_SCHEDULES)}")
    return cls(**spec.get("config", {}))
