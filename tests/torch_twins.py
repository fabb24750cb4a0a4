"""PyTorch twins of nnxp layers, losses, models and optimizers (in the style of
numpy-ml's ``nn_torch_models.py``).

Each twin copies nnxp's parameters into an equivalent ``torch.nn`` object, runs
it in float64 with autograd and returns the results in nnxp's layout, so tests
can compare forward values, the input gradient and every parameter gradient.

Layout note: ``nnxp.layers.Dense`` keeps ``weight`` as ``(in_features,
out_features)`` (``y = x @ W + b``) while ``torch.nn.Linear.weight`` is
``(out_features, in_features)``: the twins transpose on the way in and out.

torch is imported lazily through :func:`torch`, which skips the calling test
cleanly (``pytest.importorskip``) where PyTorch is not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import layers, losses, optim


def torch() -> Any:
    """The ``torch`` module, or skip the calling test when it is missing."""
    return pytest.importorskip("torch")


def _t(a: Any, requires_grad: bool = False) -> Any:
    th = torch()
    t = th.tensor(np.array(nnxp.to_numpy(a), dtype=np.float64, copy=True), dtype=th.float64)
    return t.requires_grad_(requires_grad)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


# ------------------------------------------------------------------ layers
def torch_layer(layer: layers.Layer) -> Any:
    """A float64 ``torch.nn.Module`` equivalent to ``layer`` with its parameters copied."""
    th = torch()
    nn = th.nn
    if isinstance(layer, layers.Dense):
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias, dtype=th.float64)
        with th.no_grad():
            lin.weight.copy_(_t(layer.params["weight"]).T)
            if layer.use_bias:
                lin.bias.copy_(_t(layer.params["bias"]))
        return lin
    if isinstance(layer, layers.LeakyReLU):
        return nn.LeakyReLU(layer.negative_slope)
    if isinstance(layer, layers.ReLU):
        return nn.ReLU()
    if isinstance(layer, layers.Tanh):
        return nn.Tanh()
    if isinstance(layer, layers.Sigmoid):
        return nn.Sigmoid()
    if isinstance(layer, layers.Softmax):
        return nn.Softmax(dim=-1)
    if isinstance(layer, layers.GELU):
        return nn.GELU(approximate=layer.approximate)
    if isinstance(layer, layers.Embedding):
        emb = nn.Embedding(layer.num_embeddings, layer.embedding_dim, dtype=th.float64)
        with th.no_grad():
            emb.weight.copy_(_t(layer.params["weight"]))
        return emb
    if isinstance(layer, layers.PositionalEmbedding):
        return _positional_twin(layer)
    if isinstance(layer, layers.LayerNorm):
        ln = nn.LayerNorm(layer.normalized_shape, eps=layer.eps, dtype=th.float64)
        with th.no_grad():
            ln.weight.copy_(_t(layer.params["weight"]))
            ln.bias.copy_(_t(layer.params["bias"]))
        return ln
    if isinstance(layer, layers.LSTM | layers.GRU):
        return _recurrent_twin(layer)
    if isinstance(layer, layers.MultiHeadAttention):
        return _attention_twin(layer)
    if isinstance(layer, layers.Residual):
        return _residual_twin(layer)
    if isinstance(layer, nnxp.Sequential):
        return torch_model(layer)
    raise NotImplementedError(f"no torch twin for {layer!r}")


def _positional_twin(layer: layers.PositionalEmbedding) -> Any:
    """``x + nn.Embedding(max_len, dim)(arange(time))``: learned positions as PyTorch users write them."""
    th = torch()

    class Positional(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = th.nn.Embedding(layer.max_len, layer.embedding_dim, dtype=th.float64)
            with th.no_grad():
                self.pos.weight.copy_(_t(layer.params["weight"]))

        def forward(self, x: Any) -> Any:
            return x + self.pos(th.arange(x.shape[1]))

    return Positional()


def _recurrent_twin(layer: layers.Layer) -> Any:
    """``torch.nn.LSTM``/``GRU(batch_first=True)`` returning all steps or the last (nnxp's
    ``return_sequences``). nnxp's weights are the transposes of ``weight_ih_l0``/``weight_hh_l0``;
    the LSTM's single bias goes to ``bias_ih_l0`` with ``bias_hh_l0 = 0`` (their sum is what counts)."""
    th = torch()

    class Recurrent(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            make = th.nn.LSTM if isinstance(layer, layers.LSTM) else th.nn.GRU
            self.rnn = make(layer.input_size, layer.hidden_size, batch_first=True, dtype=th.float64)
            self.return_sequences = layer.return_sequences
            with th.no_grad():
                self.rnn.weight_ih_l0.copy_(_t(layer.params["weight_ih"]).T)
                self.rnn.weight_hh_l0.copy_(_t(layer.params["weight_hh"]).T)
                if isinstance(layer, layers.LSTM):
                    self.rnn.bias_ih_l0.copy_(_t(layer.params["bias"]))
                    self.rnn.bias_hh_l0.zero_()
                else:
                    self.rnn.bias_ih_l0.copy_(_t(layer.params["bias_ih"]))
                    self.rnn.bias_hh_l0.copy_(_t(layer.params["bias_hh"]))

        def forward(self, x: Any) -> Any:
            out, _ = self.rnn(x)
            return out if self.return_sequences else out[:, -1, :]

    return Recurrent()


def _attention_twin(layer: layers.MultiHeadAttention) -> Any:
    """``torch.nn.MultiheadAttention(batch_first=True)`` applied as self-attention, with
    ``generate_square_subsequent_mask`` (-inf above the diagonal) when the layer is causal."""
    th = torch()

    class SelfAttention(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = th.nn.MultiheadAttention(layer.embed_dim, layer.num_heads, bias=layer.use_bias,
                                                batch_first=True, dtype=th.float64)
            self.causal = layer.causal
            with th.no_grad():
                self.mha.in_proj_weight.copy_(_t(layer.params["in_proj_weight"]).T)
                self.mha.out_proj.weight.copy_(_t(layer.params["out_proj_weight"]).T)
                if layer.use_bias:
                    self.mha.in_proj_bias.copy_(_t(layer.params["in_proj_bias"]))
                    self.mha.out_proj.bias.copy_(_t(layer.params["out_proj_bias"]))

        def forward(self, x: Any) -> Any:
            mask = None
            if self.causal:
                mask = th.nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]

    return SelfAttention()


def _residual_twin(layer: layers.Residual) -> Any:
    """``x + f(x)`` with ``f`` the ``torch.nn.Sequential`` of the children's twins."""
    th = torch()

    class Residual(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = th.nn.Sequential(*[torch_layer(child) for child in layer.layers])

        def forward(self, x: Any) -> Any:
            return x + self.f(x)

    return Residual()


def _twin_tensors(layer: layers.Layer, module: Any) -> dict[str, tuple[Any, bool]]:
    """``{nnxp name: (torch parameter, transposed?)}`` for the parameters that map one to one."""
    if isinstance(layer, layers.Dense):
        out = {"weight": (module.weight, True)}
        if layer.use_bias:
            out["bias"] = (module.bias, False)
        return out
    if isinstance(layer, layers.Embedding):
        return {"weight": (module.weight, False)}
    if isinstance(layer, layers.PositionalEmbedding):
        return {"weight": (module.pos.weight, False)}
    if isinstance(layer, layers.LayerNorm):
        return {"weight": (module.weight, False), "bias": (module.bias, False)}
    if isinstance(layer, layers.LSTM):  # bias: see _recurrent_twin (its gradient is bias_ih_l0's)
        return {"weight_ih": (module.rnn.weight_ih_l0, True), "weight_hh": (module.rnn.weight_hh_l0, True),
                "bias": (module.rnn.bias_ih_l0, False)}
    if isinstance(layer, layers.GRU):
        return {"weight_ih": (module.rnn.weight_ih_l0, True), "weight_hh": (module.rnn.weight_hh_l0, True),
                "bias_ih": (module.rnn.bias_ih_l0, False), "bias_hh": (module.rnn.bias_hh_l0, False)}
    if isinstance(layer, layers.MultiHeadAttention):
        out = {"in_proj_weight": (module.mha.in_proj_weight, True),
               "out_proj_weight": (module.mha.out_proj.weight, True)}
        if layer.use_bias:
            out["in_proj_bias"] = (module.mha.in_proj_bias, False)
            out["out_proj_bias"] = (module.mha.out_proj.bias, False)
        return out
    if isinstance(layer, layers.LayerContainer):  # dotted keys, as the container's params view
        children = module.f if isinstance(layer, layers.Residual) else module
        return {f"{i}.{k}": v for i, (child, m) in enumerate(zip(layer.layers, children))
                for k, v in _twin_tensors(child, m).items()}
    return {}


def torch_param_grads(layer: layers.Layer, module: Any) -> dict[str, np.ndarray]:
    """The twin's parameter gradients, keyed and laid out like ``layer.grads``."""
    return {k: (_np(t.grad).T.copy() if tr else _np(t.grad)) for k, (t, tr) in _twin_tensors(layer, module).items()}


def torch_params(layer: layers.Layer, module: Any) -> dict[str, np.ndarray]:
    """The twin's parameters, keyed and laid out like ``layer.params`` (an LSTM's bias is
    ``bias_ih_l0 + bias_hh_l0``)."""
    out = {k: (_np(t).T.copy() if tr else _np(t)) for k, (t, tr) in _twin_tensors(layer, module).items()}
    if isinstance(layer, layers.LSTM):
        out["bias"] = _np(module.rnn.bias_ih_l0 + module.rnn.bias_hh_l0)
    elif isinstance(layer, layers.LayerContainer):
        children = module.f if isinstance(layer, layers.Residual) else module
        for i, (child, m) in enumerate(zip(layer.layers, children)):
            out.update({f"{i}.{k}": v for k, v in torch_params(child, m).items()})
    return out


def _input(x: Any, requires_grad: bool = False) -> Any:
    """A float64 tensor, or an int64 one (no gradient) for integer indices."""
    host = nnxp.to_numpy(x)
    if np.issubdtype(host.dtype, np.integer):
        return torch().tensor(host.astype(np.int64))
    return _t(host, requires_grad)


def layer_twin(layer: layers.Layer, x: Any, grad_y: Any) -> dict[str, Any]:
    """Forward ``x`` and backward ``grad_y`` through the torch twin of ``layer``.

    Returns:
        ``{"y": ..., "grad_x": ..., "grads": {name: ...}}`` as float64 NumPy arrays,
        gradients in nnxp's layout.
    """
    module = torch_layer(layer)
    xt = _input(x, requires_grad=True)
    y = module(xt)
    y.backward(_t(grad_y))
    grad_x = _np(xt.grad) if xt.requires_grad else None  # integer indices have none
    return {"y": _np(y), "grad_x": grad_x, "grads": torch_param_grads(layer, module)}


# ------------------------------------------------------------------ losses
def loss_twin(loss: losses.Loss, y_pred: Any, y_true: Any) -> dict[str, Any]:
    """Value and gradient (w.r.t. ``y_pred``) of the PyTorch functional twin of ``loss``.

    Returns:
        ``{"loss": float, "grad": np.ndarray}``.
    """
    th = torch()
    F = th.nn.functional
    p = _t(y_pred, requires_grad=True)
    t_host = nnxp.to_numpy(y_true)
    if isinstance(loss, losses.MSE):
        value = F.mse_loss(p, _t(t_host))
    elif isinstance(loss, losses.BinaryCrossEntropy):
        if loss.from_logits:
            value = F.binary_cross_entropy_with_logits(p, _t(t_host))
        else:
            value = F.binary_cross_entropy(p, _t(t_host))
    elif isinstance(loss, losses.SoftmaxCrossEntropy):
        k = p.shape[-1]
        flat = p.reshape(-1, k)  # (batch, time, classes): the mean runs over every position, as in nnxp
        if t_host.ndim == p.ndim - 1:
            value = F.cross_entropy(flat, th.tensor(t_host.astype(np.int64).reshape(-1)))
        else:
            value = F.cross_entropy(flat, _t(t_host).reshape(-1, k))  # class probabilities
    else:
        raise NotImplementedError(f"no torch twin for {loss!r}")
    value.backward()
    return {"loss": float(value.detach()), "grad": _np(p.grad)}


# ------------------------------------------------------------------ models
def torch_model(model: nnxp.Sequential) -> Any:
    """A float64 ``torch.nn.Sequential`` twin of ``model`` with its parameters copied."""
    th = torch()
    return th.nn.Sequential(*[torch_layer(layer) for layer in model.layers])


def torch_model_params(model: nnxp.Sequential, twin: Any) -> dict[str, np.ndarray]:
    """The twin's parameters keyed like ``Sequential.slots()`` (``"<layer>.<name>"``)."""
    out = {}
    for i, (layer, module) in enumerate(zip(model.layers, twin)):
        for k, v in torch_params(layer, module).items():
            out[f"{i}.{k}"] = v
    return out


def model_params(model: nnxp.Sequential) -> dict[str, np.ndarray]:
    """nnxp parameters as host arrays keyed like ``Sequential.slots()``."""
    return {key: nnxp.to_numpy(layer.params[name]).copy() for key, layer, name in model.slots()}


def torch_optimizer(opt: optim.Optimizer, params: Any) -> Any:
    """The ``torch.optim`` optimizer with the same hyperparameters as ``opt``.

    When ``opt`` clips gradients or has a learning-rate schedule, the result
    is a :class:`TwinOptimizer`: the torch optimizer plus
    ``torch.nn.utils.clip_grad_*_`` before each step and the
    ``torch.optim.lr_scheduler`` twin of the schedule after it.
    """
    th = torch()
    params = list(params)
    lr = opt.lr if opt.schedule is None else opt.schedule.lr  # torch schedulers scale the base rate
    if isinstance(opt, optim.SGD):
        topt = th.optim.SGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov,
                            weight_decay=opt.weight_decay)
    elif isinstance(opt, optim.AdamW):
        topt = th.optim.AdamW(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    elif isinstance(opt, optim.Adam):
        topt = th.optim.Adam(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    elif isinstance(opt, optim.RMSprop):
        topt = th.optim.RMSprop(params, lr=lr, alpha=opt.alpha, eps=opt.eps, momentum=opt.momentum,
                                centered=opt.centered, weight_decay=opt.weight_decay)
    elif isinstance(opt, optim.Adagrad):
        topt = th.optim.Adagrad(params, lr=lr, lr_decay=opt.lr_decay, eps=opt.eps, weight_decay=opt.weight_decay,
                                initial_accumulator_value=opt.initial_accumulator_value)
    else:
        raise NotImplementedError(f"no torch twin for {opt!r}")
    if opt.schedule is None and opt.clip_norm is None and opt.clip_value is None:
        return topt
    return TwinOptimizer(opt, topt, params)


def torch_loss_fn(loss: losses.Loss) -> Any:
    """A callable ``(y_pred_tensor, y_true_tensor) -> scalar`` equivalent to ``loss``."""
    th = torch()
    F = th.nn.functional
    if isinstance(loss, losses.MSE):
        return F.mse_loss
    if isinstance(loss, losses.BinaryCrossEntropy):
        return F.binary_cross_entropy_with_logits if loss.from_logits else F.binary_cross_entropy
    if isinstance(loss, losses.SoftmaxCrossEntropy):
        def cross_entropy(pred: Any, target: Any) -> Any:
            # (batch, time, classes) logits: the mean over every position, as nnxp's loss takes it
            k = pred.shape[-1]
            if target.ndim == pred.ndim - 1:
                return F.cross_entropy(pred.reshape(-1, k), target.reshape(-1))
            return F.cross_entropy(pred.reshape(-1, k), target.reshape(-1, k))

        return cross_entropy
    raise NotImplementedError(f"no torch twin for {loss!r}")


def torch_train_steps(model: nnxp.Sequential, loss: losses.Loss, opt: optim.Optimizer,
                      batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, list[float]]:
    """Train a twin of ``model`` (copied now, before nnxp trains) on ``batches``.

    Returns:
        ``(twin, losses_per_step)``.
    """
    th = torch()
    twin = torch_model(model)
    topt = torch_optimizer(opt, twin.parameters())
    fn = torch_loss_fn(loss)
    values = []
    for xb, yb in batches:
        topt.zero_grad()
        yt = th.tensor(yb) if np.issubdtype(yb.dtype, np.integer) else _t(yb)
        value = fn(twin(_input(xb)), yt)
        value.backward()
        topt.step()
        values.append(float(value.detach()))
    return twin, values


def nnxp_train_steps(model: nnxp.Sequential, loss: losses.Loss, opt: optim.Optimizer,
                     batches: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """The same steps as :func:`torch_train_steps` by hand on the nnxp model."""
    b = model.backend
    slots = model.slots()
    values = []
    for xb, yb in batches:
        xd = b.asarray(xb) if np.issubdtype(xb.dtype, np.integer) else b.asarray(xb, dtype=model.dtype)
        out = model.forward(xd, training=True)
        yd = b.asarray(yb) if np.issubdtype(yb.dtype, np.integer) else b.asarray(yb, dtype=model.dtype)
        values.append(float(loss.forward(out, yd)))
        model.backward(loss.backward())
        opt.step(slots)
    return values


# -------------------------------------------------------- schedules, clipping
def torch_scheduler(schedule: Any, topt: Any) -> Any:
    """The ``torch.optim.lr_scheduler`` twin of an nnxp schedule, on ``topt`` (whose lr is ``schedule.lr``)."""
    from nnxp import schedules

    lrs = torch().optim.lr_scheduler
    if isinstance(schedule, schedules.StepDecay):
        return lrs.StepLR(topt, step_size=schedule.step_size, gamma=schedule.gamma)
    if isinstance(schedule, schedules.ExponentialDecay):
        if schedule.staircase:
            return lrs.StepLR(topt, step_size=schedule.decay_steps, gamma=schedule.decay_rate)
        if schedule.decay_steps == 1:
            return lrs.ExponentialLR(topt, gamma=schedule.decay_rate)
        return lrs.LambdaLR(topt, lambda t: schedule.decay_rate ** (t / schedule.decay_steps))
    if isinstance(schedule, schedules.CosineWarmup):
        w, total = schedule.warmup_steps, schedule.total_steps
        if w == 0:
            return lrs.CosineAnnealingLR(topt, T_max=total, eta_min=schedule.min_lr)
        if schedule.warmup_start > 0:
            warm = lrs.LinearLR(topt, start_factor=schedule.warmup_start, end_factor=1.0, total_iters=w)
        else:  # LinearLR refuses start_factor=0: the same straight line through LambdaLR
            warm = lrs.LambdaLR(topt, lambda t: t / w)
        cos = lrs.CosineAnnealingLR(topt, T_max=total - w, eta_min=schedule.min_lr)
        return lrs.SequentialLR(topt, [warm, cos], milestones=[w])
    if isinstance(schedule, schedules.ReduceOnPlateau):
        return lrs.ReduceLROnPlateau(topt, mode=schedule.mode, factor=schedule.factor, patience=schedule.patience,
                                     threshold=schedule.min_delta, threshold_mode=schedule.threshold_mode,
                                     cooldown=schedule.cooldown, min_lr=schedule.min_lr, eps=schedule.eps)
    raise NotImplementedError(f"no torch twin for {schedule!r}")


class TwinOptimizer:
    """A torch optimizer with the clipping and schedule of an nnxp optimizer around its steps.

    ``step()`` clips the gradients (``clip_grad_norm_`` / ``clip_grad_value_``),
    steps the optimizer, then steps a per-step scheduler; ``end_epoch(logs)``
    steps a per-epoch one (``ReduceLROnPlateau`` with ``logs[monitor]``).
    """

    def __init__(self, opt: optim.Optimizer, topt: Any, params: list[Any]) -> None:
        self.opt, self.topt, self.params = opt, topt, params
        self.schedule = opt.schedule
        self.scheduler = None if opt.schedule is None else torch_scheduler(opt.schedule, topt)
        self.state, self.param_groups = topt.state, topt.param_groups

    @property
    def lr(self) -> float:
        return self.topt.param_groups[0]["lr"]

    def zero_grad(self) -> None:
        self.topt.zero_grad()

    def step(self) -> None:
        utils = torch().nn.utils
        if self.opt.clip_norm is not None:
            utils.clip_grad_norm_(self.params, self.opt.clip_norm, foreach=False)
        if self.opt.clip_value is not None:
            utils.clip_grad_value_(self.params, self.opt.clip_value, foreach=False)
        self.topt.step()
        if self.scheduler is not None and self.schedule.per == "step":
            self.scheduler.step()

    def end_epoch(self, logs: dict[str, float]) -> None:
        from nnxp import schedules

        if isinstance(self.schedule, schedules.ReduceOnPlateau):
            self.scheduler.step(logs[self.schedule.monitor])
        elif self.scheduler is not None and self.schedule.per == "epoch":
            self.scheduler.step()


def torch_fit(model: nnxp.Sequential, loss: losses.Loss, opt: optim.Optimizer, x: np.ndarray, y: np.ndarray,
              epochs: int, batch_size: int, validation_data: tuple[np.ndarray, np.ndarray] | None = None
              ) -> tuple[Any, dict[str, list[float]]]:
    """``model.fit(..., shuffle=False)`` on a torch twin of ``model`` (copied now, before nnxp trains):
    the same batches, the clipping and schedule of ``opt``, validation after each epoch.

    Returns:
        ``(twin, history)`` with ``loss``, ``val_loss`` (with validation data) and ``lr`` per epoch,
        as ``fit`` records them (``lr``: the rate of the epoch's last update).
    """
    th = torch()
    twin = torch_model(model)
    topt = torch_optimizer(opt, twin.parameters())
    fn = torch_loss_fn(loss)

    def target(a: np.ndarray) -> Any:
        return th.tensor(a) if np.issubdtype(a.dtype, np.integer) else _t(a)

    hist: dict[str, list[float]] = {"loss": [], "lr": []}
    n = x.shape[0]
    for _ in range(epochs):
        total = 0.0
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            lr = topt.param_groups[0]["lr"]
            topt.zero_grad()
            value = fn(twin(_t(xb)), target(yb))
            value.backward()
            topt.step()
            total += float(value.detach()) * xb.shape[0]
        logs = {"loss": total / n, "lr": lr}
        if validation_data is not None:
            with th.no_grad():
                logs["val_loss"] = float(fn(twin(_t(validation_data[0])), target(validation_data[1])))
        for k, v in logs.items():
            hist.setdefault(k, []).append(v)
        if isinstance(topt, TwinOptimizer):
            topt.end_epoch(logs)
    return twin, hist
