"""What the two MNIST examples share: their options, the data set choice (MNIST
when it can be had, else a local Fashion-MNIST copy, saying so: never a silent
switch of meaning), the validation split, and training plus the report, the
checkpoint and the PNGs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import out_path, parser

import nnxp
from nnxp import datasets, losses, optim
from nnxp.plots import plot_misclassified


def image_parser(description: str, epochs: int, lr: float) -> argparse.ArgumentParser:
    """The MNIST examples' options: ``--dataset``, ``--epochs``, ``--batch-size``, ``--lr`` and the rest."""
    p = parser(description)
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="parameter dtype; float64 makes runs on different backends agree to rounding")
    p.add_argument("--val", type=int, default=5000, help="training samples held out for validation")
    p.add_argument("--subset", type=int, default=None, help="use only the first N training samples (smoke tests)")
    p.add_argument("--no-download", action="store_true", help="use local copies only")
    p.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 a line per epoch")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of mpiexec (mpiexec -n 2 python ...); --batch-size is "
                        "per rank; without mpiexec: one process")
    return p


def communicator(args: argparse.Namespace) -> Any:
    """``nnxp.distributed.init()`` with ``--distributed``, else ``None``; GPU backends named without a
    device get the GPU of the rank's local rank (``cupy`` -> ``cupy:<local_rank>``)."""
    if not args.distributed:
        return None
    from nnxp import distributed

    comm = distributed.init()
    gpu = {"cupy": "cupy", "torch:cuda": "torch:cuda", "jax:gpu": "jax:gpu"}
    if args.backend in gpu:
        args.backend = f"{gpu[args.backend]}:{comm.local_rank}"
    return comm


def load_on_ranks(comm: Any, *args: Any, **kwargs: Any) -> tuple[str, tuple, tuple, list[str]]:
    """:func:`load` on every rank, rank 0 first (so that only rank 0 downloads into the cache)."""
    if comm is not None and comm.rank != 0:
        comm.barrier("the wait for rank 0 to fetch the data set")
    data = load(*args, **kwargs)
    if comm is not None and comm.rank == 0:
        comm.barrier("the wait for rank 0 to fetch the data set")
    return data


def train_and_report(net: nnxp.Sequential, optimizer: optim.Optimizer, args: argparse.Namespace, name: str,
                     train: tuple[Any, Any], test: tuple[Any, Any], classes: list[str], stem: str,
                     title: str, comm: Any = None) -> dict[str, float]:
    """Fit with ``args.val`` samples held out, print the test accuracy and epoch times, and write
    ``<stem>.npz``, ``<stem>_curves.png`` and ``<stem>_misclassified.png`` to ``args.out``.
    With ``comm`` (several ranks) every rank trains; rank 0 alone prints and writes.

    Returns:
        The test metrics (``loss``, ``accuracy``).
    """
    (xtr, ytr), val = split_validation(*train, args.val)
    t0 = time.perf_counter()
    hist = net.fit(xtr, ytr, loss=losses.SoftmaxCrossEntropy(), optimizer=optimizer,
                   epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                   validation_data=val, verbose=args.verbose, distributed=comm)
    train_time = time.perf_counter() - t0
    xt, yt = test
    metrics = net.evaluate(xt, yt)
    if comm is not None and comm.rank != 0:
        return metrics
    times = ", ".join(f"{t:.1f}" for t in hist["time"])
    ranks = f" x {comm.size} ranks (global batch {comm.size * args.batch_size})" if comm is not None else ""
    print(f"{name} test accuracy after {args.epochs} epochs: {100 * metrics['accuracy']:.2f}% "
          f"(test loss {metrics['loss']:.4f}; {train_time / max(args.epochs, 1):.2f} s per epoch "
          f"on {net.backend.name}{ranks}; epoch times [s]: {times})")

    ckpt = out_path(args.out, f"{stem}.npz")
    net.save(ckpt)
    curves = out_path(args.out, f"{stem}_curves.png")
    hist.plot(curves, title=f"{title} on {name}")
    pred = nnxp.to_numpy(net.predict(xt)).argmax(axis=1)
    grid = out_path(args.out, f"{stem}_misclassified.png")
    plot_misclassified(nnxp.to_numpy(xt), nnxp.to_numpy(yt), pred, classes, grid)
    print(f"checkpoint: {ckpt}\ncurves: {curves}\nmisclassified: {grid}")
    return metrics


def load(name: str, subset: int | None = None, download: bool = True) -> tuple[str, tuple, tuple, list[str]]:
    """Load ``name`` ("mnist" or "fashion-mnist"), falling back from MNIST to Fashion-MNIST.

    Returns:
        ``(display_name, (x_train, y_train), (x_test, y_test), class_names)`` as host arrays.
    """
    if name == "mnist":
        try:
            (x, y), (xt, yt) = datasets.load_mnist(download=download, timeout=20)
            return "MNIST", *_cut((x, y), (xt, yt), subset), datasets.MNIST_CLASSES
        except datasets.DatasetNotFoundError as exc:
            last = exc.tried[-1] if getattr(exc, "tried", None) else str(exc).splitlines()[0]
            print(f"MNIST cannot be had here: no local copy, and the download failed ({last}). "
                  "Training on Fashion-MNIST instead.", file=sys.stderr)
    (x, y), (xt, yt) = datasets.load_fashion_mnist(download=download, timeout=20)
    return "Fashion-MNIST", *_cut((x, y), (xt, yt), subset), datasets.FASHION_MNIST_CLASSES


def _cut(train: tuple, test: tuple, subset: int | None) -> tuple[tuple, tuple]:
    if not subset:
        return train, test
    return (train[0][:subset], train[1][:subset]), (test[0][: max(subset // 6, 1)], test[1][: max(subset // 6, 1)])


def split_validation(x, y, n_val: int) -> tuple[tuple, tuple | None]:
    """Hold out the last ``n_val`` training samples (arrays of any backend) for validation."""
    n = x.shape[0]
    if n_val <= 0 or n_val >= n:
        return (x, y), None
    k = n - n_val
    return (x[:k, ...], y[:k, ...]), (x[k:, ...], y[k:, ...])
