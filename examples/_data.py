"""Dataset choice for the MNIST examples: MNIST when it can be had, else a
local Fashion-MNIST copy (saying so), never a silent switch of meaning."""

from __future__ import annotations

import sys

import _common  # noqa: F401  (puts the checkout on sys.path)

from nnxp import datasets


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
