"""2-D convolution (NCHW) as one large matrix product over unfolded windows (im2col)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..init import Initializer, get_initializer
from . import _windows as win
from .base import Array, Layer


class Conv2D(Layer):
    """2-D cross-correlation over NCHW images, like :class:`torch.nn.Conv2d`.

    The input is moved once to channels-first ``(C, N, Hp, Wp)`` layout and
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

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True,
                 init: str | Initializer | None = None) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
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

    def _unfold(self, xpt: Array, n0: int, n1: int, oh: int, ow: int) -> Array:
        """Columns ``(kh*kw*C, nb*OH*OW)`` of batch items ``n0:n1`` of padded ``(C, N, Hp, Wp)`` input;
        rows ordered (kernel row, kernel column, channel).

        A 2-D kernel is unfolded in two steps: first each of the ``kw`` column shifts is copied
        into a ``(C, nb, Hp, OW)`` array, then the ``kh`` row shifts of that array select whole
        blocks of rows. Copying the ``kh*kw`` windows directly moves the same data in ``OW``-long
        rows, and on NumPy the short rows cost most of the time (about 1.4x slower for 3x3
        kernels on 14x14 images).
        """
        xp = self.xp
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        c, nb = self.in_channels, n1 - n0
        part = xpt if (n0, n1) == (0, xpt.shape[1]) else xpt[:, n0:n1, :, :]
        if kh * kw == 1 and (sh, sw) == (1, 1):
            return xp.reshape(part, (c, nb * oh * ow))  # the (padded) input is its own column matrix
        rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
        dev = self.backend.device
        out = xp.empty((kh * kw, c, nb, oh, ow), dtype=xpt.dtype, device=dev)
        if kh > 1 and kw > 1:
            shifted = xp.empty((c, nb, xpt.shape[2], ow), dtype=xpt.dtype, device=dev)
            for j, sj in enumerate(cols):
                shifted[...] = part[:, :, :, sj]
                for i, si in enumerate(rows):
                    out[i * kw + j, ...] = shifted[:, :, si, :]
        else:
            for k, (si, sj) in enumerate((si, sj) for si in rows for sj in cols):
                out[k, ...] = part[:, :, si, sj]
        return xp.reshape(out, (kh * kw * c, nb * oh * ow))

    def _fold(self, dcols: Array, nb: int, hp: int, wp: int, oh: int, ow: int) -> Array:
        """Adjoint of :meth:`_unfold`: add columns back into a padded ``(C, nb, Hp, Wp)`` gradient
        (for a 2-D kernel also in two steps: the row shifts into one ``(C, nb, Hp, OW)`` sum per
        kernel column, then that sum shifted by the column)."""
        xp = self.xp
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        c = self.in_channels
        d = xp.reshape(dcols, (kh, kw, c, nb, oh, ow))
        if kh * kw == 1 and (hp, wp) == (oh, ow):
            return d[0, 0, ...]
        rows, cols = win.axis_slices(kh, sh, dh, oh), win.axis_slices(kw, sw, dw, ow)
        dev = self.backend.device
        gpad = xp.zeros((c, nb, hp, wp), dtype=dcols.dtype, device=dev)
        for j, sj in enumerate(cols):
            if kh > 1 and kw > 1:
                acc = xp.zeros((c, nb, hp, ow), dtype=dcols.dtype, device=dev)
                for i, si in enumerate(rows):
                    acc[:, :, si, :] += d[i, j, ...]
                gpad[:, :, :, sj] += acc
            else:
                for i, si in enumerate(rows):
                    gpad[:, :, si, sj] += d[i, j, ...]
        return gpad

    def _weight_matrix(self, transposed: bool = False) -> Array:
        """The weight as ``(out, kh*kw*C)`` with columns ordered like the unfolded rows, or its
        transpose. Built by reshaping a permuted view, so it is a fresh C-ordered matrix either way:
        BLAS (OpenBLAS in particular) can be far slower on a transposed view of a small operand."""
        xp = self.xp
        w = self.params["weight"]
        k = self.kernel_size[0] * self.kernel_size[1] * self.in_channels
        if transposed:
            return xp.reshape(xp.permute_dims(w, (2, 3, 1, 0)), (k, self.out_channels))
        return xp.reshape(xp.permute_dims(w, (0, 2, 3, 1)), (self.out_channels, k))

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        oh, ow = self._check(x)
        xp = self.xp
        n, _, h, w = x.shape
        o = self.out_channels
        nb = self._chunk(n, self.kernel_size[0] * self.kernel_size[1] * self.in_channels * oh * ow)
        # channels first: the columns of a batch chunk form one contiguous matrix
        xpt = win.pad_last2(xp, xp.permute_dims(x, (1, 0, 2, 3)), self.padding, device=self.backend.device)
        w2 = self._weight_matrix()
        bias = xp.reshape(self.params["bias"], (o, 1)) if self.use_bias else None
        y = xp.empty((n, o, oh, ow), dtype=x.dtype, device=self.backend.device)
        cols = None
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            cols = self._unfold(xpt, n0, n1, oh, ow)
            y2 = w2 @ cols
            if bias is not None:
                y2 += bias
            y[n0:n1, ...] = xp.permute_dims(xp.reshape(y2, (o, n1 - n0, oh, ow)), (1, 0, 2, 3))
        self._cache = {"xpt": xpt, "in_hw": (h, w), "out_hw": (oh, ow), "nb": nb,
                       "cols": cols if training and nb >= n else None}
        return y

    def backward(self, grad_y: Array) -> Array:
        if not self._cache:
            raise RuntimeError(f"{self!r}.backward() called before forward()")
        xp = self.xp
        c = self._cache
        xpt, (h, w), (oh, ow), nb = c["xpt"], c["in_hw"], c["out_hw"], c["nb"]
        n = xpt.shape[1]
        hp, wp = xpt.shape[2], xpt.shape[3]
        ph, pw = self.padding
        o = self.out_channels
        if tuple(grad_y.shape) != (n, o, oh, ow):
            raise ValueError(f"{self!r}.backward expects a gradient of shape {(n, o, oh, ow)} "
                             f"(the output's), got {tuple(grad_y.shape)}")
        gt = xp.permute_dims(grad_y, (1, 0, 2, 3))
        dw2t = None
        need_gx = self.need_input_grad
        w2t = self._weight_matrix(transposed=True) if need_gx else None
        gx = (xp.empty((n, self.in_channels, h, w), dtype=grad_y.dtype, device=self.backend.device)
              if need_gx else None)
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            cols = c["cols"] if c["cols"] is not None else self._unfold(xpt, n0, n1, oh, ow)
            g2 = xp.reshape(gt[:, n0:n1, :, :], (o, (n1 - n0) * oh * ow))
            # (K, O) = cols @ g2.T: BLAS is much faster this way round than g2 @ cols.T on
            # OpenBLAS when the inner (batch*pixels) dimension is long
            part = cols @ g2.mT
            dw2t = part if dw2t is None else dw2t + part
            if not need_gx:
                continue
            gpad = self._fold(w2t @ g2, n1 - n0, hp, wp, oh, ow)
            gx[n0:n1, ...] = xp.permute_dims(gpad[:, :, ph:ph + h, pw:pw + w], (1, 0, 2, 3))
        kh, kw = self.kernel_size
        self.grads["weight"] = xp.permute_dims(
            xp.reshape(dw2t, (kh, kw, self.in_channels, o)), (3, 2, 0, 1))
        if self.use_bias:
            self.grads["bias"] = xp.sum(grad_y, axis=(0, 2, 3))
        c["cols"] = None  # free the columns; a second backward recomputes them
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

