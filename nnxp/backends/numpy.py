"""NumPy backend (CPU). NumPy >= 2 follows the array API standard itself, so
``xp`` is NumPy's own namespace: no wrapper layer on the hot path.

The kernel overrides below compute what the portable versions in
:mod:`nnxp.backends.base` compute, with the same operations in the same order
(so the same numbers), but write into reused buffers with ``out=`` and call
ufuncs and their ``reduce`` directly, skipping NumPy's Python wrappers. Where
they differ from the portable versions is said in their docstrings; the tests
(``tests/test_kernels.py``) compare each with its portable version.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import numpy_conv, numpy_threads
from .base import Backend, Workspace, dtype_name

__all__ = ["NumpyBackend", "Workspace", "workspace_of"]


class NumpyBackend(Backend):
    kind = "numpy"
    sync_free = True
    dlpack_device_type = 1

    def owns(self, x: Any) -> bool:
        return type(x) is np.ndarray

    def from_host(self, x: np.ndarray, dtype: Any = None) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_dlpack(self, x: Any) -> Any:
        out = super().from_dlpack(x)
        # a read-only import (e.g. of an immutable library's buffer) cannot take in-place updates
        return out if out is None or out.flags.writeable else None

    def dtype(self, dtype: Any) -> Any:
        return None if dtype is None else np.dtype(dtype_name(dtype))

    def workspace(self, owner: Any) -> Workspace:
        return workspace_of(owner)

    def kernel_scope(self, layers: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
        """:func:`~.numpy_threads.owned_threads` for models with a layer that sets
        ``splits_kernels`` (convolution, pooling), where the passes around the BLAS
        products are a large share of a step; otherwise nothing."""
        if numpy_threads.get_num_threads() > 1 and any(getattr(layer, "splits_kernels", False) for layer in layers):
            return numpy_threads.owned_threads()
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- kernels
    def linear(self, x: Any, weight: Any, bias: Any | None, ws: Workspace | None = None) -> Any:
        """Into a reused buffer; inside :meth:`kernel_scope` (BLAS on one thread) large
        products split over the batch rows, one part per thread."""
        if ws is None or x.ndim != 2:
            y = np.matmul(x, weight)
            if bias is not None:
                np.add(y, bias, out=y)
            return y
        y = ws.get("y", (x.shape[0], weight.shape[1]), weight.dtype)

        def part(a: int, b: int) -> None:
            np.matmul(x[a:b], weight, out=y[a:b])
            if bias is not None:
                np.add(y[a:b], bias, out=y[a:b])

        if x.size * weight.shape[1] >= LINEAR_TASKS_MIN:  # one part per thread (inside kernel_scope)
            numpy_threads.parallel_rows(part, x.shape[0], x.shape[0] * numpy_threads.MIN_PART)
        else:
            part(0, x.shape[0])
        return y

    def linear_backward(self, x: Any, weight: Any, grad_y: Any, bias: bool, need_input_grad: bool,
                        grads: dict[str, Any] | None = None,
                        ws: Workspace | None = None) -> tuple[Any, Any | None, Any | None]:
        """The same products, written into the layer's existing gradient arrays
        (``grads``) and, with ``ws``, a reused input-gradient buffer."""
        if x.ndim != 2 or ws is None:
            return super().linear_backward(x, weight, grad_y, bias, need_input_grad, grads, ws)
        grads = grads or {}
        gw = _like(grads.get("weight"), weight)
        gx = ws.get("gx", x.shape, grad_y.dtype) if need_input_grad else None
        if gx is not None and x.size * weight.shape[1] >= LINEAR_TASKS_MIN and numpy_threads.splitting():
            # BLAS is on one thread here (kernel_scope): the two products run side by side
            numpy_threads.parallel_rows(lambda a, b: np.matmul(x.T, grad_y, out=gw) if a == 0
                                        else np.matmul(grad_y, weight.T, out=gx), 2, 0, parts=[(0, 1), (1, 2)])
        else:
            np.matmul(x.T, grad_y, out=gw)
            if gx is not None:
                np.matmul(grad_y, weight.T, out=gx)
        gb = None
        if bias:
            gb = _like(grads.get("bias"), weight[0])
            np.add.reduce(grad_y, axis=0, out=gb)  # np.sum without its Python wrapper
        return gw, gb, gx

    def relu(self, x: Any, ws: Workspace | None = None) -> tuple[Any, Any]:
        """Into reused buffers; inside :meth:`kernel_scope` split into flat ranges, one per thread.

        The maximum is taken against an array of zeros (:func:`~.numpy_conv.zeros`), not the
        scalar 0, which NumPy does not run in SIMD.
        """
        if ws is None:
            return np.maximum(x, 0), x > 0
        mask = ws.get("mask", x.shape, np.bool_)
        y = ws.get("y", x.shape, x.dtype)
        if not x.flags.c_contiguous:
            np.greater(x, 0, out=mask)
            return np.maximum(x, 0, out=y), mask
        xf, mf, yf = x.reshape(-1), mask.reshape(-1), y.reshape(-1)
        zeros = numpy_conv.zeros(xf.size, x.dtype)

        def part(a: int, b: int) -> None:
            np.greater(xf[a:b], 0, out=mf[a:b])
            np.maximum(xf[a:b], zeros[a:b], out=yf[a:b])

        numpy_threads.parallel_rows(part, xf.size, xf.size)
        return y, mask

    def relu_backward(self, grad_y: Any, mask: Any, ws: Workspace | None = None) -> Any:
        """``grad_y * mask``: ``where`` is several times slower in NumPy on random
        masks. The two differ only where the incoming gradient is already inf/NaN
        (``inf * 0`` is NaN). Split like :meth:`relu`."""
        if ws is None:
            return grad_y * mask
        g = ws.get("g", grad_y.shape, grad_y.dtype)
        if not (grad_y.flags.c_contiguous and mask.flags.c_contiguous):
            return np.multiply(grad_y, mask, out=g)
        gf, mf, of = grad_y.reshape(-1), mask.reshape(-1), g.reshape(-1)
        numpy_threads.parallel_rows(lambda a, b: np.multiply(gf[a:b], mf[a:b], out=of[a:b]), gf.size, gf.size)
        return g

    def dropout_mask(self, keep: Any, scale: float, dtype: Any) -> Any:
        """``keep * scale``: the same values as ``where``, 5x faster in NumPy."""
        return keep * np.dtype(dtype).type(scale)

    def softmax_cross_entropy(self, logits: Any, labels: Any, ws: Workspace | None = None) -> tuple[Any, Any]:
        """Row indexing instead of ``take_along_axis``; ufunc reductions; with
        ``ws`` the shifted logits and the softmax live in reused buffers."""
        n = logits.shape[0]
        mx = np.maximum.reduce(logits, axis=1, keepdims=True)
        if ws is not None:
            shifted = np.subtract(logits, mx, out=ws.get("shifted", logits.shape, logits.dtype))
            e = np.exp(shifted, out=ws.get("prob", logits.shape, logits.dtype))
        else:
            shifted = logits - mx
            e = np.exp(shifted)
        s = np.add.reduce(e, axis=1, keepdims=True)
        prob = np.divide(e, s, out=e)
        loss = np.add.reduce(np.log(s[:, 0]) - shifted[_rows(n), labels]) / n  # = mean, as np.mean computes it
        return loss, prob

    def softmax_cross_entropy_backward(self, prob: Any, labels: Any, ws: Workspace | None = None) -> Any:
        """``(softmax - onehot) / n`` without the one-hot matrix; in place in
        ``prob`` when ``ws`` is given (the forward's reused buffer)."""
        n = prob.shape[0]
        g = prob if ws is not None else prob.copy()
        g[_rows(n), labels] -= 1
        return np.divide(g, n, out=g)

    def count_correct(self, logits: Any, labels: Any) -> Any:
        if logits.ndim == 2 and labels.ndim == 1:
            return logits.dtype.type(np.count_nonzero(logits.argmax(axis=1) == labels))
        return super().count_correct(logits, labels)

    def sgd_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, momentum: float, nesterov: bool,
                   weight_decay: float, inplace: bool = True, ws: Workspace | None = None) -> Any:
        """In place with ``out=`` ufuncs into scratch arrays: the same operations, no temporaries."""
        if not inplace or ws is None:
            return super().sgd_update(p, g, state, lr, momentum, nesterov, weight_decay, inplace, ws)
        if weight_decay:
            gw = ws.scratch("a", p.shape, p.dtype)
            np.multiply(p, weight_decay, out=gw)
            g = np.add(g, gw, out=gw)
        if momentum:
            v = state["velocity"]
            np.multiply(v, momentum, out=v)
            np.add(v, g, out=v)
            if nesterov:
                s = ws.scratch("b", p.shape, p.dtype)
                np.multiply(v, momentum, out=s)
                g = np.add(g, s, out=s)
            else:
                g = v
        step = ws.scratch("b", p.shape, p.dtype)
        np.multiply(g, lr, out=step)
        return np.subtract(p, step, out=p)

    def adam_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, betas: tuple[float, float],
                    eps: float, step: int, weight_decay: float, decoupled: bool, inplace: bool = True,
                    ws: Workspace | None = None) -> Any:
        """In place with ``out=`` ufuncs into scratch arrays: the same operations, no temporaries;
        inside :meth:`kernel_scope` split into flat ranges, one per thread."""
        if not inplace or ws is None:
            return super().adam_update(p, g, state, lr, betas, eps, step, weight_decay, decoupled, inplace, ws)
        b1, b2 = betas
        size = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        eps_hat = eps * math.sqrt(1 - b2**step)
        bufs = [p, g, state["m"], state["v"], ws.scratch("a", p.shape, p.dtype), ws.scratch("b", p.shape, p.dtype),
                ws.scratch("c", p.shape, p.dtype) if weight_decay and not decoupled else None]

        def part(lo: int, hi: int, flat: bool = True) -> None:
            p_, g_, m, v, a, d, c = (None if t is None else (t.reshape(-1)[lo:hi] if flat else t) for t in bufs)
            if weight_decay and not decoupled:
                np.multiply(p_, weight_decay, out=c)
                g_ = np.add(g_, c, out=c)
            np.multiply(m, b1, out=m)
            np.add(m, np.multiply(g_, 1 - b1, out=a), out=m)
            np.multiply(v, b2, out=v)
            np.multiply(g_, g_, out=a)
            np.add(v, np.multiply(a, 1 - b2, out=a), out=v)
            np.add(np.sqrt(v, out=d), eps_hat, out=d)
            np.divide(np.multiply(m, size, out=a), d, out=d)
            if weight_decay and decoupled:
                np.add(d, np.multiply(p_, lr * weight_decay, out=a), out=d)
            np.subtract(p_, d, out=p_)

        if all(t is None or t.flags.c_contiguous for t in bufs):
            numpy_threads.parallel_rows(part, p.size, 8 * p.size)
        else:
            part(0, p.size, flat=False)
        return p

    def scatter_add_rows(self, indices: np.ndarray, values: np.ndarray, num_rows: int) -> np.ndarray:
        """:meth:`Backend.scatter_add_rows` as one ``np.bincount`` over (row, column) cells:
        linear in the data, where the portable one-hot product grows with ``num_rows``
        (and ``np.add.at`` is several times slower). Sums in float64."""
        d = values.shape[1]
        cells = (indices.astype(np.intp, copy=False)[:, None] * d + np.arange(d)).reshape(-1)
        out = np.bincount(cells, weights=values.reshape(-1), minlength=num_rows * d)
        return out.reshape(num_rows, d).astype(values.dtype, copy=False)

    def rmsprop_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, alpha: float, eps: float,
                       momentum: float, centered: bool, weight_decay: float, inplace: bool = True,
                       ws: Workspace | None = None) -> Any:
        """In place with ``out=`` ufuncs into scratch arrays: the same operations, no temporaries."""
        if not inplace or ws is None:
            return super().rmsprop_update(p, g, state, lr, alpha, eps, momentum, centered, weight_decay, inplace, ws)
        if weight_decay:
            gw = ws.scratch("c", p.shape, p.dtype)
            np.multiply(p, weight_decay, out=gw)
            g = np.add(g, gw, out=gw)
        a = ws.scratch("a", p.shape, p.dtype)
        s = state["square_avg"]
        np.multiply(s, alpha, out=s)
        np.multiply(g, g, out=a)
        np.add(s, np.multiply(a, 1 - alpha, out=a), out=s)
        d = ws.scratch("b", p.shape, p.dtype)
        if centered:
            m = state["grad_avg"]
            np.multiply(m, alpha, out=m)
            np.add(m, np.multiply(g, 1 - alpha, out=a), out=m)
            np.subtract(s, np.multiply(m, m, out=d), out=d)
            np.sqrt(d, out=d)
        else:
            np.sqrt(s, out=d)
        np.add(d, eps, out=d)
        np.divide(g, d, out=d)
        if momentum:
            v = state["velocity"]
            np.multiply(v, momentum, out=v)
            np.add(v, d, out=v)
            d = np.multiply(v, lr, out=d)
        else:
            np.multiply(d, lr, out=d)
        return np.subtract(p, d, out=p)

    def adagrad_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, eps: float, weight_decay: float,
                       inplace: bool = True, ws: Workspace | None = None) -> Any:
        """In place with ``out=`` ufuncs into scratch arrays: the same operations, no temporaries."""
        if not inplace or ws is None:
            return super().adagrad_update(p, g, state, lr, eps, weight_decay, inplace, ws)
        if weight_decay:
            gw = ws.scratch("c", p.shape, p.dtype)
            np.multiply(p, weight_decay, out=gw)
            g = np.add(g, gw, out=gw)
        s = state["sum"]
        np.add(s, np.multiply(g, g, out=ws.scratch("a", p.shape, p.dtype)), out=s)
        d = ws.scratch("b", p.shape, p.dtype)
        np.add(np.sqrt(s, out=d), eps, out=d)
        np.divide(g, d, out=d)
        return np.subtract(p, np.multiply(d, lr, out=d), out=p)

    def clip_by_value(self, grads: list[Any], clip_value: float, ws: Workspace | None = None) -> list[Any]:
        """Into reused buffers, one per gradient."""
        if ws is None:
            return super().clip_by_value(grads, clip_value, ws)
        return [np.clip(g, -clip_value, clip_value, out=ws.get(f"clip{i}", g.shape, g.dtype))
                for i, g in enumerate(grads)]

    def clip_by_global_norm(self, grads: list[Any], max_norm: float, eps: float = 1e-6,
                            ws: Workspace | None = None) -> tuple[list[Any], Any]:
        """Each sum of squares as one BLAS dot product (no ``g * g`` temporary); the
        scaled gradients go into reused buffers, one per gradient."""
        if ws is None:
            return super().clip_by_global_norm(grads, max_norm, eps, ws)
        flat = [g.reshape(-1) for g in grads]
        norm = np.asarray(np.sqrt(np.add.reduce(np.stack([np.dot(f, f) for f in flat]))))  # 0-d, not a scalar
        scale = np.minimum(max_norm / (norm + eps), 1.0)
        return [np.multiply(g, scale, out=ws.get(f"clip{i}", g.shape, g.dtype)) for i, g in enumerate(grads)], norm


    # --------------------------------------------------------- window kernels (numpy_conv.py)
    def conv2d(self, x: Any, weight: Any, bias: Any | None, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], chunk: int, keep_cols: bool = True,
               ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """Columns and outputs written into preallocated arrays (no stack/concat)."""
        return numpy_conv.conv2d(x, weight, bias, stride, padding, dilation, chunk, keep_cols, ws)

    def conv2d_backward(self, ctx: dict[str, Any], grad_y: Any, weight: Any, bias: bool, need_input_grad: bool,
                        ws: Workspace | None = None) -> tuple[Any, Any | None, Any | None]:
        """The columns folded back with ``+=`` into slices, two steps for 2-D kernels (flat shifts
        of whole images for a 'same' convolution)."""
        return numpy_conv.conv2d_backward(ctx, grad_y, weight, bias, need_input_grad, ws)

    def fuses_conv2d_maxpool(self, in_channels: int, kernel: tuple[int, int]) -> bool:
        """Yes (unless :data:`~.numpy_conv.FUSE` is off): pooling a step's product while it is in
        the cache saves the convolution's output and the pooling's strided passes over it."""
        return numpy_conv.FUSE and (kernel[0] * kernel[1] * in_channels <= numpy_conv.PHASE_MAX_K
                                    or numpy_conv.FUSE_COLS)

    def conv2d_maxpool(self, x: Any, weight: Any, bias: Any | None, padding: tuple[int, int],
                       pool: tuple[int, int], relu: bool, chunk: int, keep: bool = True,
                       ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """Each cache-sized step pools its own product; a small convolution's columns come in
        window-offset blocks, which makes the pooling contiguous passes."""
        return numpy_conv.conv2d_maxpool(x, weight, bias, padding, pool, relu, keep, ws)

    def conv2d_maxpool_backward(self, ctx: dict[str, Any], grad_y: Any, weight: Any, bias: bool,
                                need_input_grad: bool, ws: Workspace | None = None
                                ) -> tuple[Any, Any | None, Any | None]:
        """The pooled gradient routed to each window's maximum in the product's layout, then the
        products and the fold, step by step."""
        return numpy_conv.conv2d_maxpool_backward(ctx, grad_y, weight, bias, need_input_grad, ws)

    def max_pool2d(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """A chain of ``maximum(..., out=)``."""
        return numpy_conv.max_pool2d(x, kernel, stride, padding)

    def max_pool2d_backward(self, ctx: dict[str, Any], grad_y: Any, ws: Workspace | None = None) -> Any:
        """Boolean masks and ``multiply(..., out=)`` instead of ``where``; differs from the portable
        version only where the incoming gradient is already inf/NaN."""
        return numpy_conv.max_pool2d_backward(ctx, grad_y)

    def avg_pool2d(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   count_include_pad: bool = True, ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """Window sums with ``+=`` into one array."""
        return numpy_conv.avg_pool2d(x, kernel, stride, padding,
                                     self._avg_divisor(x, kernel, stride, padding, count_include_pad))

    def avg_pool2d_backward(self, ctx: dict[str, Any], grad_y: Any, ws: Workspace | None = None) -> Any:
        """Slice assignment into one zero array."""
        return numpy_conv.avg_pool2d_backward(ctx, grad_y)

#: multiply-adds from which, inside ``kernel_scope``, ``linear`` splits its product over the batch
#: rows and ``linear_backward`` runs its weight and input gradient products on two threads at once
#: (a 50 us product is worth the hand-off)
LINEAR_TASKS_MIN = 1 << 21


def _like(arr: Any, ref: np.ndarray) -> np.ndarray:
    """``arr`` if it is a NumPy array shaped and typed like ``ref``, else a new one."""
    if type(arr) is np.ndarray and arr.shape == ref.shape and arr.dtype == ref.dtype:
        return arr
    return np.empty_like(ref)


_ROWS: dict[int, np.ndarray] = {}


def _rows(n: int) -> np.ndarray:
    """``arange(n)``, kept for the batch sizes seen (usually two: full and last)."""
    rows = _ROWS.get(n)
    if rows is None:
        if len(_ROWS) > 16:
            _ROWS.clear()
        rows = _ROWS[n] = np.arange(n)
    return rows


def workspace_of(owner: Any) -> Workspace:
    """The NumPy :class:`Workspace` kept on ``owner`` (a layer, loss or optimizer), made on first use."""
    ws = getattr(owner, "_workspace", None)
    if ws is None:
        ws = owner._workspace = Workspace(np.empty)
    return ws


def make(device: str | None) -> Backend:
    if device not in (None, "cpu", "0"):
        raise ValueError(f"The numpy backend has one device, 'cpu'; got {device!r}.")
    if int(np.__version__.split(".")[0]) >= 2:
        xp = np
    else:  # NumPy 1.x needs the compat wrapper to speak the standard
        import array_api_compat.numpy as xp
    return NumpyBackend("numpy", xp, "cpu", np.ndarray)


def array_backend(x: Any) -> Backend:
    from . import resolve_backend

    return resolve_backend("numpy")


def to_host(x: Any) -> np.ndarray:
    return np.asarray(x)
