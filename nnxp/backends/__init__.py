"""Backend selection and device transfer.

A *backend* is an array namespace plus a device. It is named ``"name"`` or
``"name:device"``: ``"numpy"``, ``"cupy:1"`` (GPU 1),
``"array_api_strict:device1"``, ``"torch:cuda:1"``, ``"jax:gpu"`` (the library is
what comes before the first colon, the device what follows). One module per
backend lives beside this file (as in Thinc's ``thinc/backends``); each
subclass of :class:`Backend` only overrides the kernels it can do faster than
the portable code in ``base.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import Backend, BackendMismatchError, BackendUnavailableError

__all__ = [
    "Backend",
    "BackendMismatchError",
    "BackendUnavailableError",
    "available_backends",
    "backend_of",
    "get_backend",
    "library_of",
    "resolve_backend",
    "set_backend",
    "to_device",
    "to_numpy",
    "use_backend",
]

# name -> module that defines ``make(device: str | None) -> Backend`` and
# ``array_backend(x) -> Backend | None``.
_MODULES = {
    "numpy": "nnxp.backends.numpy",
    "array_api_strict": "nnxp.backends.strict",
    "cupy": "nnxp.backends.cupy",
    "torch": "nnxp.backends.torch",
    "jax": "nnxp.backends.jax",
}
_ALIASES = {"np": "numpy", "strict": "array_api_strict", "cp": "cupy", "pytorch": "torch"}

_default: Backend | None = None
_context: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "nnxp_backend", default=None
)
_cache: dict[tuple[str, str | None], Backend] = {}


def _split(name: str) -> tuple[str, str | None]:
    base, _, device = name.partition(":")
    base = _ALIASES.get(base.strip().lower(), base.strip().lower())
    if base not in _MODULES:
        raise ValueError(
            f"Unknown backend {name!r}. Choose one of {sorted(_MODULES)}, "
            "optionally with a device, e.g. 'cupy:1', 'torch:cuda', 'jax:gpu' or 'array_api_strict:device1'."
        )
    return base, (device.strip() or None)


def resolve_backend(backend: str | Backend | None = None) -> Backend:
    """Turn a backend name (or ``None`` for the current default) into a Backend.

    Args:
        backend: ``"name"``, ``"name:device"``, a :class:`Backend`, or ``None``.

    Returns:
        The :class:`Backend`; instances are cached, so equal names give the
        same object.

    Raises:
        ValueError: the name is not a known backend.
        BackendUnavailableError: the backend's library or device is missing;
            the message says which and how to fix it.
    """
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        return get_backend()
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a name such as 'numpy' or 'cupy:0', got {type(backend).__name__}"
        )
    key = _split(backend)
    if key not in _cache:
        module = importlib.import_module(_MODULES[key[0]])
        made = module.make(key[1])
        # aliases ("numpy:cpu", "cupy" = "cupy:0") share the instance of the canonical name
        _cache[key] = _cache.setdefault(_split(made.name), made)
    return _cache[key]


def get_backend() -> Backend:
    """The backend in force: ``use_backend`` context, else ``set_backend``,
    else the ``NNXP_BACKEND`` environment variable, else ``"numpy"``.

    Returns:
        The current :class:`Backend`.
    """
    ctx = _context.get()
    if ctx is not None:
        return ctx
    global _default
    if _default is None:
        _default = resolve_backend(os.environ.get("NNXP_BACKEND") or "numpy")
    return _default


def set_backend(backend: str | Backend) -> Backend:
    """Set the process-wide default backend.

    Args:
        backend: a backend name or :class:`Backend`.

    Returns:
        The resolved :class:`Backend`.
    """
    global _default
    _default = resolve_backend(backend)
    return _default


@contextlib.contextmanager
def use_backend(backend: str | Backend) -> Iterator[Backend]:
    """Context manager that makes ``backend`` the default inside the block.

    Uses a :class:`contextvars.ContextVar`, so threads and asyncio tasks each
    see their own setting; the previous one is restored on exit.

    Args:
        backend: a backend name or :class:`Backend`.

    Yields:
        The resolved :class:`Backend`.
    """
    token = _context.set(resolve_backend(backend))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def available_backends() -> list[str]:
    """Names of the backends that work on this machine.

    Returns:
        For example ``["numpy", "array_api_strict", "cupy", "torch", "jax"]``:
        each library's default device (CPU for torch and jax, GPU 0 for
        cupy), listed only when the library imports and that device answers.
    """
    names = []
    for name in _MODULES:
        try:
            resolve_backend(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def library_of(x: Any) -> str | None:
    """The backend library an array belongs to, or ``None``.

    Args:
        x: any object.

    Returns:
        ``"numpy"``, ``"array_api_strict"``, ``"cupy"``, ``"torch"``, ``"jax"``
        or ``None`` when ``x`` is none of their arrays. The library is told by
        the array's type, without importing any library that is not loaded.
    """
    if isinstance(x, np.ndarray | np.generic):
        return "numpy"
    root = type(x).__module__.partition(".")[0]
    if root in ("jax", "jaxlib"):
        return "jax" if hasattr(x, "__array_namespace__") or hasattr(x, "device") else None
    if root in _MODULES and root != "numpy":
        return root
    return None


def backend_of(x: Any) -> Backend:
    """The backend (namespace and device) that array ``x`` lives on.

    Args:
        x: a NumPy, CuPy, PyTorch, JAX or array_api_strict array.

    Returns:
        The matching :class:`Backend`.

    Raises:
        TypeError: ``x`` is not an array of a supported backend.
    """
    lib = library_of(x)
    if lib == "numpy":
        return resolve_backend("numpy")
    if lib is not None:
        return importlib.import_module(_MODULES[lib]).array_backend(x)
    raise TypeError(
        f"Expected an array of one of the backends {sorted(_MODULES)}, got "
        f"{type(x).__module__}.{type(x).__name__}. Convert it with nnxp.to_device(x, backend)."
    )


def _to_host(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic | list | tuple | int | float | bool):
        return np.asarray(x)
    lib = library_of(x)
    if lib is not None:
        return importlib.import_module(_MODULES[lib]).to_host(x)
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    """Copy (or view) any array as a host :class:`numpy.ndarray`.

    Args:
        x: an array of any backend (NumPy, CuPy, array_api_strict, PyTorch,
            JAX, anything DLPack-capable) or a nested list.

    Returns:
        A NumPy array with the same dtype and shape (a view where the library
        allows one on the CPU; a writable copy of a JAX array).
    """
    return _to_host(x)


def to_device(x: Any, backend: str | Backend | None = None, dtype: Any = None) -> Any:
    """Move any array to a backend and device.

    Args:
        x: an array of any backend, or anything ``numpy.asarray`` takes.
        backend: target backend name (``"cupy:1"``) or :class:`Backend`;
            ``None`` means the current default.
        dtype: optional target dtype (a name such as ``"float32"`` or a dtype
            of the target namespace).

    Returns:
        An array of the target backend on its device. An array already there
        is returned as is (no copy) when no dtype change is asked for; between
        libraries on one device the array moves through DLPack and may share
        memory with ``x`` (like ``asarray``), except to or from JAX, whose
        arrays are immutable: those moves always copy.
    """
    target = resolve_backend(backend)
    return target.asarray(x, dtype=dtype)
