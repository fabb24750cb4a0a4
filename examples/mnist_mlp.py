"""The seed network: MLP 784-200-200-10 (ReLU, He init, softmax + cross-entropy, SGD)
on MNIST, 3 epochs; falls back to a local Fashion-MNIST copy when MNIST cannot be had.

    python examples/mnist_mlp.py [--backend cupy] [--dataset fashion-mnist] [--epochs 3]

Writes to --out (default ``outputs/``): the checkpoint ``mnist_mlp.npz``, the
loss/accuracy curves ``mnist_mlp_curves.png`` and a grid of misclassified test
images ``mnist_mlp_misclassified.png``.
"""

from __future__ import annotations

import time

import _data
from _common import out_path, parser

import nnxp
from nnxp import datasets, layers, losses, optim
from nnxp.plots import plot_misclassified


def build(backend: str | None, seed: int) -> nnxp.Sequential:
    return nnxp.Sequential([
        layers.Dense(784, 200), layers.ReLU(),
        layers.Dense(200, 200), layers.ReLU(),
        layers.Dense(200, 10),
    ], backend=backend, dtype="float32", seed=seed)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser("Train the seed MLP 784-200-200-10 on MNIST (or Fashion-MNIST).")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--val", type=int, default=5000, help="training samples held out for validation")
    p.add_argument("--subset", type=int, default=None, help="use only the first N training samples (smoke tests)")
    p.add_argument("--no-download", action="store_true", help="use local copies only")
    p.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 a line per epoch")
    args = p.parse_args(argv)

    name, (x, y), (xt, yt), classes = _data.load(args.dataset, args.subset, download=not args.no_download)
    net = build(args.backend, args.seed)
    print(f"Dataset: {name} ({len(x)} train, {len(xt)} test images); backend: {net.backend.name}")
    x, xt = datasets.prepare(x, y, backend=net.backend)[0], datasets.prepare(xt, yt, backend=net.backend)[0]
    (xtr, ytr), val = _data.split_validation(x, y, args.val)

    t0 = time.perf_counter()
    hist = net.fit(xtr, ytr, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=args.lr),
                   epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                   validation_data=val, verbose=args.verbose)
    train_time = time.perf_counter() - t0
    test = net.evaluate(xt, yt)
    print(f"{name} test accuracy after {args.epochs} epochs: {100 * test['accuracy']:.2f}% "
          f"(test loss {test['loss']:.4f}; {train_time / max(args.epochs, 1):.2f} s per epoch "
          f"on {net.backend.name})")

    ckpt = out_path(args.out, "mnist_mlp.npz")
    net.save(ckpt)
    curves = out_path(args.out, "mnist_mlp_curves.png")
    hist.plot(curves, title=f"MLP 784-200-200-10 on {name}")
    pred = nnxp.to_numpy(net.predict(xt)).argmax(axis=1)
    grid = out_path(args.out, "mnist_mlp_misclassified.png")
    plot_misclassified(nnxp.to_numpy(xt), yt, pred, classes, grid)
    print(f"checkpoint: {ckpt}\ncurves: {curves}\nmisclassified: {grid}")
    return test


if __name__ == "__main__":
    main()
