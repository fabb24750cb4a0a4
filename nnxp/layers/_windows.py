"""Shared helpers for sliding-window layers (convolution and pooling).

Everything here uses the array API standard only: padding is a zeros (or
``-inf``) array with the input assigned into a slice, and a window offset
``(i, j)`` of the kernel is one strided slice of the padded input,
``xpad[..., i*dh : i*dh + sh*(OH-1) + 1 : sh, j*dw : j*dw + sw*(OW-1) + 1 : sw]``,
which has the output's spatial shape. Stacking those slices gives the
unfolded ("im2col") columns; adding into the same slices folds a gradient
back. Within one offset the slice never repeats an index, so ``+=`` is safe.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any
Pair = tuple[int, int]

#: byte budget of one chunk of unfolded columns (Conv2D processes larger batches in chunks)
COL_BUDGET_BYTES = 64 * 2**20


def as_pair(value: int | Sequence[int], name: str, owner: str, minimum: int = 1) -> Pair:
    """``3 -> (3, 3)``, ``(3, 2) -> (3, 2)``, with validation.

    Args:
        value: an int or a sequence of two ints.
        name: the argument's name (for the error message).
        owner: the layer's class name (for the error message).
        minimum: smallest allowed value.

    Returns:
        A pair of Python ints.
    """
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{owner} {name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, got {value!r}")
    return pair


def compact(pair: Pair) -> int | Pair:
    """``(3, 3) -> 3``; an asymmetric pair stays a tuple (for ``config()``)."""
    return pair[0] if pair[0] == pair[1] else pair


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length along one axis (PyTorch's formula, floor mode)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@functools.lru_cache(maxsize=256)
def axis_slices(k: int, s: int, d: int, out: int) -> tuple[slice, ...]:
    """One slice per kernel tap along one axis: tap ``i`` sees ``i*d, i*d + s, ...`` (``out`` positions)."""
    return tuple(slice(i * d, i * d + s * (out - 1) + 1, s) for i in range(k))


@functools.lru_cache(maxsize=256)
def offset_slices(kernel: Pair, stride: Pair, dilation: Pair,
                  out_hw: Pair) -> tuple[tuple[slice, slice], ...]:
    """One ``(rows, cols)`` slice pair per kernel offset, row-major over the kernel.

    Each selects, from the padded input, the input pixel that kernel offset
    ``(i, j)`` sees at every output position.
    """
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    rows, cols = axis_slices(kh, sh, dh, oh), axis_slices(kw, sw, dw, ow)
    return tuple((si, sj) for si in rows for sj in cols)


def pad_last2(xp: Any, x: Array, padding: Pair, fill: float = 0.0, device: Any = None) -> Array:
    """Pad the last two axes by ``padding`` on both sides with ``fill``; no copy when there is no padding."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    *lead, h, w = x.shape
    shape = (*lead, h + 2 * ph, w + 2 * pw)
    device = x.device if device is None else device
    if fill == 0.0:
        buf = xp.zeros(shape, dtype=x.dtype, device=device)
    else:
        buf = xp.full(shape, fill, dtype=x.dtype, device=device)
    buf[..., ph:ph + h, pw:pw + w] = x
    return buf


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for a dtype of any namespace (``array_api_strict.float32`` prints with a prefix)."""
    return str(dtype).rsplit(".", 1)[-1]


def dtype_error(layer: Any, x: Array) -> TypeError:
    """The error for an input whose dtype differs from the layer's parameters."""
    want, got = dtype_name(layer.dtype), dtype_name(x.dtype)
    return TypeError(
        f"{layer!r} has {want} parameters but got a {got} input. Cast it first, "
        f"e.g. xp.astype(x, xp.{want}), or build the model with dtype='{want}'."
    )


def check_images(layer: Any, x: Array, channels: int | None = None) -> None:
    """Raise a clear error unless ``x`` is a floating NCHW batch on the layer's backend.

    Args:
        layer: the calling layer (its ``repr`` goes into messages).
        x: the input.
        channels: expected channel count, or ``None`` for any.
    """
    layer.backend.check(x, f"input of {layer!r}")
    shape = tuple(x.shape)
    if x.ndim != 4:
        hint = ""
        if x.ndim == 2:
            side = round(shape[1] ** 0.5)
            ex = f"(-1, 1, {side}, {side})" if side * side == shape[1] else "(-1, channels, height, width)"
            hint = f" Reshape flat images first, e.g. xp.reshape(x, {ex})."
        elif x.ndim == 3:
            hint = " Add the batch (or channel) axis, e.g. xp.reshape(x, (1, *x.shape)) for one image."
        raise ValueError(
            f"{layer!r} expects a 4-D batch of images (batch, channels, height, width) (NCHW), "
            f"got shape {shape}.{hint}"
        )
    if channels is not None and shape[1] != channels:
        hint = (" The input looks channels-last (NHWC): use xp.permute_dims(x, (0, 3, 1, 2))."
                if shape[3] == channels else " Fix in_channels or the previous layer's out_channels.")
        raise ValueError(
            f"{layer!r} expects {channels} input channels but got input of shape {shape} "
            f"({shape[1]} channels on axis 1).{hint}"
        )
    if not layer.xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{layer!r} needs a floating-point input, got {dtype_name(x.dtype)}. Cast it first, e.g. "
            f"nnxp.datasets.scale(x) for uint8 images or xp.astype(x, xp.float32)."
        )


def spatial_out(layer: Any, hw: tuple[int | None, int | None], kernel: Pair, stride: Pair,
                padding: Pair, dilation: Pair, where: str) -> tuple[int | None, int | None]:
    """Output height and width, or a ValueError that says the kernel does not fit.

    Args:
        layer: the calling layer (for the message).
        hw: input height and width (``None`` = unknown, passed through).
        kernel: kernel size.
        stride: stride.
        padding: zero padding per side.
        dilation: dilation.
        where: description of the input (e.g. ``"input of shape (2, 3, 4, 4)"``).

    Returns:
        ``(OH, OW)``.
    """
    out = []
    axes = ("height", "width")
    for axis, size, k, s, p, d in zip(axes, hw, kernel, stride, padding, dilation, strict=True):
        if size is None:
            out.append(None)
            continue
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise ValueError(
                f"{layer!r}: the kernel spans {span} pixels in {axis} (kernel_size {k}"
                + (f", dilation {d}" if d != 1 else "")
                + f") but the {where} has {axis} {size}"
                + (f" ({size + 2 * p} after padding {p} on each side)" if p else "")
                + f". Use a smaller kernel_size, more padding (padding >= {(span - size + 1) // 2}), "
                "or a larger input (remove a pooling layer before this one)."
            )
        out.append(out_size(size, k, s, p, d))
    return out[0], out[1]
