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

__all__ = ["ArrayMLPTwin", "TorchTwin", "epoch_permutation", "torch_available", "torch_module"]


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

    Sequence models (``module=``, see :func:`torch_module`) take integer ``(batch, time)``
    inputs and labels: the loss is ``F.cross_entropy`` over every position.

    Args:
        spec: the model as ``[("dense", W, b) | ("conv", W, b, padding) | ("relu",) | ("maxpool", k)
            | ("flatten",)]`` with host nnxp-layout parameters (Dense ``(in, out)``, transposed here);
            ignored when ``module`` is given.
        device: ``"cpu"`` or ``"cuda:N"``.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: learning rate.
        seed: shuffling seed.
        compile_mode: ``None`` for eager, else a ``torch.compile`` mode
            (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``) for the
            model (forward and its backward graph); the optimizer step stays eager.
        module: a ready ``torch.nn.Module`` (float32, on the CPU) instead of ``spec``.
        weight_decay: AdamW's decoupled decay.
        clip_norm: clip the global gradient norm with ``clip_grad_norm_`` before each step.
    """

    def __init__(self, spec: list[tuple] | None, device: str, optimizer: str, lr: float, seed: int = 0,
                 compile_mode: str | None = None, module: Any = None, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        import torch
        from torch import nn

        self.torch = torch
        self.device = torch.device(device)
        self.on_host = self.device.type == "cpu"
        mods: list[nn.Module] = []
        with torch.no_grad():
            for item in spec if module is None else ():
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
        self.model = (nn.Sequential(*mods) if module is None else module).to(self.device)
        params = list(self.model.parameters())
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr)
        elif optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=lr)
        elif optimizer == "adamw":
            self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.seed = seed
        self.epoch = 0
        model = torch.compile(self.model, mode=compile_mode) if compile_mode else self.model
        opt, F = self.opt, torch.nn.functional

        clip = torch.nn.utils.clip_grad_norm_

        def step(xb: Any, yb: Any) -> Any:
            out = model(xb)
            # (batch, classes), or (batch, time, classes) with (batch, time) labels: every position counts
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                clip(params, clip_norm)
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


# --------------------------------------------------------------------------- sequence models in PyTorch
def torch_module(net: Any) -> Any:
    """A float32 ``torch.nn.Module`` equivalent to an nnxp sequence model, parameters copied.

    Covers what the ``transformer`` and ``lstm`` cases use, each as PyTorch users write it:
    ``nn.Embedding``, learned positions as ``x + nn.Embedding(max_len, d)(arange(T))``,
    ``nn.LayerNorm``, ``nn.MultiheadAttention(batch_first=True)`` with a causal float mask
    (``need_weights=False``: the fused scaled-dot-product path), ``nn.Linear``, ``nn.GELU``,
    residual blocks, ``nn.LSTM(batch_first=True)`` (the fused kernel; nnxp's single bias goes to
    ``bias_ih_l0``, ``bias_hh_l0`` is zero) and ``nn.Sequential``.
    """
    import torch
    from torch import nn

    from nnxp import layers as L

    def t(a: Any) -> Any:
        import nnxp

        return torch.from_numpy(np.ascontiguousarray(nnxp.to_numpy(a), dtype=np.float32))

    class Positional(nn.Module):
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.pos = nn.Embedding(layer.max_len, layer.embedding_dim)
            with torch.no_grad():
                self.pos.weight.copy_(t(layer.params["weight"]))

        def forward(self, x: Any) -> Any:
            return x + self.pos.weight[: x.shape[1]]

    class SelfAttention(nn.Module):
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(layer.embed_dim, layer.num_heads, bias=layer.use_bias, batch_first=True)
            self.causal = layer.causal
            with torch.no_grad():
                self.mha.in_proj_weight.copy_(t(layer.params["in_proj_weight"]).T)
                self.mha.out_proj.weight.copy_(t(layer.params["out_proj_weight"]).T)
                if layer.use_bias:
                    self.mha.in_proj_bias.copy_(t(layer.params["in_proj_bias"]))
                    self.mha.out_proj.bias.copy_(t(layer.params["out_proj_bias"]))
            self._masks: dict[tuple, Any] = {}

        def forward(self, x: Any) -> Any:
            mask = None
            if self.causal:
                key = (x.shape[1], x.device)
                mask = self._masks.get(key)
                if mask is None:
                    mask = self._masks[key] = nn.Transformer.generate_square_subsequent_mask(
                        x.shape[1], device=x.device)
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]

    class Residual(nn.Module):
        def __init__(self, f: Any) -> None:
            super().__init__()
            self.f = f

        def forward(self, x: Any) -> Any:
            return x + self.f(x)

    class LastOrAll(nn.Module):
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.rnn = nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True)
            self.return_sequences = layer.return_sequences
            with torch.no_grad():
                self.rnn.weight_ih_l0.copy_(t(layer.params["weight_ih"]).T)
                self.rnn.weight_hh_l0.copy_(t(layer.params["weight_hh"]).T)
                self.rnn.bias_ih_l0.copy_(t(layer.params["bias"]))
                self.rnn.bias_hh_l0.zero_()

        def forward(self, x: Any) -> Any:
            out, _ = self.rnn(x)
            return out if self.return_sequences else out[:, -1]

    def convert(layer: Any) -> Any:
        if isinstance(layer, L.Dense):
            lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias)
            with torch.no_grad():
                lin.weight.copy_(t(layer.params["weight"]).T)
                if layer.use_bias:
                    lin.bias.copy_(t(layer.params["bias"]))
            return lin
        if isinstance(layer, L.Embedding):
            emb = nn.Embedding(layer.num_embeddings, layer.embedding_dim)
            with torch.no_grad():
                emb.weight.copy_(t(layer.params["weight"]))
            return emb
        if isinstance(layer, L.PositionalEmbedding):
            return Positional(layer)
        if isinstance(layer, L.LayerNorm):
            ln = nn.LayerNorm(layer.normalized_shape, eps=layer.eps)
            with torch.no_grad():
                ln.weight.copy_(t(layer.params["weight"]))
                ln.bias.copy_(t(layer.params["bias"]))
            return ln
        if isinstance(layer, L.MultiHeadAttention):
            return SelfAttention(layer)
        if isinstance(layer, L.GELU):
            return nn.GELU(approximate=layer.approximate)
        if isinstance(layer, L.ReLU):
            return nn.ReLU()
        if isinstance(layer, L.LSTM):
            return LastOrAll(layer)
        if isinstance(layer, L.Residual):
            return Residual(nn.Sequential(*[convert(c) for c in layer.layers]))
        if isinstance(layer, L.LayerContainer):  # a nested Sequential
            return nn.Sequential(*[convert(c) for c in layer.layers])
        raise ValueError(f"no torch twin for {layer!r}")

    return nn.Sequential(*[convert(layer) for layer in net.layers])
