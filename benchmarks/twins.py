"""Hand-written twins of the benchmark models: the same arithmetic as nnxp's
``Sequential.fit`` written as a plain loop, on NumPy or CuPy, and the same
models in PyTorch (eager or ``torch.compile``).

Every twin starts from nnxp's initial parameters (copied from the nnxp model,
so one seed gives one starting point) and walks the same batches in the same
order as ``fit(shuffle=True)``: one permutation per epoch from
``numpy.random.default_rng([seed, epoch]).permutation(n)`` (epoch 1-based),
the shuffled copy ``x[perm]`` made once per epoch, batches sliced from it (the
last one smaller). The mean training loss of an epoch should therefore agree
with nnxp's to float32 rounding, which the benchmark reports as a check that
the contenders really do the same work.

This module imports neither CuPy nor PyTorch at import time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ArrayMLPTwin", "TorchTwin", "epoch_permutation", "torch_available"]


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation ``Sequential.fit`` uses for 1-based ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# --------------------------------------------------------------------------- NumPy / CuPy
class ArrayMLPTwin:
    """Dense-ReLU-...-Dense MLP, softmax cross-entropy with the fused gradient
    ``(softmax - onehot) / batch``, plain SGD, on ``xp`` = ``numpy`` or ``cupy``
    (or ``array_api_strict``, which ``benchmarks/calls.py`` uses to count calls, or
    ``jax.numpy``, eager).

    Written the way one writes it by hand: ``x @ W + b``, ``maximum(., 0)``,
    ``g[rows, labels] -= 1``, ``W -= lr * dW``; no buffers reused, nothing fused
    beyond what the expressions give. On NumPy the loss is read on the host
    each step (free on the CPU); elsewhere it accumulates in a device scalar
    read once per epoch.

    Args:
        weights: host ``(in, out)`` float32 weight matrices, first to last.
        biases: host ``(out,)`` biases.
        xp: ``numpy``, ``cupy``, ``array_api_strict`` or ``jax.numpy``.
        lr: learning rate.
        seed: shuffling seed (the nnxp model's ``seed``).
    """

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], xp: Any, lr: float,
                 seed: int = 0) -> None:
        self.xp = xp
        self.on_host = xp is np
        # array_api_strict has no fancy-index assignment and no bool * float: there the twin
        # subtracts a one-hot matrix and masks with where, the same number of array calls
        self.strict = xp.__name__ == "array_api_strict"
        self.jax = xp.__name__ == "jax.numpy"  # immutable arrays: g.at[rows, labels].add(-1)
        self.W = [xp.asarray(np.array(w, dtype=np.float32)) for w in weights]
        self.b = [xp.asarray(np.array(b, dtype=np.float32)) for b in biases]
        self.lr = float(lr)
        self.seed = seed
        self.epoch = 0

    def fit_epoch(self, x: Any, y: Any, batch_size: int) -> float:
        """One shuffled epoch over ``x`` (float32, on ``xp``) and integer labels ``y``.

        Returns:
            The mean training loss over the epoch (a host float).
        """
        xp, W, B, lr = self.xp, self.W, self.b, self.lr
        self.epoch += 1
        n = x.shape[0]
        perm = epoch_permutation(self.seed, self.epoch, n)
        idx = perm if self.on_host else xp.asarray(perm)
        xs, ys = xp.take(x, idx, axis=0), xp.take(y, idx, axis=0)
        rows_all = xp.arange(batch_size)
        # class indices for the one-hot subtraction (strict only; NumPy/CuPy scatter instead)
        cols = xp.reshape(xp.arange(W[-1].shape[1], dtype=y.dtype), (1, -1)) if self.strict else None
        last = len(W) - 1
        total = 0.0 if self.on_host else xp.zeros((), dtype=xp.float32)
        for s in range(0, n, batch_size):
            stop = min(s + batch_size, n)  # the standard leaves out-of-range slice stops unspecified
            xb, yb = xs[s:stop, ...], ys[s:stop]
            m = xb.shape[0]
            rows = rows_all if m == batch_size else rows_all[:m]
            # forward
            hs = [xb]
            h = xb
            for i in range(last):
                h = xp.maximum(h @ W[i] + B[i], 0.0)
                hs.append(h)
            z = h @ W[last] + B[last]
            # softmax cross-entropy, mean over the batch
            z = z - xp.max(z, axis=1, keepdims=True)
            e = xp.exp(z)
            se = xp.sum(e, axis=1, keepdims=True)
            loss_sum = xp.sum(xp.log(se[:, 0]) - z[rows, yb])
            total += float(loss_sum) if self.on_host else loss_sum
            g = e / se
            if self.strict:
                g = g - xp.astype(xp.reshape(yb, (m, 1)) == cols, g.dtype)
            elif self.jax:
                g = g.at[rows, yb].add(-1.0)
            else:
                g[rows, yb] -= 1
            g /= m
            # backward, then SGD (the next gradient uses the weights before the update)
            for i in range(last, -1, -1):
                dW = hs[i].T @ g
                db = xp.sum(g, axis=0)
                if i:
                    gh, mask = g @ W[i].T, hs[i] > 0
                    g = xp.where(mask, gh, 0.0) if self.strict else gh * mask
                W[i] -= lr * dW
                B[i] -= lr * db
        return float(total) / n


# --------------------------------------------------------------------------- PyTorch
def torch_available() -> str | None:
    """``None`` when PyTorch imports, else the reason it does not."""
    try:
        import torch  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"PyTorch not importable: {exc}"
    return None


class TorchTwin:
    """The same model in PyTorch: ``torch.nn`` modules, ``F.cross_entropy``,
    ``torch.optim.SGD``/``Adam``, ``zero_grad(set_to_none=True)``.

    Args:
        spec: the model as ``[("dense", W, b) | ("conv", W, b, padding) | ("relu",) | ("maxpool", k)
            | ("flatten",)]`` with host nnxp-layout parameters (Dense ``(in, out)``, transposed here).
        device: ``"cpu"`` or ``"cuda:N"``.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: learning rate.
        seed: shuffling seed.
        compile_mode: ``None`` for eager, else a ``torch.compile`` mode
            (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``) for the
            model (forward and its backward graph); the optimizer step stays eager.
    """

    def __init__(self, spec: list[tuple], device: str, optimizer: str, lr: float, seed: int = 0,
                 compile_mode: str | None = None) -> None:
        import torch
        from torch import nn

        self.torch = torch
        self.device = torch.device(device)
        self.on_host = self.device.type == "cpu"
        mods: list[nn.Module] = []
        with torch.no_grad():
            for item in spec:
                kind = item[0]
                if kind == "dense":
                    w, b = item[1], item[2]
                    lin = nn.Linear(w.shape[0], w.shape[1])
                    lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(w, np.float32).T)))
                    lin.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
                    mods.append(lin)
                elif kind == "conv":
                    w, b, pad = item[1], item[2], item[3]
                    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=pad)
                    conv.weight.copy_(torch.from_numpy(np.asarray(w, np.float32)))
                    conv.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
                    mods.append(conv)
                elif kind == "relu":
                    mods.append(nn.ReLU())
                elif kind == "maxpool":
                    mods.append(nn.MaxPool2d(item[1]))
                elif kind == "flatten":
                    mods.append(nn.Flatten())
                else:
                    raise ValueError(f"unknown layer kind {kind!r}")
        self.model = nn.Sequential(*mods).to(self.device)
        params = list(self.model.parameters())
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr)
        elif optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=lr)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.seed = seed
        self.epoch = 0
        model = torch.compile(self.model, mode=compile_mode) if compile_mode else self.model
        opt, F = self.opt, torch.nn.functional

        def step(xb: Any, yb: Any) -> Any:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        self._step = step

    def to_device(self, x: np.ndarray) -> Any:
        """A host array as a tensor on this twin's device (done once, outside the timing)."""
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def fit_epoch(self, x: Any, y: Any, batch_size: int) -> float:
        """One shuffled epoch; ``x``, ``y`` are tensors on the twin's device (``y`` int64)."""
        torch = self.torch
        self.epoch += 1
        n = x.shape[0]
        perm = torch.from_numpy(epoch_permutation(self.seed, self.epoch, n)).to(self.device)
        xs, ys = x.index_select(0, perm), y.index_select(0, perm)
        step = self._step
        self.model.train()
        if self.on_host:  # reading a CPU scalar is free, like nnxp's and the NumPy twin's
            total = 0.0
            for s in range(0, n, batch_size):
                yb = ys[s:s + batch_size]
                total += float(step(xs[s:s + batch_size], yb)) * yb.shape[0]
            return total / n
        total_t = torch.zeros((), device=self.device)
        for s in range(0, n, batch_size):
            yb = ys[s:s + batch_size]
            total_t += step(xs[s:s + batch_size], yb) * yb.shape[0]
        return float(total_t) / n  # one host read per epoch

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
