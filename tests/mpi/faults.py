"""One fault per run, for tests/test_distributed_faults.py: ``mpiexec -n N python faults.py CASE``.

Each case trains a small MLP with ``fit(..., distributed=comm)`` and makes one rank
misbehave; the job must end (non-zero) with a message naming the rank and the cause.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np

import nnxp
from nnxp import distributed, layers, losses, optim

CASE = sys.argv[1]
comm = distributed.init(timeout=float(os.environ.get("NNXP_TEST_TIMEOUT", "20")))
BAD_RANK = comm.size - 1

rng = np.random.default_rng(0)
x = rng.normal(size=(96, 6)).astype(np.float32)
y = rng.integers(0, 3, 96)
width = 16
if CASE == "model" and comm.rank == BAD_RANK:
    width = 17
if CASE == "shape" and comm.rank == BAD_RANK:
    x, y = x[:90], y[:90]
if CASE == "labels" and comm.rank == BAD_RANK:
    y = np.where(y == 0, 7, y)  # out of range: caught by this rank's own input check
if CASE == "nan":
    x[50, 2] = np.nan  # every rank has the same data; the row lands in one rank's slice

net = nnxp.Sequential([layers.Dense(6, width), layers.ReLU(), layers.Dense(width, 3)], seed=0)


class Trap(layers.ReLU):
    """A ReLU that misbehaves on the bad rank at its third training step."""

    calls = 0

    def forward(self, x, training=True):
        if training and comm.rank == BAD_RANK:
            Trap.calls += 1
            if Trap.calls == 3:
                if CASE == "raise":
                    raise RuntimeError("injected failure")
                if CASE == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if CASE == "hang":
                    time.sleep(3600)
        return super().forward(x, training)


if CASE in ("raise", "kill", "hang"):
    net = nnxp.Sequential([layers.Dense(6, width), Trap(), layers.Dense(width, 3)], seed=0)

if CASE == "skip" and comm.rank == BAD_RANK:
    time.sleep(3600)  # never calls fit
try:
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.SGD(lr=0.1), epochs=2, batch_size=8,
            verbose=1 if CASE == "kill" else 0, distributed=comm)
except nnxp.NonFiniteLossError as exc:  # raised on every rank alike: a script may catch it
    print(f"rank {comm.rank} caught: {exc}", flush=True)
    sys.exit(0)
print(f"rank {comm.rank} finished", flush=True)
