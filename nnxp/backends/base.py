"""The portable :class:`Backend`: array API standard calls only."""

from __future__ import annotations

from typing import Any

import numpy as np

#: elements of the one-hot matrix that ``Backend.scatter_add_rows`` builds at a time
_ONEHOT_BUDGET = 1 << 24


class BackendUnavailableError(RuntimeError):
    """A backend's library, device or driver is missing; the message says which."""


class BackendMismatchError(ValueError):
    """Arrays from different backends or devices met in one operation."""


class Backend:
    """An array namespace ``xp`` plus a device.

    Subclasses (one module per library) override hot spots only; everything
    here uses the array API standard, so any namespace that array-api-compat
    wraps works through this class.

    Attributes:
        name: full name, ``"numpy"``, ``"cupy:0"``, ``"array_api_strict:device1"``.
        kind: the library part of the name.
        xp: the array namespace (standard-conforming).
        device: the device object passed to every array creation.
        array_type: the library's array class, for cheap identity checks.
        sync_free: reading a device scalar on the host costs nothing (CPU
            backends); ``fit`` then checks the loss every step.
    """

    kind = "generic"
    sync_free = True

    def __init__(self, name: str, xp: Any, device: Any, array_type: type) -> None:
        self.name = name
        self.xp = xp
        self.device = device
        self.array_type = array_type

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, xp={self.xp.__name__}, device={self.device!r})"

    def __reduce__(self):  # pickle/copy by name: namespaces are modules
        from . import resolve_backend

        return (resolve_backend, (self.name,))

    # ----------------------------------------------------------------- dtypes
    def dtype(self, dtype: Any) -> Any:
        """The namespace's dtype for a name (``"float32"``) or a dtype object."""
        if dtype is None:
            return None
        if isinstance(dtype, str):
            try:
                return getattr(self.xp, dtype)
            except AttributeError:
                raise TypeError(f"Unknown dtype {dtype!r} for backend {self.name}") from None
        if (isinstance(dtype, type) and issubclass(dtype, np.generic)) or isinstance(dtype, np.dtype):
            return getattr(self.xp, np.dtype(dtype).name)
        return dtype

    # --------------------------------------------------------------- transfer
    def owns(self, x: Any) -> bool:
        """True when ``x`` is an array of this namespace on this device."""
        return type(x) is self.array_type and x.device == self.device

    def from_host(self, x: np.ndarray, dtype: Any = None) -> Any:
        """Copy a host NumPy array to this backend's device."""
        if dtype is not None:
            x = x.astype(np.dtype(str(dtype).rsplit(".", 1)[-1]), copy=False)
        return self.xp.asarray(x, device=self.device)

    def to_host(self, x: Any) -> np.ndarray:
        """A host NumPy array from an array of this backend."""
        from . import to_numpy

        return to_numpy(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move any array to this backend and device (no copy if already here)."""
        dt = self.dtype(dtype)
        if self.owns(x):
            return x if dt is None or x.dtype == dt else self.xp.astype(x, dt)
        from . import to_numpy

        host = to_numpy(x)
        out = self.from_host(host)
        return out if dt is None or out.dtype == dt else self.xp.astype(out, dt)

    def check(self, x: Any, what: str = "input") -> None:
        """Raise :class:`BackendMismatchError` unless ``x`` lives on this backend.

        Args:
            x: the array to check.
            what: how to call it in the message (``"input"``, ``"labels"``).
        """
        if self.owns(x):
            return
        from . import backend_of

        try:
            where = backend_of(x).name
        except TypeError:
            where = f"{type(x).__module__}.{type(x).__name__}"
        raise BackendMismatchError(
            f"The {what} is on backend {where!r} but the model's arrays are on "
            f"{self.name!r}. Move it first with nnxp.to_device(x, {self.name!r}) "
            f"(or move the model with model.to({where!r}))."
        )

    # ------------------------------------------------------------- randomness
    def random_generator(self, seed: int | None) -> Any:
        """A generator for per-step randomness (dropout masks).

        The portable version draws on a host NumPy ``Generator`` and copies
        the numbers over, so CPU backends share one stream; GPU backends
        override this with their own generator.
        """
        return _HostRandom(self, seed)

    # ---------------------------------------------------------------- helpers
    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU backends)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # ------------------------------------------------------- sequence kernels
    def scatter_add_rows(self, indices: Any, values: Any, num_rows: int) -> Any:
        """Sum rows of ``values`` into a table by index; repeated indices accumulate.

        ``out[r] = sum(values[k] for k where indices[k] == r)``: the weight
        gradient of an embedding lookup. The standard has no scatter-add (and
        ``xpx.at(out)[idx].add(v)`` keeps only one of repeated indices on
        NumPy), so the portable version multiplies by a one-hot matrix, in
        chunks of ``indices`` that bound the one-hot's size.

        Args:
            indices: 1-D integer array, entries in ``[0, num_rows)``.
            values: ``(len(indices), d)`` floating array.
            num_rows: number of rows of the result.

        Returns:
            ``(num_rows, d)`` array of ``values``' dtype, on its device.
        """
        xp = self.xp
        n = indices.shape[0]
        rows = xp.reshape(xp.arange(num_rows, dtype=indices.dtype, device=values.device), (num_rows, 1))
        chunk = max(1, _ONEHOT_BUDGET // max(1, num_rows))
        out = None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            onehot = xp.astype(rows == xp.reshape(indices[start:stop], (1, stop - start)), values.dtype)
            part = onehot @ values[start:stop, ...]
            out = part if out is None else out + part
        if out is None:
            out = xp.zeros((num_rows, values.shape[1]), dtype=values.dtype, device=values.device)
        return out


class _HostRandom:
    """Uniform numbers from a seeded host NumPy generator, moved to a backend."""

    def __init__(self, backend: Backend, seed: int | None) -> None:
        self.backend = backend
        self.rng = np.random.default_rng(seed)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        host = self.rng.random(shape, dtype=np.float64 if "64" in str(dtype) else np.float32)
        return self.backend.from_host(host)
