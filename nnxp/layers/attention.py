"""Multi-head self-attention (Vaswani et al., 2017) over ``(batch, time, embed_dim)``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._windows import dtype_error
from .base import Array, Layer


class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product self-attention, batch first.

    ``q, k, v = split(x @ in_proj_weight + in_proj_bias)``, each cut into
    ``num_heads`` heads of ``head_dim = embed_dim // num_heads`` columns;
    per head ``softmax(q k^T / sqrt(head_dim) + mask) v`` along the keys; the
    heads are joined and projected by ``out_proj_weight``/``out_proj_bias``.
    With ``causal=True`` position ``t`` attends to positions ``<= t`` only
    (the mask adds ``-inf`` above the diagonal; it is made once per sequence
    length, dtype and device and reused).

    Layout (Dense-style, ``x @ W``): ``in_proj_weight`` is
    ``(embed_dim, 3 * embed_dim)`` with the q, k, v blocks side by side, and
    ``out_proj_weight`` ``(embed_dim, embed_dim)``. Against
    ``torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)``:
    its ``in_proj_weight`` is ``in_proj_weight.T``, ``out_proj.weight`` is
    ``out_proj_weight.T``, the biases are the same, and ``causal=True`` is its
    ``attn_mask=torch.nn.Transformer.generate_square_subsequent_mask(T)``
    (``is_causal``). Initialisation also follows PyTorch: Glorot uniform input
    projection, ``U(-1/sqrt(embed_dim), 1/sqrt(embed_dim))`` output
    projection, zero biases. No attention dropout.

    Args:
        embed_dim: size of the last input axis (and of the output's).
        num_heads: number of heads; must divide ``embed_dim``.
        causal: mask future positions (autoregressive models).
        bias: learn the two projection biases.
    """

    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False, bias: bool = True) -> None:
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"MultiHeadAttention {name} must be a positive integer, got {v!r}")
        if embed_dim % num_heads:
            divisors = [h for h in range(1, embed_dim + 1) if embed_dim % h == 0]
            raise ValueError(f"MultiHeadAttention embed_dim={embed_dim} is not divisible by num_heads={num_heads}: "
                             f"each head takes embed_dim // num_heads columns. Choose num_heads among {divisors}.")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.causal, self.use_bias = bool(causal), bool(bias)
        self._cache: dict[str, Any] | None = None
        self._masks: dict[tuple[int, Any, Any], Array] = {}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        e = self.embed_dim
        lim_in, lim_out = math.sqrt(6.0 / (e + 3 * e)), 1.0 / math.sqrt(e)
        p = {"in_proj_weight": rng.uniform(-lim_in, lim_in, (e, 3 * e)),
             "out_proj_weight": rng.uniform(-lim_out, lim_out, (e, e))}
        if self.use_bias:
            p["in_proj_bias"] = np.zeros(3 * e)
            p["out_proj_bias"] = np.zeros(e)
        return p

    def _mask(self, steps: int, dtype: Any) -> Array:
        """``(steps, steps)`` additive causal mask: 0 on and below the diagonal, ``-inf`` above."""
        dev = self.backend.device
        key = (steps, dtype, dev)
        mask = self._masks.get(key)
        if mask is None:
            xp = self.xp
            pos = xp.arange(steps, device=dev)
            future = xp.reshape(pos, (1, steps)) > xp.reshape(pos, (steps, 1))
            mask = xp.where(future, xp.full((), -math.inf, dtype=dtype, device=dev),
                            xp.zeros((), dtype=dtype, device=dev))
            if len(self._masks) > 8:  # a few sequence lengths (e.g. training and a last short batch)
                self._masks.clear()
            self._masks[key] = mask
        return mask

    def _check(self, x: Array) -> None:
        self.backend.check(x, f"input of {self!r}")
        if x.ndim != 3 or x.shape[2] != self.embed_dim:
            hint = (f"Set embed_dim={x.shape[-1]} or fix the previous layer." if x.ndim == 3
                    else "Attention takes batch-first sequences (batch, time, embed_dim).")
            raise ValueError(f"{self!r} expects input of shape (batch, time, {self.embed_dim}), "
                             f"got {tuple(x.shape)}. {hint}")
        if x.dtype != self.dtype:
            raise dtype_error(self, x)

    def _split(self, a: Array) -> Array:
        """``(B, T, E) -> (B, heads, T, head_dim)``."""
        n, t = a.shape[0], a.shape[1]
        return self.xp.permute_dims(self.xp.reshape(a, (n, t, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def _merge(self, a: Array) -> Array:
        """``(B, heads, T, head_dim) -> (B, T, E)``."""
        n, t = a.shape[0], a.shape[2]
        return self.xp.reshape(self.xp.permute_dims(a, (0, 2, 1, 3)), (n, t, self.embed_dim))

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._check(x)
        xp, e = self.xp, self.embed_dim
        qkv = x @ self.params["in_proj_weight"]
        if self.use_bias:
            qkv = qkv + self.params["in_proj_bias"]
        scale = 1.0 / math.sqrt(self.head_dim)
        q = self._split(qkv[..., :e]) * scale  # scale q (B*T*E numbers), not the scores (B*H*T*T)
        k, v = self._split(qkv[..., e:2 * e]), self._split(qkv[..., 2 * e:])
        s = q @ xp.matrix_transpose(k)
        if self.causal:
            s = s + self._mask(x.shape[1], s.dtype)
        ex = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
        p = ex / xp.sum(ex, axis=-1, keepdims=True)
        a = self._merge(p @ v)
        y = a @ self.params["out_proj_weight"]
        if self.use_bias:
            y = y + self.params["out_proj_bias"]
        self._cache = {"x": x, "q": q, "k": k, "v": v, "p": p, "a": a, "scale": scale}
        return y

    def backward(self, grad_y: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp, e, c = self.xp, self.embed_dim, self._cache
        g2 = xp.reshape(grad_y, (-1, e))
        self.grads["out_proj_weight"] = xp.matrix_transpose(xp.reshape(c["a"], (-1, e))) @ g2
        if self.use_bias:
            self.grads["out_proj_bias"] = xp.sum(g2, axis=0)
        da = self._split(grad_y @ xp.matrix_transpose(self.params["out_proj_weight"]))
        p = c["p"]
        dp = da @ xp.matrix_transpose(c["v"])
        dv = xp.matrix_transpose(p) @ da
        ds = p * (dp - xp.sum(dp * p, axis=-1, keepdims=True))  # softmax backward; 0 where masked
        dq = (ds @ c["k"]) * c["scale"]
        dk = xp.matrix_transpose(ds) @ c["q"]  # q already carries the scale
        dqkv = xp.concat([self._merge(dq), self._merge(dk), self._merge(dv)], axis=-1)
        d2 = xp.reshape(dqkv, (-1, 3 * e))
        self.grads["in_proj_weight"] = xp.matrix_transpose(xp.reshape(c["x"], (-1, e))) @ d2
        if self.use_bias:
            self.grads["in_proj_bias"] = xp.sum(d2, axis=0)
        if not self.need_input_grad:
            return None
        return dqkv @ xp.matrix_transpose(self.params["in_proj_weight"])

    def moved(self, backend: Any) -> None:
        super().moved(backend)
        self._masks.clear()

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[1] not in (None, self.embed_dim):
            raise ValueError(f"{self!r} needs per-sample shape (time, {self.embed_dim}), got {shape}. "
                             "Set embed_dim to the previous layer's feature size.")
        return shape

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"embed_dim": self.embed_dim, "num_heads": self.num_heads}
        if self.causal:
            cfg["causal"] = True
        if not self.use_bias:
            cfg["bias"] = False
        return cfg
