"""array_api_strict backend: the reference namespace that allows nothing
outside the standard. Tests run on its default device and on ``device1`` to
prove that nnxp passes ``device=`` everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError


class StrictBackend(Backend):
    kind = "array_api_strict"
    sync_free = True


def _module():
    try:
        import array_api_strict
    except ImportError as exc:
        raise BackendUnavailableError(
            "array_api_strict is not installed: pip install array-api-strict "
            f"(or pip install 'nnxp[dev]'). ({exc})"
        ) from exc
    return array_api_strict


def make(device: str | None) -> Backend:
    xps = _module()
    names = [d._device for d in xps.__array_namespace_info__().devices()]
    name = device or "CPU_DEVICE"
    if name not in names:
        raise ValueError(f"array_api_strict has no device {name!r}; choose one of {names}.")
    dev = xps.Device(name)
    full = "array_api_strict" if device in (None, "CPU_DEVICE") else f"array_api_strict:{name}"
    return StrictBackend(full, xps, dev, type(xps.asarray(0.0)))


def array_backend(x: Any) -> Backend:
    from . import resolve_backend

    name = x.device._device
    return resolve_backend("array_api_strict" if name == "CPU_DEVICE" else f"array_api_strict:{name}")


def to_host(x: Any) -> np.ndarray:
    xps = _module()
    return np.asarray(x.to_device(xps.Device("CPU_DEVICE")))
