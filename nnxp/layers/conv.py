"""2-D convolution (NCHW) as one large matrix product over unfolded windows (im2col)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..init import Initializer, get_initializer
from . import _windows as win
from .base import Array, Layer


class Conv2D(Layer):
    """2-D cross-correlation over NCHW images, like :class:`torch.nn.Conv2d`.

    The work is the backend's ``conv2d`` / ``conv2d_backward`` kernels: the
    input is moved once to channels-first ``(C, N, Hp, Wp)`` layout and
    padded; the windows of a batch chunk are then unfolded into one
    contiguous ``(kh*kw*C, nb*OH*OW)`` column matrix, so the forward pass and
    both gradients are single large matrix products. Batches whose columns
    exceed :attr:`col_budget` bytes are processed in chunks (the columns are
    then recomputed in ``backward`` instead of kept).

    Args:
        in_channels: number of input channels ``C``.
        out_channels: number of output channels (filters).
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: ``s`` or ``(sh, sw)``.
        padding: zero padding on each side, ``p`` or ``(ph, pw)``; ``"valid"``
            means 0, ``"same"`` keeps the size at stride 1 (odd effective kernels).
        dilation: spacing between kernel taps, ``d`` or ``(dh, dw)``.
        bias: learn a per-channel additive bias.
        init: weight initialiser name (``"he"``, ``"glorot"``, ...) or callable;
            ``None`` lets :class:`~nnxp.Sequential` choose (He when standalone),
            with ``fan_in = in_channels * kh * kw``, ``fan_out = out_channels * kh * kw``.

    Attributes:
        col_budget: bytes of unfolded columns per batch chunk (default 64 MiB).
    """

    splits_kernels = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True,
                 init: str | Initializer | None = None) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Conv2D {name} must be a positive integer, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = win.as_pair(kernel_size, "kernel_size", "Conv2D")
        self.stride = win.as_pair(stride, "stride", "Conv2D")
        self.dilation = win.as_pair(dilation, "dilation", "Conv2D")
        self._padding_arg = padding
        self.padding = self._resolve_padding(padding)
        self.use_bias = bool(bias)
        self.init = init
        self.col_budget = win.COL_BUDGET_BYTES
        self._cache: dict[str, Any] = {}

    def _resolve_padding(self, padding: int | Sequence[int] | str) -> win.Pair:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            if padding != "same":
                raise ValueError(f"Conv2D padding must be an int, a pair, 'valid' or 'same'; got {padding!r}")
            if self.stride != (1, 1):
                raise ValueError(f"Conv2D padding='same' needs stride 1, got stride={self.stride}; "
                                 "give the padding as a number instead.")
            spans = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation, strict=True)]
            if any(s % 2 for s in spans):
                raise ValueError(
                    f"Conv2D padding='same' needs an odd effective kernel (dilation*(kernel_size-1) even), "
                    f"got kernel_size={self.kernel_size}, dilation={self.dilation}: that would need "
                    "asymmetric padding, which Conv2D does not do. Use an odd kernel_size."
                )
            return (spans[0] // 2, spans[1] // 2)
        return win.as_pair(padding, "padding", "Conv2D", minimum=0)

    # ------------------------------------------------------------ building
    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        init = get_initializer(self.init or getattr(self, "default_init", "he"))
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        p = {"weight": init(rng, shape, self.in_channels * kh * kw, self.out_channels * kh * kw)}
        if self.use_bias:
            p["bias"] = np.zeros(self.out_channels)
        return p

    def moved(self, backend: Any) -> None:
        self._cache = {}

    # ------------------------------------------------------------ computing
    def _check(self, x: Array) -> tuple[int, int]:
        win.check_images(self, x, self.in_channels)
        if x.dtype != self.dtype:
            raise win.dtype_error(self, x)
        return win.spatial_out(self, tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding,
                               self.dilation, f"input of shape {tuple(x.shape)}")

    def _chunk(self, n: int, per_sample: int) -> int:
        itemsize = self.xp.finfo(self.dtype).bits // 8
        return max(1, min(n, self.col_budget // max(1, per_sample * itemsize)))

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        oh, ow = self._check(x)
        n = x.shape[0]
        kh, kw = self.kernel_size
        nb = self._chunk(n, kh * kw * self.in_channels * oh * ow)
        y, ctx = self.backend.conv2d(x, self.params["weight"], self.params["bias"] if self.use_bias else None,
                                     self.stride, self.padding, self.dilation, chunk=nb, keep_cols=training,
                                     ws=self.workspace(training))
        self._cache = {"ctx": ctx, "out_shape": (n, self.out_channels, oh, ow)}
        return y

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        if "ctx" not in self._cache:
            raise RuntimeError(f"{self!r}.backward(): its last forward pass ran fused with the MaxPool2D after it "
                               "(a Sequential's run plan); call the Sequential's backward instead.")
        win.check_grad(self, grad_y, self._cache["out_shape"])
        gw, gb, gx = self.backend.conv2d_backward(self._cache["ctx"], grad_y, self.params["weight"],
                                                  self.use_bias, self.need_input_grad,
                                                  ws=self.workspace(True))
        self.grads["weight"] = gw
        if self.use_bias:
            self.grads["bias"] = gb
        return gx

    # ---------------------------------------------------------- shapes, config
    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects per-sample inputs (channels, height, width), got {shape}. "
                             + ("Reshape flat inputs to images first, e.g. xp.reshape(x, (-1, 1, 28, 28))."
                                if len(shape) == 1 else "Images are NCHW."))
        if shape[0] not in (None, self.in_channels):
            raise ValueError(f"{self!r} expects {self.in_channels} input channels but the previous layer "
                             f"produces per-sample shape {shape}. Fix in_channels or the layer before it.")
        oh, ow = win.spatial_out(self, shape[1:], self.kernel_size, self.stride, self.padding,
                                 self.dilation, f"per-sample input {shape}")
        return (self.out_channels, oh, ow)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                               "kernel_size": win.compact(self.kernel_size)}
        if self.stride != (1, 1):
            cfg["stride"] = win.compact(self.stride)
        if isinstance(self._padding_arg, str):
            cfg["padding"] = self._padding_arg
        elif self.padding != (0, 0):
            cfg["padding"] = win.compact(self.padding)
        if self.dilation != (1, 1):
            cfg["dilation"] = win.compact(self.dilation)
        if not self.use_bias:
            cfg["bias"] = False
        if isinstance(self.init, str):
            cfg["init"] = self.init
        return cfg

