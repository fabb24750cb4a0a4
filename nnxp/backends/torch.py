"""PyTorch backend: ``torch.Tensor`` through array-api-compat's ``torch``
namespace, on the CPU, a CUDA GPU (``"torch:cuda:N"``) or Apple's GPU
(``"torch:mps"``). nnxp needs no autograd: tensors are made and used without
``requires_grad``, and every kernel runs under ``torch.no_grad`` semantics
simply because no tensor asks for gradients.

Names: ``"torch"`` = ``"torch:cpu"``; ``"torch:cuda"`` = ``"torch:cuda:0"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, Workspace, _HostRandom

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    kind = "torch"

    def __init__(self, name: str, xp: Any, device: Any, array_type: type) -> None:
        super().__init__(name, xp, device, array_type)
        import torch

        self._torch = torch
        # CPU: reading a scalar costs nothing, so fit checks the loss every step; GPUs queue work
        self.sync_free = device.type == "cpu"
        self.dlpack_device_type = {"cpu": 1, "cuda": 2}.get(device.type)

    def owns(self, x: Any) -> bool:
        return isinstance(x, self._torch.Tensor) and x.device == self.device

    def dtype(self, dtype: Any) -> Any:
        if dtype is None:
            return None
        out = super().dtype(dtype)
        if self.device.type == "mps" and out == self._torch.float64:
            raise TypeError("Apple's MPS backend has no float64; build the model with dtype='float32' "
                            "or use backend='torch' (CPU) for float64.")
        return out

    def from_host(self, x: np.ndarray, dtype: Any = None) -> Any:
        if dtype is not None:
            x = x.astype(np.dtype(str(dtype).rsplit(".", 1)[-1]), copy=False)
        if not (x.flags.writeable and x.flags.c_contiguous):  # torch needs both to wrap a NumPy buffer
            x = np.ascontiguousarray(x).copy() if not x.flags.writeable else np.ascontiguousarray(x)
        t = self._torch.from_numpy(x) if x.ndim else self._torch.tensor(x.item(), dtype=_torch_dtype(x))
        return t if self.device.type == "cpu" else t.to(self.device)

    def to_host(self, x: Any) -> np.ndarray:
        return to_host(x)

    def dlpack_device_index(self) -> int:
        return self.device.index or 0

    def from_dlpack(self, x: Any) -> Any:
        out = super().from_dlpack(x)
        if out is not None and out.requires_grad:  # a leaf of someone's graph: take the values only
            out = out.detach()
        return out

    def random_generator(self, seed: int | None) -> Any:
        if self.device.type == "cpu":
            return _HostRandom(self, seed)  # the CPU backends share one stream: same masks as NumPy
        return _TorchRandom(self, seed)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            self._torch.mps.synchronize()

    def workspace(self, owner: Any) -> Workspace:
        ws = getattr(owner, "_workspace", None)
        if ws is None:
            torch, device = self._torch, self.device
            ws = owner._workspace = Workspace(lambda shape, dtype: torch.empty(shape, dtype=dtype, device=device))
        return ws

    # ---------------------------------------------------------------- kernels
    # torch's own functions skip array-api-compat's wrappers (each wrapper call costs
    # microseconds of Python, which is what a small step is made of on the CPU), fuse
    # bias and product into one addmm, and update in place where the portable versions
    # allocate. The same operations otherwise, so the same numbers up to rounding order.

    def linear(self, x: Any, weight: Any, bias: Any | None, ws: Workspace | None = None) -> Any:
        torch = self._torch
        if x.ndim == 2:
            if bias is None:
                return torch.mm(x, weight)
            return torch.addmm(bias, x, weight)
        y = torch.matmul(x, weight)
        return y if bias is None else y.add_(bias)

    def linear_backward(self, x: Any, weight: Any, grad_y: Any, bias: bool, need_input_grad: bool,
                        grads: dict[str, Any] | None = None,
                        ws: Workspace | None = None) -> tuple[Any, Any | None, Any | None]:
        torch = self._torch
        x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        g2 = grad_y if grad_y.ndim == 2 else grad_y.reshape(-1, grad_y.shape[-1])
        gw = torch.mm(x2.t(), g2)
        gb = g2.sum(0) if bias else None
        gx = torch.matmul(grad_y, weight.t()) if need_input_grad else None
        return gw, gb, gx

    def relu(self, x: Any, ws: Workspace | None = None) -> tuple[Any, Any]:
        return self._torch.relu(x), x > 0

    def relu_backward(self, grad_y: Any, mask: Any, ws: Workspace | None = None) -> Any:
        """``grad_y * mask`` (as on NumPy: differs from ``where`` only for an inf/NaN gradient)."""
        return grad_y * mask

    def dropout_mask(self, keep: Any, scale: float, dtype: Any) -> Any:
        return keep.to(dtype).mul_(scale)

    def softmax_cross_entropy(self, logits: Any, labels: Any, ws: Workspace | None = None) -> tuple[Any, Any]:
        shifted = logits - logits.amax(dim=1, keepdim=True)
        e = shifted.exp()
        s = e.sum(dim=1, keepdim=True)
        picked = shifted.gather(1, labels.reshape(-1, 1))
        return (s.log() - picked).mean(), e.div_(s)

    def softmax_cross_entropy_backward(self, prob: Any, labels: Any, ws: Workspace | None = None) -> Any:
        n = prob.shape[0]
        g = prob.clone() if ws is None else prob
        g[self._rows(n), labels] -= 1
        return g.div_(n)

    def count_correct(self, logits: Any, labels: Any) -> Any:
        pred = logits.argmax(dim=-1)
        return (pred == labels).sum().to(logits.dtype)

    def sgd_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, momentum: float, nesterov: bool,
                   weight_decay: float, inplace: bool = True, ws: Workspace | None = None) -> Any:
        if not inplace:  # the same arithmetic on copies: a masked step gives the unmasked numbers
            p = _fresh(p, state)
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        if momentum:
            v = state["velocity"].mul_(momentum).add_(g)
            g = g.add(v, alpha=momentum) if nesterov else v
        return p.add_(g, alpha=-lr)

    def adam_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, betas: tuple[float, float],
                    eps: float, step: int, weight_decay: float, decoupled: bool, inplace: bool = True,
                    ws: Workspace | None = None) -> Any:
        if not inplace:  # the same arithmetic on copies: a masked step gives the unmasked numbers
            p = _fresh(p, state)
        b1, b2 = betas
        if weight_decay and not decoupled:
            g = g.add(p, alpha=weight_decay)
        m = state["m"].mul_(b1).add_(g, alpha=1 - b1)
        v = state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        size = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        denom = v.sqrt().add_(eps * math.sqrt(1 - b2**step))
        if weight_decay and decoupled:
            p.mul_(1 - lr * weight_decay)  # torch.optim.AdamW's order: decay, then the Adam step
        return p.addcdiv_(m, denom, value=-size)

    def rmsprop_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, alpha: float, eps: float,
                       momentum: float, centered: bool, weight_decay: float, inplace: bool = True,
                       ws: Workspace | None = None) -> Any:
        if not inplace:  # the same arithmetic on copies: a masked step gives the unmasked numbers
            p = _fresh(p, state)
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        s = state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:  # torch.optim.RMSprop's operations
            a = state["grad_avg"].lerp_(g, 1 - alpha)
            denom = s.addcmul(a, a, value=-1).sqrt_().add_(eps)
        else:
            denom = s.sqrt().add_(eps)
        if momentum:
            return p.add_(state["velocity"].mul_(momentum).addcdiv_(g, denom), alpha=-lr)
        return p.addcdiv_(g, denom, value=-lr)

    def adagrad_update(self, p: Any, g: Any, state: dict[str, Any], lr: float, eps: float, weight_decay: float,
                       inplace: bool = True, ws: Workspace | None = None) -> Any:
        if not inplace:
            p = _fresh(p, state)
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        s = state["sum"].addcmul_(g, g, value=1)
        return p.addcdiv_(g, s.sqrt().add_(eps), value=-lr)

    def clip_by_value(self, grads: list[Any], clip_value: float, ws: Workspace | None = None) -> list[Any]:
        return [g.clamp(-clip_value, clip_value) for g in grads]

    def clip_by_global_norm(self, grads: list[Any], max_norm: float, eps: float = 1e-6,
                            ws: Workspace | None = None) -> tuple[list[Any], Any]:
        """torch's own ``clip_grad_norm_`` arithmetic (the norm of the per-tensor norms), out of place."""
        torch = self._torch
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = (max_norm / (norm + eps)).clamp_(max=1.0)
        return [g * scale for g in grads], norm

    def _rows(self, n: int) -> Any:
        key = ("rows", n)
        rows = self._constants.get(key)
        if rows is None:
            rows = self._constants[key] = self._torch.arange(n, device=self.device)
        return rows

    def scatter_add_rows(self, indices: Any, values: Any, num_rows: int) -> Any:
        """:meth:`Backend.scatter_add_rows` as ``index_add_`` into a fresh zero table (linear in the
        data; the portable one-hot product grows with ``num_rows``)."""
        out = self._torch.zeros((num_rows, values.shape[1]), dtype=values.dtype, device=values.device)
        return out.index_add_(0, indices, values)


