"""XOR with a 2-3-1 tanh network and MSE: the smallest non-linear problem.

    python examples/xor.py [--backend numpy|cupy|array_api_strict]
"""

from __future__ import annotations

import numpy as np
from _common import parser

import nnxp
from nnxp import layers, losses, optim


def main(argv: list[str] | None = None) -> np.ndarray:
    p = parser("Train a 2-3-1 tanh network on XOR.")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args(argv)

    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    net = nnxp.Sequential([layers.Dense(2, 3), layers.Tanh(), layers.Dense(3, 1), layers.Tanh()],
                          backend=args.backend, seed=args.seed)
    hist = net.fit(x, y, loss=losses.MSE(), optimizer=optim.SGD(lr=args.lr, momentum=0.9),
                   epochs=args.epochs, batch_size=4, verbose=0)
    pred = nnxp.to_numpy(net.predict(x))
    print(f"XOR on {net.backend.name}: final loss {hist['loss'][-1]:.2e} after {args.epochs} epochs")
    for xi, pi in zip(x, pred[:, 0]):
        print(f"  {int(xi[0])} xor {int(xi[1])} -> {pi:.4f}")
    return pred


if __name__ == "__main__":
    main()
