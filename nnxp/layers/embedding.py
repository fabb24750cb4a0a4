"""Lookup tables: integer indices to learned vectors, and learned positions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._windows import dtype_error, dtype_name
from .base import Array, Layer


class Embedding(Layer):
    """A table of ``num_embeddings`` learned vectors: ``y[..., :] = weight[x[...], :]``.

    Takes integer indices of any shape ``(...)`` and returns ``(..., embedding_dim)``,
    like :class:`torch.nn.Embedding` (whose weight has the same layout and the
    same ``N(0, 1)`` initialisation). The weight gradient sums the incoming
    rows into the rows that were looked up, repeated indices accumulating; it
    is the backend's ``scatter_add_rows`` kernel. The input is integer, so
    there is no input gradient: :meth:`backward` returns ``None``.

    Out-of-range indices raise ``IndexError``. The check reads two numbers on
    the host, so ``forward`` makes it only on backends where that costs nothing
    (``backend.sync_free``: NumPy, array_api_strict, torch on the CPU);
    :class:`~nnxp.Sequential` checks a whole data set once when
    ``fit``/``predict``/``evaluate`` receive it. Used on its own on a GPU or on
    JAX, call :meth:`check_indices` yourself: there an unchecked bad index is
    not caught (JAX's ``take`` clips it).

    Args:
        num_embeddings: number of rows (vocabulary size); indices lie in ``[0, num_embeddings)``.
        embedding_dim: length of each vector.
    """

    #: the input is integer indices: ``Sequential`` passes them on without casting to float
    takes_indices = True

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Embedding {name} must be a positive integer, got {v!r}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self._idx: Array = None

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"weight": rng.standard_normal((self.num_embeddings, self.embedding_dim))}

    def check_indices(self, x: Array) -> None:
        """Raise unless ``x`` holds integers in ``[0, num_embeddings)`` (reads two numbers on the host).

        Raises:
            TypeError: ``x`` is not an integer array.
            IndexError: an index lies outside the table.
        """
        xp = self.xp
        if not xp.isdtype(x.dtype, "integral"):
            raise TypeError(
                f"{self!r} takes integer indices, got a {dtype_name(x.dtype)} array of shape {tuple(x.shape)}. "
                "Pass token ids as integers (e.g. xp.astype(x, xp.int64)); an Embedding can only be the first layer."
            )
        if math.prod(x.shape) == 0:  # not x.size: a method on torch tensors
            return
        lo, hi = int(xp.min(x)), int(xp.max(x))
        if lo < 0 or hi >= self.num_embeddings:
            raise IndexError(
                f"{self!r} got indices in [{lo}, {hi}] but has rows 0..{self.num_embeddings - 1}. "
                f"Raise num_embeddings to at least {hi + 1} (the vocabulary size) or fix the encoding."
            )

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self.backend.check(x, f"input of {self!r}")
        if self.backend.sync_free or not self.xp.isdtype(x.dtype, "integral"):
            self.check_indices(x)
        self._idx = self.xp.reshape(x, (-1,))
        y = self.xp.take(self.params["weight"], self._idx, axis=0)
        return self.xp.reshape(y, (*x.shape, self.embedding_dim))

    def backward(self, grad_y: Array) -> None:
        if self._idx is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        g = self.xp.reshape(grad_y, (-1, self.embedding_dim))
        self.grads["weight"] = self.backend.scatter_add_rows(self._idx, g, self.num_embeddings)
        return None  # integer input: no gradient

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape, self.embedding_dim)

    def config(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}


class PositionalEmbedding(Layer):
    """Learned absolute positions added to a sequence: ``y[:, t, :] = x[:, t, :] + weight[t, :]``.

    Takes ``(batch, time, embedding_dim)`` with ``time <= max_len`` (typically
    an :class:`Embedding`'s output) and returns the same shape, as GPT-2's
    ``wpe`` table does. The weight is ``(max_len, embedding_dim)``, started
    ``N(0, 1)`` like :class:`torch.nn.Embedding` (its PyTorch twin is
    ``x + nn.Embedding(max_len, embedding_dim)(arange(time))``). Its gradient
    is the output gradient summed over the batch in the first ``time`` rows
    and zero below; the input gradient is the output gradient.

    Args:
        max_len: longest sequence the layer accepts (rows of the table).
        embedding_dim: size of the last axis.
    """

    def __init__(self, max_len: int, embedding_dim: int) -> None:
        super().__init__()
        for name, v in (("max_len", max_len), ("embedding_dim", embedding_dim)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"PositionalEmbedding {name} must be a positive integer, got {v!r}")
        self.max_len, self.embedding_dim = int(max_len), int(embedding_dim)
        self._steps: int | None = None

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"weight": rng.standard_normal((self.max_len, self.embedding_dim))}

    def _check(self, x: Array) -> None:
        self.backend.check(x, f"input of {self!r}")
        if x.ndim != 3 or x.shape[2] != self.embedding_dim:
            raise ValueError(f"{self!r} expects input of shape (batch, time, {self.embedding_dim}), got "
                             f"{tuple(x.shape)}. Put it after an Embedding(vocab, {self.embedding_dim}) "
                             "or set embedding_dim to the feature size.")
        if x.shape[1] > self.max_len:
            raise ValueError(f"{self!r} got sequences of {x.shape[1]} steps but has positions 0..{self.max_len - 1}. "
                             f"Raise max_len to at least {x.shape[1]} or feed shorter windows.")
        if x.dtype != self.dtype:
            raise dtype_error(self, x)

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        self._check(x)
        self._steps = x.shape[1]
        return x + self.params["weight"][:self._steps, :]

    def backward(self, grad_y: Array) -> Array:
        if self._steps is None:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp, t = self.xp, self._steps
        g = xp.sum(grad_y, axis=0)
        if t < self.max_len:  # rows of positions that were not used get no gradient
            g = xp.concat([g, xp.zeros((self.max_len - t, self.embedding_dim), dtype=g.dtype,
                                       device=self.backend.device)], axis=0)
        self.grads["weight"] = g
        return grad_y if self.need_input_grad else None

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[1] not in (None, self.embedding_dim) or (
                shape[0] is not None and shape[0] > self.max_len):
            raise ValueError(f"{self!r} needs per-sample shape (time <= {self.max_len}, {self.embedding_dim}), "
                             f"got {shape}. Match embedding_dim to the previous layer and max_len to the window.")
        return shape

    def config(self) -> dict[str, Any]:
        return {"max_len": self.max_len, "embedding_dim": self.embedding_dim}
