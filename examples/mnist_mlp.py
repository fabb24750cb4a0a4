"""The seed network: MLP 784-200-200-10 (ReLU, He init, softmax + cross-entropy, SGD)
on MNIST, 3 epochs; falls back to a local Fashion-MNIST copy when MNIST cannot be had.

    python examples/mnist_mlp.py [--backend cupy|torch|jax] [--dataset fashion-mnist] [--epochs 3] [--dtype float64]
    mpiexec -n 2 python examples/mnist_mlp.py --distributed     # data-parallel, batch 64 per rank

Writes to --out (default ``outputs/``): the checkpoint ``mnist_mlp.npz``, the
loss/accuracy curves ``mnist_mlp_curves.png`` and a grid of misclassified test
images ``mnist_mlp_misclassified.png``.
"""

from __future__ import annotations

import _data

import nnxp
from nnxp import datasets, layers, optim


def build(backend: str | None, seed: int, dtype: str = "float32") -> nnxp.Sequential:
    return nnxp.Sequential([
        layers.Dense(784, 200), layers.ReLU(),
        layers.Dense(200, 200), layers.ReLU(),
        layers.Dense(200, 10),
    ], backend=backend, dtype=dtype, seed=seed)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = _data.image_parser("Train the seed MLP 784-200-200-10 on MNIST (or Fashion-MNIST).",
                              epochs=3, lr=0.1).parse_args(argv)
    comm = _data.communicator(args)
    name, (x, y), (xt, yt), classes = _data.load_on_ranks(comm, args.dataset, args.subset,
                                                          download=not args.no_download)
    net = build(args.backend, args.seed, args.dtype)
    if comm is None or comm.rank == 0:
        print(f"Dataset: {name} ({len(x)} train, {len(xt)} test images); backend: {net.backend.name}")
    train = datasets.prepare(x, y, dtype=args.dtype, backend=net.backend)
    test = datasets.prepare(xt, yt, dtype=args.dtype, backend=net.backend)
    return _data.train_and_report(net, optim.SGD(lr=args.lr), args, name, train, test, classes,
                                  "mnist_mlp", "MLP 784-200-200-10", comm)


if __name__ == "__main__":
    main()
