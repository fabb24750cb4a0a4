"""Training speed of nnxp against its hand-written twin and PyTorch.

For each case, the contenders train the same model from the same initial
parameters on the same batches (one permutation per epoch, see
``benchmarks/twins.py``), interleaved in one process: every repeat runs one
timed epoch of each contender, and the order alternates between repeats
(forward on even repeats, reversed on odd ones), so slow drifts of a shared
machine hit all of them alike. The table reports the median over the repeats.

Contenders:

* ``nnxp``: ``Sequential.fit(epochs=1, verbose=0)`` on ``--backend``; the data
  are moved to the backend once, outside the timing (``fit`` then moves nothing).
* ``twin``: the same arithmetic written by hand on the same array library
  (NumPy on the CPU, CuPy on the GPU, eager JAX with ``--backend jax``):
  ``x @ W + b``, ``maximum(., 0)``, the fused softmax cross-entropy gradient
  ``(softmax - onehot) / batch``, ``W -= lr * dW`` (MLP cases; there is no
  hand-written CNN twin, and none on torch, where PyTorch's own loop is the peer).
* ``torch``: PyTorch eager (``nn.Module``, autograd, ``torch.optim``) on the CPU
  (``--backend numpy`` or ``jax``), on CUDA (``--backend cupy``), or on nnxp's
  own device with ``--backend torch[:cuda]``: then both sides run the same
  library's kernels and the ratio is what nnxp's hand-written backprop costs
  against autograd.
* ``torch.compile``: with ``--compile``, the model compiled with
  ``torch.compile(mode=--compile-mode)``; if compiling fails the row says why.

Cases (``--cases``, comma separated):

* ``mlp64``: 784-200-200-10 ReLU MLP, softmax cross-entropy, SGD lr 0.1, batch 64.
* ``mlp1024``: the same at batch 1024.
* ``wide``: 784-4096-4096-10 at batch 1024 (SGD lr 0.01); in the default set on
  the GPU only; on the CPU it runs when named, on at most ``--cpu-big-samples`` samples.
* ``cnn``: conv(1->32, 3x3, pad 1)-ReLU-maxpool 2-conv(32->64, 3x3, pad 1)-ReLU-maxpool 2
  -flatten-dense(3136, 128)-ReLU-dense(128, 10), Adam lr 1e-3, batch 64, on 1x28x28
  inputs; skipped (with a message) while ``nnxp.layers`` has no ``Conv2D``; at most
  ``--cpu-big-samples`` samples on the CPU.
* ``transformer``: the character transformer of ``examples/char_transformer.py``:
  Embedding(113, 64) + PositionalEmbedding(64, 64), 2 pre-norm blocks (causal 4-head
  self-attention; 64-256-64 GELU MLP), LayerNorm, Dense(64, 113) on windows of 64
  tokens, cross-entropy at every position, AdamW lr 1e-2 (weight decay 0.01) with
  global-norm clipping at 1, batch 32; at most ``--cpu-big-samples`` windows on the CPU.
  The PyTorch peer is ``nn.Embedding``, ``nn.MultiheadAttention`` (fused attention),
  ``nn.LayerNorm``, ``nn.Linear``, ``nn.GELU`` with ``torch.optim.AdamW`` and
  ``clip_grad_norm_`` (``benchmarks/twins.py: torch_module``).
* ``lstm``: the character LSTM of ``examples/char_lstm.py``: Embedding(113, 64),
  LSTM(64, 256) over 64 steps, Dense(256, 113) at every step; the same optimizer, batch 32,
  capped likewise. The PyTorch peer is ``nn.LSTM`` (its fused CPU kernel).

Data are synthetic: ``--samples`` (default 60,000) float32 rows uniform in
[0, 1) and integer labels in [0, 10), from a seeded NumPy generator; for the
sequence cases, windows of token ids and next-token labels uniform in [0, 113).

Columns: median seconds per epoch; the ratio to the hand-written twin and to
PyTorch eager (``> 1`` means slower); achieved TFLOP/s, counted as
``6 * MACs_per_sample * samples`` per epoch (2 flops per multiply-accumulate
forward, 4 backward for the input and weight gradients; for an MLP the MACs per
sample are the weight count, biases, activations and the softmax are not
counted, nor the input gradient of the first layer that no one computes; the
sequence cases count per token the projections, the two attention products
``2 * T * d`` per block and the output layer, or the LSTM's ``4H(E + H)`` and its
read-out);
peak memory: on the CPU the growth of the peak resident set during an epoch
over the resident set before it (Linux: ``VmHWM`` after resetting it through
``/proc/self/clear_refs``; elsewhere the growth of ``ru_maxrss``, which only
shows new highs); on the GPU the CuPy memory pool's used/total bytes and
``torch.cuda.max_memory_allocated``, from a separate run of ``--mem-epochs``
epochs per contender that prints the device memory after every epoch (to show
it does not grow); and the mean training loss of the last timed epoch, which
agrees across contenders when they do the same arithmetic.

After the table it prints the array calls per training step of nnxp and of
the hand-written twin (``benchmarks/calls.py``, counted on array_api_strict;
``--no-calls`` skips it): at small batches that count is what a GPU step costs.

Run from the repository root::

    python benchmarks/bench.py --backend numpy --cases mlp64,mlp1024 --repeats 3
    python -m benchmarks.bench --backend cupy --compile --json bench-gpu.json
    python benchmarks/bench.py --cases mlp64 --samples 20000 --threads 1

On a machine shared with other jobs, use more repeats (the median resists
outliers) and compare ratios rather than absolute times; ``--threads 1`` takes
BLAS thread contention out of the picture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

MiB = 2**20


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "mlp", "cnn", "transformer" or "lstm"
    batch: int
    optimizer: str
    lr: float
    sizes: tuple[int, ...] = ()
    cpu_capped: bool = False  # limit to --cpu-big-samples on the CPU
    gpu_default: bool = False  # in the default case list only on the GPU
    note: str = ""
    seq: tuple[int, ...] = ()  # transformer: (vocab, T, d, heads, blocks, ff); lstm: (vocab, T, embed, hidden)
    weight_decay: float = 0.0
    clip_norm: float | None = None


CASES = {
    "mlp64": Case("mlp64", "mlp", 64, "sgd", 0.1, (784, 200, 200, 10)),
    "mlp1024": Case("mlp1024", "mlp", 1024, "sgd", 0.1, (784, 200, 200, 10)),
    "wide": Case("wide", "mlp", 1024, "sgd", 0.01, (784, 4096, 4096, 10), cpu_capped=True, gpu_default=True),
    "cnn": Case("cnn", "cnn", 64, "adam", 1e-3, cpu_capped=True),
    "transformer": Case("transformer", "transformer", 32, "adamw", 1e-2, cpu_capped=True,
                        seq=(113, 64, 64, 4, 2, 4), weight_decay=0.01, clip_norm=1.0),
    "lstm": Case("lstm", "lstm", 32, "adamw", 1e-2, cpu_capped=True, seq=(113, 64, 64, 256),
                 weight_decay=0.01, clip_norm=1.0),
}
SEQUENCE_KINDS = ("transformer", "lstm")

# conv(1->32,3,pad1)-relu-pool2-conv(32->64,3,pad1)-relu-pool2-flatten-dense(3136,128)-relu-dense(128,10)
CNN_CONVS = ((1, 32), (32, 64))
CNN_MACS = 28 * 28 * 32 * 1 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 10


def macs_per_sample(case: Case) -> int:
    if case.kind == "mlp":
        return sum(a * b for a, b in zip(case.sizes[:-1], case.sizes[1:]))
    if case.kind == "transformer":
        vocab, t, d, _, blocks, ff = case.seq
        return t * (blocks * (4 * d * d + 2 * ff * d * d + 2 * t * d) + d * vocab)
    if case.kind == "lstm":
        vocab, t, e, h = case.seq
        return t * (4 * h * (e + h) + h * vocab)
    return CNN_MACS


def build_nnxp(case: Case, backend: str, seed: int) -> Any:
    import nnxp
    from nnxp import layers as L

    if case.kind == "transformer":
        vocab, t, d, heads, blocks, ff = case.seq
        body = [nnxp.Sequential([
            L.Residual([L.LayerNorm(d), L.MultiHeadAttention(d, heads, causal=True)]),
            L.Residual([L.LayerNorm(d), L.Dense(d, ff * d), L.GELU(), L.Dense(ff * d, d)])]) for _ in range(blocks)]
        seq: list[Any] = [L.Embedding(vocab, d), L.PositionalEmbedding(t, d), *body, L.LayerNorm(d),
                          L.Dense(d, vocab)]
    elif case.kind == "lstm":
        vocab, t, e, h = case.seq
        seq = [L.Embedding(vocab, e), L.LSTM(e, h), L.Dense(h, vocab)]
    elif case.kind == "mlp":
        seq = []
        for a, b in zip(case.sizes[:-1], case.sizes[1:]):
            seq += [L.Dense(a, b), L.ReLU()]
        seq.pop()  # no activation after the last Dense: logits for the loss
    else:
        (c0, c1), (_, c2) = CNN_CONVS
        seq = [L.Conv2D(c0, c1, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
               L.Conv2D(c1, c2, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
               L.Flatten(), L.Dense(7 * 7 * c2, 128), L.ReLU(), L.Dense(128, 10)]
    return nnxp.Sequential(seq, backend=backend, dtype="float32", seed=seed)


def host_spec(net: Any) -> list[tuple]:
    """The nnxp model as the layer list ``TorchTwin`` takes (host copies of the parameters)."""
    import nnxp
    from nnxp import layers as L

    spec: list[tuple] = []
    for layer in net.layers:
        if isinstance(layer, L.Dense):
            spec.append(("dense", nnxp.to_numpy(layer.params["weight"]), nnxp.to_numpy(layer.params["bias"])))
        elif type(layer).__name__ == "Conv2D":
            spec.append(("conv", nnxp.to_numpy(layer.params["weight"]), nnxp.to_numpy(layer.params["bias"]),
                         tuple(layer.padding)))
        elif isinstance(layer, L.ReLU):
            spec.append(("relu",))
        elif type(layer).__name__ == "MaxPool2D":
            k = layer.kernel_size
            spec.append(("maxpool", k if isinstance(k, int) else tuple(k)))
        elif type(layer).__name__ == "Flatten":
            spec.append(("flatten",))
        else:
            raise ValueError(f"no torch twin for {layer!r}")
    return spec


def cnn_missing() -> str | None:
    import nnxp

    missing = [n for n in ("Conv2D", "MaxPool2D", "Flatten") if not hasattr(nnxp.layers, n)]
    if missing:
        return f"nnxp.layers has no {', '.join(missing)} yet"
    return None


# --------------------------------------------------------------------------- memory
class HostMemory:
    """Peak resident-set growth of this process during a region (Linux: VmHWM reset)."""

    def __init__(self) -> None:
        self.resettable = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.resettable = self._status("VmHWM") is not None
        except OSError:
            pass

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    @staticmethod
    def _maxrss() -> int:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux

    def start(self) -> None:
        if self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = self._status("VmRSS") or 0
        else:
            self._base = self._maxrss()

    def stop(self) -> int:
        peak = self._status("VmHWM") if self.resettable else self._maxrss()
        return max(0, (peak or 0) - self._base)

    @property
    def method(self) -> str:
        return "VmHWM growth (clear_refs reset)" if self.resettable else "ru_maxrss growth (new highs only)"


# --------------------------------------------------------------------------- contenders
@dataclass
class Result:
    case: str
    contender: str
    samples: int = 0
    batch: int = 0
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    host_peak: list[int] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


class Contender:
    """One way of training the case's model; ``fit_epoch`` runs one full epoch."""

    name = "?"
    gpu = False

    def fit_epoch(self, x: Any, y: Any) -> float:
        raise NotImplementedError

    def data(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def sync(self) -> None:
        pass


class NnxpContender(Contender):
    name = "nnxp"

    def __init__(self, net: Any, case: Case, x: Any, y: Any, check_finite: str,
                 metrics: tuple[str, ...] = ("accuracy",)) -> None:
        import nnxp
        from nnxp import losses, optim

        self.net, self.case = net, case
        self.backend = net.backend
        self.gpu = net.backend.kind == "cupy"
        self.x = nnxp.to_device(x, self.backend)  # once: fit() then moves nothing
        self.y = nnxp.to_device(y, self.backend)
        self.loss = losses.SoftmaxCrossEntropy()
        if case.optimizer == "sgd":
            self.opt = optim.SGD(lr=case.lr)
        elif case.optimizer == "adamw":
            self.opt = optim.AdamW(lr=case.lr, weight_decay=case.weight_decay, clip_norm=case.clip_norm)
        else:
            self.opt = optim.Adam(lr=case.lr)
        self.check_finite = check_finite
        self.metrics = metrics

    def data(self) -> tuple[Any, Any]:
        return self.x, self.y

    def fit_epoch(self, x: Any, y: Any) -> float:
        h = self.net.fit(x, y, loss=self.loss, optimizer=self.opt, epochs=1, batch_size=self.case.batch,
                         shuffle=True, verbose=0, check_finite=self.check_finite, metrics=self.metrics)
        return h["loss"][-1]

    def sync(self) -> None:
        self.backend.synchronize()


class ArrayTwinContender(Contender):
    name = "twin"

    def __init__(self, spec: list[tuple], case: Case, x: Any, y: Any, backend: Any, seed: int) -> None:
        from benchmarks.twins import ArrayMLPTwin

        self.case, self.backend = case, backend
        self.gpu = backend.kind == "cupy"
        weights, biases = [s[1] for s in spec if s[0] == "dense"], [s[2] for s in spec if s[0] == "dense"]
        if self.gpu:
            import cupy as xp

            with backend.device:
                self.twin = ArrayMLPTwin(weights, biases, xp, case.lr, seed)
                self.x, self.y = xp.asarray(x), xp.asarray(y)
        elif backend.kind == "jax":  # eager JAX, written the way JAX is written (.at[] updates)
            self.twin = ArrayMLPTwin(weights, biases, backend.xp, case.lr, seed)
            self.x, self.y = backend.from_host(x), backend.from_host(y)
        else:
            import numpy as xp

            self.twin = ArrayMLPTwin([s[1] for s in spec if s[0] == "dense"],
                                     [s[2] for s in spec if s[0] == "dense"], xp, case.lr, seed)
            self.x, self.y = x, y

    def data(self) -> tuple[Any, Any]:
        return self.x, self.y

    def fit_epoch(self, x: Any, y: Any) -> float:
        if self.gpu:
            with self.backend.device:
                return self.twin.fit_epoch(x, y, self.case.batch)
        return self.twin.fit_epoch(x, y, self.case.batch)

    def sync(self) -> None:
        self.backend.synchronize()


class TorchContender(Contender):
    def __init__(self, spec: list[tuple] | None, case: Case, x: Any, y: Any, device: str, seed: int,
                 compile_mode: str | None, net: Any = None) -> None:
        from benchmarks.twins import TorchTwin, torch_module

        self.name = "torch" if compile_mode is None else f"torch.compile({compile_mode})"
        self.case = case
        self.gpu = device.startswith("cuda")
        module = torch_module(net) if case.kind in SEQUENCE_KINDS else None
        self.twin = TorchTwin(spec, device, case.optimizer, case.lr, seed, compile_mode, module=module,
                              weight_decay=case.weight_decay, clip_norm=case.clip_norm)
        self.x = self.twin.to_device(x)
        self.y = self.twin.to_device(y)

    def data(self) -> tuple[Any, Any]:
        return self.x, self.y

    def fit_epoch(self, x: Any, y: Any) -> float:
        return self.twin.fit_epoch(x, y, self.case.batch)

    def sync(self) -> None:
        self.twin.synchronize()


# --------------------------------------------------------------------------- running
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / MiB:.1f} MiB" if b < 10 * 2**30 else f"{b / 2**30:.2f} GiB"


