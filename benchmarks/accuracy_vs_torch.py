"""Accuracy check against PyTorch: the seed network trained twice, step for step.

The seed network (MLP 784-200-200-10, ReLU, softmax + cross-entropy, plain SGD
lr 0.1, batch 64, float32 unless ``--dtype float64``) is trained with ``nnxp.Sequential.fit`` and as the
identical PyTorch model:

* the same initial weights: nnxp's He-initialised parameters are copied into
  ``torch.nn.Linear`` layers (nnxp's Dense weight is ``(in, out)``, torch's is
  ``(out, in)``, so torch gets ``W.T``);
* the same batches in the same order: ``fit(shuffle=True)`` permutes each epoch
  with ``np.random.default_rng([seed, epoch]).permutation(n)`` (epoch 1-based,
  counting from ``net.epoch``); torch slices the same permutation into batches of
  64 (the last one smaller). The labels nnxp's loss saw are checked against
  torch's order every epoch, so a change in fit's shuffling fails loudly here;
* the same update: ``torch.optim.SGD(lr=0.1)`` (no momentum, no weight decay).

nnxp is called once per epoch (``fit(epochs=1)``), its per-batch losses are
recorded by a thin wrapper around ``SoftmaxCrossEntropy.forward`` (kept on the
device, read once per epoch, outside the timed region).

Per epoch it prints both mean training losses, the largest absolute difference
of the per-batch losses and the wall time of each library; then both test
accuracies and their difference in percentage points. The exit status is 1
when the difference exceeds ``--max-diff`` (0.3 points) or, on MNIST (full
training set, 3 epochs or more), when nnxp's test accuracy is below 97 %, or, with
``--dtype float64``, when a per-batch loss differs by more than 1e-9; 2 when
nnxp's fit did not see the expected batches.

Run it from the repository root::

    python benchmarks/accuracy_vs_torch.py                     # Fashion-MNIST, 60,000 images, 3 epochs
    python benchmarks/accuracy_vs_torch.py --dataset mnist     # MNIST if it can be had, else says so
    python benchmarks/accuracy_vs_torch.py --subset 5000 --epochs 1     # a quick look
    python benchmarks/accuracy_vs_torch.py --backend cupy      # nnxp on the GPU, torch on CUDA

Threads: both libraries get the same number, ``--threads`` (default 1). NumPy's
BLAS reads its thread count when it is first loaded, so the script sets
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (unless already
set) before importing NumPy, and calls ``torch.set_num_threads``. One thread is
the default because the batch-64 products are too small to gain from more, and
on cores shared with other jobs extra BLAS/OpenMP threads wait on each other: on
a busy 2-core machine an epoch took 27 s (nnxp) and 41 s (torch) with 2 threads,
1.3 s and 1.6 s with 1. Timings on a shared machine are noisy. The float32
numbers depend on the thread count (it changes BLAS's summation order), not on
the load.

Reading the result: in float64 the two runs agree to ~1e-15 per batch for whole
epochs, so they are the same computation. In float32 they agree to ~1e-7 until
a ReLU input that lies within rounding of 0 lands on different sides in the two
libraries (Fashion-MNIST, seed 0: batch 238 of epoch 1 with 1 thread, batch 556
with 2); from there the two SGD trajectories drift apart like any two float32
runs, and the test accuracies differ by what that drift does to the final
iterate. ``--noise-floor`` measures it: a second torch model, started from the
same weights each nudged one ulp up or down at random (differences of the size
that rounding makes), trained on the same batches. On Fashion-MNIST (3 epochs,
seeds 0-4, 1 thread) torch vs nudged torch differed by +0.38, +0.53, +0.02,
+0.49, -0.10 points and nnxp vs torch by +0.19, -0.86, -0.30, +0.35, -0.28:
the 0.3-point bar lies inside float32's own spread there, so a float32 failure
says "look", and ``--dtype float64`` (exact agreement required) is the sharp test.

Devices: ``--backend numpy`` (default) and ``array_api_strict`` run torch on the
CPU; ``--backend cupy`` runs torch on CUDA when ``torch.cuda.is_available()``,
else on the CPU (it says so).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

MNIST_MIN_ACCURACY = 0.97
FLOAT64_MAX_DLOSS = 1e-9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the seed MLP in nnxp and PyTorch from the same "
                                "weights on the same batches; compare losses and test accuracy.")
    p.add_argument("--dataset", choices=["fashion-mnist", "mnist"], default="fashion-mnist",
                   help="fashion-mnist (default) or mnist (falls back to Fashion-MNIST when MNIST "
                        "cannot be had, saying so)")
    p.add_argument("--backend", default="numpy", help="nnxp backend: numpy (default), array_api_strict, cupy, ...")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=None, help="use only the first N training images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float64 shows that the two computations are the same algorithm: the losses then "
                        "agree to ~1e-15 for whole epochs")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for each library (default 1; see the module docstring)")
    p.add_argument("--noise-floor", action="store_true",
                   help="also train torch from weights nudged by one ulp each: how far float32 rounding "
                        "alone moves the test accuracy")
    p.add_argument("--max-diff", type=float, default=0.3,
                   help="largest allowed |test accuracy difference| in percentage points")
    p.add_argument("--no-download", action="store_true", help="use local data set copies only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = max(1, args.threads)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))  # before NumPy's BLAS is loaded

    import numpy as np
    import torch

    import nnxp
    from nnxp import datasets, layers, losses, optim

    torch.set_num_threads(threads)

    # ------------------------------------------------------------------ data
    name = "Fashion-MNIST"
    loaded = None
    if args.dataset == "mnist":
        try:
            loaded = datasets.load_mnist(download=not args.no_download, timeout=20)
            name = "MNIST"
        except datasets.DatasetNotFoundError as exc:
            last = exc.tried[-1] if exc.tried else str(exc).splitlines()[0]
            print(f"MNIST cannot be had here ({last}); using Fashion-MNIST instead.", file=sys.stderr)
    if loaded is None:
        loaded = datasets.load_fashion_mnist(download=not args.no_download, timeout=20)
    (x_img, y_lab), (xt_img, yt_lab) = loaded
    if args.subset:
        x_img, y_lab = x_img[: args.subset], y_lab[: args.subset]
    x, y = datasets.prepare(x_img, y_lab, dtype=args.dtype)    # host (N, 784) floats, int64 (N,)
    xt, yt = datasets.prepare(xt_img, yt_lab, dtype=args.dtype)
    n, bs = x.shape[0], args.batch_size
    nb = -(-n // bs)

    # ------------------------------------------------------------------ nnxp
    try:
        nnxp.backends.resolve_backend(args.backend)
    except nnxp.BackendUnavailableError as exc:
        print(f"nnxp backend {args.backend!r} is unavailable: {exc}", file=sys.stderr)
        return 2
    net = nnxp.Sequential([
        layers.Dense(784, 200), layers.ReLU(),
        layers.Dense(200, 200), layers.ReLU(),
        layers.Dense(200, 10),
    ], backend=args.backend, dtype=args.dtype, seed=args.seed)
    xp = net.backend.xp

    class RecordingCrossEntropy(losses.SoftmaxCrossEntropy):
        """Keeps every training-step loss (a 0-d device array) and its labels."""

        def __init__(self) -> None:
            super().__init__()
            self.values: list[Any] = []
            self.labels: list[Any] = []

        def forward(self, y_pred: Any, y_true: Any) -> Any:
            value = super().forward(y_pred, y_true)
            self.values.append(value)
            self.labels.append(y_true)
            return value

        def take(self) -> tuple[np.ndarray, np.ndarray]:
            vals = nnxp.to_numpy(xp.stack(self.values)).astype(np.float64)
            labs = nnxp.to_numpy(xp.concat(self.labels))
            self.values, self.labels = [], []
            return vals, labs

    loss = RecordingCrossEntropy()
    sgd = optim.SGD(lr=args.lr)

    # ----------------------------------------------------------------- torch
    on_gpu = net.backend.name.startswith("cupy")
    if on_gpu and torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        if on_gpu:
            print("torch has no CUDA here: the torch twin runs on the CPU.", file=sys.stderr)
        device = torch.device("cpu")
    lin = [m for m in net.layers if isinstance(m, layers.Dense)]
    twin = torch.nn.Sequential(
        torch.nn.Linear(784, 200), torch.nn.ReLU(),
        torch.nn.Linear(200, 200), torch.nn.ReLU(),
        torch.nn.Linear(200, 10),
    )
    twin = twin.to(device=device, dtype=getattr(torch, args.dtype))  # before the copy: no rounding
    with torch.no_grad():
        for dense, tl in zip(lin, [m for m in twin if isinstance(m, torch.nn.Linear)], strict=True):
            tl.weight.copy_(torch.from_numpy(np.ascontiguousarray(nnxp.to_numpy(dense.params["weight"]).T)))
            tl.bias.copy_(torch.from_numpy(nnxp.to_numpy(dense.params["bias"])))
    twins = [(twin, torch.optim.SGD(twin.parameters(), lr=args.lr))]
    if args.noise_floor:
        nudged = copy.deepcopy(twin)
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():  # every parameter one ulp up or down at random: rounding-sized differences
            for prm in nudged.parameters():
                up = torch.rand(prm.shape, generator=gen).to(prm.device) < 0.5
                inf = torch.full_like(prm, float("inf"))
                prm.copy_(torch.nextafter(prm, torch.where(up, inf, -inf)))
        twins.append((nudged, torch.optim.SGD(nudged.parameters(), lr=args.lr)))
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    xt_t, yt_t = torch.from_numpy(xt).to(device), torch.from_numpy(yt).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def torch_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, perm: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(perm).to(device)
        xs, ys = x_t.index_select(0, idx), y_t.index_select(0, idx)
        batch_losses = []
        for b in range(nb):
            xb, yb = xs[b * bs:(b + 1) * bs], ys[b * bs:(b + 1) * bs]
            lv = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            lv.backward()
            opt.step()
            batch_losses.append(lv.detach())
        return torch.stack(batch_losses)  # read after the clock stops

    def torch_correct(model: torch.nn.Module) -> int:
        with torch.no_grad():
            return int((model(xt_t).argmax(dim=1) == yt_t).sum())

    # ----------------------------------------------------------------- train
    print(f"{name}: {n} training images ({nb} batches of {bs}), {xt.shape[0]} test images; "
          f"{args.epochs} epochs, SGD lr {args.lr}, {args.dtype}, seed {args.seed}")
    print(f"nnxp {nnxp.__version__} on {net.backend.name}; torch {torch.__version__} on {device}; "
          f"{threads} CPU thread(s) each")
    print(f"{'epoch':>5} {'nnxp loss':>10} {'torch loss':>11} {'max|dloss| batch':>17} "
          f"{'first >1e-4':>12} {'nnxp s':>8} {'torch s':>8}")
    failed = False
    worst_dloss = 0.0
    for _ in range(args.epochs):
        epoch = net.epoch + 1
        perm = np.random.default_rng([args.seed, epoch]).permutation(n)  # what fit(shuffle=True) uses

        t0 = time.perf_counter()
        hist = net.fit(x, y, loss=loss, optimizer=sgd, epochs=1, batch_size=bs, shuffle=True, verbose=0)
        t_nnxp = time.perf_counter() - t0
        nnxp_losses, seen_labels = loss.take()
        if net.epoch != epoch or not np.array_equal(seen_labels, y[perm]):
            print(f"epoch {epoch}: nnxp's fit did not train on the batches np.random.default_rng([seed, epoch])"
                  ".permutation(n) gives; the comparison is void.", file=sys.stderr)
            return 2

        sync()
        t0 = time.perf_counter()
        torch_losses = torch_epoch(*twins[0], perm)
        sync()
        t_torch = time.perf_counter() - t0
        for model, opt in twins[1:]:
            torch_epoch(model, opt, perm)
        torch_losses = torch_losses.double().cpu().numpy()

        # epoch means weighted by batch size, as fit reports them
        sizes = np.minimum(bs, n - bs * np.arange(nb))
        tl_mean = float(np.sum(torch_losses * sizes) / n)
        dloss = np.abs(nnxp_losses - torch_losses)
        far = np.flatnonzero(dloss > 1e-4)
        first = f"batch {far[0]}" if far.size else "-"
        worst_dloss = max(worst_dloss, float(np.max(dloss)))
        print(f"{epoch:>5} {hist['loss'][-1]:>10.6f} {tl_mean:>11.6f} {float(np.max(dloss)):>17.3e} "
              f"{first:>12} {t_nnxp:>8.2f} {t_torch:>8.2f}", flush=True)

    # ------------------------------------------------------------------ test
    n_test = xt.shape[0]
    ok_nnxp = round(net.evaluate(xt, yt, loss=losses.SoftmaxCrossEntropy())["accuracy"] * n_test)
    ok_torch = torch_correct(twin)
    acc_nnxp = ok_nnxp / n_test
    diff = 100 * (ok_nnxp - ok_torch) / n_test
    print(f"test accuracy: nnxp {100 * acc_nnxp:.2f}%, torch {100 * ok_torch / n_test:.2f}%, "
          f"difference {diff:+.2f} points ({ok_nnxp - ok_torch:+d} of {n_test} images; "
          f"allowed: ±{args.max_diff:.2f})")
    if args.noise_floor:
        ok_nudged = torch_correct(twins[1][0])
        print(f"noise floor: torch from weights nudged by ±1 ulp {100 * ok_nudged / n_test:.2f}%, "
              f"{100 * (ok_nudged - ok_torch) / n_test:+.2f} points from torch")
    if abs(diff) > args.max_diff + 1e-9:
        print(f"FAIL: the test accuracies differ by more than {args.max_diff} points", file=sys.stderr)
        failed = True
    if args.dtype == "float64" and worst_dloss > FLOAT64_MAX_DLOSS:
        print(f"FAIL: in float64 the per-batch losses differ by {worst_dloss:.2e} > {FLOAT64_MAX_DLOSS:.0e}: "
              "the two computations are not the same algorithm", file=sys.stderr)
        failed = True
    if name == "MNIST":
        if args.subset or args.epochs < 3:
            print(f"(the {100 * MNIST_MIN_ACCURACY:.0f}% MNIST bar applies to the full run: "
                  "60,000 images, 3 epochs or more)")
        elif acc_nnxp < MNIST_MIN_ACCURACY:
            print(f"FAIL: nnxp's MNIST test accuracy is below {100 * MNIST_MIN_ACCURACY:.0f}%", file=sys.stderr)
            failed = True
    if not failed:
        print("OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
