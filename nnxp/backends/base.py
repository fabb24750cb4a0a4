"""The portable :class:`Backend`: array API standard calls only."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import windows

#: elements of the one-hot matrix that ``Backend.scatter_add_rows`` builds at a time
_ONEHOT_BUDGET = 1 << 24


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for a dtype of any library (NumPy, JAX, torch, array_api_strict) or a name."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:  # torch.float32, array_api_strict.float32 print as "<library>.float32"
        return str(dtype).rsplit(".", 1)[-1]


class BackendUnavailableError(RuntimeError):
    """A backend's library, device or driver is missing; the message says which."""


class BackendMismatchError(ValueError):
    """Arrays from different backends or devices met in one operation."""


class Backend:
    """An array namespace ``xp`` plus a device.

    Subclasses (one module per library) override hot spots only; everything
    here uses the array API standard, so any namespace that array-api-compat
    wraps works through this class.

    Attributes:
        name: full name, ``"numpy"``, ``"cupy:0"``, ``"array_api_strict:device1"``.
        kind: the library part of the name.
        xp: the array namespace (standard-conforming).
        device: the device object passed to every array creation.
        array_type: the library's array class, for cheap identity checks.
        sync_free: reading a device scalar on the host costs nothing (CPU
            backends); ``fit`` then checks the loss every step.
        immutable: the library's arrays cannot be written in place (JAX);
            transfers then always copy, so no two libraries share a buffer
            that one of them believes constant.
    """

    kind = "generic"
    sync_free = True
    immutable = False

    def __init__(self, name: str, xp: Any, device: Any, array_type: type) -> None:
        self.name = name
        self.xp = xp
        self.device = device
        self.array_type = array_type
        self._constants: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, xp={self.xp.__name__}, device={self.device!r})"

    def __reduce__(self):  # pickle/copy by name: namespaces are modules
        from . import resolve_backend

        return (resolve_backend, (self.name,))

    # ----------------------------------------------------------------- dtypes
    def dtype(self, dtype: Any) -> Any:
        """The namespace's dtype for a name (``"float32"``) or a dtype of any library."""
        if dtype is None:
            return None
        name = dtype if isinstance(dtype, str) else dtype_name(dtype)
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise TypeError(f"Unknown dtype {dtype!r} for backend {self.name}") from None

    # --------------------------------------------------------------- transfer
    #: DLPack device type of this backend's arrays (1 = CPU, 2 = CUDA, 8 = Metal); ``None``: no DLPack
    dlpack_device_type: int | None = None

    def owns(self, x: Any) -> bool:
        """True when ``x`` is an array of this namespace on this device."""
        return type(x) is self.array_type and x.device == self.device

    def from_host(self, x: np.ndarray, dtype: Any = None) -> Any:
        """Copy a host NumPy array to this backend's device."""
        if dtype is not None:
            x = x.astype(np.dtype(str(dtype).rsplit(".", 1)[-1]), copy=False)
        return self.xp.asarray(x, device=self.device)

    def to_host(self, x: Any) -> np.ndarray:
        """A host NumPy array from an array of this backend."""
        from . import to_numpy

        return to_numpy(x)

    def from_dlpack(self, x: Any) -> Any:
        """Import an array of another library on this backend's device through DLPack.

        Returns ``None`` when that is not possible (no DLPack, another device
        type or device); the caller then copies through the host.
        """
        if self.dlpack_device_type is None or not hasattr(x, "__dlpack_device__"):
            return None
        try:
            kind, index = x.__dlpack_device__()
        except Exception:  # some libraries raise for arrays they cannot export
            return None
        if int(kind) != self.dlpack_device_type or int(index) != self.dlpack_device_index():
            return None
        try:
            return self.xp.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, ValueError):
            return None

    def dlpack_device_index(self) -> int:
        """The device index DLPack reports for this backend's arrays."""
        return 0

    def asarray(self, x: Any, dtype: Any = None, copy: bool | None = None) -> Any:
        """Move any array to this backend and device.

        Between libraries that share a device the move goes through DLPack
        (no copy, like ``asarray``); otherwise through a host NumPy copy. A
        move from or to an immutable library (JAX) always copies, so no
        buffer is shared between a library that writes in place and one that
        assumes it never changes.

        Args:
            x: an array of any backend, or anything ``numpy.asarray`` takes.
            dtype: optional target dtype (a name or a dtype of any library).
            copy: ``True`` always returns a new array (parameters moved by
                ``model.to`` are copies); ``None`` copies only when needed.

        Returns:
            An array of this backend on its device.
        """
        dt = self.dtype(dtype)
        if self.owns(x):
            out = x
            if copy and not self.immutable:
                out = self.xp.asarray(x, copy=True)
        else:
            from . import library_of, to_numpy

            out = self.from_dlpack(x)
            if out is not None and (copy or self.immutable or library_of(x) == "jax"):
                out = self.xp.asarray(out, copy=True)
            if out is None:
                host = to_numpy(x)
                # from_host may wrap the host buffer (NumPy, torch on the CPU): copy it when asked
                out = self.from_host(np.array(host, copy=True) if copy else host)
        return out if dt is None or out.dtype == dt else self.xp.astype(out, dt)

    def check(self, x: Any, what: str = "input") -> None:
        """Raise :class:`BackendMismatchError` unless ``x`` lives on this backend.

        Args:
            x: the array to check.
            what: how to call it in the message (``"input"``, ``"labels"``).
        """
        if self.owns(x):
            return
        from . import backend_of

        try:
            where = backend_of(x).name
        except TypeError:
            where = f"{type(x).__module__}.{type(x).__name__}"
        raise BackendMismatchError(
            f"The {what} is on backend {where!r} but the model's arrays are on "
            f"{self.name!r}. Move it first with nnxp.to_device(x, {self.name!r}) "
            f"(or move the model with model.to({where!r}))."
        )

    # ------------------------------------------------------------- randomness
    def random_generator(self, seed: int | None) -> Any:
        """A generator for per-step randomness (dropout masks).

        The portable version draws on a host NumPy ``Generator`` and copies
        the numbers over, so CPU backends share one stream; GPU backends
        override this with their own generator.
        """
        return _HostRandom(self, seed)

    # ---------------------------------------------------------------- helpers
    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU backends)."""

    def portable(self) -> Backend:
        """This backend with every kernel in its portable (standard-only) version.

        The same namespace, device and name, but the :class:`Backend` methods
        instead of the library's overrides: the tests train and step on both
        and compare, and a user can rule a fast path out when hunting a bug.

        Returns:
            A :class:`Backend` that compares equal to this one.
        """
        if type(self) is Backend:
            return self
        twin = Backend(self.name, self.xp, self.device, self.array_type)
        # what is not a kernel (transfers, dtypes, randomness, sync) stays the library's own
        for attr in ("kind", "sync_free", "immutable", "dlpack_device_type"):
            setattr(twin, attr, getattr(self, attr))
        for meth in _NOT_KERNELS:
            setattr(twin, meth, getattr(self, meth))
        return twin

    def kernel_scope(self, layers: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
        """A block inside which a model's training or inference steps run.

        ``Sequential.fit``, ``evaluate`` and ``predict`` enter it once around their
        loops. Here it does nothing; the NumPy backend splits the kernels of models
        with convolution or pooling layers over its own threads inside it
        (:mod:`nnxp.backends.numpy_threads`).

        Args:
            layers: the model's layers, nested containers included.

        Returns:
            A context manager.
        """
        return contextlib.nullcontext()

    def workspace(self, owner: Any) -> Workspace | None:
        """The reusable output buffers of ``owner`` (a layer, loss or optimizer).

        Kernels take it as ``ws``; an override may write its results into
        ``ws.get(...)`` arrays that the next training step overwrites. The
        portable kernels never write into buffers, so backends without
        ``out=`` overrides (and immutable ones) return ``None``.
        """
        return None

    # ---------------------------------------------------------------- kernels
    # The hot operations of layers, losses and optimizers (Thinc's ``ops``). These are the
    # portable versions: standard calls only, no writes into arrays the caller keeps (JAX arrays
    # are immutable), nothing read on the host. A library's module overrides the ones it can do
    # faster (NumPy: ``out=`` into reused buffers); tests compare each override with these.

    def linear(self, x: Any, weight: Any, bias: Any | None, ws: Workspace | None = None) -> Any:
        """``x @ weight + bias`` for ``x`` of shape ``(..., in)`` and ``weight`` ``(in, out)``.

        Args:
            x: input batch.
            weight: ``(in_features, out_features)`` matrix.
            bias: ``(out_features,)`` or ``None``.
            ws: buffers an override may write the output into.

        Returns:
            ``(..., out_features)`` output.
        """
        y = self.xp.matmul(x, weight)
        return y if bias is None else y + bias

    def linear_backward(self, x: Any, weight: Any, grad_y: Any, bias: bool, need_input_grad: bool,
                        grads: dict[str, Any] | None = None,
                        ws: Workspace | None = None) -> tuple[Any, Any | None, Any | None]:
        """Gradients of :meth:`linear`.

        Args:
            x: the forward input ``(..., in)``.
            weight: the weight ``(in, out)``.
            grad_y: gradient of the output ``(..., out)``.
            bias: whether there is a bias.
            need_input_grad: compute the input gradient (``False``: return ``None`` for it).
            grads: the layer's current gradient arrays, which an override may overwrite.
            ws: buffers an override may write the input gradient into.

        Returns:
            ``(grad_weight, grad_bias or None, grad_x or None)``.
        """
        xp = self.xp
        x2 = x if x.ndim == 2 else xp.reshape(x, (-1, x.shape[-1]))
        g2 = grad_y if grad_y.ndim == 2 else xp.reshape(grad_y, (-1, grad_y.shape[-1]))
        gw = xp.matmul(xp.matrix_transpose(x2), g2)
        gb = xp.sum(g2, axis=0) if bias else None
        gx = xp.matmul(grad_y, xp.matrix_transpose(weight)) if need_input_grad else None
        return gw, gb, gx

    def relu(self, x: Any, ws: Workspace | None = None) -> tuple[Any, Any]:
        """``max(x, 0)`` (NaN stays NaN) and the mask ``x > 0`` its backward needs.

        Returns:
            ``(y, mask)``.
        """
        xp = self.xp
        # maximum, not where(x > 0, x, 0): that would turn NaN into 0 and hide it
        return xp.maximum(x, self.zero(x)), x > 0

    def relu_backward(self, grad_y: Any, mask: Any, ws: Workspace | None = None) -> Any:
        """``grad_y`` where the input was positive, else 0."""
        return self.xp.where(mask, grad_y, self.zero(grad_y))

    def dropout_mask(self, keep: Any, scale: float, dtype: Any) -> Any:
        """``scale`` where ``keep`` is True, else 0, as ``dtype`` (the inverted-dropout multiplier)."""
        xp = self.xp
        return xp.where(keep, xp.asarray(scale, dtype=dtype, device=self.device),
                        xp.asarray(0.0, dtype=dtype, device=self.device))

    def softmax_cross_entropy(self, logits: Any, labels: Any, ws: Workspace | None = None) -> tuple[Any, Any]:
        """Mean cross-entropy of ``(n, k)`` logits against ``(n,)`` integer labels.

        The log-sum-exp is shifted by the row maximum (stable for logits of
        +-1e4). Labels are not range-checked here.

        Returns:
            ``(loss, prob)``: the 0-d mean loss and the softmax, which
            :meth:`softmax_cross_entropy_backward` turns into the gradient.
        """
        xp = self.xp
        n = logits.shape[0]
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        picked = xp.take_along_axis(shifted, xp.reshape(labels, (n, 1)), axis=1)
        return xp.mean(xp.log(s) - picked), e / s

    def softmax_cross_entropy_backward(self, prob: Any, labels: Any, ws: Workspace | None = None) -> Any:
        """``(prob - onehot(labels)) / n``: the fused gradient of the mean softmax cross-entropy.

        An override may write into ``prob`` when ``ws`` is given (it is then
        the forward's reused buffer).
        """
        xp = self.xp
        n, k = prob.shape
        onehot = xp.astype(xp.reshape(labels, (n, 1)) == self._class_row(k, labels), prob.dtype)
        return (prob - onehot) / n

    def count_correct(self, logits: Any, labels: Any) -> Any:
        """Number of rows whose arg-max is the label, as a 0-d array of the logits' dtype."""
        xp = self.xp
        pred = xp.argmax(logits, axis=-1)
        if labels.dtype != pred.dtype:
            labels = xp.astype(labels, pred.dtype)
        return xp.sum(xp.astype(pred == labels, logits.dtype))

    def sgd_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, momentum: float, nesterov: bool,
                   weight_decay: float, inplace: bool = True, ws: Workspace | None = None) -> Any:
        """One SGD step (PyTorch's formulation); updates ``state["velocity"]``.

        Args:
            p: the parameter.
            g: its gradient.
            state: ``{"velocity": ...}`` when ``momentum`` is set.
            lr: learning rate.
            momentum: momentum factor (0: none).
            nesterov: Nesterov momentum.
            weight_decay: L2 penalty added to the gradient.
            inplace: the parameter may be updated in place (``False`` when the
                caller still needs the old value, e.g. to mask the update).
            ws: scratch buffers for an override.

        Returns:
            The updated parameter (the same array when updated in place).
        """
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            v = momentum * state["velocity"] + g
            state["velocity"] = v
            g = g + momentum * v if nesterov else v
        return p - lr * g

    def adam_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, betas: tuple[float, float],
                    eps: float, step: int, weight_decay: float, decoupled: bool, inplace: bool = True,
                    ws: Workspace | None = None) -> Any:
        """One Adam/AdamW step with bias correction; updates ``state["m"]`` and ``state["v"]``.

        Args:
            p: the parameter.
            g: its gradient.
            state: ``{"m": ..., "v": ...}``.
            lr: learning rate.
            betas: moment decay rates.
            eps: added to the denominator.
            step: 1-based step count (bias correction).
            weight_decay: L2 penalty (``decoupled=False``) or AdamW decay factor.
            decoupled: AdamW's decoupled weight decay.
            inplace: see :meth:`sgd_update`.
            ws: scratch buffers for an override.

        Returns:
            The updated parameter.
        """
        xp = self.xp
        b1, b2 = betas
        if weight_decay and not decoupled:
            g = g + weight_decay * p
        m = state["m"] = b1 * state["m"] + (1 - b1) * g
        v = state["v"] = b2 * state["v"] + (1 - b2) * (g * g)
        # both bias corrections folded into the step size (host floats: no device work)
        size = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        delta = size * m / (xp.sqrt(v) + eps * math.sqrt(1 - b2**step))
        if weight_decay and decoupled:
            delta = delta + (lr * weight_decay) * p
        return p - delta

    def rmsprop_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, alpha: float, eps: float,
                       momentum: float, centered: bool, weight_decay: float, inplace: bool = True,
                       ws: Workspace | None = None) -> Any:
        """One RMSprop step (PyTorch's formulation); updates ``state``.

        ``s = alpha * s + (1 - alpha) * g**2``; centered also keeps the mean
        gradient ``a`` and divides by ``sqrt(s - a**2) + eps`` instead of
        ``sqrt(s) + eps``; with momentum the step goes through a buffer
        ``b = momentum * b + g / denom``.

        Args:
            p: the parameter.
            g: its gradient.
            state: ``{"square_avg"}``, plus ``"grad_avg"`` when centered and
                ``"velocity"`` with momentum.
            lr: learning rate.
            alpha: decay rate of the averages.
            eps: added to the denominator.
            momentum: momentum factor (0: none).
            centered: divide by the estimated variance instead of the second moment.
            weight_decay: L2 penalty added to the gradient.
            inplace: see :meth:`sgd_update`.
            ws: scratch buffers for an override.

        Returns:
            The updated parameter.
        """
        xp = self.xp
        if weight_decay:
            g = g + weight_decay * p
        s = state["square_avg"] = alpha * state["square_avg"] + (1 - alpha) * (g * g)
        if centered:
            a = state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * g
            denom = xp.sqrt(s - a * a) + eps
        else:
            denom = xp.sqrt(s) + eps
        if momentum:
            b = state["velocity"] = momentum * state["velocity"] + g / denom
            return p - lr * b
        return p - lr * (g / denom)

    def adagrad_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, eps: float, weight_decay: float,
                       inplace: bool = True, ws: Workspace | None = None) -> Any:
        """One Adagrad step (PyTorch's formulation); updates ``state["sum"]``.

        ``s = s + g**2``; ``p = p - lr * g / (sqrt(s) + eps)``.

        Args:
            p: the parameter.
            g: its gradient.
            state: ``{"sum": ...}``, the running sum of squared gradients.
            lr: learning rate of this step (after Adagrad's own ``lr_decay``).
            eps: added to the denominator.
            weight_decay: L2 penalty added to the gradient.
            inplace: see :meth:`sgd_update`.
            ws: scratch buffers for an override.

        Returns:
            The updated parameter.
        """
        xp = self.xp
        if weight_decay:
            g = g + weight_decay * p
        s = state["sum"] = state["sum"] + g * g
        return p - lr * (g / (xp.sqrt(s) + eps))

    def clip_by_value(self, grads: list[Any], clip_value: float, ws: Workspace | None = None) -> list[Any]:
        """Every gradient clipped elementwise to ``[-clip_value, clip_value]``
        (``torch.nn.utils.clip_grad_value_``); the inputs are left as they are.

        Args:
            grads: the gradients of one step.
            clip_value: the bound (> 0).
            ws: buffers an override may write the results into.

        Returns:
            The clipped gradients, in order.
        """
        xp = self.xp
        return [xp.clip(g, min=-clip_value, max=clip_value) for g in grads]

    def clip_by_global_norm(self, grads: list[Any], max_norm: float, eps: float = 1e-6,
                            ws: Workspace | None = None) -> tuple[list[Any], Any]:
        """The gradients scaled by ``min(1, max_norm / (norm + eps))``, where
        ``norm`` is the 2-norm of all of them together (``torch.nn.utils.clip_grad_norm_``).

        One square root of the sum of every gradient's sum of squares; the
        scale is a 0-d device array, so nothing is read on the host. The
        inputs are left as they are.

        Args:
            grads: the gradients of one step (one dtype).
            max_norm: the largest global norm let through (> 0).
            eps: keeps the division finite for zero gradients.
            ws: buffers an override may write the results into.

        Returns:
            ``(clipped gradients, norm)``: the norm before clipping, a 0-d device array.
        """
        xp = self.xp
        norm = xp.sqrt(xp.sum(xp.stack([xp.sum(g * g) for g in grads])))
        scale = xp.clip(max_norm / (norm + eps), max=1.0)
        return [g * scale for g in grads], norm

    # ---------------------------------------------------------------- helpers
    def zero(self, like: Any) -> Any:
        """A 0-d zero of ``like``'s dtype on this device, made once per dtype.

        On a GPU every creation is a kernel launch and a small step is bound
        by their count, so constants are kept rather than made per call.
        """
        key = ("zero", like.dtype)
        z = self._constants.get(key)
        if z is None:
            z = self._constants[key] = self.xp.zeros((), dtype=like.dtype, device=self.device)
        return z

    def _class_row(self, k: int, labels: Any) -> Any:
        """``arange(k)`` as a ``(1, k)`` row of the labels' dtype, made once."""
        key = ("classes", k, labels.dtype)
        row = self._constants.get(key)
        if row is None:
            row = self._constants[key] = self.xp.reshape(
                self.xp.arange(k, dtype=labels.dtype, device=self.device), (1, k))
        return row

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # ------------------------------------------------------- sequence kernels
    def scatter_add_rows(self, indices: Any, values: Any, num_rows: int) -> Any:
        """Sum rows of ``values`` into a table by index; repeated indices accumulate.

        ``out[r] = sum(values[k] for k where indices[k] == r)``: the weight
        gradient of an embedding lookup. The standard has no scatter-add (and
        ``xpx.at(out)[idx].add(v)`` keeps only one of repeated indices on
        NumPy), so the portable version multiplies by a one-hot matrix, in
        chunks of ``indices`` that bound the one-hot's size.

        Args:
            indices: 1-D integer array, entries in ``[0, num_rows)``.
            values: ``(len(indices), d)`` floating array.
            num_rows: number of rows of the result.

        Returns:
            ``(num_rows, d)`` array of ``values``' dtype, on its device.
        """
        xp = self.xp
        n = indices.shape[0]
        rows = xp.reshape(xp.arange(num_rows, dtype=indices.dtype, device=values.device), (num_rows, 1))
        chunk = max(1, _ONEHOT_BUDGET // max(1, num_rows))
        out = None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            onehot = xp.astype(rows == xp.reshape(indices[start:stop], (1, stop - start)), values.dtype)
            part = onehot @ values[start:stop, ...]
            out = part if out is None else out + part
        if out is None:
            out = xp.zeros((num_rows, values.shape[1]), dtype=values.dtype, device=values.device)
        return out


    # --------------------------------------------------------- window kernels
    # Convolution and pooling (NCHW). The forward kernels return the output and an opaque context
    # (a dict) that only the matching backward kernel reads; the portable versions live in
    # ``backends/windows.py``.

    def conv2d(self, x: Any, weight: Any, bias: Any | None, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], chunk: int, keep_cols: bool = True,
               ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """2-D cross-correlation of an NCHW batch (``torch.nn.functional.conv2d``) as im2col + GEMM.

        The input is moved to channels-first ``(C, N, Hp, Wp)`` and padded;
        the windows of ``chunk`` batch items at a time are unfolded into one
        ``(kh*kw*C, chunk*OH*OW)`` column matrix and multiplied by the weight.

        Args:
            x: ``(N, C, H, W)`` input.
            weight: ``(O, C, kh, kw)``.
            bias: ``(O,)`` or ``None``.
            stride: ``(sh, sw)``.
            padding: zero padding ``(ph, pw)`` on each side.
            dilation: ``(dh, dw)``.
            chunk: batch items per column matrix (bounds its memory).
            keep_cols: keep the columns for the backward pass (one chunk only).
            ws: buffers an override may write into.

        Returns:
            ``(y, ctx)``: the ``(N, O, OH, OW)`` output and what :meth:`conv2d_backward` needs.
        """
        return windows.conv2d(self.xp, x, weight, bias, stride, padding, dilation, chunk, keep_cols)

    def conv2d_backward(self, ctx: dict[str, Any], grad_y: Any, weight: Any, bias: bool, need_input_grad: bool,
                        ws: Workspace | None = None) -> tuple[Any, Any | None, Any | None]:
        """Gradients of :meth:`conv2d`.

        Args:
            ctx: the context :meth:`conv2d` returned (its columns are dropped here).
            grad_y: ``(N, O, OH, OW)`` gradient of the output.
            weight: the weight of the forward pass.
            bias: whether there is a bias.
            need_input_grad: compute the input gradient (``False``: ``None`` for it).
            ws: buffers an override may write into.

        Returns:
            ``(grad_weight, grad_bias or None, grad_x or None)``.
        """
        return windows.conv2d_backward(self.xp, ctx, grad_y, weight, bias, need_input_grad)

    def max_pool2d(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """Maximum over each window (``-inf`` padding); a NaN in a window wins.

        Args:
            x: ``(N, C, H, W)`` input (kept in the context: do not modify it before the backward).
            kernel: ``(kh, kw)``.
            stride: ``(sh, sw)``.
            padding: ``(ph, pw)``, at most half the kernel.
            ws: buffers an override may write into.

        Returns:
            ``(y, ctx)``: the ``(N, C, OH, OW)`` output and what :meth:`max_pool2d_backward` needs.
        """
        return windows.max_pool2d(self.xp, x, kernel, stride, padding)

    def max_pool2d_backward(self, ctx: dict[str, Any], grad_y: Any, ws: Workspace | None = None) -> Any:
        """Gradient of :meth:`max_pool2d`: each window's gradient goes to its first maximum
        (row-major order, as in PyTorch; a NaN counts as the maximum).

        Returns:
            ``(N, C, H, W)`` input gradient.
        """
        return windows.max_pool2d_backward(self.xp, ctx, grad_y)

    def fuses_conv2d_maxpool(self, in_channels: int, kernel: tuple[int, int]) -> bool:
        """Whether :meth:`conv2d_maxpool` is worth running instead of the three kernels it
        stands for, for a convolution with this many input channels and this kernel.

        ``Sequential`` asks before it runs a ``Conv2D`` (stride 1, no dilation), the
        ``MaxPool2D`` after it (stride equal to its kernel, no padding) and a ``ReLU``
        after that as one step. Here ``False``: the fused kernel below is only the three
        kernels one after the other.
        """
        return False

    def conv2d_maxpool(self, x: Any, weight: Any, bias: Any | None, padding: tuple[int, int],
                       pool: tuple[int, int], relu: bool, chunk: int, keep: bool = True,
                       ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """:meth:`conv2d` (stride 1, no dilation), then :meth:`max_pool2d` over non-overlapping
        ``pool`` windows (no padding), then, with ``relu``, :meth:`relu`, as one kernel.

        Args:
            x: ``(N, C, H, W)`` input.
            weight: ``(O, C, kh, kw)``.
            bias: ``(O,)`` or ``None``.
            padding: the convolution's zero padding ``(ph, pw)``.
            pool: the pooling windows ``(pa, pb)``, also their stride.
            relu: apply ``max(., 0)`` to the pooled output.
            chunk: batch items per column matrix (as in :meth:`conv2d`).
            keep: keep what the backward pass needs (``False`` for inference).
            ws: buffers an override may write into.

        Returns:
            ``(y, ctx)``: the ``(N, O, OH // pa, OW // pb)`` output and what
            :meth:`conv2d_maxpool_backward` needs.
        """
        yc, cctx = self.conv2d(x, weight, bias, (1, 1), padding, (1, 1), chunk, keep_cols=keep)
        y, pctx = self.max_pool2d(yc, pool, pool, (0, 0))
        mask = None
        if relu:
            y, mask = self.relu(y)
        return y, {"conv": cctx, "pool": pctx, "mask": mask}

    def conv2d_maxpool_backward(self, ctx: dict[str, Any], grad_y: Any, weight: Any, bias: bool,
                                need_input_grad: bool, ws: Workspace | None = None
                                ) -> tuple[Any, Any | None, Any | None]:
        """Gradients of :meth:`conv2d_maxpool` (arguments and results as in :meth:`conv2d_backward`;
        ``grad_y`` is the gradient of the pooled output)."""
        if ctx["mask"] is not None:
            grad_y = self.relu_backward(grad_y, ctx["mask"])
        g = self.max_pool2d_backward(ctx["pool"], grad_y)
        return self.conv2d_backward(ctx["conv"], g, weight, bias, need_input_grad)

    def avg_pool2d(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   count_include_pad: bool = True, ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
        """Mean over each window (zero padding).

        Args:
            x: ``(N, C, H, W)`` input.
            kernel: ``(kh, kw)``.
            stride: ``(sh, sw)``.
            padding: ``(ph, pw)``.
            count_include_pad: divide by the full window size; ``False``: by the real pixels in it.
            ws: buffers an override may write into.

        Returns:
            ``(y, ctx)``: the ``(N, C, OH, OW)`` output and what :meth:`avg_pool2d_backward` needs.
        """
        return windows.avg_pool2d(self.xp, x, kernel, stride, padding,
                                  self._avg_divisor(x, kernel, stride, padding, count_include_pad))

    def avg_pool2d_backward(self, ctx: dict[str, Any], grad_y: Any, ws: Workspace | None = None) -> Any:
        """Gradient of :meth:`avg_pool2d`.

        Returns:
            ``(N, C, H, W)`` input gradient.
        """
        return windows.avg_pool2d_backward(self.xp, ctx, grad_y)

    def _avg_divisor(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                     count_include_pad: bool) -> Any:
        """Average pooling's divisor (a float, or per-window pixel counts), made once per geometry."""
        key = ("avg_div", tuple(x.shape[2:]), kernel, stride, padding, count_include_pad, x.dtype)
        div = self._constants.get(key)
        if div is None:
            div = self._constants[key] = windows.avg_divisor(self.xp, x, kernel, stride, padding,
                                                             count_include_pad)
        return div


class _HostRandom:
    """Uniform numbers from a seeded host NumPy generator, moved to a backend."""

    def __init__(self, backend: Backend, seed: int | None) -> None:
        self.backend = backend
        self.rng = np.random.default_rng(seed)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        host = self.rng.random(shape, dtype=np.float64 if "64" in str(dtype) else np.float32)
        return self.backend.from_host(host)


#: Backend methods that are not kernels: :meth:`Backend.portable` keeps the library's own
_NOT_KERNELS = ("owns", "from_host", "to_host", "from_dlpack", "dlpack_device_index", "asarray", "dtype",
                "random_generator", "synchronize")


class Workspace:
    """Output arrays that ``out=`` kernels reuse from one training step to the next.

    A layer (or loss, or optimizer) whose backend hands it a ``Workspace``
    (``backend.workspace(owner)``) lets the kernels write its outputs into
    the same arrays every step instead of allocating fresh ones: no
    allocator traffic, and the memory stays warm in the caches. An array
    handed out is overwritten by the next ``get`` of the same name, so only
    code that drops its outputs before the next step may use it
    (``Sequential.fit`` turns this on with ``reuse_buffers``).

    Args:
        empty: ``empty(shape, dtype)`` of the backend's library.
    """

    __slots__ = ("_bufs", "_empty", "_flat")

    def __init__(self, empty: Any) -> None:
        self._bufs: dict[str, Any] = {}
        self._flat: dict[tuple[str, Any], Any] = {}
        self._empty = empty

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``, the same one each call.

        A batch smaller than the one the buffer was made for (the last batch of
        an epoch) gets a leading-axis view of it instead of a new array.
        """
        buf = self._bufs.get(name)
        if buf is not None and tuple(buf.shape) == tuple(shape) and buf.dtype == dtype:
            return buf
        if (buf is not None and buf.dtype == dtype and buf.ndim == len(shape) and shape
                and tuple(buf.shape[1:]) == tuple(shape[1:]) and buf.shape[0] >= shape[0]):
            return buf[:shape[0]]
        buf = self._bufs[name] = self._empty(tuple(shape), dtype)
        return buf

    def scratch(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A scratch array of ``shape``, a view of one flat buffer per ``name`` and dtype.

        Serves arrays used one after the other (an optimizer's temporaries
        for each parameter in turn) from one allocation, as large as the
        largest of them.
        """
        size = math.prod(shape)
        flat = self._flat.get((name, dtype))
        if flat is None or flat.shape[0] < size:
            flat = self._flat[name, dtype] = self._empty((size,), dtype)
        return flat[:size].reshape(shape)

    def clear(self) -> None:
        """Drop every buffer (e.g. after training, to give the memory back)."""
        self._bufs.clear()
        self._flat.clear()

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.nbytes for b in (*self._bufs.values(), *self._flat.values()))
