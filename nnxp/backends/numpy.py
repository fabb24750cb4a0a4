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
