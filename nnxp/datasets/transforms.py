"""Host images and labels to training arrays on any backend, with array API standard calls only."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from ..backends import Backend, to_device

__all__ = ["flatten", "one_hot", "prepare", "scale"]


# ---------------------------------------------------------------------------
# Preparation helpers (array API standard only)
# ---------------------------------------------------------------------------


def _as_array(x: Any, backend: str | Backend | None) -> Any:
    if backend is not None:
        return to_device(x, backend)
    if array_api_compat.is_array_api_obj(x):
        return x
    return np.asarray(x)  # lists and scalars: host NumPy, like the loaders return


def _dtype(xp: Any, dtype: Any) -> Any:
    """The namespace's dtype for a name, a NumPy dtype, or the namespace's own dtype."""
    if isinstance(dtype, str):
        return getattr(xp, dtype)
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return getattr(xp, np.dtype(dtype).name)
    return dtype


def scale(x: Any, dtype: Any = "float32", backend: str | Backend | None = None) -> Any:
    """Pixel values ``0..255`` to floats in ``[0, 1]``: ``x / 255``.

    Args:
        x: an image array of any backend (usually ``uint8``).
        dtype: floating dtype of the result (name or dtype object).
        backend: move ``x`` there first (``nnxp.to_device``); ``None`` keeps
            it on its own backend and device.

    Returns:
        A floating array on the same (or the given) backend and device.
    """
    # Move before converting: uint8 is 4x less to copy to a GPU than float32.
    x = _as_array(x, backend)
    xp = array_api_compat.array_namespace(x)
    dt = _dtype(xp, dtype)
    if not xp.isdtype(dt, "real floating"):
        raise ValueError(f"scale() needs a real floating dtype, got {dtype!r}")
    return xp.astype(x, dt) / 255.0


def flatten(x: Any) -> Any:
    """Collapse every axis after the first: ``(N, 28, 28)`` -> ``(N, 784)``.

    Args:
        x: an array of any backend with at least one axis.

    Returns:
        An array of shape ``(N, prod(x.shape[1:]))`` on the same backend and device.
    """
    xp = array_api_compat.array_namespace(x)
    if x.ndim < 1:
        raise ValueError("flatten() needs an array with a leading batch axis, got a 0-d array")
    # An explicit size (not -1) so that N == 0 works too.
    return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))


def one_hot(labels: Any, num_classes: int, dtype: Any = "float32") -> Any:
    """One-hot encode integer class labels.

    Args:
        labels: integer array of any backend and shape; values in ``[0, num_classes)``.
        num_classes: number of classes (length of the new last axis).
        dtype: dtype of the result (name or dtype object).

    Returns:
        Array of shape ``labels.shape + (num_classes,)`` with 1 at each
        label's index and 0 elsewhere, on the labels' backend and device.

    Raises:
        ValueError: ``labels`` is not integer, ``num_classes`` < 1, or a label
            is out of range (checking reads two scalars back to the host).
    """
    xp = array_api_compat.array_namespace(labels)
    if not xp.isdtype(labels.dtype, "integral"):
        raise ValueError(f"one_hot() needs integer labels, got dtype {labels.dtype}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    # int64 so that arange(num_classes) cannot overflow a narrow label dtype.
    lab = xp.astype(labels, xp.int64)
    if math.prod(lab.shape) > 0:
        lo, hi = int(xp.min(lab)), int(xp.max(lab))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"one_hot(): labels must lie in [0, {num_classes}), got values from {lo} to {hi}"
            )
    classes = xp.arange(num_classes, dtype=xp.int64, device=array_api_compat.device(lab))
    return xp.astype(xp.expand_dims(lab, axis=-1) == classes, _dtype(xp, dtype))


def prepare(
    images: Any,
    labels: Any,
    flatten: bool = True,
    backend: str | Backend | None = None,
    dtype: Any = "float32",
) -> tuple[Any, Any]:
    """Turn loaded images and labels into training arrays.

    Args:
        images: ``uint8`` images ``(N, H, W)`` (or ``(N, C, H, W)``) of any backend.
        labels: integer labels ``(N,)`` of any backend.
        flatten: reshape the images to ``(N, H*W)`` for dense layers; keep
            ``False`` for convolutions (add a channel axis yourself).
        backend: move both arrays there (``nnxp.to_device``); ``None`` keeps
            them where they are.
        dtype: floating dtype of the images.

    Returns:
        ``(x, y)``: ``x`` scaled to ``[0, 1]`` in ``dtype``, ``y`` ``int64``,
        both on the same backend and device.
    """
    x = scale(images, dtype=dtype, backend=backend)
    if flatten:
        x = _flatten(x)
    y = _as_array(labels, backend)
    xp = array_api_compat.array_namespace(y)
    y = xp.astype(y, xp.int64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"prepare(): {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


_flatten = flatten  # prepare()'s ``flatten`` argument shadows the function
