"""Argument handling and input checks shared by the sliding-window layers (convolution, pooling).

The computation itself is in the backend's kernels (``Backend.conv2d``, ``max_pool2d``, ...;
portable versions in :mod:`nnxp.backends.windows`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from ..backends.base import dtype_name
from ..backends.windows import Pair, out_size

Array = Any

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
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{owner} {name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, got {value!r}")
    return pair


def compact(pair: Pair) -> int | Pair:
    """``(3, 3) -> 3``; an asymmetric pair stays a tuple (for ``config()``)."""
    return pair[0] if pair[0] == pair[1] else pair


def dtype_error(layer: Any, x: Array) -> TypeError:
    """The error for an input whose dtype differs from the layer's parameters."""
    want, got = dtype_name(layer.dtype), dtype_name(x.dtype)
    return TypeError(
        f"{layer!r} has {want} parameters but got a {got} input. Cast it first, "
        f"e.g. xp.astype(x, xp.{want}), or build the model with dtype='{want}'."
    )


def check_grad(owner: Any, grad_y: Array, want: tuple[int, ...]) -> None:
    """Raise a clear error unless ``grad_y`` has the shape ``want`` of the output of ``owner``'s
    last forward pass (its ``repr`` goes into the message)."""
    if tuple(grad_y.shape) != want:
        raise ValueError(f"{owner!r}.backward expects a gradient of shape {want} "
                         f"(the output's), got {tuple(grad_y.shape)}")


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
