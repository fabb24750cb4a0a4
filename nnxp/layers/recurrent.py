"""Recurrent layers over ``(batch, time, features)`` with backpropagation through time.

The time loop runs in Python, one step per array call group; per-step
results are kept in Python lists and joined with ``xp.stack`` (no writes
into arrays, so JAX's immutable arrays work). The input projection of every
step is one matrix product before the loop, and the weight gradients are
one product each after it; only the recurrent product ``h @ weight_hh``
runs per step, forward and backward.

Weight layout follows :class:`~nnxp.layers.Dense` (``(in, out)``, so
``x @ W``): ``weight_ih`` is ``(input_size, G * hidden_size)`` and
``weight_hh`` ``(hidden_size, G * hidden_size)``, with the ``G`` gates side
by side in PyTorch's order. ``torch.nn.LSTM``/``GRU(batch_first=True)``'s
``weight_ih_l0`` is ``weight_ih.T`` and ``weight_hh_l0`` is ``weight_hh.T``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._windows import dtype_error
from .base import Array, Layer


class _Recurrent(Layer):
    """Shared checks, shapes and config of :class:`LSTM` and :class:`GRU`."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} {arg} must be a positive integer, got {v!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.return_sequences = bool(return_sequences)
        self._cache: dict[str, Any] | None = None

    def _uniform(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """PyTorch's recurrent initialisation, ``U(-1/sqrt(hidden), 1/sqrt(hidden))``."""
        k = 1.0 / math.sqrt(self.hidden_size)
        return rng.uniform(-k, k, shape)

    def _check(self, x: Array) -> None:
        self.backend.check(x, f"input of {self!r}")
        if x.ndim != 3 or x.shape[2] != self.input_size or x.shape[1] == 0:
            hint = (f"Set input_size={x.shape[-1]} or fix the previous layer." if x.ndim == 3 and x.shape[1]
                    else "Recurrent layers take batch-first sequences; add a time axis (x[:, None, :]) "
                    "for one step." if x.ndim == 2 else "Give at least one time step.")
            raise ValueError(f"{self!r} expects input of shape (batch, time, {self.input_size}), "
                             f"got {tuple(x.shape)}. {hint}")
        if x.dtype != self.dtype:
            raise dtype_error(self, x)

    def _grad_at(self, grad_y: Array, t: int, steps: int) -> Array | None:
        """The output gradient that reaches step ``t`` from outside (not through time)."""
        if self.return_sequences:
            return grad_y[:, t, :]
        return grad_y if t == steps - 1 else None

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[1] not in (None, self.input_size):
            raise ValueError(f"{self!r} needs per-sample shape (time, {self.input_size}), got {shape}. "
                             "Set input_size to the previous layer's feature size.")
        return (shape[0], self.hidden_size) if self.return_sequences else (self.hidden_size,)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"input_size": self.input_size, "hidden_size": self.hidden_size}
        if not self.return_sequences:
            cfg["return_sequences"] = False
        return cfg

    def _param_grads(self, x: Array, h_prev: Array, dgi: Array, dgh: Array) -> tuple[Array, Array]:
        """Weight gradients from the stacked per-step gate gradients of the input side (``dgi``)
        and the recurrent side (``dgh``); returns both flattened to ``(batch * time, G * H)``."""
        xp = self.xp
        n = self.gates * self.hidden_size
        dgi2, dgh2 = xp.reshape(dgi, (-1, n)), xp.reshape(dgh, (-1, n))
        self.grads["weight_ih"] = xp.matrix_transpose(xp.reshape(x, (-1, self.input_size))) @ dgi2
        self.grads["weight_hh"] = xp.matrix_transpose(xp.reshape(h_prev, (-1, self.hidden_size))) @ dgh2
        return dgi2, dgh2


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), batch first.

    With ``z = x_t @ weight_ih + h_{t-1} @ weight_hh + bias`` split into four
    blocks of ``hidden_size`` columns in PyTorch's gate order
    ``(input i, forget f, cell g, output o)``::

        i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
        c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

    starting from ``h_0 = c_0 = 0``. Weights start ``U(-1/sqrt(H), 1/sqrt(H))``
    as in PyTorch; the bias starts at zero except the forget gate's, at one
    (Jozefowicz et al., 2015; Keras's ``unit_forget_bias``), so early training
    keeps the cell state. The single ``bias`` is PyTorch's ``bias_ih_l0 +
    bias_hh_l0``.

    Args:
        input_size: features per time step.
        hidden_size: size ``H`` of the hidden and cell state.
        return_sequences: return every step's ``h_t``, ``(batch, time, H)``;
            ``False`` returns the last one, ``(batch, H)``.
    """

    gates = 4

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        h = self.hidden_size
        bias = np.zeros(4 * h)
        bias[h:2 * h] = 1.0  # forget gate
        return {"weight_ih": self._uniform(rng, (self.input_size, 4 * h)),
                "weight_hh": self._uniform(rng, (h, 4 * h)), "bias": bias}

    def _scale(self) -> Array:
        """``(0.5, 0.5, 1, 0.5)`` per gate block: ``tanh(z * scale)`` gives every gate in one call,
        as ``sigmoid(z) = (1 + tanh(z / 2)) / 2`` (which never overflows)."""
        s = getattr(self, "_scale_arr", None)
        w = self.params["weight_hh"]
        if s is None or s.dtype != w.dtype or s.device != w.device:
            host = np.repeat([0.5, 0.5, 1.0, 0.5], self.hidden_size)
            s = self._scale_arr = self.backend.from_host(host, w.dtype)
        return s

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._check(x)
        xp, hs = self.xp, self.hidden_size
        n, steps = x.shape[0], x.shape[1]
        w_hh, scale = self.params["weight_hh"], self._scale()
        xw = x @ self.params["weight_ih"] + self.params["bias"]  # every step's input projection at once
        h = c = xp.zeros((n, hs), dtype=x.dtype, device=self.backend.device)
        gates, cells, tanhs, h_prev = [], [], [], []
        for t in range(steps):
            a = xp.tanh((xw[:, t, :] + h @ w_hh) * scale)
            i, f = 0.5 * a[:, :hs] + 0.5, 0.5 * a[:, hs:2 * hs] + 0.5
            g, o = a[:, 2 * hs:3 * hs], 0.5 * a[:, 3 * hs:] + 0.5
            cells.append(c)
            h_prev.append(h)
            c = f * c + i * g
            tc = xp.tanh(c)
            h = o * tc
            gates.append((i, f, g, o))
            tanhs.append(tc)
        outs = [*h_prev[1:], h]
        self._cache = {"x": x, "gates": gates, "c_prev": cells, "tanh_c": tanhs, "h_prev": h_prev}
        return xp.stack(outs, axis=1) if self.return_sequences else h

    def backward(self, grad_y: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp, cache = self.xp, self._cache
        steps = len(cache["gates"])
        w_hh_t = xp.matrix_transpose(self.params["weight_hh"])
        dh_next = dc_next = None
        dzs: list[Array] = [None] * steps
        for t in reversed(range(steps)):
            i, f, g, o = cache["gates"][t]
            tc, c_prev = cache["tanh_c"][t], cache["c_prev"][t]
            outside = self._grad_at(grad_y, t, steps)
            dh = dh_next if outside is None else (outside if dh_next is None else outside + dh_next)
            dc = dh * o * (1 - tc * tc)
            if dc_next is not None:
                dc = dc + dc_next
            dz = xp.concat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                            dh * tc * o * (1 - o)], axis=-1)
            dzs[t] = dz
            dh_next, dc_next = dz @ w_hh_t, dc * f
        dz = xp.stack(dzs, axis=1)
        dz2, _ = self._param_grads(cache["x"], xp.stack(cache["h_prev"], axis=1), dz, dz)
        self.grads["bias"] = xp.sum(dz2, axis=0)
        if not self.need_input_grad:
            return None
        return dz @ xp.matrix_transpose(self.params["weight_ih"])

    def moved(self, backend: Any) -> None:
        super().moved(backend)
        self._scale_arr = None


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al., 2014) in PyTorch's formulation, batch first.

    Gate order ``(reset r, update z, new n)``; with ``gi = x_t @ weight_ih +
    bias_ih`` and ``gh = h_{t-1} @ weight_hh + bias_hh``::

        r = sigmoid(gi_r + gh_r);  z = sigmoid(gi_z + gh_z)
        n = tanh(gi_n + r * gh_n); h_t = (1 - z) * n + z * h_{t-1}

    from ``h_0 = 0``. The two biases are PyTorch's ``bias_ih_l0`` and
    ``bias_hh_l0`` (they differ in the ``n`` block, where ``r`` multiplies
    only ``gh``). Weights start ``U(-1/sqrt(H), 1/sqrt(H))``, biases at zero.

    Args:
        input_size: features per time step.
        hidden_size: size ``H`` of the hidden state.
        return_sequences: return every step's ``h_t``, ``(batch, time, H)``;
            ``False`` returns the last one, ``(batch, H)``.
    """

    gates = 3

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        h = self.hidden_size
        return {"weight_ih": self._uniform(rng, (self.input_size, 3 * h)),
                "weight_hh": self._uniform(rng, (h, 3 * h)),
                "bias_ih": np.zeros(3 * h), "bias_hh": np.zeros(3 * h)}

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._check(x)
        xp, hs = self.xp, self.hidden_size
        n, steps = x.shape[0], x.shape[1]
        w_hh, b_hh = self.params["weight_hh"], self.params["bias_hh"]
        gi_all = x @ self.params["weight_ih"] + self.params["bias_ih"]
        h = xp.zeros((n, hs), dtype=x.dtype, device=self.backend.device)
        saved, h_prev = [], []
        for t in range(steps):
            gi = gi_all[:, t, :]
            gh = h @ w_hh + b_hh
            rz = 0.5 * xp.tanh(0.5 * (gi[:, :2 * hs] + gh[:, :2 * hs])) + 0.5  # sigmoid, overflow-free
            r, z = rz[:, :hs], rz[:, hs:]
            ghn = gh[:, 2 * hs:]
            nn_ = xp.tanh(gi[:, 2 * hs:] + r * ghn)
            h_prev.append(h)
            h = nn_ + z * (h - nn_)
            saved.append((r, z, nn_, ghn))
        outs = [*h_prev[1:], h]
        self._cache = {"x": x, "saved": saved, "h_prev": h_prev}
        return xp.stack(outs, axis=1) if self.return_sequences else h

    def backward(self, grad_y: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp, cache = self.xp, self._cache
        steps = len(cache["saved"])
        w_hh_t = xp.matrix_transpose(self.params["weight_hh"])
        dh_next = None
        dgis: list[Array] = [None] * steps
        dghs: list[Array] = [None] * steps
        for t in reversed(range(steps)):
            r, z, nn_, ghn = cache["saved"][t]
            h_prev = cache["h_prev"][t]
            outside = self._grad_at(grad_y, t, steps)
            dh = dh_next if outside is None else (outside if dh_next is None else outside + dh_next)
            dan = dh * (1 - z) * (1 - nn_ * nn_)
            dar = dan * ghn * r * (1 - r)
            daz = dh * (h_prev - nn_) * z * (1 - z)
            dgis[t] = xp.concat([dar, daz, dan], axis=-1)
            dghs[t] = xp.concat([dar, daz, dan * r], axis=-1)
            dh_next = dh * z + dghs[t] @ w_hh_t
        dgi, dgh = xp.stack(dgis, axis=1), xp.stack(dghs, axis=1)
        dgi2, dgh2 = self._param_grads(cache["x"], xp.stack(cache["h_prev"], axis=1), dgi, dgh)
        self.grads["bias_ih"] = xp.sum(dgi2, axis=0)
        self.grads["bias_hh"] = xp.sum(dgh2, axis=0)
        if not self.need_input_grad:
            return None
        return dgi @ xp.matrix_transpose(self.params["weight_ih"])