def _fresh(p: Any, state: dict[str, Any]) -> Any:
    """Copies of ``p`` and of its state arrays (put into ``state``), for updates the caller may discard."""
    for k, v in state.items():
        state[k] = v.clone()
    return p.clone()


class _TorchRandom:
    """Uniform numbers from a seeded ``torch.Generator`` on the backend's GPU."""

    def __init__(self, backend: TorchBackend, seed: int | None) -> None:
        import torch

        self.backend = backend
        self.gen = torch.Generator(device=backend.device)
        if seed is not None:
            self.gen.manual_seed(int(seed) % 2**63)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import torch

        return torch.rand(shape, generator=self.gen, dtype=dtype, device=self.backend.device)


def _torch_dtype(x: np.ndarray) -> Any:
    import torch

    return getattr(torch, x.dtype.name)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "PyTorch is not installed: pip install 'nnxp[torch]' (for the CPU-only build, "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu). "
            f"({exc})"
        ) from exc
    except Exception as exc:  # broken install, missing CUDA libraries
        raise BackendUnavailableError(
            f"PyTorch is installed but failed to import (CUDA runtime or driver problem?): {exc}"
        ) from exc
    return torch


def _device(torch: Any, device: str | None) -> Any:
    """The ``torch.device`` for the part of the name after ``torch:``, checked to exist."""
    spec = (device or "cpu").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                raise BackendUnavailableError(
                    f"torch:{spec}: this PyTorch build ({torch.__version__}) has no CUDA support (a CPU-only "
                    "build). Install a CUDA build of PyTorch, or pick backend='torch' for the CPU."
                )
            raise BackendUnavailableError(
                f"torch:{spec}: PyTorch has CUDA support but no CUDA device is usable (no GPU, or the driver "
                "failed; nvidia-smi tells which). Pick backend='torch' for the CPU."
            )
        count = torch.cuda.device_count()
        i = int(index) if index else 0
        if not 0 <= i < count:
            raise ValueError(f"torch:cuda:{i} does not exist: this machine has {count} CUDA device(s).")
        return torch.device("cuda", i)
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise BackendUnavailableError(
                "torch:mps: Apple's Metal backend is not available here (it needs macOS on Apple silicon "
                "and a PyTorch build with MPS). Pick backend='torch' for the CPU."
            )
        return torch.device("mps")
    raise ValueError(f"Unknown torch device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps', "
                     "e.g. backend='torch:cuda:1'.")


def make(device: str | None) -> Backend:
    torch = _import_torch()
    dev = _device(torch, device)
    if dev.type != "cpu":
        try:  # touch the driver once: fail here, not mid-training
            torch.zeros(1, device=dev).add_(1).sum().item()
        except Exception as exc:
            raise BackendUnavailableError(f"torch:{dev} failed its first use (driver problem?): {exc}") from exc
    import array_api_compat.torch as xp

    name = "torch" if dev.type == "cpu" else f"torch:{dev.type}" + (f":{dev.index}" if dev.type == "cuda" else "")
    return TorchBackend(name, xp, dev, torch.Tensor)


def array_backend(x: Any) -> Backend:
    from . import resolve_backend

    dev = x.device
    if dev.type == "cpu":
        return resolve_backend("torch")
    if dev.type == "cuda":
        return resolve_backend(f"torch:cuda:{dev.index or 0}")
    return resolve_backend(f"torch:{dev.type}")


def to_host(x: Any) -> np.ndarray:
    # .numpy() handles non-contiguous tensors; detach() drops autograd history; resolve_conj/neg views
    return x.detach().cpu().resolve_conj().resolve_neg().numpy()