def gpu_memory_now(contender: Contender) -> dict[str, int]:
    """Device memory as the contender's allocator sees it."""
    if isinstance(contender, TorchContender):
        import torch

        dev = contender.twin.device
        return {"allocated": int(torch.cuda.memory_allocated(dev)),
                "max_allocated": int(torch.cuda.max_memory_allocated(dev)),
                "reserved": int(torch.cuda.memory_reserved(dev))}
    import cupy

    pool = cupy.get_default_memory_pool()
    return {"pool_used": int(pool.used_bytes()), "pool_total": int(pool.total_bytes())}


def gpu_memory_reset(contender: Contender) -> None:
    if isinstance(contender, TorchContender):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(contender.twin.device)
    else:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()


def warmup_size(n: int, bs: int) -> int:
    """A short epoch that still contains the timed epochs' last (smaller) batch shape."""
    nb_full = n // bs
    k = min(nb_full, max(3, nb_full // 10))
    return max(1, min(n, k * bs + n % bs))


def make_contenders(case: Case, args: argparse.Namespace, x: Any, y: Any) -> tuple[list[Contender], list[Result]]:
    """Build the contenders of a case; unavailable ones come back as skipped results."""
    from benchmarks.twins import torch_available

    net = build_nnxp(case, args.backend, args.seed)
    # initial parameters, before any training (the sequence models' torch twin is built from ``net``)
    spec = host_spec(net) if case.kind not in SEQUENCE_KINDS else None
    out: list[Contender] = []
    skipped: list[Result] = []
    wanted = args.contenders
    if "nnxp" in wanted:
        out.append(NnxpContender(net, case, x, y, args.check_finite, args.metrics))
    if "twin" in wanted:
        if case.kind == "mlp" and net.backend.kind in ("numpy", "cupy", "jax"):
            out.append(ArrayTwinContender(spec, case, x, y, net.backend, args.seed))
        elif case.kind == "mlp":
            skipped.append(Result(case.name, "twin", skipped=f"no hand-written twin on {net.backend.kind} "
                                                            "(PyTorch's own training loop is the peer)"))
        else:
            skipped.append(Result(case.name, "twin", skipped="no hand-written twin for this case"))
    torch_names = [("torch", None)] + ([("compile", args.compile_mode)] if args.compile else [])
    for key, mode in torch_names:
        if key not in wanted and not (key == "compile" and args.compile):
            continue
        label = "torch" if mode is None else f"torch.compile({mode})"
        why = torch_available()
        device = "cpu"
        if why is None and net.backend.kind == "torch":
            device = str(net.backend.device)  # PyTorch's own loop on nnxp's device: the peer
        elif why is None and net.backend.kind == "cupy":
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{net.backend.device.id}"
            else:
                why = "torch has no CUDA device (a CPU torch would not be a fair GPU comparison)"
        if why is not None:
            skipped.append(Result(case.name, label, skipped=why))
            continue
        try:
            out.append(TorchContender(spec, case, x, y, device, args.seed, mode, net=net))
        except Exception as exc:
            skipped.append(Result(case.name, label, skipped=f"{type(exc).__name__}: {exc}"))
    return out, skipped


def synthetic_data(case: Case, n: int, seed: int) -> tuple[Any, Any]:
    """The case's ``n`` synthetic samples (see the module docstring) from a generator seeded by ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if case.kind in SEQUENCE_KINDS:  # windows of token ids, a next-token label at every position
        vocab, t = case.seq[:2]
        return rng.integers(0, vocab, (n, t), dtype=np.int64), rng.integers(0, vocab, (n, t), dtype=np.int64)
    x = rng.random((n, 784), dtype=np.float32)
    if case.kind == "cnn":
        x = x.reshape(n, 1, 28, 28)
    return x, rng.integers(0, 10, n, dtype=np.int64)


def run_case(case: Case, args: argparse.Namespace, n: int, hostmem: HostMemory) -> tuple[list[Result], list[dict]]:

    if case.kind == "cnn":
        why = cnn_missing()
        if why:
            log(f"[{case.name}] skipped: {why}")
            return [Result(case.name, "all", skipped=why)], []
    x, y = synthetic_data(case, n, args.seed)
    contenders, skipped = make_contenders(case, args, x, y)
    del x
    results = {c.name: Result(case.name, c.name, samples=n, batch=case.batch) for c in contenders}
    flops = 6 * macs_per_sample(case) * n
    # warm-up: one short epoch each (BLAS/kernels, allocator pools, torch.compile's graphs)
    nw = warmup_size(n, case.batch)
    for c in list(contenders):
        xd, yd = c.data()
        try:
            t0 = time.perf_counter()
            c.fit_epoch(xd[:nw], yd[:nw])
            c.sync()
            log(f"[{case.name}] warm-up {c.name}: {time.perf_counter() - t0:.2f} s ({nw} samples)")
        except Exception as exc:
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log(f"[{case.name}] {c.name} failed in warm-up, dropped: {msg}")
            contenders.remove(c)
            res = results.pop(c.name)
            res.skipped = msg
            skipped.append(res)
    for r in range(args.repeats):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            xd, yd = c.data()
            res = results[c.name]
            if not c.gpu:
                hostmem.start()
            c.sync()
            t0 = time.perf_counter()
            loss = c.fit_epoch(xd, yd)
            c.sync()
            dt = time.perf_counter() - t0
            res.times.append(dt)
            res.losses.append(loss)
            if not c.gpu:
                res.host_peak.append(hostmem.stop())
            log(f"[{case.name}] repeat {r + 1}/{args.repeats} {c.name:<24} {dt:8.3f} s  loss {loss:.6f}"
                f"  {flops / dt / 1e12:.3f} TFLOP/s")
    traces = memory_trace(case, args, contenders, results) if args.mem_epochs and any(c.gpu for c in contenders) \
        else []
    return [*results.values(), *skipped], traces


def memory_trace(case: Case, args: argparse.Namespace, contenders: list[Contender],
                 results: dict[str, Result]) -> list[dict]:
    """Each GPU contender alone for ``--mem-epochs`` epochs, device memory printed after each."""
    traces = []
    for c in contenders:
        if not c.gpu:
            continue
        xd, yd = c.data()
        c.sync()
        gpu_memory_reset(c)
        rows = []
        for e in range(1, args.mem_epochs + 1):
            c.fit_epoch(xd, yd)
            c.sync()
            mem = gpu_memory_now(c)
            rows.append({"epoch": e, **mem})
            print(f"[{case.name}] memory {c.name:<24} epoch {e}: "
                  + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in mem.items()), flush=True)
        traces.append({"case": case.name, "contender": c.name, "epochs": rows})
        res = results[c.name]
        last = rows[-1]
        if "pool_used" in last:
            res.gpu = {"pool_used": last["pool_used"], "pool_total": max(r["pool_total"] for r in rows),
                       "grew": rows[-1]["pool_used"] > rows[0]["pool_used"]}
        else:
            res.gpu = {"max_allocated": max(r["max_allocated"] for r in rows),
                       "grew": rows[-1]["allocated"] > rows[0]["allocated"]}
    return traces


# --------------------------------------------------------------------------- report
def summarise(results: list[Result], flops_of: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    by_case: dict[str, dict[str, Result]] = {}
    for r in results:
        by_case.setdefault(r.case, {})[r.contender] = r
    for case, group in by_case.items():
        twin, torch = group.get("twin"), group.get("torch")
        for r in group.values():
            row: dict[str, Any] = {"case": case, "contender": r.contender, "skipped": r.skipped}
            if r.skipped is None and r.times:
                med = r.median
                row.update({
                    "samples": r.samples, "batch": r.batch, "times_s": r.times, "median_s": med,
                    "min_s": min(r.times), "losses": r.losses,
                    "ratio_vs_twin": med / twin.median if twin and twin.median else None,
                    "ratio_vs_torch": med / torch.median if torch and torch.median else None,
                    "flops_per_epoch": flops_of[case], "tflops": flops_of[case] / med / 1e12,
                    "host_peak_bytes": max(r.host_peak) if r.host_peak else None,
                    "gpu_memory": r.gpu or None,
                    "loss_diff_vs_twin": (max(abs(a - b) for a, b in zip(r.losses, twin.losses))
                                          if twin and twin.losses and r is not twin else None),
                })
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def ratio(v: float | None) -> str:
        return f"{v:.3f}x" if v is not None else "—"

    lines = ["| case | contender | median s/epoch | vs twin | vs torch | TFLOP/s | peak memory | loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.get("skipped"):
            lines.append(f"| {row['case']} | {row['contender']} | skipped: {row['skipped']} | | | | | |")
            continue
        if row.get("gpu_memory"):
            g = row["gpu_memory"]
            mem = (f"pool {fmt_bytes(g['pool_used'])} used / {fmt_bytes(g['pool_total'])} total"
                   if "pool_used" in g else f"max allocated {fmt_bytes(g['max_allocated'])}")
        elif row.get("host_peak_bytes") is not None:
            mem = f"+{fmt_bytes(row['host_peak_bytes'])} RSS"
        else:
            mem = "n/a"
        lines.append(f"| {row['case']} | {row['contender']} | {row['median_s']:.4f} | {ratio(row['ratio_vs_twin'])} "
                     f"| {ratio(row['ratio_vs_torch'])} | {row['tflops']:.3f} | {mem} | {row['losses'][-1]:.6f} |")
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
        "cpu": _cpu_name(), "usable_cores": _usable_cores(), "threads": args.threads,
        "blas_threads_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS") if os.environ.get(k)},
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except Exception:
        env["torch"] = None
    if args.backend.startswith("cupy"):
        try:
            import cupy

            env["cupy"] = cupy.__version__
            dev = cupy.cuda.Device(int(args.backend.partition(":")[2] or 0))
            env["gpu"] = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
        except Exception as exc:
            env["cupy"] = f"unavailable: {exc}"
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (benchmarks/bench.py) for what is measured.")
    p.add_argument("--backend", default="numpy",
                   help="nnxp backend: numpy (default), cupy[:N], torch[:cuda[:N]], jax[:gpu[:N]]")
    p.add_argument("--cases", default=None,
                   help=f"comma separated, from {','.join(CASES)} (default: all but wide on the CPU, "
                        "all on the GPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per contender (median reported)")
    p.add_argument("--samples", type=int, default=60000, help="training samples per epoch (default 60000)")
    p.add_argument("--cpu-big-samples", type=int, default=4096,
                   help="sample cap for the wide, cnn, transformer and lstm cases on the CPU (default 4096)")
    p.add_argument("--contenders", default="nnxp,twin,torch", help="subset of nnxp,twin,torch")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (failures are reported)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, reduce-overhead, ...)")
    p.add_argument("--check-finite", default="auto", help="passed to nnxp's fit (auto, step, device, off)")
    p.add_argument("--no-train-accuracy", dest="metrics", action="store_const", const=(), default=("accuracy",),
                   help="nnxp's fit keeps no running training accuracy (the twins keep none)")
    p.add_argument("--mem-epochs", type=int, default=None,
                   help="GPU: epochs of the memory run per contender (default 5; 0 skips it)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for BLAS and torch (sets OPENBLAS/OMP/MKL_NUM_THREADS before NumPy loads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-calls", action="store_true",
                   help="skip the count of array calls per step (benchmarks/calls.py; needs array_api_strict)")
    args = p.parse_args(argv)
    args.contenders = {c.strip() for c in args.contenders.split(",") if c.strip()}
    unknown = args.contenders - {"nnxp", "twin", "torch"}
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}")
    gpu = args.backend.startswith("cupy")
    if args.cases is None:
        args.cases = [c for c, spec in CASES.items() if gpu or not spec.gpu_default]
    else:
        args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        bad = [c for c in args.cases if c not in CASES]
        if bad:
            p.error(f"unknown cases {bad}; choose from {list(CASES)}")
    if args.mem_epochs is None:
        args.mem_epochs = 5 if gpu else 0
    if args.repeats < 1 or args.samples < 1:
        p.error("--repeats and --samples must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        if "numpy" in sys.modules:
            log("warning: NumPy was imported before --threads could set the BLAS thread count")
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import nnxp

    try:
        backend = nnxp.backends.resolve_backend(args.backend)
    except Exception as exc:
        log(f"backend {args.backend!r} unavailable: {exc}")
        return 2
    args.backend = backend.name
    if args.threads:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except Exception:
            pass
    gpu = backend.kind == "cupy"
    hostmem = HostMemory()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    results: list[Result] = []
    traces: list[dict] = []
    flops_of: dict[str, float] = {}
    for name in args.cases:
        case = CASES[name]
        n = args.samples if gpu or not case.cpu_capped else min(args.samples, args.cpu_big_samples)
        flops_of[name] = 6 * macs_per_sample(case) * n
        log(f"[{name}] {n} samples, batch {case.batch}, {args.repeats} repeats on {backend.name}")
        res, tr = run_case(case, args, n, hostmem)
        results += res
        traces += tr
    rows = summarise(results, flops_of)
    env = environment(args)
    meta = {
        "backend": backend.name, "cases": args.cases, "repeats": args.repeats, "samples": args.samples,
        "cpu_big_samples": args.cpu_big_samples, "check_finite": args.check_finite,
        "metrics": list(args.metrics), "seed": args.seed,
        "statistic": "median over repeats; contenders interleaved, order alternating per repeat",
        "flops_formula": "6 * MACs_per_sample * samples per epoch (MLP: MACs = weight count; "
                         f"cnn: {CNN_MACS} MACs/sample)",
        "host_memory": hostmem.method, "loadavg_start": load0,
        "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "wall_s": time.perf_counter() - t_start, **env,
    }
    table = markdown(rows)
    print()
    print(f"nnxp benchmark on {backend.name} ({env.get('gpu') or env['cpu']}), {args.repeats} repeats, "
          f"threads {args.threads or 'default'}, load average {meta['loadavg_start']} -> {meta['loadavg_end']}")
    print(f"TFLOP/s = {meta['flops_formula']} / median epoch time")
    print()
    print(table)
    calls: list[dict[str, Any]] = []
    if not args.no_calls:
        calls = count_calls()
    if args.json:
        out = {"meta": meta, "results": rows, "memory_trace": traces, "calls_per_step": calls}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=_json_default)
        log(f"wrote {args.json}")
    return 0


def count_calls() -> list[dict[str, Any]]:
    """Print and return the array calls per step of nnxp and the twin (see ``benchmarks/calls.py``):
    what bounds a GPU step at small batches, counted on the host."""
    try:
        from benchmarks import calls
    except ImportError as exc:  # array_api_strict missing
        log(f"array calls per step not counted: {exc}")
        return []
    rows = [r for bs in (64, 1024) for r in calls.measure(bs, 60)]
    print()
    print("Array calls per training step (seed MLP, counted on array_api_strict with fit's GPU branch; "
          "at small batches a GPU step costs about what its calls cost on the host):")
    print()
    print(calls.markdown(rows))
    return rows


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


if __name__ == "__main__":
    sys.exit(main())
