"""Celsius -> Fahrenheit regression: a 1-2-1 network learns F = 1.8 C + 32.

    python examples/celsius.py [--backend ...] [--out outputs]

Prints the learned mapping and its worst error on [-50, 50] °C and saves a PNG
with the true line, the untrained and the trained predictions.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import out_path, parser

import nnxp
from nnxp import layers, losses, optim


def main(argv: list[str] | None = None) -> float:
    p = parser("Learn F = 1.8 C + 32 with a 1-2-1 network.")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help="save celsius.png")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    c = rng.uniform(-50, 50, size=(100, 1)).astype(np.float32)
    f = 1.8 * c + 32
    # Scale inputs and targets to unit range: plain SGD on raw degrees diverges.
    cs, fs = 50.0, 100.0
    net = nnxp.Sequential([layers.Dense(1, 2), layers.Dense(2, 1)], backend=args.backend, seed=args.seed)
    grid = np.linspace(-50, 50, 201, dtype=np.float32)[:, None]
    before = nnxp.to_numpy(net.predict(grid / cs)) * fs
    net.fit(c / cs, f / fs, loss=losses.MSE(), optimizer=optim.Adam(lr=0.05),
            epochs=args.epochs, batch_size=20, verbose=0)
    after = nnxp.to_numpy(net.predict(grid / cs)) * fs

    # The two linear layers collapse to one affine map: read it off the network.
    f0 = float(after[100, 0])                      # prediction at 0 °C
    slope = float((after[-1, 0] - after[0, 0]) / 100.0)
    worst = float(np.max(np.abs(after - (1.8 * grid + 32))))
    print(f"Celsius -> Fahrenheit on {net.backend.name}: learned F = {slope:.4f} * C + {f0:.4f} "
          f"(true: 1.8 * C + 32); worst error on [-50, 50] °C: {worst:.4f} °F")
    for t in (-40.0, 0.0, 37.0, 100.0):
        pred = float(nnxp.to_numpy(net.predict(np.array([[t / cs]], dtype=np.float32)))[0, 0] * fs)
        print(f"  {t:7.1f} °C -> {pred:8.3f} °F (true {1.8 * t + 32:8.3f})")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(grid, 1.8 * grid + 32, "k-", lw=3, alpha=0.4, label="true F = 1.8 C + 32")
        ax.plot(grid, before, "r--", label="untrained network")
        ax.plot(grid, after, "b-", label="trained network")
        ax.scatter(c, f, s=8, c="gray", label="training points")
        ax.set_xlabel("°C")
        ax.set_ylabel("°F")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out_path(args.out, "celsius.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        print(f"plot: {path}")
    return worst


if __name__ == "__main__":
    main()
