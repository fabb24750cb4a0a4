"""CuPy backend (CUDA GPUs). Fast paths for CuPy live beside the generic
code (see ``nnxp.fast``); this module only handles the namespace, devices,
transfers and the GPU random generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError


class CupyBackend(Backend):
    kind = "cupy"
    sync_free = False  # reading a loss on the host would stall the GPU queue

    def owns(self, x: Any) -> bool:
        return type(x) is self.array_type and x.device.id == self.device.id

    def from_host(self, x: np.ndarray, dtype: Any = None) -> Any:
        import cupy

        with self.device:
            return cupy.asarray(x, dtype=dtype)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        import cupy

        if type(x) is cupy.ndarray and x.device.id != self.device.id:
            with self.device:  # GPU to GPU (peer copy where the hardware allows)
                x = cupy.array(x, copy=True)
        return super().asarray(x, dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return x.get()

    def random_generator(self, seed: int | None) -> Any:
        return _CupyRandom(self, seed)

    def synchronize(self) -> None:
        self.device.synchronize()


class _CupyRandom:
    def __init__(self, backend: CupyBackend, seed: int | None) -> None:
        import cupy

        with backend.device:
            self.rng = cupy.random.default_rng(seed)
        self.backend = backend

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        with self.backend.device:
            return self.rng.random(shape, dtype=dtype)


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            "CuPy is not installed. Install the build for your CUDA major version: "
            "pip install 'nnxp[cuda12]' or 'nnxp[cuda13]' "
            f"(cupy-cuda12x / cupy-cuda13x). ({exc})"
        ) from exc
    except Exception as exc:  # broken install, missing CUDA libraries
        raise BackendUnavailableError(
            f"CuPy is installed but failed to import (CUDA runtime or driver problem): {exc}"
        ) from exc
    return cupy


def make(device: str | None) -> Backend:
    cupy = _import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        msg = str(exc)
        if "no CUDA-capable device" in msg or "cudaErrorNoDevice" in msg:
            raise BackendUnavailableError(
                f"CuPy is installed but no CUDA device was found ({msg}). "
                "Run on a machine with an NVIDIA GPU or pick backend='numpy'."
            ) from exc
        raise BackendUnavailableError(
            f"CuPy is installed but the CUDA driver/runtime failed: {msg}. "
            "Check nvidia-smi and that the cupy-cudaXXx package matches the driver's CUDA version."
        ) from exc
    if count == 0:
        raise BackendUnavailableError(
            "CuPy is installed but no CUDA device was found. "
            "Run on a machine with an NVIDIA GPU or pick backend='numpy'."
        )
    index = int(device) if device is not None else 0
    if not 0 <= index < count:
        raise ValueError(f"cupy:{index} does not exist: this machine has {count} CUDA device(s).")
    dev = cupy.cuda.Device(index)
    try:
        with dev:
            cupy.zeros(1).sum().item()  # touch the driver once: fail here, not mid-training
    except Exception as exc:
        raise BackendUnavailableError(f"CUDA device {index} failed its first use: {exc}") from exc
    import array_api_compat.cupy as xp

    return CupyBackend(f"cupy:{index}", xp, dev, cupy.ndarray)


def array_backend(x: Any) -> Backend:
    from . import resolve_backend

    return resolve_backend(f"cupy:{x.device.id}")


def to_host(x: Any) -> np.ndarray:
    return x.get()
