"""A small CNN on MNIST (falls back to a local Fashion-MNIST copy when MNIST cannot be had):

    Conv2D(1, 32, 3, padding=1) - ReLU - MaxPool2D(2)
    Conv2D(32, 64, 3, padding=1) - ReLU - MaxPool2D(2)
    Flatten - Dropout(0.25) - Dense(3136, 128) - ReLU - Dropout(0.5) - Dense(128, 10)

trained with Adam (lr 1e-3) on NCHW images ``(N, 1, 28, 28)`` in [0, 1]. The default
EPOCHS_DEFAULT epochs reach over 91% test accuracy on Fashion-MNIST (about 99% on MNIST).

    python examples/mnist_cnn.py [--backend cupy] [--dataset fashion-mnist] [--epochs 8]
    mpiexec -n 2 python examples/mnist_cnn.py --distributed      # data-parallel, batch 64 per rank

Writes to --out (default ``outputs/``): the checkpoint ``mnist_cnn.npz``, the
loss/accuracy curves ``mnist_cnn_curves.png`` and a grid of misclassified test
images ``mnist_cnn_misclassified.png``.
"""

from __future__ import annotations

import _data

import nnxp
from nnxp import datasets, layers, optim

EPOCHS_DEFAULT = 8


def build(backend: str | None, seed: int, channels: tuple[int, int] = (32, 64), hidden: int = 128,
          image_size: int = 28, dtype: str = "float32") -> nnxp.Sequential:
    """The CNN; ``channels``, ``hidden`` and ``image_size`` shrink it for tests."""
    c1, c2 = channels
    side = image_size // 4  # two 2x2 poolings
    return nnxp.Sequential([
        layers.Conv2D(1, c1, 3, padding=1), layers.ReLU(), layers.MaxPool2D(2),
        layers.Conv2D(c1, c2, 3, padding=1), layers.ReLU(), layers.MaxPool2D(2),
        layers.Flatten(), layers.Dropout(0.25),
        layers.Dense(c2 * side * side, hidden), layers.ReLU(), layers.Dropout(0.5),
        layers.Dense(hidden, 10),
    ], backend=backend, dtype=dtype, seed=seed)


def nchw(images, labels, backend: nnxp.Backend, dtype: str = "float32") -> tuple:
    """uint8 ``(N, H, W)`` images -> float NCHW ``(N, 1, H, W)`` in [0, 1] and int64 labels, on ``backend``."""
    x, y = datasets.prepare(images, labels, flatten=False, backend=backend, dtype=dtype)
    return backend.xp.reshape(x, (x.shape[0], 1, x.shape[1], x.shape[2])), y


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = _data.image_parser("Train a small CNN (two conv + pool blocks, dropout, dense head, Adam) on MNIST "
                              "(or Fashion-MNIST).", epochs=EPOCHS_DEFAULT, lr=1e-3).parse_args(argv)
    comm = _data.communicator(args)
    name, (x, y), (xt, yt), classes = _data.load_on_ranks(comm, args.dataset, args.subset,
                                                          download=not args.no_download)
    net = build(args.backend, args.seed, dtype=args.dtype)
    if comm is None or comm.rank == 0:
        print(f"Dataset: {name} ({len(x)} train, {len(xt)} test images); backend: {net.backend.name}")
        if args.verbose:
            print(net.summary((1, *x.shape[1:])))
    train, test = nchw(x, y, net.backend, args.dtype), nchw(xt, yt, net.backend, args.dtype)
    return _data.train_and_report(net, optim.Adam(lr=args.lr), args, name, train, test, classes,
                                  "mnist_cnn", "CNN", comm)


if __name__ == "__main__":
    main()
