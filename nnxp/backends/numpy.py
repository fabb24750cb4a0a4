"""NumPy backend (CPU). NumPy >= 2 follows the array API standard itself, so
``xp`` is NumPy's own namespace: no wrapper layer on the hot path."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    kind = "numpy"
    sync_free = True

    def owns(self, x: Any) -> bool:
        return type(x) is np.ndarray

    def from_host(self, x: np.ndarray, dtype: Any = None) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def dtype(self, dtype: Any) -> Any:
        return None if dtype is None else np.dtype(dtype)

    def scatter_add_rows(self, indices: np.ndarray, values: np.ndarray, num_rows: int) -> np.ndarray:
        """:meth:`Backend.scatter_add_rows` as one ``np.bincount`` over (row, column) cells:
        linear in the data, where the portable one-hot product grows with ``num_rows``
        (and ``np.add.at`` is several times slower). Sums in float64."""
        d = values.shape[1]
        cells = (indices.astype(np.intp, copy=False)[:, None] * d + np.arange(d)).reshape(-1)
        out = np.bincount(cells, weights=values.reshape(-1), minlength=num_rows * d)
        return out.reshape(num_rows, d).astype(values.dtype, copy=False)


class Workspace:
    """Output arrays that NumPy fast paths reuse from one training step to the next.

    A layer (or loss, or optimizer) that owns a ``Workspace`` writes its
    outputs with ``out=`` into the same arrays every step instead of
    allocating fresh ones: no allocator traffic, and the memory stays warm in
    the caches. An array handed out is overwritten by the next ``get`` of the
    same name, so only code that drops its outputs before the next step may
    use it (``Sequential.fit`` turns this on with ``reuse_buffers``; a layer
    used on its own allocates as usual).
    """

    __slots__ = ("_bufs",)

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``, the same one each call.

        A batch smaller than the one the buffer was made for (the last batch of
        an epoch) gets a leading-axis view of it instead of a new array.
        """
        buf = self._bufs.get(name)
        if buf is not None and buf.shape == shape and buf.dtype == dtype:
            return buf
        if (buf is not None and buf.dtype == dtype and buf.ndim == len(shape) and shape
                and buf.shape[1:] == tuple(shape[1:]) and buf.shape[0] >= shape[0]):
            return buf[:shape[0]]
        buf = self._bufs[name] = np.empty(shape, dtype)
        return buf

    def clear(self) -> None:
        """Drop every buffer (e.g. after training, to give the memory back)."""
        self._bufs.clear()

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bufs.values())


def workspace_of(owner: Any) -> Workspace:
    """The :class:`Workspace` kept on ``owner`` (a layer, loss or optimizer), made on first use."""
    ws = getattr(owner, "_workspace", None)
    if ws is None:
        ws = owner._workspace = Workspace()
    return ws


def make(device: str | None) -> Backend:
    if device not in (None, "cpu", "0"):
        raise ValueError(f"The numpy backend has one device, 'cpu'; got {device!r}.")
    if int(np.__version__.split(".")[0]) >= 2:
        xp = np
    else:  # NumPy 1.x needs the compat wrapper to speak the standard
        import array_api_compat.numpy as xp
    return NumpyBackend("numpy", xp, "cpu", np.ndarray)


def array_backend(x: Any) -> Backend:
    from . import resolve_backend

    return resolve_backend("numpy")


def to_host(x: Any) -> np.ndarray:
    return np.asarray(x)
