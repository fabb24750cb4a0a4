"""JAX backend: ``jax.Array`` through ``jax.numpy``, which follows the array
API standard itself, on the CPU (``"jax"`` = ``"jax:cpu"``) or a GPU
(``"jax:gpu"`` = ``"jax:gpu:0"``, ``"jax:gpu:N"``).

JAX arrays are immutable and JAX dispatches work asynchronously, on the CPU
too, so this backend is run with the settings of a GPU backend: ``fit`` keeps
its loss sums and non-finite flag on the device and reads them only at
progress refreshes, and every kernel is the portable one (which never writes
into an array).

64-bit: JAX computes in 32 bits unless ``jax_enable_x64`` is on, and then
silently turns float64 and int64 requests into float32 and int32. nnxp
switches it on when the JAX backend is first used, because float64 models
(and the float64 gradient checks) and int64 labels need it; nnxp's own arrays
are float32 unless a model asks for float64, since every creation passes
``dtype=``. The switch is process-wide: JAX code of your own that relies on
32-bit defaults (``jnp.arange``, Python floats) then gets 64-bit arrays.
Set ``NNXP_JAX_X64=0`` to leave it off; float64 models on JAX then raise.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, _HostRandom

__all__ = ["JaxBackend"]


class JaxBackend(Backend):
    kind = "jax"
    sync_free = False  # asynchronous dispatch: a host read waits for the queue, on the CPU too
    immutable = True

    def __init__(self, name: str, xp: Any, device: Any, array_type: type) -> None:
        super().__init__(name, xp, device, array_type)
        import jax

        self._jax = jax
        self.dlpack_device_type = {"cpu": 1, "gpu": 2}.get(device.platform)

    def owns(self, x: Any) -> bool:
        if not isinstance(x, self.array_type):
            return False
        try:
            return x.device == self.device
        except Exception:  # sharded over several devices: not ours
            return False

    def dtype(self, dtype: Any) -> Any:
        if dtype is None:
            return None
        out = np.dtype(super().dtype(dtype))  # JAX arrays report NumPy dtypes; keep comparisons exact
        if out.itemsize == 8 and out.kind in "fiu" and not self._jax.config.jax_enable_x64:
            raise TypeError(
                f"{out.name} on JAX needs 64-bit mode, which is off (NNXP_JAX_X64=0 or your own setting): "
                "run jax.config.update('jax_enable_x64', True) first, or build the model with dtype='float32'."
            )
        return out

    def from_host(self, x: np.ndarray, dtype: Any = None) -> Any:
        if dtype is not None:
            x = x.astype(np.dtype(str(dtype).rsplit(".", 1)[-1]), copy=False)
        return self._jax.device_put(x, self.device)

    def to_host(self, x: Any) -> np.ndarray:
        return to_host(x)

    def dlpack_device_index(self) -> int:
        return int(getattr(self.device, "id", 0))

    def random_generator(self, seed: int | None) -> Any:
        if self.device.platform == "cpu":
            return _HostRandom(self, seed)  # the CPU backends share one stream: same masks as NumPy
        return _JaxRandom(self, seed)

    def synchronize(self) -> None:
        # JAX runs a device's work in the order it was dispatched: waiting for a new array waits for it all
        self._jax.device_put(np.zeros(()), self.device).block_until_ready()

    def scatter_add_rows(self, indices: Any, values: Any, num_rows: int) -> Any:
        """:meth:`Backend.scatter_add_rows` as JAX's functional scatter-add (``.at[].add``, which
        accumulates repeated indices), linear in the data."""
        out = self.xp.zeros((num_rows, values.shape[1]), dtype=values.dtype, device=values.device)
        return out.at[indices].add(values)


class _JaxRandom:
    """Uniform numbers from a JAX PRNG key on the backend's GPU, split once per draw."""

    def __init__(self, backend: JaxBackend, seed: int | None) -> None:
        import jax

        self.backend = backend
        self.key = jax.device_put(jax.random.key(0 if seed is None else int(seed) % 2**32), backend.device)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import jax

        self.key, sub = jax.random.split(self.key)
        return jax.random.uniform(sub, shape, dtype=dtype)


def _import_jax() -> Any:
    try:
        import jax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"JAX is not installed: pip install 'nnxp[jax]' (CPU), or jax[cuda12] for NVIDIA GPUs. ({exc})"
        ) from exc
    except Exception as exc:
        raise BackendUnavailableError(f"JAX is installed but failed to import: {exc}") from exc
    if os.environ.get("NNXP_JAX_X64", "1") not in ("0", "false", "False", "no"):
        jax.config.update("jax_enable_x64", True)
    return jax


def _device(jax: Any, device: str | None) -> Any:
    """The ``jax.Device`` for the part of the name after ``jax:``, checked to exist."""
    spec = (device or "cpu").strip().lower()
    kind, _, index = spec.partition(":")
    if kind == "cuda":
        kind = "gpu"
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"Unknown jax device {device!r}: use 'cpu', 'gpu' or 'gpu:N', e.g. backend='jax:gpu:1'.")
    try:
        devices = jax.devices(kind)
    except RuntimeError as exc:
        if kind == "gpu":
            raise BackendUnavailableError(
                f"jax:{spec}: JAX sees no GPU ({exc}). This is the CPU build of jaxlib, or the CUDA plugin "
                "found no device or driver: pip install 'jax[cuda12]' on an NVIDIA machine, check nvidia-smi, "
                "or pick backend='jax' for the CPU."
            ) from exc
        raise BackendUnavailableError(f"jax:{spec}: JAX failed to start its CPU backend: {exc}") from exc
    i = int(index) if index else 0
    if not 0 <= i < len(devices):
        raise ValueError(f"jax:{kind}:{i} does not exist: JAX sees {len(devices)} {kind} device(s).")
    return devices[i]


def make(device: str | None) -> Backend:
    jax = _import_jax()
    dev = _device(jax, device)
    if dev.platform != "cpu":
        try:  # touch the driver once: fail here, not mid-training
            jax.device_put(np.ones(1), dev).sum().block_until_ready()
        except Exception as exc:
            raise BackendUnavailableError(f"jax:{dev} failed its first use (driver problem?): {exc}") from exc
    import jax.numpy as xp

    name = "jax" if dev.platform == "cpu" and dev.id == 0 else f"jax:{dev.platform}:{dev.id}"
    return JaxBackend(name, xp, dev, jax.Array)


def array_backend(x: Any) -> Backend:
    from . import resolve_backend

    dev = x.device
    if dev.platform == "cpu" and dev.id == 0:
        return resolve_backend("jax")
    return resolve_backend(f"jax:{dev.platform}:{dev.id}")


def to_host(x: Any) -> np.ndarray:
    return np.array(x)  # a writable copy: JAX's own buffer is read-only
